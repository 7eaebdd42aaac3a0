"""Fusion over real ONNX heads (exact-subset head, fallback by averaged log-probabilities, nothing
usable), exponential smoothing, the event schema, and the landmark normalisation of the stages."""

from __future__ import annotations

import numpy as np
import pytest
from run_fixtures import DIM, LABELS, make_bundle

from edge_mer.bundle import Bundle
from edge_mer.config import LandmarksCfg, RuntimeCfg
from edge_mer.modality import Modality
from edge_mer.stream.fusion import Fusion, Prediction, Smoother, make_event
from edge_mer.stream.stages import WindowFeatures, normalise_landmarks, uniform_indices
from edge_mer.stream.windower import Window

A, T = Modality.AUDIO, Modality.TEXT


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("b") / "bundle"
    # heads for audio alone, text alone and audio+text; none for face
    return Bundle.load(make_bundle(root, ["face", "audio", "text"], [["audio"], ["text"], ["audio", "text"]]))


def feats(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(1, DIM)).astype(np.float32)


def test_exact_subset_head_is_used(bundle):
    fusion = Fusion(bundle, RuntimeCfg(threads=1))
    pred = fusion.predict({A: feats(0), T: feats(1)})
    assert pred.modalities == ("audio", "text")
    assert pred.probs.shape == (len(LABELS),) and pred.probs.sum() == pytest.approx(1.0)
    assert set(pred.per_modality) == {"audio", "text"}
    # the joint head reads [audio, text] concatenated in Modality order
    x = np.concatenate([feats(0), feats(1)], axis=1)
    direct = fusion._head("audio+text").run({"features": x})["probs"][0]
    np.testing.assert_allclose(pred.probs, direct / direct.sum(), atol=1e-6)
    alone = fusion.predict({A: feats(0)})
    np.testing.assert_allclose(alone.probs, pred.per_modality["audio"], atol=1e-7)


def test_subset_without_a_head_averages_log_probabilities(bundle):
    # face has no head at all and face+audio has none: audio's own head is all that is usable
    fusion = Fusion(bundle, RuntimeCfg(threads=1))
    pred = fusion.predict({Modality.FACE: feats(2), A: feats(0)})
    assert pred.modalities == ("audio",)
    np.testing.assert_allclose(pred.probs, pred.per_modality["audio"], atol=1e-7)


def test_geometric_mean_fallback(tmp_path):
    b = Bundle.load(make_bundle(tmp_path / "b", ["audio", "text"], [["audio"], ["text"]]))
    pred = Fusion(b, RuntimeCfg(threads=1)).predict({A: feats(0), T: feats(1)})
    pa, pt = pred.per_modality["audio"], pred.per_modality["text"]
    expected = np.sqrt(np.maximum(pa, 1e-8) * np.maximum(pt, 1e-8))
    np.testing.assert_allclose(pred.probs, expected / expected.sum(), rtol=1e-6)
    assert pred.modalities == ("audio", "text")


def test_nothing_usable_gives_no_probabilities(bundle):
    fusion = Fusion(bundle, RuntimeCfg(threads=1))
    assert fusion.predict({}).probs is None
    none = fusion.predict({Modality.FACE: feats(3)})
    assert none.probs is None and none.modalities == ()


def test_smoother_time_constant():
    p0, p1 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    s = Smoother(tau_s=1.0)
    np.testing.assert_allclose(s.update(0.0, p0), p0)
    out = s.update(0.5, p1)
    alpha = 1 - np.exp(-0.5)
    np.testing.assert_allclose(out, [1 - alpha, alpha])
    off = Smoother(tau_s=0.0)
    off.update(0.0, p0)
    np.testing.assert_allclose(off.update(0.5, p1), p1)
    with pytest.raises(ValueError):
        Smoother(-1.0)


