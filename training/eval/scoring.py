"""From windows to clips: which clip a window belongs to, and a clip's prediction.

A window belongs to the clip of the recording it overlaps most (none when it overlaps no clip);
a clip's prediction is the arg-max of the mean probabilities of the windows that belong to it and
have a prediction (``None`` when it has none: counted wrong).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from training.eval.recordings import Span


def owner(t_start_s: float, t_end_s: float, spans: Sequence[Span]) -> tuple[int | None, float]:
    """(index of the span the window overlaps most, the overlap in seconds)."""
    best, best_overlap = None, 0.0
    for i, s in enumerate(spans):
        overlap = min(t_end_s, s.t_end_s) - max(t_start_s, s.t_start_s)
        if overlap > best_overlap:
            best, best_overlap = i, overlap
    return best, best_overlap


def clip_predictions(windows: Sequence[tuple[float, float, np.ndarray | None]], spans: Sequence[Span],
                     labels: Sequence[str]) -> list[dict]:
    """Per span: label, prediction (or None), the mean probabilities and the number of windows.
    ``windows`` are (t_start, t_end, probs or None)."""
    sums = [np.zeros(len(labels)) for _ in spans]
    counts = [0] * len(spans)
    for t0, t1, p in windows:
        i, _ = owner(t0, t1, spans)
        if i is None or p is None:
            continue
        sums[i] += p
        counts[i] += 1
    out = []
    for s, total, n in zip(spans, sums, counts):
        mean = total / n if n else None
        out.append({"clip": s.clip.clip_id, "label": s.clip.label, "t_start_s": s.t_start_s, "windows": n,
                    "pred": labels[int(np.argmax(mean))] if n else None,
                    "probs": None if mean is None else [round(float(v), 6) for v in mean]})
    return out


def window_labels(windows: Sequence[tuple[float, float, np.ndarray | None]], spans: Sequence[Span]) -> list[str | None]:
    """The label of the clip each window belongs to (None outside every clip)."""
    return [spans[i].clip.label if i is not None else None for i in (owner(t0, t1, spans)[0] for t0, t1, _ in windows)]
