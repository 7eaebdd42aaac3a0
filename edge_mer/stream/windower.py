"""The windower: cuts timestamped frames and audio into synchronised windows.

Window ``k`` covers ``[k * hop_s, k * hop_s + window_s)`` on the stream clock (window and hop come
from the bundle manifest, so the runtime sees windows as long as the encoders were trained on).
A window is released once every stream the source carries has reached its end, so its audio and
its frames describe the same moment. A stream that stalls (a frozen camera) cannot hold the others
back for long: after ``max_wait_s`` past a window's end the window goes out with what there is.

Audio is placed by timestamp into the window's sample buffer, so a gap (dropped chunks) reads as
silence at the right place instead of shifting everything after it.

>>> w = Windower(WindowCfg(window_s=2.0, hop_s=0.5), 16000, has_video=False, has_audio=True)
>>> windows = w.push(AudioChunk(0.0, 0, np.zeros(40000, np.float32)))    # 2.5 s of audio
>>> [(x.t_start_s, x.t_end_s) for x in windows]
[(0.0, 2.0), (0.5, 2.5)]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from edge_mer.config import WindowCfg
from edge_mer.stream.sources import AudioChunk, Frame, Item

# Float slack when comparing stream times with window edges (well under one audio sample).
_EPS = 1e-6


@dataclass
class Window:
    """A span of the stream: its frames, its audio (zeros where none arrived), and bookkeeping.

    ``ready_s`` is the monotonic time the windower released it; ``audio_coverage`` the fraction of
    its samples that real audio filled (0 when the source has no audio).
    """

    index: int
    t_start_s: float
    t_end_s: float
    frames: list[Frame] = field(default_factory=list)
    audio: np.ndarray | None = None
    audio_coverage: float = 0.0
    ready_s: float = 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of its frames and audio (frames shared with overlapping windows counted in each)."""
        return sum(f.bgr.nbytes for f in self.frames) + (self.audio.nbytes if self.audio is not None else 0)


class Windower:
    """Groups items into fixed windows with a fixed hop. Feed items with :meth:`push`; call
    :meth:`flush` at end of stream for the windows still pending."""

    def __init__(self, cfg: WindowCfg, sample_rate_hz: int, has_video: bool, has_audio: bool,
                 max_wait_s: float | None = None) -> None:
        if cfg.window_s <= 0 or cfg.hop_s <= 0:
            raise ValueError(f"window_s and hop_s must be positive, got {cfg.window_s} and {cfg.hop_s}")
        if not (has_video or has_audio):
            raise ValueError("a windower needs a video or an audio stream")
        self.cfg = cfg
        self.sample_rate_hz = sample_rate_hz
        self.has_video = has_video
        self.has_audio = has_audio
        self.max_wait_s = cfg.window_s if max_wait_s is None else max_wait_s
        self._next = 0  # index of the next window to release
        self._frames: list[Frame] = []
        self._chunks: list[AudioChunk] = []
        self._latest = {"video": -np.inf, "audio": -np.inf}
        self._last_frame_t: float | None = None
        self._frame_dt = 0.0
        self.late_items = 0  # items older than an already released window (counted, then ignored)

    def _bounds(self, k: int) -> tuple[float, float]:
        start = k * self.cfg.hop_s
        return start, start + self.cfg.window_s

    def push(self, item: Item) -> list["Window"]:
        """Add one item; return the windows it completes (often none, at most a few)."""
        start_next, _ = self._bounds(self._next)
        if isinstance(item, Frame):
            if item.t_s < start_next - _EPS:
                self.late_items += 1
            else:
                self._frames.append(item)
            # A frame stands for the time until the next one: the video stream has reached its
            # time plus one frame interval (so the last frame before a window's end completes it).
            if self._last_frame_t is not None and item.t_s > self._last_frame_t:
                self._frame_dt = item.t_s - self._last_frame_t
            self._last_frame_t = item.t_s
            self._latest["video"] = max(self._latest["video"], item.t_s + self._frame_dt)
        elif isinstance(item, AudioChunk):
            end = item.t_s + item.samples.size / self.sample_rate_hz
            if end < start_next - _EPS:
                self.late_items += 1
            else:
                self._chunks.append(item)
            self._latest["audio"] = max(self._latest["audio"], end)
        else:
            raise TypeError(f"windower: unexpected item {type(item).__name__}")
        return self._release(final=False)

    def flush(self) -> list["Window"]:
        """End of stream: release every window that lies inside the data seen. A stream shorter
        than one window still yields one (shorter) window, so a short clip gets a result."""
        out = self._release(final=True)
        if self._next == 0:
            end = max(v for v in self._latest.values())
            if np.isfinite(end) and end > 0:
                out.append(self._build(0, 0.0, float(end)))
                self._next = 1
        self._frames.clear()
        self._chunks.clear()
        return out

    def _release(self, final: bool) -> list["Window"]:
        heads = [self._latest[k] for k, on in (("video", self.has_video), ("audio", self.has_audio)) if on]
        seen = [h for h in heads if np.isfinite(h)]
        if not seen:
            return []
        slowest = min(heads)
        fastest = max(seen)
        out = []
        while True:
            start, end = self._bounds(self._next)
            if final:
                ready = end <= fastest + _EPS  # every full window inside the data
            else:
                ready = slowest >= end - _EPS or fastest >= end + self.max_wait_s
            if not ready:
                break
            out.append(self._build(self._next, start, end))
            self._next += 1
            self._prune()
        return out

    def _build(self, k: int, start: float, end: float) -> "Window":
        frames = [f for f in self._frames if start - _EPS <= f.t_s < end - _EPS]
        audio = None
        coverage = 0.0
        if self.has_audio:
            n = max(1, int(round((end - start) * self.sample_rate_hz)))
            audio = np.zeros(n, np.float32)
            filled = 0
            for c in self._chunks:
                a = int(round((c.t_s - start) * self.sample_rate_hz))
                lo, hi = max(0, a), min(n, a + c.samples.size)
                if hi > lo:
                    audio[lo:hi] = c.samples[lo - a : hi - a]
                    filled += hi - lo
            coverage = min(1.0, filled / n)
        return Window(k, float(start), float(end), frames, audio, coverage, time.monotonic())

    def _prune(self) -> None:
        # Keep only what the next window can still use.
        start, _ = self._bounds(self._next)
        self._frames = [f for f in self._frames if f.t_s >= start - _EPS]
        sr = self.sample_rate_hz
        self._chunks = [c for c in self._chunks if c.t_s + c.samples.size / sr > start + _EPS]
