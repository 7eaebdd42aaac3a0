"""Probes: the numpy linear probe, metrics, few-shot draws, the confusion image."""

from __future__ import annotations

import numpy as np
import pytest

from training.eval.probe import (LinearProbe, classification_metrics, few_shot, fit_linear_probe, fit_mlp_probe,
                            save_confusion_png)


def _blobs(n_per_class: int, classes: list[str], dim: int = 6, seed: int = 0, spread: float = 0.6):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(len(classes), dim))
    x = np.concatenate([c + rng.normal(0, spread, size=(n_per_class, dim)) for c in centres])
    y = np.repeat(np.array(classes), n_per_class)
    return x, y


def test_linear_probe_is_plain_numpy_and_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    classes = ["angry", "calm", "happy"]
    x, y = _blobs(30, classes)
    x = x * 50 + 7  # unscaled features: the probe's own standardisation handles them
    probe = fit_linear_probe(x, y, c=1.0)
    assert probe.weight.shape == (6, 3) and probe.bias.shape == (3,) and list(probe.classes) == classes
    p = probe.predict_proba(x)
    assert np.allclose(p.sum(axis=1), 1.0)
    xs = (x - x.mean(0)) / x.std(0)
    ref = LogisticRegression(C=1.0, max_iter=1000, class_weight="balanced").fit(xs, y)
    assert np.allclose(p, ref.predict_proba(xs), atol=1e-6)
    assert (probe.predict(x) == y).mean() > 0.95


def test_binary_probe_has_one_column_per_class():
    x, y = _blobs(20, ["negative", "positive"], seed=1, spread=2.0)
    probe = fit_linear_probe(x, y, c=0.5)
    assert probe.weight.shape == (6, 2)
    from sklearn.linear_model import LogisticRegression

    xs = (x - x.mean(0)) / x.std(0)
    ref = LogisticRegression(C=0.5, max_iter=1000, class_weight="balanced").fit(xs, y)
    assert np.allclose(probe.predict_proba(x), ref.predict_proba(xs), atol=1e-6)


def test_probe_save_load_round_trip(tmp_path):
    x, y = _blobs(10, ["a", "b", "c"])
    probe = fit_linear_probe(x, y, c=1.0)
    probe.save(tmp_path / "probe.npz")
    back = LinearProbe.load(tmp_path / "probe.npz")
    with np.load(tmp_path / "probe.npz") as z:
        assert set(z.files) == {"mean", "scale", "weight", "bias", "classes"}
    assert np.allclose(back.predict_proba(x), probe.predict_proba(x), atol=1e-5)
    assert list(back.classes) == ["a", "b", "c"]
    assert not list(tmp_path.glob(".*tmp")), "atomic write leaves no temporary file"


def test_c_is_chosen_on_training_speakers_only():
    x, y = _blobs(24, ["a", "b"], seed=2, spread=3.0)
    groups = np.tile(np.arange(6), 8)
    probe = fit_linear_probe(x, y, groups=groups, cs=(0.001, 1.0))
    assert probe.weight.shape == (6, 2)


def test_metrics_hand_computed():
    classes = ["a", "b", "c"]
    y_true = np.array(["a", "a", "a", "a", "b", "b", "c", "c"])
    y_pred = np.array(["a", "a", "a", "b", "b", "c", "c", "c"])
    m = classification_metrics(y_true, y_pred, classes)
    assert m["wa"] == pytest.approx(100 * 6 / 8)
    assert m["ua"] == pytest.approx(100 * (3 / 4 + 1 / 2 + 1) / 3)
    assert m["per_class_recall"] == pytest.approx({"a": 75.0, "b": 50.0, "c": 100.0})
    assert m["confusion"] == [[3, 1, 0], [0, 1, 1], [0, 0, 2]]
    # weighted F1: F1 per class (a 6/7, b 1/2, c 4/5) weighted by support (4, 2, 2)
    assert m["f1_weighted"] == pytest.approx(100 * (4 * 6 / 7 + 2 * 0.5 + 2 * 0.8) / 8)


