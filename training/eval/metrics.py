"""Metrics shared by every evaluation: unweighted accuracy (UA), confusion matrices, calibration.

>>> round(unweighted_accuracy(["a", "a", "b"], ["a", "b", "b"]), 1)
75.0
>>> round(expected_calibration_error(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]), bins=10), 2)
0.35
"""

from __future__ import annotations

from typing import Sequence

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
