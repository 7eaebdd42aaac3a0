"""Per-user feature normalisation (edge_mer.stream.usernorm) and the heads that use it: the running
statistics against a direct computation, the prior, forgetting, reset, the fusion path through real
ONNX heads, and the bundle checks of the prior file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from run_fixtures import DIM, make_bundle

from edge_mer.bundle import Bundle
from edge_mer.config import RuntimeCfg
from edge_mer.errors import BundleError, EdgeMerError
from edge_mer.modality import Modality
from edge_mer.stream.fusion import Fusion
from edge_mer.stream.usernorm import RunningNorm

A, T = Modality.AUDIO, Modality.TEXT


def reference_stats(prior_mean, prior_var, k0, memory, rows):
    """The running statistics written out as weights: the prior as k0 pseudo-rows, then each row
    with weight 1/k (k capped at memory), the earlier weights shrunk by (1 - 1/k) each time."""
    mean, var, k = np.array(prior_mean, float), np.array(prior_var, float), k0
    for x in rows:
        k = min(k + 1, memory)
        w = 1.0 / k
        new_mean = (1 - w) * mean + w * x
        # weighted second moment about the new mean
        var = (1 - w) * (var + (mean - new_mean) ** 2) + w * (x - new_mean) ** 2
        mean = new_mean
    return mean, var


def test_running_statistics_match_the_weighted_definition():
    rng = np.random.default_rng(0)
    prior_mean, prior_std = rng.normal(size=5), rng.uniform(0.5, 2.0, size=5)
    rows = rng.normal(loc=3.0, scale=0.5, size=(40, 5))
    norm = RunningNorm(prior_mean, prior_std, prior_windows=10, memory_windows=25)
    for x in rows:
        out = norm(x[None])
    mean, var = reference_stats(prior_mean, prior_std**2, 10, 25, rows)
    np.testing.assert_allclose(norm.mean, mean, rtol=1e-10)
    np.testing.assert_allclose(norm.var, var, rtol=1e-10)
    np.testing.assert_allclose(out[0], (rows[-1] - mean) / np.sqrt(var + 1e-6), rtol=1e-5)
    assert norm.windows == 25  # capped at the memory


def test_the_person_replaces_the_prior_and_a_reset_restores_it():
    prior_mean, prior_std = np.zeros(3), np.ones(3)
    norm = RunningNorm(prior_mean, prior_std, prior_windows=20, memory_windows=200)
    rng = np.random.default_rng(1)
    person = rng.normal(loc=[1.5, -2.0, 0.0], scale=[0.5, 3.0, 1.0], size=(600, 3))
    for x in person:
        norm(x[None])
    # the prior's weight has decayed to about 1 %: the statistics are the person's
    np.testing.assert_allclose(norm.mean, [1.5, -2.0, 0.0], atol=0.3)
    np.testing.assert_allclose(np.sqrt(norm.var), [0.5, 3.0, 1.0], rtol=0.15)
    # this person's typical window now reads as ordinary, not as 1.5 population stds off
    assert abs(float(norm.apply(np.array([[1.5, -2.0, 0.0]]))[0, 0])) < 0.5
    norm.reset()
    np.testing.assert_array_equal(norm.mean, prior_mean)
    assert norm.windows == 20


def test_starting_from_a_known_person_is_where_their_windows_would_have_led():
    """A user bundle's statistics (edge-mer adapt): starting from them equals having run the
    person's windows through the running statistics, and a reset returns to them, not to the
    population's."""
    rng = np.random.default_rng(2)
    prior_mean, prior_std = rng.normal(size=4), rng.uniform(0.5, 2.0, size=4)
    person = rng.normal(loc=2.0, scale=0.7, size=(60, 4))
    streamed = RunningNorm(prior_mean, prior_std, prior_windows=20, memory_windows=1200)
    for x in person:
        streamed.update(x[None])
    known = RunningNorm(prior_mean, prior_std, prior_windows=20, memory_windows=1200)
    known.start_from(person.mean(axis=0), person.std(axis=0), len(person))
    np.testing.assert_allclose(known.mean, streamed.mean, rtol=1e-10)
    np.testing.assert_allclose(known.var, streamed.var, rtol=1e-10)
    assert known.windows == streamed.windows == 80
    known.update(rng.normal(size=(1, 4)) * 9)
    known.reset()
    np.testing.assert_allclose(known.mean, streamed.mean, rtol=1e-10)
    # the population statistics stay what apply_prior reads
    np.testing.assert_allclose(known.apply_prior(prior_mean[None]), 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="person's statistics"):
        known.start_from(np.zeros(3), np.ones(3), 5)