def test_event_schema_and_text_only_on_request():
    window = Window(3, 1.5, 3.5)
    wf = WindowFeatures(absent={"text": "no words"}, faces=1, text="secret words",
                        reliability={Modality.AUDIO: 0.875, Modality.FACE: 0.5},  # face present, not fused
                        reliability_parts={Modality.FACE: {"coverage": 1.0, "frontal": 0.5}})
    pred = Prediction(np.array([0.25, 0.75]), ("audio",), {"audio": np.array([0.25, 0.75])})
    event = make_event(window, wf, pred, np.array([0.2, 0.8]), ["calm", "happy"], emit_text=False)
    assert event == {
        "window": 3, "t_start": 1.5, "t_end": 3.5, "label": "happy", "probs": {"calm": 0.2, "happy": 0.8},
        "probs_raw": {"calm": 0.25, "happy": 0.75}, "modalities": ["audio"], "per_modality": {"audio": {"calm": 0.25, "happy": 0.75}},
        "absent": {"text": "no words"}, "reliability": {"audio": 0.875}, "reliability_parts": {}, "faces": 1,
        "latency_ms": None,
    }
    fused = make_event(window, wf, Prediction(np.array([0.5, 0.5]), ("face", "audio"), {}), None, ["calm", "happy"], emit_text=False)
    assert fused["reliability_parts"] == {"face": {"coverage": 1.0, "frontal": 0.5}}
    assert make_event(window, wf, pred, np.array([0.2, 0.8]), ["calm", "happy"], emit_text=True)["text"] == "secret words"
    empty = make_event(window, wf, Prediction(None, ()), None, ["calm", "happy"], emit_text=False)
    assert empty["label"] is None and empty["probs"] == {} and empty["probs_raw"] == {} and empty["modalities"] == []
    wf.features = {Modality.AUDIO: np.array([[0.5, -1.0]], np.float32)}
    with_features = make_event(window, wf, pred, np.array([0.2, 0.8]), ["calm", "happy"], emit_text=False, emit_features=True)
    assert with_features["features"] == {"audio": [0.5, -1.0]}
    assert "features" not in event


def test_smoother_restarts_after_a_gap():
    sm = Smoother(tau_s=10.0)
    sm.update(0.0, np.array([1.0, 0.0]))
    sm.reset()  # a window without prediction (no speech) came between
    np.testing.assert_allclose(sm.update(0.5, np.array([0.0, 1.0])), [0.0, 1.0])


def test_landmark_normalisation_drops_the_jaw_and_scales_per_window():
    rng = np.random.default_rng(0)
    pts = rng.uniform(100, 300, size=(30, 68, 2)).astype(np.float32)
    out = normalise_landmarks(pts, LandmarksCfg())
    assert out.shape == (30, 51, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out.min(axis=(0, 1)), 0.0, atol=1e-6)
    np.testing.assert_allclose(out.max(axis=(0, 1)), 1.0, atol=1e-6)
    lo, hi = pts[:, 17:].min(axis=(0, 1)), pts[:, 17:].max(axis=(0, 1))
    np.testing.assert_allclose(out, (pts[:, 17:] - lo) / (hi - lo), atol=1e-5)
    per_frame = normalise_landmarks(pts, LandmarksCfg(normalise="minmax_frame"))
    np.testing.assert_allclose(per_frame.min(axis=1), 0.0, atol=1e-6)


def test_uniform_indices():
    assert uniform_indices(10, 5).tolist() == [0, 2, 4, 7, 9]
    assert uniform_indices(2, 4).tolist() == [0, 0, 1, 1]
    assert uniform_indices(0, 3).size == 0


