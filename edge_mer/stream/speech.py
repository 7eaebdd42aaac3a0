"""Voice-activity detection: is there speech in a window? (Silero VAD, ONNX Runtime, no torch.)

The audio stage used to drop only windows below an RMS floor (silence); noise, music or breathing
above it were read as emotions. :class:`SpeechDetector` runs the Silero VAD model (MIT, Silero
Team; the bundle ships it as ``detectors.vad``) over 32 ms frames (512 samples at 16 kHz, 256 at
8 kHz), fed as the model expects: each frame with the 64 (32) samples before it prepended, and
the recurrent ``state`` [2, 1, 128] carried from frame to frame.

The detector is stateless and shared; a stream (:meth:`SpeechDetector.create_stream`) holds one
session's state. Windows overlap (2 s every 0.5 s), so the stream runs the model only on samples
it has not seen yet, on a grid of frames anchored at its first sample; a window's *speech
fraction* is the fraction of the frames lying wholly inside it whose speech probability is at
least ``threshold``. The result is the same whether the audio comes in overlapping windows or
all at once. A window that starts after the samples already processed (a gap: dropped windows,
silence the stage skipped) or before the last window (time went back) starts a fresh state.

>>> detector = SpeechDetector.from_file("models/default/detectors/silero_vad.onnx", RuntimeCfg())  # doctest: +SKIP
>>> stream = detector.create_stream(16000, threshold=0.5)                                           # doctest: +SKIP
>>> stream(window_audio, start_sample=8000)                                                         # doctest: +SKIP
0.87
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from edge_mer.config import RuntimeCfg
from edge_mer.errors import ConfigError, EdgeMerError

# Silero VAD's frame and context per supported sample rate (silero_vad.utils_vad.OnnxWrapper).
FRAME_SAMPLES = {16000: 512, 8000: 256}
CONTEXT_SAMPLES = {16000: 64, 8000: 32}
_STATE_SHAPE = (2, 1, 128)


class SpeechDetector:
    """The Silero VAD model in an ONNX Runtime session (stateless: one per process is enough)."""

    def __init__(self, model, path: Path) -> None:
        self.model = model
        self.path = path
        missing = {"input", "state", "sr"} - set(model.input_names)
        if missing or not {"output", "stateN"} <= set(model.output_names):
            raise EdgeMerError(f"{path}: not a Silero VAD model (inputs {list(model.input_names)}, "
                               f"outputs {list(model.output_names)}; expected input/state/sr -> output/stateN)")

    @classmethod
    def from_file(cls, path: str | os.PathLike, runtime_cfg: RuntimeCfg | None = None) -> "SpeechDetector":
        """Load the model with the runtime's session options. It always runs on the CPU with one
        thread: 32 ms frames are far too small to gain from a GPU or from more threads."""
        from edge_mer.backends.onnx_backend import OnnxModel

        cfg = dataclasses.replace(runtime_cfg or RuntimeCfg(), providers=("CPUExecutionProvider",), threads=1)
        path = Path(path)
        return cls(OnnxModel.from_file(path, cfg), path)

    def create_stream(self, sample_rate_hz: int, threshold: float = 0.5) -> "SpeechStream":
        """A per-session stream for audio at ``sample_rate_hz`` (16000 or 8000, as Silero runs)."""
        return SpeechStream(self, sample_rate_hz, threshold)

    def frame(self, chunk: np.ndarray, state: np.ndarray, sr: np.ndarray) -> tuple[float, np.ndarray]:
        """One model step: ``(speech probability, next state)`` for ``[1, context + frame]`` samples."""
        out = self.model.session.run(None, {"input": chunk, "state": state, "sr": sr})
        return float(out[0].reshape(-1)[0]), out[1]


class SpeechStream:
    """One session's detector state; call it with each window's audio, in stream order."""

    def __init__(self, detector: SpeechDetector, sample_rate_hz: int, threshold: float = 0.5) -> None:
        if sample_rate_hz not in FRAME_SAMPLES:
            raise ConfigError(f"speech detection: sample rate {sample_rate_hz} Hz is not supported by Silero VAD "
                              f"(it runs at {' or '.join(map(str, FRAME_SAMPLES))} Hz)")
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"runtime.vad_threshold must be between 0 and 1 (exclusive), got {threshold}")
        self.detector = detector
        self.sample_rate_hz = sample_rate_hz
        self.threshold = float(threshold)
        self.frame_samples = FRAME_SAMPLES[sample_rate_hz]
        self.context_samples = CONTEXT_SAMPLES[sample_rate_hz]
        self._sr = np.array(sample_rate_hz, np.int64)
        self.resets = 0  # fresh states after a gap or a jump back (the first start not counted)
        self.frames_processed = 0  # model steps run so far
        self._origin: int | None = None
        self.reset()

    def reset(self, origin: int | None = None) -> None:
        """Forget everything; the next frames start at absolute sample ``origin``."""
        self._origin = origin
        self._pos = origin  # absolute sample up to which frames have been processed
        self._last_start: int | None = None
        self._state = np.zeros(_STATE_SHAPE, np.float32)
        self._context = np.zeros(self.context_samples, np.float32)
        self._starts: list[int] = []  # absolute first sample of each processed frame
        self._probs: list[float] = []

    def update(self, audio: np.ndarray, start_sample: int) -> None:
        """Run the model on the samples of ``audio`` (which starts at absolute ``start_sample``)
        not processed yet, whole frames only (the rest waits for the next window)."""
        audio = np.asarray(audio)
        if audio.ndim != 1:
            raise EdgeMerError(f"speech detection: audio must be one channel (1-D), got shape {audio.shape}")
        if not np.issubdtype(audio.dtype, np.floating):
            raise EdgeMerError(f"speech detection: audio must be float samples in [-1, 1], got {audio.dtype}")
        start_sample = int(start_sample)
        if self._pos is None:
            self.reset(start_sample)
        elif start_sample > self._pos or (self._last_start is not None and start_sample < self._last_start):
            # A gap (samples never seen) or time going back: the state no longer follows the audio.
            self.resets += 1
            self.reset(start_sample)
        self._last_start = start_sample
        end = start_sample + audio.size
        n = self.frame_samples
        chunk = np.empty((1, self.context_samples + n), np.float32)
        while self._pos + n <= end:
            a = self._pos - start_sample
            chunk[0, : self.context_samples] = self._context
            chunk[0, self.context_samples :] = audio[a : a + n]
            prob, self._state = self.detector.frame(chunk, self._state, self._sr)
            self._context = chunk[0, -self.context_samples :].copy()
            self._starts.append(self._pos)
            self._probs.append(prob)
            self._pos += n
            self.frames_processed += 1

    def probabilities(self, start_sample: int, end_sample: int) -> np.ndarray:
        """Speech probabilities of the processed frames lying wholly inside ``[start, end)``."""
        starts = np.asarray(self._starts)
        keep = (starts >= start_sample) & (starts + self.frame_samples <= end_sample)
        return np.asarray(self._probs, np.float32)[keep]

    def fraction(self, start_sample: int, end_sample: int) -> float:
        """Fraction of the window's frames with speech probability >= threshold (0 with none)."""
        probs = self.probabilities(start_sample, end_sample)
        return float(np.mean(probs >= self.threshold)) if probs.size else 0.0

    def __call__(self, audio: np.ndarray, start_sample: int) -> float:
        """Feed one window (its audio from absolute ``start_sample``); its speech fraction."""
        self.update(audio, start_sample)
        fraction = self.fraction(int(start_sample), int(start_sample) + np.asarray(audio).size)
        # Windows only move forward: frames before this one's start are never asked for again.
        cut = int(np.searchsorted(np.asarray(self._starts), int(start_sample)))
        del self._starts[:cut], self._probs[:cut]
        return fraction