def test_without_adaptation_the_population_statistics_stay():
    norm = RunningNorm(np.full(2, 1.0), np.full(2, 2.0), prior_windows=5, memory_windows=50, adapt=False)
    for _ in range(10):
        out = norm(np.array([[9.0, -9.0]]))
    np.testing.assert_allclose(out, [[4.0, -5.0]], rtol=1e-5)
    assert norm.windows == 5


def test_non_finite_windows_do_not_poison_the_statistics():
    norm = RunningNorm(np.zeros(2), np.ones(2), prior_windows=5, memory_windows=50)
    norm.update(np.array([[np.nan, 1.0]]))
    norm.update(np.array([[np.inf, 1.0]]))
    assert norm.windows == 5 and np.all(np.isfinite(norm.mean)) and np.all(np.isfinite(norm.var))


@pytest.mark.parametrize("kwargs, message", [
    ({"prior_windows": 0}, "user_norm_prior_windows"),
    ({"prior_windows": 10, "memory_windows": 5}, "user_norm_memory_windows"),
])
def test_bad_settings_are_named(kwargs, message):
    args = {"prior_windows": 10, "memory_windows": 100, **kwargs}
    with pytest.raises(EdgeMerError, match=message):
        RunningNorm(np.zeros(2), np.ones(2), **args)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    rng = np.random.default_rng(7)
    prior = (rng.normal(size=DIM), rng.uniform(0.5, 1.5, size=DIM))
    root = make_bundle(tmp_path_factory.mktemp("u") / "bundle", ["audio", "text"], [["audio"], ["text"]],
                       user_norm={"audio": prior})
    return Bundle.load(root), prior


def test_fusion_feeds_the_head_per_user_standardised_features(bundle):
    b, (mean, std) = bundle
    fusion = Fusion.from_bundle(b, RuntimeCfg(threads=1, user_norm_prior_windows=4, user_norm_memory_windows=100))
    rng = np.random.default_rng(3)
    rows = rng.normal(loc=2.0, size=(6, DIM)).astype(np.float32)
    for x in rows:
        pred = fusion.predict({A: x[None], T: rows[0][None]})
    ref_mean, ref_var = reference_stats(mean, std.astype(np.float32).astype(float) ** 2, 4, 100, rows.astype(float))
    standardised = ((rows[-1] - ref_mean) / np.sqrt(ref_var + 1e-6)).astype(np.float32)[None]
    direct = fusion._head("audio").run({"features": standardised})["probs"][0]
    np.testing.assert_allclose(pred.per_modality["audio"], direct / direct.sum(), atol=1e-5)
    # text has no per-user normalisation: its head reads the features as they are
    raw = fusion._head("text").run({"features": rows[0][None]})["probs"][0]
    np.testing.assert_allclose(pred.per_modality["text"], raw / raw.sum(), atol=1e-6)
    assert fusion.user_windows() == {"audio": 10}
    fusion.reset_user()
    assert fusion.user_windows() == {"audio": 4}


def test_user_norm_off_keeps_the_population_prior(bundle):
    b, (mean, std) = bundle
    fixed = Fusion.from_bundle(b, RuntimeCfg(threads=1, user_norm=False))
    x = np.random.default_rng(4).normal(size=(1, DIM)).astype(np.float32)
    for _ in range(3):
        pred = fixed.predict({A: x})
    standardised = ((x - mean) / np.sqrt(std.astype(np.float32).astype(float) ** 2 + 1e-6)).astype(np.float32)
    direct = fixed._head("audio").run({"features": standardised})["probs"][0]
    np.testing.assert_allclose(pred.probs, direct / direct.sum(), atol=1e-5)
    assert "per-user normalised input" in b.describe()


