"""The evaluation protocols: speaker-independent folds, honest splits, summaries, MOSI reading."""

from __future__ import annotations

import numpy as np
import pytest

from training.eval.protocol import FOLDS, RavdessFold, markdown_table, summarise
from training.datasets import ClipStore, actor_of

from conftest import shared_data


def test_five_folds_of_four_consecutive_actors():
    assert list(FOLDS) == [1, 2, 3, 4, 5]
    assert [FOLDS[f] for f in FOLDS] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16], [17, 18, 19, 20]]


def _ids() -> list[str]:
    return [f"ravdess/03-01-{e:02d}-01-01-01-{a:02d}" for a in range(1, 21) for e in range(1, 9)]


def test_fold_never_trains_on_its_test_actors():
    ids = _ids()
    labels = {i: f"e{int(i.split('-')[2])}" for i in ids}
    for f in FOLDS:
        fold = RavdessFold(f, ClipStore(), ids, labels, sorted(set(labels.values())))
        train_actors = {actor_of(i) for i in fold.train_ids}
        test_actors = {actor_of(i) for i in fold.test_ids}
        assert test_actors == set(FOLDS[f])
        assert not train_actors & test_actors
        assert len(train_actors) == 16
        assert set(fold.groups) == train_actors


def test_summary_mean_std_and_markdown():
    classes = ["a", "b"]

    def m(ua):
        return {"ua": ua, "wa": ua + 1, "f1_weighted": ua - 1, "confusion": [[1, 0], [0, 1]], "per_class_recall": {"a": ua, "b": ua}}

    per_fold = [{"metrics": {"c_pair_audio": m(40.0)}, "few_shot": {"c_pair_audio": {"1": {"ua_mean": 20.0, "wa_mean": 21.0}}}},
                {"metrics": {"c_pair_audio": m(50.0)}, "few_shot": {"c_pair_audio": {"1": {"ua_mean": 30.0, "wa_mean": 31.0}}}}]
    s = summarise(per_fold, classes)
    e = s["conditions"]["c_pair_audio"]
    assert e["ua_mean"] == 45.0 and e["ua_std"] == 5.0 and e["wa_mean"] == 46.0
    assert e["confusion"] == [[2, 0], [0, 2]]
    assert s["few_shot"]["c_pair_audio"]["1"]["ua_mean"] == 25.0
    table = markdown_table(s, "t")
    assert "| (c) pairwise audio<->AU, probe on audio | 45.0 ± 5.0 | 46.0 ± 5.0 | 44.0 ± 5.0 | 2 |" in table
    assert "k=1" in table


def test_mosi_feature_triples_are_aligned():
    from training.datasets import load_mosi

    data = load_mosi(shared_data("cmu-mosi", "data"))
    tr, te = data["train"], data["test"]
    assert len(tr["ids"]) == 1447 and len(te["ids"]) == 752
    assert {k: v.shape[1] for k, v in tr["vectors"].items()} == {"mosi_text": 100, "mosi_audio": 73, "mosi_video": 100}
    assert set(np.unique(tr["labels"])) == {0, 1}
    # Speaker-independent: no video in both splits.
    assert not set(tr["video"]) & set(te["video"])
    assert len(set(tr["video"])) == 62 and len(set(te["video"])) == 31


@pytest.mark.slow
def test_mosi_protocol_end_to_end(tmp_path):
    from training.eval.protocol import main

    root = shared_data("cmu-mosi", "data")
    rc = main(["mosi", "--mosi", str(root), "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs"), "--seeds", "0",
               "--threads", "1", "--set", "train.epochs=1", "--set", "encoder.options=['mlp.hidden=16']",
               "--set", "train.modalities=['mosi_text','mosi_audio','mosi_video']", "--set", "train.batch_size=64"])
    assert rc == 0
    import json

    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {"random_init", "pairwise", "supervised", "floor_raw_features"} <= set(result["conditions"])
    # A real sentiment signal is in these features: every probe clears chance clearly.
    assert result["conditions"]["floor_raw_features"]["wa_mean"] > 60
    assert (tmp_path / "out" / "results.md").read_text().startswith("### CMU-MOSI")


