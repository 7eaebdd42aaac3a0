"""The bundle builder and the default-bundle command: a bundle written atomically that
Bundle.load and `edge-mer info` accept, whose encoders, heads and detectors run end to end; and
the shipped models/default when it is present."""

from __future__ import annotations


import numpy as np
import pytest

from conftest import REPO, shared_data

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from edge_mer.bundle import Bundle  # noqa: E402
from edge_mer.config import Config, RuntimeCfg  # noqa: E402
from edge_mer.modality import Modality  # noqa: E402
from export.bundle_builder import BundleSpec, EncoderSource, build_bundle  # noqa: E402
from export.heads import LinearProbe  # noqa: E402
from export.onnx_export import run_onnx  # noqa: E402
from export_toys import ToyAudio, ToyLandmarks, speech_like_logmels  # noqa: E402

LABELS = ("neutral", "happy", "sad")


def _probe(dim: int, seed: int) -> LinearProbe:
    rng = np.random.default_rng(seed)
    return LinearProbe(np.zeros(dim, np.float32), np.ones(dim, np.float32),
                       rng.normal(size=(dim, len(LABELS))).astype(np.float32), np.zeros(len(LABELS), np.float32), LABELS)


def _spec(include_mtcnn: bool = True, heads: dict | None = None) -> BundleSpec:
    torch.manual_seed(0)
    cfg = Config()
    audio = EncoderSource(
        modality=Modality.AUDIO, name="toy_audio", module=ToyAudio(), feature_dim=16, feature_cfg={"n_mels": 128},
        precisions=("fp32", "int8", "fp16"), default_precision="int8",
        parity_inputs={"logmel": torch.from_numpy(speech_like_logmels(3, seed=3))},
        calibration=[{"logmel": x[None]} for x in speech_like_logmels(8)],
    )
    landmarks = EncoderSource(
        modality=Modality.LANDMARKS, name="toy_landmarks", module=ToyLandmarks(), feature_dim=16,
        feature_cfg={"drop_jaw": True}, precisions=("int8",), default_precision="int8", int8="dynamic",
    )
    heads = heads if heads is not None else {"audio": _probe(16, 1), "landmarks": _probe(16, 2), "landmarks+audio": _probe(32, 3)}
    return BundleSpec(name="toy", labels=LABELS, encoders=[landmarks, audio], heads=heads, config=cfg,
                      provenance={"data": "generated", "protocol": "test", "metrics": {}}, include_mtcnn=include_mtcnn)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("b") / "bundle"
    bundle, report = build_bundle(out, _spec())
    return out, bundle, report


def test_bundle_loads_and_info_accepts_it(built, capsys):
    from edge_mer.cli import main

    out, bundle, report = built
    assert Bundle.load(out).manifest == bundle.manifest
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "toy_audio" in text and "mtcnn" in text
    assert report["audio"]["fp32_max_abs_err"] <= 1e-4 and report["audio"]["int8_cosine_min"] >= 0.98
    assert report["audio"]["fp16_cosine_min"] >= 0.999
    m = bundle.manifest
    assert m["modalities"] == ["landmarks", "audio"]
    assert set(m["encoders"]["audio"]["variants"]) == {"fp32", "int8", "fp16"}
    # Landmarks ship only INT8: its fp32 source stayed in scratch space.
    assert set(m["encoders"]["landmarks"]["variants"]) == {"int8"} and m["encoders"]["landmarks"]["int8_mode"] == "dynamic"
    assert not (out / "encoders" / "landmarks.fp32.onnx").exists()
    assert m["encoders"]["audio"]["variants"]["fp32"]["inputs"][0]["shape"] == ["batch", 128, "frames"]
    assert (out / "export_config.toml").is_file()
    assert m["provenance"]["commit"]


def test_encoders_and_heads_run_end_to_end(built):
    out, bundle, _ = built
    x_audio = speech_like_logmels(2, seed=7)
    x_lm = np.random.default_rng(0).uniform(size=(2, 12, 51, 2)).astype(np.float32)
    fa = run_onnx(bundle.path(bundle.encoder_variant("audio")[1]), {"logmel": x_audio})["feature"]
    fl = run_onnx(bundle.path(bundle.encoder_variant("landmarks")[1]), {"landmarks": x_lm})["feature"]
    probs = run_onnx(bundle.path(bundle.head(["audio", "landmarks"])), {"features": np.concatenate([fl, fa], axis=1)})["probs"]
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, _probe(32, 3).predict_proba(np.concatenate([fl, fa], axis=1)), atol=1e-5)


