"""Run statistics for ``--stats``: per-stage p50/p95 latency, FPS, audio real-time factor, drops.

Timings are wall-clock (``time.perf_counter``) around each stage call, so they include whatever
the stage does (an encoder's timing includes ONNX Runtime's input copies).

>>> stats = Stats()
>>> with stats.time("logmel"):
...     pass
>>> stats.summary()["stages"]["logmel"]["count"]
1
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Iterator

import numpy as np


class Stats:
    """Collects stage timings and counters for one run."""

    def __init__(self) -> None:
        self.t_start = time.perf_counter()
        self.stages: dict[str, list[float]] = defaultdict(list)
        self.audio_s: dict[str, float] = defaultdict(float)  # seconds of audio a stage processed
        self.counts: dict[str, int] = defaultdict(int)
        self.drops: dict[str, int] = {}
        self.notes: list[str] = []  # things about the input the numbers do not show (each once)

    @contextlib.contextmanager
    def time(self, stage: str, audio_s: float = 0.0) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages[stage].append((time.perf_counter() - t0) * 1000.0)
            self.audio_s[stage] += audio_s

    def add_latency(self, latency_ms: float) -> None:
        self.stages["end_to_end"].append(latency_ms)

    def note(self, text: str) -> None:
        """A line for the report, e.g. ``input audio 8000 Hz < bundle 16000 Hz (...)``; kept once."""
        if text not in self.notes:
            self.notes.append(text)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def summary(self) -> dict:
        """Plain numbers (JSON friendly)."""
        wall = time.perf_counter() - self.t_start
        stages = {}
        for name, ms in self.stages.items():
            arr = np.asarray(ms)
            stages[name] = {
                "count": int(arr.size),
                "p50_ms": float(np.percentile(arr, 50)),
                "p95_ms": float(np.percentile(arr, 95)),
                "total_ms": float(arr.sum()),
            }
        rtf = {}
        for name, seconds in self.audio_s.items():
            if seconds > 0:
                rtf[name] = stages[name]["total_ms"] / 1000.0 / seconds
        return {
            "wall_s": wall,
            "stages": stages,
            "fps": self.counts.get("frames", 0) / wall if wall > 0 else 0.0,
            "windows": self.counts.get("windows", 0),
            "events": self.counts.get("events", 0),
            "visual_ahead": self.counts.get("visual_ahead", 0),
            "audio_rtf": rtf,
            "drops": dict(self.drops),
            "notes": list(self.notes),
        }

    def report(self) -> str:
        """Human-readable table for stderr at exit."""
        s = self.summary()
        lines = [f"edge-mer run: {s['events']} events from {s['windows']} windows in {s['wall_s']:.1f} s; "
                 f"{s['fps']:.1f} frames/s read"]
        lines.append(f"{'stage':<16}{'count':>7}{'p50 ms':>10}{'p95 ms':>10}")
        for name, st in sorted(s["stages"].items()):
            lines.append(f"{name:<16}{st['count']:>7}{st['p50_ms']:>10.2f}{st['p95_ms']:>10.2f}")
        for name, value in s["audio_rtf"].items():
            lines.append(f"audio RTF {name}: {value:.3f} (processing time / audio time)")
        if s["visual_ahead"]:
            lines.append(f"windows whose visual stages started while the previous window's audio was read: {s['visual_ahead']}")
        drops = ", ".join(f"{k} {v}" for k, v in s["drops"].items()) or "none"
        lines.append(f"drops: {drops}")
        lines.extend(f"note: {text}" for text in s["notes"])
        return "\n".join(lines)