# --------------------------------------------------------------------------- any actors, folds, seeds


def test_make_folds_any_actor_set():
    from edge_mer.errors import ConfigError
    from training.eval.protocol import make_folds

    assert make_folds(list(range(1, 21)), 4) == FOLDS
    assert make_folds(list(range(1, 21)), 5) == {1: [1, 2, 3, 4, 5], 2: [6, 7, 8, 9, 10], 3: [11, 12, 13, 14, 15],
                                                 4: [16, 17, 18, 19, 20]}
    assert make_folds([21, 22, 23, 24, 25, 26], fold_actors="21-22;23,24;25-26") == {1: [21, 22], 2: [23, 24], 3: [25, 26]}
    for bad in ("1-4;3-6", "1-4;30", "1-19"):
        with pytest.raises(ConfigError):
            make_folds(list(range(1, 21)), fold_actors=bad)


def test_cli_refuses_bad_fold_definitions(tmp_path, capsys):
    from training.eval.protocol import main

    rc = main(["ravdess", "--out", str(tmp_path), "--actors", "1-8", "--fold-actors", "1-4;4-6"])
    assert rc != 0 and "overlap" in capsys.readouterr().err
    rc = main(["ravdess", "--out", str(tmp_path), "--actors", "1-8", "--folds", "3"])
    assert rc != 0 and "no fold [3]" in capsys.readouterr().err
    rc = main(["ravdess", "--out", str(tmp_path), "--conditions", "release"])
    assert rc != 0 and "--release-config" in capsys.readouterr().err


TINY = ["encoder.options=['audio_tcn.stride=4','audio_tcn.bottleneck=16','audio_tcn.hidden=32','mlp.hidden=16']",
        "train.epochs=1", "train.batch_size=16", "train.warmup_steps=1", "train.crop_s=1.0"]


def _tiny_store(actors: list[int], clips_per_emotion: int = 2):
    """A generated RAVDESS-like set: 128-bin log-mels and 35 AUs with an emotion signal."""
    rng = np.random.default_rng(0)
    from training.data.ravdess import EMOTIONS

    store, labels = ClipStore(), {}
    store.vectors["au"] = {}
    for a in actors:
        for e in range(1, 9):
            for r in range(1, clips_per_emotion + 1):
                cid = f"ravdess/03-01-{e:02d}-01-01-{r:02d}-{a:02d}"
                mel = rng.normal(size=(128, 150)).astype(np.float32)
                mel[8 * e:8 * e + 8] += 1.5
                store.logmels[cid] = mel
                au = rng.normal(size=35).astype(np.float32)
                au[e] += 3.0
                store.vectors["au"][cid] = au
                labels[cid] = EMOTIONS[e - 1]
    return store, sorted(labels), labels, list(EMOTIONS)