def _rewrite(root, edit):
    manifest = json.loads((root / "manifest.json").read_text())
    edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_a_malformed_input_norm_entry_is_refused(tmp_path):
    root = make_bundle(tmp_path / "b", ["audio"], [["audio"]], user_norm={"audio": (np.zeros(DIM), np.ones(DIM))})
    _rewrite(root, lambda m: m["heads"]["audio"]["input_norm"].update(type="per_clip"))
    with pytest.raises(BundleError, match=r"heads\.audio\.input_norm"):
        Bundle.load(root)


def test_a_prior_of_the_wrong_size_stops_the_run_with_one_line(tmp_path):
    root = make_bundle(tmp_path / "b", ["audio"], [["audio"]], user_norm={"audio": (np.zeros(DIM + 1), np.ones(DIM + 1))})
    with pytest.raises(BundleError, match=rf"heads\.audio\.input_norm.*reads {DIM} features") as info:
        Fusion.from_bundle(Bundle.load(root), RuntimeCfg(threads=1))
    assert "\n" not in str(info.value)


def test_a_prior_with_zero_std_is_refused(tmp_path):
    root = make_bundle(tmp_path / "b", ["audio"], [["audio"]], user_norm={"audio": (np.zeros(DIM), np.zeros(DIM))})
    with pytest.raises(BundleError, match="positive std"):
        Fusion.from_bundle(Bundle.load(root), RuntimeCfg(threads=1))


def test_several_rows_of_one_window_count_as_one_window_with_their_spread():
    rng = np.random.default_rng(5)
    frames = rng.normal(loc=1.0, scale=2.0, size=(200, 4))
    norm = RunningNorm(np.zeros(4), np.ones(4), prior_windows=3, memory_windows=100)
    norm.update(frames)
    w = 1 / 4
    mean = w * frames.mean(axis=0)
    # mixture of the prior (weight 3/4) and the window's frames (1/4) about the new mean
    var = (1 - w) * (1.0 + mean**2) + w * ((frames - mean) ** 2).mean(axis=0)
    np.testing.assert_allclose(norm.mean, mean, rtol=1e-10)
    np.testing.assert_allclose(norm.var, var, rtol=1e-10)
    assert norm.windows == 4