def test_few_shot_uses_k_clips_per_class():
    classes = ["a", "b", "c"]
    x, y = _blobs(25, classes, seed=3)
    xt, yt = _blobs(10, classes, seed=3)
    sizes = []

    def fit(xs, ys):
        sizes.append(sorted(np.unique(ys, return_counts=True)[1].tolist()))
        return fit_linear_probe(xs, ys, c=1.0)

    out = few_shot(x, y, xt, yt, classes, ks=(1, 5), draws=2, fit=fit)
    assert sizes == [[1, 1, 1]] * 2 + [[5, 5, 5]] * 2
    assert set(out) == {"1", "5"} and len(out["5"]["draws"]) == 2
    assert out["5"]["ua_mean"] >= 90


def test_mlp_probe_learns_separable_classes():
    x, y = _blobs(30, ["a", "b", "c"], seed=4)
    probe = fit_mlp_probe(x, y, hidden=16, epochs=60)
    assert (probe.predict(x) == y).mean() > 0.95
    assert np.allclose(probe.predict_proba(x).sum(axis=1), 1.0, atol=1e-5)


def test_confusion_png(tmp_path):
    save_confusion_png([[3, 1], [0, 2]], ["a", "b"], tmp_path / "cm.png", "test")
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_probe_cli_refuses_overlapping_actors_and_missing_checkpoint(tmp_path, capsys):
    from training.eval.probe import main

    rc = main(["--checkpoint", str(tmp_path), "--cache", str(tmp_path), "--train-actors", "1-5", "--test-actors", "5-8"])
    assert rc == 2
    assert "actors [5] are in both the training and the test set" in capsys.readouterr().err
    rc = main(["--checkpoint", str(tmp_path / "none"), "--cache", str(tmp_path), "--test-actors", "", "--train-actors", "1-4"])
    err = capsys.readouterr().err
    assert rc != 0 and "not a checkpoint" in err and err.count("\n") == 1


def test_per_speaker_standardisation_uses_each_speakers_own_clips():
    from training.eval.probe import standardise_per_group

    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(5.0, 2.0, (6, 3)), rng.normal(-3.0, 0.5, (4, 3))])
    groups = np.array(["a"] * 6 + ["b"] * 4)
    out = standardise_per_group(x, groups)
    for g in ("a", "b"):
        np.testing.assert_allclose(out[groups == g].mean(axis=0), 0.0, atol=1e-12)
        np.testing.assert_allclose(out[groups == g].std(axis=0), 1.0, atol=1e-12)
    # a speaker's result does not depend on the other speakers' clips
    np.testing.assert_allclose(standardise_per_group(x[groups == "b"], groups[groups == "b"]), out[groups == "b"])
    with pytest.raises(ValueError, match="group ids"):
        standardise_per_group(x, groups[:-1])


def test_speaker_prior_and_a_probe_that_carries_it(tmp_path):
    from export.heads import LinearProbe as HeadProbe
    from training.eval.probe import speaker_prior

    x = np.array([[0.0, 1.0], [2.0, 1.0], [10.0, 5.0], [14.0, 5.0]])
    groups = np.array(["a", "a", "b", "b"])
    mean, std = speaker_prior(x, groups)
    # speaker means (1, 1) and (12, 5): between-speaker variance (30.25, 4); within (1, 0) and (4, 0)
    np.testing.assert_allclose(mean, [6.5, 3.0])
    np.testing.assert_allclose(std, [np.sqrt(2.5 + 30.25), 2.0])
    np.testing.assert_allclose(speaker_prior(np.ones((4, 2)), groups)[1], 1.0)  # constant: std 1, never 0
    xb, y = _blobs(10, ["a", "b", "c"])
    probe = fit_linear_probe(xb, y, c=1.0)
    probe.user_mean, probe.user_std = np.arange(6.0), np.full(6, 2.0)
    probe.save(tmp_path / "p.npz")
    back = LinearProbe.load(tmp_path / "p.npz")
    np.testing.assert_allclose(back.user_mean, np.arange(6.0))
    head = HeadProbe.from_npz(tmp_path / "p.npz")  # what export reads: the prior travels to the bundle
    np.testing.assert_allclose(head.user_std, 2.0)
    with pytest.raises(ValueError, match="user_mean"):
        HeadProbe(head.mean, head.scale, head.weight, head.bias, head.classes, user_mean=np.zeros(5), user_std=np.ones(5))