def test_protocol_on_unseen_actor_set_with_folds_and_seeds(tmp_path):
    """Actors 21-26 (not the default 01-20), three folds of two, two seeds, the release row: every
    seeded condition runs per fold per seed, pretraining never sees a fold's test actors, floors run
    once per fold, the paired comparisons pair per (fold, seed), and a rerun resumes."""
    import json

    from edge_mer.config import load_config
    from edge_mer.errors import ConfigError
    from training import checkpoint as ckpt
    from training.eval.protocol import (fold_data, make_folds, parse_conditions, pretrain_checked, run_ravdess_loaded,
                                        with_loss, with_train)

    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    store, ids, labels, classes = _tiny_store([21, 22, 23, 24, 25, 26])
    folds = make_folds([21, 22, 23, 24, 25, 26], fold_actors="21-22;23-24;25-26")
    cfg = load_config(["configs/ravdess_protocol.toml"], TINY)
    # The release config with its own (tiny here) widths: hidden 48 against the protocol's 32.
    release = load_config(["configs/ravdess_audio_au.toml"],
                          TINY + ["encoder.options=['audio_tcn.stride=4','audio_tcn.bottleneck=24','audio_tcn.hidden=48','mlp.hidden=16']"])
    out, runs = tmp_path / "out", tmp_path / "runs"
    conditions = parse_conditions("floors,a_random,c_pair,release", release=True)
    result = run_ravdess_loaded(cfg, store, ids, labels, classes, {1: folds[1], 3: folds[3]}, out, runs, seeds=[0, 1],
                                conditions=conditions, release_cfg=release, command="test")
    records = json.loads((out / "per_run.json").read_text())
    assert [(r["fold"], r["seed"]) for r in records] == [(1, None), (1, 0), (1, 1), (3, None), (3, 0), (3, 1)]
    for r in records:
        assert not set(r["train_actors"]) & set(r["test_actors"])
        assert r["n_test"] == 2 * 16 and r["n_train"] == 4 * 16
    conds = result["conditions"]
    assert conds["floor_logmel_stats"]["folds"] == 2      # floors: once per fold
    assert conds["c_pair_audio"]["folds"] == 4            # 2 folds x 2 seeds
    assert conds["c_pair_release_audio"]["folds"] == 4
    assert "b_audio_ssl_audio" not in conds and "d_sup_audio" not in conds
    p = result["paired"]["c_pair_audio vs floor_logmel_stats"]
    assert p["n"] == 4 and p["keys"] == [[1, 0], [1, 1], [3, 0], [3, 1]] and p["fold_means"]["n"] == 2
    assert {"c_pair_audio vs a_random_audio", "c_pair_release_audio vs a_random_release_audio",
            "c_pair_audio+au vs floor_logmel_stats+au"} <= set(result["paired"])
    assert result["folds"] == {"1": [21, 22], "3": [25, 26]} and result["seeds"] == [0, 1]
    # Pretraining runs per fold per seed, on the training actors only, at that seed; the release
    # row with the release config's wider TCN.
    for fold, test in ((1, [21, 22]), (3, [25, 26])):
        for seed in (0, 1):
            for name, hidden in (("c_pair", 32), ("c_pair_release", 48)):
                meta = ckpt.read_meta(runs / f"fold{fold}" / f"seed{seed}" / name)
                assert meta["data"]["test_actors"] == test
                assert not set(meta["data"]["train_actors"]) & set(test)
                assert meta["config"]["train"]["seed"] == seed
                assert f"audio_tcn.hidden={hidden}" in meta["config"]["encoder"]["options"]
                assert meta["config"]["train"]["modalities"] == ["audio", "au"]
    md = (out / "results.md").read_text()
    assert "Paired comparisons" in md and "| 3 (25,26) | 1 |" in md
    # A rerun keeps every record (nothing pretrained or probed again) ...
    before = (runs / "fold1" / "seed0" / "c_pair" / "log.csv").stat().st_mtime_ns
    again = run_ravdess_loaded(cfg, store, ids, labels, classes, {1: folds[1], 3: folds[3]}, out, runs, seeds=[0, 1],
                               conditions=conditions, release_cfg=release)
    assert again["conditions"]["c_pair_audio"]["ua_mean"] == conds["c_pair_audio"]["ua_mean"]
    assert (runs / "fold1" / "seed0" / "c_pair" / "log.csv").stat().st_mtime_ns == before
    # ... and a run folder of another fold definition is refused, not reused.
    other = make_folds([21, 22, 23, 24, 25, 26], fold_size=3)[1]
    from training.eval.protocol import RavdessFold

    fold = RavdessFold(1, store, ids, labels, classes, other)
    cfg_c = with_loss(with_train(cfg, modalities=("audio", "au"), seed=0), pairs=("audio-au",))
    with pytest.raises(ConfigError, match="train_actors|test_actors"):
        pretrain_checked(cfg_c, fold_data(fold, 0), runs / "fold1" / "seed0" / "c_pair")
