"""Paired tests for the protocol's comparisons (training/eval/metrics.py): sign test, Wilcoxon
signed-rank, paired_comparison; and the protocol's pairing of runs per (fold, seed)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import wilcoxon

from training.eval.metrics import paired_comparison, sign_test, wilcoxon_test


def test_sign_test_counts_and_exact_binomial():
    s = sign_test([2.0, 1.0, -1.0, 0.0, 3.0])
    assert (s["wins"], s["losses"], s["ties"]) == (3, 1, 1)
    # 3 wins of 4 non-ties: P(X >= 3) = 5/16 one-sided; two-sided 10/16.
    assert s["p_greater"] == pytest.approx(5 / 16)
    assert s["p_two_sided"] == pytest.approx(10 / 16)
    assert sign_test([1.0] * 5)["p_greater"] == pytest.approx(1 / 32)
    assert sign_test([0.0, 0.0]) == {"wins": 0, "losses": 0, "ties": 2, "p_two_sided": 1.0, "p_greater": 1.0}


def test_wilcoxon_matches_scipy_and_handles_degenerate_input():
    d = [3.1, -0.4, 2.2, 5.0, 1.3, -1.7, 4.4, 0.9]
    w = wilcoxon_test(d)
    assert w["p_two_sided"] == pytest.approx(wilcoxon(d).pvalue)
    assert w["p_greater"] == pytest.approx(wilcoxon(d, alternative="greater").pvalue)
    assert w["method"] == "exact"
    # Five positive differences: the smallest exact one-sided p is 1/32, two-sided 1/16.
    assert wilcoxon_test([1, 2, 3, 4, 5])["p_two_sided"] == pytest.approx(1 / 16)
    assert wilcoxon_test([0.0, 0.0, 0.0])["p_two_sided"] == 1.0
    assert wilcoxon_test([])["p_two_sided"] is None
    # A worse arm: the one-sided p for "better" is large.
    assert wilcoxon_test([-1, -2, -3, -4, -5])["p_greater"] > 0.9


def test_paired_comparison_differences_and_keys():
    c = paired_comparison([50.0, 52.0, 49.0, 55.0], [45.0, 50.0, 50.0, 50.0], keys=[(1, 0), (1, 1), (2, 0), (2, 1)])
    assert c["n"] == 4 and c["diffs"] == [5.0, 2.0, -1.0, 5.0]
    assert c["mean_diff"] == pytest.approx(2.75) and c["std_diff"] == pytest.approx(np.std([5, 2, -1, 5]), abs=1e-4)
    assert c["sign"]["wins"] == 3 and c["sign"]["losses"] == 1
    assert c["keys"] == [[1, 0], [1, 1], [2, 0], [2, 1]]
    with pytest.raises(ValueError):
        paired_comparison([1.0, 2.0], [1.0])


def _m(ua: float) -> dict:
    return {"ua": ua, "wa": ua, "f1_weighted": ua, "confusion": [[1, 0], [0, 1]], "per_class_recall": {"a": ua, "b": ua}}


def test_paired_summary_pairs_each_seed_with_its_folds_floor():
    from training.eval.protocol import paired_summary, paired_table

    records = [
        {"fold": 1, "seed": None, "metrics": {"floor_logmel_stats": _m(40.0)}},
        {"fold": 2, "seed": None, "metrics": {"floor_logmel_stats": _m(50.0)}},
    ]
    for fold, base in ((1, 40.0), (2, 50.0)):
        for seed in (0, 1, 2):
            records.append({"fold": fold, "seed": seed, "metrics": {
                "c_pair_audio": _m(base + 4 + seed), "a_random_audio": _m(base + 1)}})
    paired = paired_summary(records)
    floor = paired["c_pair_audio vs floor_logmel_stats"]
    assert floor["n"] == 6
    assert floor["keys"] == [[1, 0], [1, 1], [1, 2], [2, 0], [2, 1], [2, 2]]
    assert floor["diffs"] == [4.0, 5.0, 6.0, 4.0, 5.0, 6.0]
    assert floor["sign"]["wins"] == 6
    assert floor["meets_3_points_p05"] is True
    # Over folds: each fold's seeds averaged first, so two pairs.
    assert floor["fold_means"]["n"] == 2 and floor["fold_means"]["diffs"] == [5.0, 5.0]
    rnd = paired["c_pair_audio vs a_random_audio"]
    assert rnd["mean_diff"] == pytest.approx(4.0) and rnd["n"] == 6
    # No b rows, no release rows: no such comparisons.
    assert not any("b_audio_ssl" in k or "release" in k for k in paired)
    table = paired_table(paired)
    assert "| c_pair_audio | floor_logmel_stats | 6 | +5.0 ± 0.8 | 6/0/0 |" in table