def test_reliability_weighs_each_modality_in_the_combination(tmp_path):
    # Per-modality heads combined: a modality's log-probabilities count by its reliability, and
    # the bundle's fusion.weights scale it further.
    import json

    from run_fixtures import make_bundle

    from edge_mer.bundle import Bundle, write_manifest
    from edge_mer.config import RuntimeCfg
    from edge_mer.modality import Modality
    from edge_mer.stream.fusion import Fusion

    root = make_bundle(tmp_path / "b", ["audio", "text"], [["audio"], ["text"]])
    fusion = Fusion.from_bundle(Bundle.load(root), RuntimeCfg(threads=1))
    rng = np.random.default_rng(3)
    feats = {m: rng.normal(size=(1, int(Bundle.load(root).encoder(m)["feature_dim"]))).astype(np.float32)
             for m in (Modality.AUDIO, Modality.TEXT)}
    equal = fusion.predict(feats)
    only_audio = fusion.predict(feats, {Modality.AUDIO: 1.0, Modality.TEXT: 0.0})
    np.testing.assert_allclose(only_audio.probs, equal.per_modality["audio"], atol=1e-9)
    half = fusion.predict(feats, {Modality.AUDIO: 1.0, Modality.TEXT: 0.5})
    la, lt = (np.log(np.maximum(equal.per_modality[m], 1e-8)) for m in ("audio", "text"))
    expected = np.exp((la + 0.5 * lt) / 1.5)
    np.testing.assert_allclose(half.probs, expected / expected.sum(), atol=1e-9)
    # bundle weights: text weighted 3 against audio 1
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["fusion"] = {"weights": {"text": 3.0}}
    write_manifest(root, manifest)
    weighted = Fusion.from_bundle(Bundle.load(root), RuntimeCfg(threads=1)).predict(feats)
    expected = np.exp((la + 3 * lt) / 4)
    np.testing.assert_allclose(weighted.probs, expected / expected.sum(), atol=1e-9)


def test_a_fitted_reliability_curve_sets_the_weight(tmp_path):
    # fusion.reliability_weight.audio = {intercept, slope}: the audio's reliability r counts as
    # max(0, a + b r) (here 0.7 + 0.6 r), the text's as r; a malformed curve is one line.
    import json

    from edge_mer.bundle import write_manifest
    from edge_mer.errors import BundleError

    root = make_bundle(tmp_path / "b", ["audio", "text"], [["audio"], ["text"]])
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["fusion"] = {"reliability_weight": {"audio": {"intercept": 0.7, "slope": 0.6, "of": "speech fraction"}}}
    write_manifest(root, manifest)
    fusion = Fusion.from_bundle(Bundle.load(root), RuntimeCfg(threads=1))
    rng = np.random.default_rng(4)
    x = {m: rng.normal(size=(1, DIM)).astype(np.float32) for m in (A, T)}
    pred = fusion.predict(x, {A: 0.5, T: 0.8})
    la, lt = (np.log(np.maximum(pred.per_modality[m], 1e-8)) for m in ("audio", "text"))
    wa, wt = 0.7 + 0.6 * 0.5, 0.8
    expected = np.exp((wa * la + wt * lt) / (wa + wt))
    np.testing.assert_allclose(pred.probs, expected / expected.sum(), atol=1e-9)
    assert fusion.weight(A, {A: 1.0}) == pytest.approx(1.3) and fusion.weight(A, {A: 2.0}) == pytest.approx(1.3)
    manifest["fusion"]["reliability_weight"]["audio"] = {"intercept": "high"}
    write_manifest(root, manifest)
    with pytest.raises(BundleError, match=r"fusion\.reliability_weight\.audio: expected"):
        Fusion.from_bundle(Bundle.load(root), RuntimeCfg(threads=1))


def test_fit_reliability_weight_recovers_how_much_a_head_should_count():
    # Logits whose right sharpness grows with the fraction f: the true weight is 0.5 + f, so the fit
    # finds intercept ~0.5 and slope ~1; a head as sure as it should be everywhere gets ~1 and ~0.
    from export.audio_bundle import fit_reliability_weight

    rng = np.random.default_rng(0)
    n, k = 20000, 8
    f = rng.uniform(0.2, 1.0, n)
    base = rng.normal(size=(n, k)) * 2.0

    def sample(weight):
        p = np.exp(weight[:, None] * base)
        p /= p.sum(axis=1, keepdims=True)
        return np.array([rng.choice(k, p=row) for row in p])

    fit = fit_reliability_weight(base, sample(0.5 + f), f)
    assert fit["intercept"] == pytest.approx(0.5, abs=0.1) and fit["slope"] == pytest.approx(1.0, abs=0.15)
    assert fit["nll"]["fitted"] <= min(fit["nll"]["constant 1"], fit["nll"]["w = fraction"])
    flat = fit_reliability_weight(base, sample(np.ones(n)), f)
    assert flat["intercept"] == pytest.approx(1.0, abs=0.1) and flat["slope"] == pytest.approx(0.0, abs=0.15)
