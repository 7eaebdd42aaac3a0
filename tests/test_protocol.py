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