def _speech_window(seed: int, gain: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(32000) / 16000.0
    return (gain * (np.sin(2 * np.pi * 180 * t) + 0.3 * rng.normal(size=t.size))).astype(np.float32)


def test_an_encoder_with_per_user_input_norm_reads_standardised_log_mels(tmp_path):
    from edge_mer.config import Config
    from edge_mer.features.logmel import log_mel
    from edge_mer.stream.stages import FeatureExtractor
    from edge_mer.stream.stats import Stats
    from edge_mer.stream.windower import Window

    n_mels = Config().audio.n_mels
    rng = np.random.default_rng(11)
    mean, std = rng.normal(-8.0, 1.0, n_mels), rng.uniform(1.0, 3.0, n_mels)
    root = make_bundle(tmp_path / "b", ["audio"], [["audio"]], input_norm={"audio": (mean, std)})
    bundle = Bundle.load(root)
    assert "per-user normalised input" in bundle.describe()
    cfg = Config(runtime=RuntimeCfg(threads=1, user_norm_prior_windows=3, user_norm_memory_windows=50))
    fx = FeatureExtractor.from_bundle(bundle, cfg, None, Stats(), has_video=False, has_audio=True)
    reference = RunningNorm(mean, std, 3, 50)
    for k, gain in enumerate((0.1, 0.3, 0.05)):
        audio = _speech_window(k, gain)
        out = fx(Window(index=k, t_start_s=0.5 * k, t_end_s=0.5 * k + 2.0, audio=audio, audio_coverage=1.0))
        mel = reference(log_mel(audio, bundle.feature_cfg("audio")).T).T
        expected = fx.stage(A).encoder.run({"logmel": mel[None]})["feature"]
        np.testing.assert_allclose(out.features[A], expected, rtol=1e-5, atol=1e-6)
    assert fx.stage(A).input_norm.windows == 6
    np.testing.assert_allclose(fx.stage(A).input_norm.mean, reference.mean, rtol=1e-6)


def test_an_input_prior_of_the_wrong_size_is_refused(tmp_path):
    from edge_mer.config import Config
    from edge_mer.stream.stages import FeatureExtractor
    from edge_mer.stream.stats import Stats

    root = make_bundle(tmp_path / "b", ["audio"], [["audio"]], input_norm={"audio": (np.zeros(7), np.ones(7))})
    with pytest.raises(BundleError, match=r"encoders\.audio\.input_norm.*reads 128 features"):
        FeatureExtractor.from_bundle(Bundle.load(root), Config(), None, Stats(), has_video=False, has_audio=True)


def _with_population_head(root):
    from run_fixtures import LABELS, _save, head_model

    from edge_mer.bundle import file_entry

    _save(head_model(DIM, len(LABELS), seed=999), root / "heads" / "audio.population.onnx")
    _rewrite(root, lambda m: m["heads"]["audio"].update(population=file_entry(root, "heads/audio.population.onnx",
                                                                              type="softmax_linear")))
    return Bundle.load(root)


def test_a_population_head_reads_a_new_person_and_hands_over_as_they_settle(tmp_path):
    rng = np.random.default_rng(11)
    mean, std = rng.normal(size=DIM), rng.uniform(0.5, 1.5, size=DIM)
    b = _with_population_head(make_bundle(tmp_path / "b", ["audio"], [["audio"]], user_norm={"audio": (mean, std)}))
    k, prior = 6, 4
    fusion = Fusion.from_bundle(b, RuntimeCfg(threads=1, user_norm_prior_windows=prior, user_norm_memory_windows=100,
                                              population_blend_windows=k))
    pop_head, user_head = fusion._population["audio"], fusion._head("audio")
    norm = RunningNorm(mean, std, prior, 100)
    for n, x in enumerate(rng.normal(loc=1.0, size=(5, DIM)).astype(np.float32), start=1):
        pred = fusion.predict({A: x[None]})
        x_user = norm(x[None])
        x_pop = ((x[None] - mean) / np.sqrt(std.astype(np.float32).astype(float) ** 2 + 1e-6)).astype(np.float32)
        p_user = user_head.run({"features": x_user})["probs"][0]
        p_pop = pop_head.run({"features": x_pop})["probs"][0]
        w = n / (n + k)  # the per-user head's weight after n windows of this person
        np.testing.assert_allclose(pred.probs, w * p_user / p_user.sum() + (1 - w) * p_pop / p_pop.sum(), atol=1e-5)
    # runtime.user_norm = false: the population head alone, whatever was seen
    fixed = Fusion.from_bundle(b, RuntimeCfg(threads=1, user_norm=False))
    x = rng.normal(size=(1, DIM)).astype(np.float32)
    x_pop = ((x - mean) / np.sqrt(std.astype(np.float32).astype(float) ** 2 + 1e-6)).astype(np.float32)
    p_pop = fixed._population["audio"].run({"features": x_pop})["probs"][0]
    np.testing.assert_allclose(fixed.predict({A: x}).probs, p_pop / p_pop.sum(), atol=1e-5)


def test_a_population_head_with_a_bad_checksum_is_refused(tmp_path):
    root = make_bundle(tmp_path / "b", ["audio"], [["audio"]], user_norm={"audio": (np.zeros(DIM), np.ones(DIM))})
    _with_population_head(root)
    (root / "heads" / "audio.population.onnx").write_bytes(b"not a model")
    with pytest.raises(BundleError, match="population"):
        Bundle.load(root)
