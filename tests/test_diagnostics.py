"""Collapse diagnostics (training.eval.diagnostics): the metrics on arrays with known answers, and
the CLI end to end on a tiny protocol run made by the project's own trainer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from training.eval.diagnostics import (alignment, batch_top1, effective_rank, pair_diagnostics, partner_top1, uniformity,
                                       unit_rows)


# --------------------------------------------------------------------------- metrics


def test_alignment_zero_for_identical_and_four_for_opposite_embeddings():
    rng = np.random.default_rng(0)
    z = unit_rows(rng.normal(size=(20, 8)))
    assert alignment(z, z) == pytest.approx(0.0, abs=1e-12)
    assert alignment(z, 3.0 * z) == pytest.approx(0.0, abs=1e-12)  # rows are normalised first
    assert alignment(z, -z) == pytest.approx(4.0)
    # Orthogonal partners: squared distance 2.
    assert alignment(np.eye(4)[:2], np.eye(4)[2:]) == pytest.approx(2.0)


def test_uniformity_zero_for_one_point_and_minus_four_when_spread_on_a_high_dim_sphere():
    one_point = np.tile([[0.0, 1.0, 0.0]], (10, 1))
    assert uniformity(one_point) == pytest.approx(0.0, abs=1e-12)
    assert uniformity(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-8.0)
    # Random directions in 512-d are nearly orthogonal: squared distances ~2, so ~ -2 * 2.
    spread = np.random.default_rng(1).normal(size=(300, 512))
    assert uniformity(spread) == pytest.approx(-4.0, abs=0.1)
    # A cluster is less uniform than the spread points.
    cluster = spread * 0.05 + np.ones(512)
    assert uniformity(cluster) > -0.1


def test_effective_rank_one_for_a_line_and_d_for_an_orthonormal_spread():
    line = np.outer(np.linspace(-2, 3, 50), np.random.default_rng(2).normal(size=16))
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-6)
    d = 6
    cross = np.concatenate([np.eye(d), -np.eye(d)])  # +-e_i: centred already, equal singular values
    assert effective_rank(cross) == pytest.approx(d, abs=1e-9)
    # Isotropic Gaussian rows: close to the dimension; a rank-3 subspace: at most 3.
    rng = np.random.default_rng(3)
    assert effective_rank(rng.normal(size=(4000, 10))) > 9.5
    low = rng.normal(size=(500, 3)) @ rng.normal(size=(3, 32))
    assert 1.0 < effective_rank(low) <= 3.0 + 1e-9
    # All rows equal: nothing left after centring.
    assert effective_rank(np.ones((5, 4))) == 0.0
    # Centring: a constant offset does not add a direction.
    assert effective_rank(line + 100.0) == pytest.approx(1.0, abs=1e-6)


def test_partner_retrieval_perfect_wrong_and_within_groups():
    z = np.eye(8)
    assert partner_top1(z, z) == (100.0, 12.5)
    # Every partner moved one row down: never the right one.
    assert partner_top1(z, np.roll(z, 1, axis=0))[0] == 0.0
    # Two speakers whose clips look the same across speakers: told apart within a speaker, not
    # across all clips (rows 2 and 3 find rows 0 and 1 first, an equally near wrong partner).
    za = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert partner_top1(za, za, ["s1", "s1", "s2", "s2"]) == (100.0, 50.0)
    assert partner_top1(za, za) == (50.0, 25.0)
    # A group of one row has no candidate to get wrong: left out.
    top, chance = partner_top1(np.eye(3), np.eye(3), [0, 0, 1])
    assert (top, chance) == (100.0, 50.0)
    # Random embeddings: near chance within groups of 10.
    rng = np.random.default_rng(4)
    top, chance = partner_top1(rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16)), np.arange(2000) // 10)
    assert chance == pytest.approx(10.0) and abs(top - chance) < 3.0


def test_batch_retrieval_and_pair_diagnostics():
    rng = np.random.default_rng(5)
    z = unit_rows(rng.normal(size=(64, 32)))
    assert batch_top1(z, z, 16) == (100.0, 6.25)
    noise = unit_rows(rng.normal(size=(64, 32)))
    assert batch_top1(z, noise, 16)[0] < 50.0
    d = pair_diagnostics(z, z, np.repeat(np.arange(4), 16), 8)
    assert d["alignment"] == pytest.approx(0.0, abs=1e-12)
    assert d["top1_within_speaker"] == d["top1_all"] == d["top1_batch"] == 100.0
    assert d["chance_within_speaker"] == pytest.approx(100 / 16) and d["chance_all"] == pytest.approx(100 / 64)


# --------------------------------------------------------------------------- end to end

ACTORS = range(1, 9)
CLIPS = [(e, s, r) for e in (1, 3, 5, 7) for s in (1, 2) for r in (1,)]
TINY = ["encoder.options=['audio_tcn.stride=4','audio_tcn.bottleneck=16','audio_tcn.hidden=32','audio_tcn.blocks=2',"
        "'audio_tcn.repeats=1','mlp.hidden=16']",
        "encoder.feature_dim=16", "encoder.proj_hidden=16", "encoder.proj_dim=8",
        "train.epochs=1", "train.batch_size=8", "train.warmup_steps=1", "train.crop_s=1.0"]


def _ravdess_like(root: Path) -> tuple[Path, Path]:
    """A cache in the real format (log-mels, speakers, labels kept apart) of 8 actors x 8 clips and
    an action-unit CSV whose AUs carry an actor offset (so raw and per-speaker inputs differ)."""
    from edge_mer.config import AudioCfg
    from training.cache import MANIFEST, label_path, merge, write_clip, write_json
    from training.data.ravdess import AU_COLUMNS, EMOTIONS

    cache = root / "cache"
    write_json(cache / MANIFEST, {"format": 1, "settings": {"audio": dataclasses.asdict(AudioCfg())}, "streams": ["audio"],
                                  "datasets": ["ravdess"], "counts": {}})
    rng = np.random.default_rng(0)
    rows = []
    for a in ACTORS:
        for e, s, r in CLIPS:
            name = f"03-01-{e:02d}-01-{s:02d}-{r:02d}-{a:02d}"
            mel = rng.normal(size=(128, 150)).astype(np.float32) + 0.3 * a
            mel[10 * e:10 * e + 10] += 1.0
            write_clip(cache, f"ravdess/{name}", {"logmel": mel, "duration_s": np.array(1.5)},
                       {"id": f"ravdess/{name}", "dataset": "ravdess", "speaker": f"ravdess_actor{a:02d}", "media": {},
                        "streams": ["audio"], "text_source": None})
            write_json(label_path(cache, f"ravdess/{name}"), {"id": f"ravdess/{name}", "label": EMOTIONS[e - 1]})
            aus = rng.normal(0, 1.0, len(AU_COLUMNS)) + 0.5 * a
            aus[e] += 2.0
            rows.append(f"01-01-{e:02d}-01-{s:02d}-{r:02d}-{a:02d}," + ",".join(f"{v:.5f}" for v in aus))
    merge(cache)
    au_csv = root / "au.csv"
    au_csv.write_text("clip," + ",".join(AU_COLUMNS) + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return cache, au_csv


@pytest.fixture(scope="module")
def tiny_protocol(tmp_path_factory):
    """Two folds (actors 01-04, 05-08) x seed 0 of the protocol's (c) pairwise run, made with the
    protocol's own functions on per-speaker standardised inputs (--speaker-norm)."""
    import torch

    from edge_mer.config import load_config
    from training.eval.protocol import (RavdessFold, fold_data, load_ravdess, make_folds, pretrain_checked, with_loss,
                                        with_train)

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("diag")
    cache, au_csv = _ravdess_like(root)
    store, ids, labels, classes = load_ravdess(str(cache), str(au_csv), speaker_norm=True, actors=list(ACTORS))
    cfg = with_loss(with_train(load_config(["configs/ravdess_protocol.toml"], TINY), seed=0, modalities=("audio", "au")),
                    pairs=("audio-au",))
    runs = root / "runs"
    for k, test in make_folds(list(ACTORS)).items():
        fold = RavdessFold(k, store, ids, labels, classes, test)
        pretrain_checked(cfg, fold_data(fold, 0), runs / f"fold{k}" / "seed0" / "c_pair")
    return cache, au_csv, runs


