"""Metrics shared by every evaluation: unweighted accuracy (UA), confusion matrices, calibration.

>>> round(unweighted_accuracy(["a", "a", "b"], ["a", "b", "b"]), 1)
75.0
>>> round(expected_calibration_error(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]), bins=10), 2)
0.35
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def unweighted_accuracy(y_true: Sequence[str], y_pred: Sequence[str | None]) -> float:
    """UA: mean recall over the classes present in ``y_true`` (balanced accuracy), in points. A
    prediction of ``None`` (no output for that item) counts as wrong."""
    y_true = np.asarray(y_true, dtype=object)
    y_pred = np.asarray(y_pred, dtype=object)
    if len(y_true) == 0:
        return float("nan")
    return float(100.0 * np.mean([np.mean(y_pred[y_true == c] == c) for c in sorted(set(y_true.tolist()))]))


def accuracy(y_true: Sequence[str], y_pred: Sequence[str | None]) -> float:
    """WA: plain accuracy in points."""
    y_true, y_pred = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    return float(100.0 * np.mean(y_true == y_pred)) if len(y_true) else float("nan")


def confusion(y_true: Sequence[str], y_pred: Sequence[str | None], labels: Sequence[str]) -> list[list[int]]:
    """Rows: true label, columns: predicted label (in ``labels`` order) plus a last column for
    items with no prediction."""
    index = {label: i for i, label in enumerate(labels)}
    out = np.zeros((len(labels), len(labels) + 1), dtype=int)
    for t, p in zip(y_true, y_pred):
        out[index[t], index.get(p, len(labels)) if p is not None else len(labels)] += 1
    return out.tolist()


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-class confidence: sum over equal-width confidence bins of the bin's share of
    items times |accuracy - mean confidence| (Guo et al. 2017)."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    if len(probs) == 0:
        return float("nan")
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def mean_std(values: Sequence[float], digits: int = 4) -> dict[str, float]:
    """Mean and population std (ddof 0) over folds (NaN entries left out), rounded for reports."""
    v = np.asarray([x for x in values if x == x], dtype=np.float64)
    return {"mean": round(float(v.mean()), digits) if len(v) else float("nan"),
            "std": round(float(v.std()), digits) if len(v) else float("nan")}


def normalise_words(text: str) -> list[str]:
    """Lower case, punctuation removed (apostrophes kept inside words), split on white space: the
    form word error rates compare.

    >>> normalise_words("Kids are talking by the door.  Don't!")
    ['kids', 'are', 'talking', 'by', 'the', 'door', "don't"]
    """
    import re

    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("\u2019", "'")).replace(" '", " ").split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words): the word-level edit distance of
    the normalised texts (:func:`normalise_words`). WER over a set = sum of errors / sum of words.

    >>> word_errors("kids are talking by the door", "kids are walking by door please")
    (3, 6)
    """
    ref, hyp = normalise_words(reference), normalise_words(hypothesis)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1], len(ref)


# --------------------------------------------------------------------------- paired tests


def sign_test(diffs: Sequence[float]) -> dict[str, float | int]:
    """Sign test of paired differences: wins (> 0), losses (< 0), ties (== 0, left out), and the
    exact binomial p-values under H0 "a win is as likely as a loss": two-sided and one-sided
    (``p_greater``: the arm is better).

    >>> sign_test([1.0, 2.0, 0.5, 3.0, 1.5])["p_greater"]
    0.03125
    >>> sign_test([1.0, -1.0, 0.0])["ties"], sign_test([1.0, -1.0, 0.0])["p_two_sided"]
    (1, 1.0)
    """
    from scipy.stats import binomtest

    d = np.asarray(diffs, dtype=np.float64)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    n = wins + losses
    if n == 0:
        return {"wins": 0, "losses": 0, "ties": int(len(d)), "p_two_sided": 1.0, "p_greater": 1.0}
    return {"wins": wins, "losses": losses, "ties": int(len(d) - n),
            "p_two_sided": float(binomtest(wins, n, 0.5, alternative="two-sided").pvalue),
            "p_greater": float(binomtest(wins, n, 0.5, alternative="greater").pvalue)}


def wilcoxon_test(diffs: Sequence[float]) -> dict[str, float | str | None]:
    """Wilcoxon signed-rank test of paired differences (``scipy.stats.wilcoxon``; zero
    differences dropped, exact distribution when scipy can use it): two-sided and one-sided
    (``p_greater``: the arm is better) p-values and the statistic. All-zero differences give
    p = 1; no pairs at all give None.

    >>> round(wilcoxon_test([1.0, 2.0, 3.0, 4.0, 5.0])["p_greater"], 5)
    0.03125
    """
    from scipy.stats import wilcoxon

    d = np.asarray(diffs, dtype=np.float64)
    if len(d) == 0:
        return {"statistic": None, "p_two_sided": None, "p_greater": None, "method": None}
    if not np.any(d != 0):
        return {"statistic": 0.0, "p_two_sided": 1.0, "p_greater": 1.0, "method": "all differences zero"}
    two = wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    one = wilcoxon(d, zero_method="wilcox", alternative="greater")
    exact = len(d[d != 0]) <= 50 and len(d[d != 0]) == len(d) and len(set(np.abs(d).tolist())) == len(d)
    return {"statistic": float(two.statistic), "p_two_sided": float(two.pvalue), "p_greater": float(one.pvalue),
            "method": "exact" if exact else "normal approximation (zeros or tied |differences|)"}


def paired_comparison(arm: Sequence[float], reference: Sequence[float], keys: Sequence[Any] | None = None,
                      digits: int = 4) -> dict[str, Any]:
    """Arm vs reference over matched pairs (e.g. one per fold x seed): the differences (arm -
    reference), their mean and population std, the sign test and the Wilcoxon signed-rank test
    (:func:`sign_test`, :func:`wilcoxon_test`). ``keys`` name the pairs (kept in the output).

    >>> c = paired_comparison([50.0, 52.0, 49.0], [45.0, 50.0, 50.0])
    >>> c["n"], c["mean_diff"], c["sign"]["wins"], c["sign"]["losses"]
    (3, 2.0, 2, 1)
    """
    a = np.asarray(arm, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if a.shape != r.shape:
        raise ValueError(f"paired_comparison: {len(a)} arm values but {len(r)} reference values")
    d = a - r
    out: dict[str, Any] = {
        "n": int(len(d)),
        "mean_arm": round(float(a.mean()), digits) if len(d) else float("nan"),
        "mean_reference": round(float(r.mean()), digits) if len(d) else float("nan"),
        "mean_diff": round(float(d.mean()), digits) if len(d) else float("nan"),
        "std_diff": round(float(d.std()), digits) if len(d) else float("nan"),
        "diffs": [round(float(x), digits) for x in d],
        "sign": sign_test(d),
        "wilcoxon": wilcoxon_test(d),
    }
    if keys is not None:
        out["keys"] = [list(k) if isinstance(k, tuple) else k for k in keys]
    return out