def test_detectors_from_bundle_find_a_real_face(built):
    import cv2

    from edge_mer.face.mtcnn import MTCNN

    _, bundle, _ = built
    det = MTCNN.from_bundle(bundle, RuntimeCfg(threads=1))
    still = shared_data("ravdess", "face_stills", "Actor_05.png")
    boxes, probs, points = det.detect(cv2.imread(str(still)))
    assert len(boxes) == 1 and probs[0] > 0.9 and points.shape == (1, 5, 2)


def test_bad_head_leaves_nothing_behind(tmp_path):
    out = tmp_path / "bundle"
    with pytest.raises(ValueError, match="reads 8 features"):
        build_bundle(out, _spec(include_mtcnn=False, heads={"audio": _probe(8, 0)}))
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="not a subset key"):
        build_bundle(out, _spec(include_mtcnn=False, heads={"audio+landmarks": _probe(32, 0)}))
    assert not out.exists()


def test_a_per_speaker_head_ships_its_prior_and_runs_per_user_normalised(tmp_path):
    import dataclasses

    from edge_mer.stream.fusion import Fusion

    prior_mean, prior_std = np.linspace(-1, 1, 16).astype(np.float32), np.full(16, 0.5, np.float32)
    probe = dataclasses.replace(_probe(16, 1), user_mean=prior_mean, user_std=prior_std)
    bundle, _ = build_bundle(tmp_path / "b", _spec(include_mtcnn=False, heads={"audio": probe, "landmarks": _probe(16, 2)}))
    entry = bundle.manifest["heads"]["audio"]["input_norm"]
    assert entry["type"] == "per_user" and entry["file"] == "heads/audio.user_norm.npz" and len(entry["sha256"]) == 64
    assert "input_norm" not in bundle.manifest["heads"]["landmarks"]
    with np.load(bundle.path(entry)) as z:
        np.testing.assert_array_equal(z["mean"], prior_mean)
    fusion = Fusion.from_bundle(bundle, RuntimeCfg(threads=1, user_norm=False))
    x = np.random.default_rng(0).normal(size=(1, 16)).astype(np.float32)
    pred = fusion.predict({Modality.AUDIO: x})
    expected = probe.predict_proba((x - prior_mean) / np.sqrt(prior_std.astype(np.float64) ** 2 + 1e-6))[0]
    np.testing.assert_allclose(pred.probs, expected, atol=1e-5)


def test_an_encoder_pretrained_on_per_speaker_inputs_ships_its_input_prior(tmp_path):
    spec = _spec(include_mtcnn=False, heads={"audio": _probe(16, 1)})
    audio = next(e for e in spec.encoders if e.modality is Modality.AUDIO)
    audio.input_norm = (np.full(128, -6.0), np.full(128, 2.5))
    bundle, _ = build_bundle(tmp_path / "b", spec)
    entry = bundle.manifest["encoders"]["audio"]["input_norm"]
    assert entry["type"] == "per_user" and entry["file"] == "encoders/audio.user_norm.npz"
    assert "input_norm" not in bundle.manifest["encoders"]["landmarks"]
    with np.load(bundle.path(entry)) as z:
        np.testing.assert_array_equal(z["std"], np.full(128, 2.5, np.float32))
    assert "per-user normalised input" in bundle.describe()


def test_static_int8_requires_calibration():
    with pytest.raises(ValueError, match="calibration"):
        EncoderSource(modality="audio", name="x", module=ToyAudio(), feature_dim=16, feature_cfg={})


def _entries(manifest):
    from edge_mer.bundle import iter_file_entries

    return [e for _, e in iter_file_entries(manifest)]


def test_shipped_default_bundle():
    root = REPO / "models" / "default"
    if not (root / "manifest.json").is_file():
        pytest.skip("models/default is not built yet (python export/make_default_bundle.py)")
    bundle = Bundle.load(root)
    m = bundle.manifest
    assert m["modalities"] == ["face", "audio", "text"]
    assert sum(bundle.path(e).stat().st_size for e in _entries(m)) <= 40e6
    assert (root / "MODEL_CARD.md").is_file()
    assert "CC BY-NC-SA 4.0" in (root / "MODEL_CARD.md").read_text()