def test_cli_on_tiny_protocol_runs(tiny_protocol, tmp_path, capsys):
    from training import checkpoint as ckpt
    from training.eval.diagnostics import main

    cache, au_csv, runs = tiny_protocol
    out = tmp_path / "out"
    base = ["--runs", str(runs), "--cache", str(cache), "--au-csv", str(au_csv), "--actors", "1-8"]
    assert main(base + ["--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["runs"] == 2 and [(r["fold"], r["seed"]) for r in res["per_run"]] == [(1, 0), (2, 0)]
    for r, test in zip(res["per_run"], ([1, 2, 3, 4], [5, 6, 7, 8])):
        assert r["test_actors"] == test and not set(r["train_actors"]) & set(test)
        # Detected from the AU encoder's saved input statistics: the protocol's --speaker-norm inputs.
        assert r["inputs"].startswith("standardised per speaker") and r["input_stats_deviation"] < 1e-4
        # The embeddings are the ones the loss saw: the validation loss comes out as the trainer's.
        assert r["val_loss"]["recomputed"] == pytest.approx(ckpt.read_meta(r["run"])["val_loss"], abs=1e-5)
        for name, n in (("test", 4 * len(CLIPS)), ("train", 4 * len(CLIPS))):
            s = r["sets"][name]
            assert s["clips"] == n and s["speakers"] == 4
            for model in ("pairwise", "random_init"):
                p = s[model]["pairs"]["audio-au"]
                assert 0.0 <= p["alignment"] <= 4.0 and 0.0 <= p["top1_within_speaker"] <= 100.0
                assert p["chance_within_speaker"] == pytest.approx(100 / len(CLIPS))
                a = s[model]["streams"]["audio"]
                assert 1.0 <= a["effective_rank"] <= 8.0 and a["uniformity"] < 0.0
                assert s[model]["streams"]["au"]["input_dim"] == 35
        # The random init is not the trained model.
        assert r["sets"]["test"]["pairwise"]["pairs"]["audio-au"]["alignment"] != \
            r["sets"]["test"]["random_init"]["pairs"]["audio-au"]["alignment"]
    assert res["summary"]["test"]["pairwise"]["pairs"]["audio-au"]["alignment"]["n"] == 2
    md = (out / "results.md").read_text()
    assert "| diagnostic | pairwise, test actors | random init, test actors |" in md
    assert "| 2 (05,06,07,08) | 0 |" in md and "equals the checkpoint's (within 1e-3) on 2 of 2 runs" in md
    capsys.readouterr()

    # Forced onto the raw inputs, the check catches it: the validation loss is no longer the trainer's.
    assert main(base + ["--out", str(tmp_path / "raw"), "--inputs", "raw"]) == 0
    raw = json.loads((tmp_path / "raw" / "results.json").read_text())
    assert all(abs(r["val_loss"]["recomputed"] - r["val_loss"]["checkpoint"]) > 1e-4 for r in raw["per_run"])
    capsys.readouterr()

    # A missing run directory: one line, exit 2, nothing written.
    missing = tmp_path / "nope"
    assert main(["--runs", str(missing), "--cache", str(cache), "--au-csv", str(au_csv), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--runs" in err and str(missing) in err
    assert not (tmp_path / "o2").exists()
    # A folder without runs of the condition, and a missing AU table: the same.
    assert main(base[:-2] + ["--out", str(tmp_path / "o3"), "--condition", "b_audio_ssl"]) == 2
    assert "b_audio_ssl" in capsys.readouterr().err
    assert main(["--runs", str(runs), "--cache", str(cache), "--au-csv", str(tmp_path / "no.csv"), "--out", str(tmp_path / "o4")]) == 2
    assert "--au-csv" in capsys.readouterr().err
