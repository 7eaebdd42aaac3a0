"""The README's "your own recordings" walk-through, end to end on the 14 shared audio-visual clips
(configs/manifests/av14.csv: RAVDESS actor 01's 7 clips, CREMA-D actor 1001's 6 and the bundled
sample): manifest -> preprocess -> label-free pretraining -> labels added afterwards -> probe on
face + landmarks + audio -> export of all four encoders -> edge-mer run fuses them.

Every step is the documented command in a subprocess (real decoding, MTCNN, dlib, Whisper, ONNX
Runtime). A few minutes on 2 cores; skips when ../shared/data is absent.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "configs" / "manifests" / "av14.csv"
DATA = REPO.parent / "shared" / "data"

pytestmark = pytest.mark.skipif(not (DATA / "ravdess" / "video_actor01").is_dir() or not (DATA / "crema-d" / "VideoFlash").is_dir(),
                                reason="needs ../shared/data (RAVDESS actor-01 videos and CREMA-D clips)")


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(args[:3])} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def _manifest(path: Path, labelled: bool) -> None:
    """The walk-through's manifest with absolute paths, with or without its label column filled."""
    with MANIFEST.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "path": str((MANIFEST.parent / r["path"]).resolve()), "label": r["label"] if labelled else ""})


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    manifest = root / "my_recordings.csv"
    _manifest(manifest, labelled=False)  # recorded first, labelled later
    cache, run = root / "cache", root / "run"
    _run("-m", "training.preprocess", "--dataset", f"manifest={manifest}", "--out", str(cache), "--workers", "1")
    npz_times = {p: p.stat().st_mtime_ns for p in (cache / "clips").rglob("*.npz")}
    _run("-m", "training.train", "--config", "configs/own_recordings.toml", "--cache", str(cache), "--out", str(run),
         "--set", "train.epochs=2")
    _manifest(manifest, labelled=True)  # a few labels, after preprocessing and pretraining
    return {"root": root, "manifest": manifest, "cache": cache, "run": run, "npz_times": npz_times}


def test_the_cache_holds_all_four_streams_and_no_labels_yet(walk):
    cache_manifest = json.loads((walk["cache"] / "cache_manifest.json").read_text())
    assert cache_manifest["counts"]["done"] == 14
    per_stream = cache_manifest["counts"]["per_stream"]
    assert per_stream["audio"] == per_stream["face"] == per_stream["landmarks"] == 14
    assert per_stream["text"] == 13  # the sample has no transcript in the manifest
    assert (walk["cache"] / "labels.jsonl").read_text().strip() == ""
    meta = json.loads((walk["run"] / "checkpoint.json").read_text())
    assert set(meta["encoders"]) == {"audio", "face", "landmarks", "text"}


def test_probe_on_face_landmarks_audio_reads_labels_added_after_preprocessing(walk):
    out = walk["root"] / "probe"
    _run("-m", "training.eval.probe", "--checkpoint", str(walk["run"]), "--cache", str(walk["cache"]),
         "--labels", str(walk["manifest"]), "--streams", "audio,face,landmarks", "--out", str(out))
    result = json.loads((out / "metrics.json").read_text())
    # labels came from the manifest, read at probe time: nothing was preprocessed again
    assert {p: p.stat().st_mtime_ns for p in (walk["cache"] / "clips").rglob("*.npz")} == walk["npz_times"]
    assert result["n_clips"] == 13 and result["speakers"] == ["crema-d_1001", "ravdess_actor01"]
    assert result["classes"] == ["angry", "disgust", "fearful", "happy", "neutral", "sad", "surprised"]
    assert [f["test_speakers"] for f in result["folds"]] == ["crema-d_1001", "ravdess_actor01"]  # leave one speaker out
    for key in ("audio", "face", "landmarks", "fused"):
        assert result["pooled"][key]["n_test"] == 13
        assert 0.0 <= result["pooled"][key]["ua"] <= 100.0
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_export_every_encoder_and_run_fuses_them(walk):
    bundle = walk["root"] / "bundle"
    _run("-m", "export.build_bundle", "--run", str(walk["run"]), "--cache", str(walk["cache"]),
         "--labels", str(walk["manifest"]), "--out", str(bundle))
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(manifest["encoders"]) == {"audio", "face", "landmarks", "text"}
    assert set(manifest["heads"]) == {"audio", "face", "landmarks", "text"}
    report = json.loads((bundle / "build_report.json").read_text())
    for m in ("audio", "face", "landmarks", "text"):
        checks = report["export_checks"][m]
        assert checks["fp32_max_abs_err"] < 1e-3, (m, checks)  # fp32 ONNX == PyTorch on real cache inputs (checked at export)
        assert set(manifest["encoders"][m]["variants"]) == {"fp32", "int8"}
        assert report["precision"][m]["shipped"] in ("fp32", "int8")
        assert manifest["heads"][m]["input_norm"]["type"] == "per_user"
    card = (bundle / "MODEL_CARD.md").read_text()
    assert str(walk["run"]) in card and "14 clips of 2 speakers" in card and "fer 25.10.3" in card
    assert "RAVDESS audio" not in card  # generated from this run, not the default bundle's text

    proc = _run("-m", "edge_mer", "run", "--bundle", str(bundle), "--video", "samples/crema-d_1001_DFA_six_emotions.mp4",
                "--fast", "--asr", "whisper")
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert events
    seen = {m for e in events for m in e["modalities"]}
    assert {"face", "landmarks", "audio", "text"} <= seen
    assert all(set(e["probs"]) == set(manifest["labels"]) for e in events)

    proc = subprocess.run([sys.executable, "export/build_engines.py", "--bundle", str(bundle), "--backend", "onnxruntime",
                           "--out", str(walk["root"] / "engines")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_no_pretraining_the_published_networks_with_your_labels(walk):
    """The variant without pretraining: train.epochs = 0 writes a run holding the published
    networks exactly as they ship, and the same export turns it and the labels into a bundle."""
    import torch

    from training.checkpoint import load_encoders
    from training.encoders.base import build_encoder

    run = walk["root"] / "published"
    _run("-m", "training.train", "--config", "configs/published_frozen.toml", "--cache", str(walk["cache"]), "--out", str(run))
    meta = json.loads((run / "checkpoint.json").read_text())
    assert meta["epoch"] == 0 and meta["step"] == 0 and set(meta["encoders"]) == {"audio", "face", "text"}
    encoders = load_encoders(run)
    for key, spec in meta["encoders"].items():  # tensor for tensor the networks as published, nothing random
        fresh = build_encoder(spec["name"], spec["cfg"]).state_dict()
        saved = encoders[key].state_dict()
        assert saved.keys() == fresh.keys() and all(torch.equal(saved[k], fresh[k]) for k in saved), key

    bundle = walk["root"] / "published_bundle"
    _run("-m", "export.build_bundle", "--run", str(run), "--cache", str(walk["cache"]), "--labels", str(walk["manifest"]),
         "--out", str(bundle))
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(manifest["encoders"]) == set(manifest["heads"]) == {"audio", "face", "text"}
    assert manifest["encoders"]["text"]["feature_dim"] == 384  # MiniLM's own mean-pooled vector
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "**No pretraining**" in card and "pretrained **without labels**" not in card
    proc = _run("-m", "edge_mer", "run", "--bundle", str(bundle), "--video", "samples/crema-d_1001_DFA_six_emotions.mp4", "--fast")
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert {"face", "audio"} <= {m for e in events for m in e["modalities"]}
