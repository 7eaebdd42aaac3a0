"""Vosk streaming speech-to-text with word timestamps.

The model (``VoskAsr``) is loaded once from a directory and holds no per-session state; each audio
stream gets its own :class:`AsrStream` (wrapping a ``KaldiRecognizer``), so one loaded model can
serve several microphones. Nothing is downloaded here: ``vosk.Model(lang=...)`` would fetch a
model from the internet, so only a directory is accepted (``edge-mer models fetch vosk-en``,
:mod:`edge_mer.models`, fetches and verifies the English one when asked).

Word times are seconds on the caller's stream clock: a stream is created with the time of its
first sample and counts the samples it is fed.

>>> asr = VoskAsr.from_dir("vosk-model-small-en-us-0.15", 16000)       # doctest: +SKIP
>>> stream = asr.create_stream(t0_s=0.0)                                # doctest: +SKIP
>>> stream.accept(samples_float32)                                      # doctest: +SKIP
>>> [(w.text, w.start_s, w.end_s) for w in stream.words()]              # doctest: +SKIP
[('hello', 0.42, 0.78)]
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_mer.errors import ConfigError, DeviceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Word:
    """One recognised word with its start and end on the stream clock, in seconds."""

    text: str
    start_s: float
    end_s: float
    conf: float
    final: bool  # False while it is still part of a partial hypothesis that may change


def is_model_dir(path: str | os.PathLike) -> bool:
    """A Vosk model directory has ``am/`` (acoustic model) and ``conf/`` (feature settings)."""
    path = Path(path)
    return (path / "am").is_dir() and (path / "conf").is_dir()


class VoskAsr:
    """A loaded Vosk model; create one :class:`AsrStream` per audio stream.

    >>> asr = VoskAsr.from_dir("/opt/vosk-model-small-en-us-0.15", 16000)   # doctest: +SKIP
    """

    def __init__(self, model, model_dir: Path, sample_rate_hz: int) -> None:
        self._model = model
        self.model_dir = model_dir
        self.sample_rate_hz = sample_rate_hz

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike, sample_rate_hz: int) -> "VoskAsr":
        """Load the model in ``model_dir``. A missing or malformed directory is a ConfigError."""
        path = Path(model_dir)
        if not path.is_dir():
            raise ConfigError(f"Vosk model {path}: directory not found ('edge-mer models fetch vosk-en' installs the English one, others are at https://alphacephei.com/vosk/models; or use --asr whisper: built-in English, no download)")
        if not is_model_dir(path):
            raise ConfigError(f"Vosk model {path}: not a Vosk model directory (expected am/ and conf/ inside)")
        if sample_rate_hz <= 0:
            raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
        try:
            import vosk
        except ImportError:
            raise DeviceError("vosk is not installed (pip install vosk)") from None
        vosk.SetLogLevel(-1)  # Kaldi logs to stderr by default, which would mix with our output
        try:
            model = vosk.Model(model_path=str(path))
        except Exception as exc:  # vosk raises a plain Exception("Failed to create a model")
            raise ConfigError(f"Vosk model {path}: cannot be loaded ({exc})") from None
        log.info("Vosk model loaded from %s", path)
        return cls(model, path, sample_rate_hz)

    def create_stream(self, t0_s: float = 0.0) -> "AsrStream":
        """A fresh recognition session whose first sample is at ``t0_s`` on the stream clock."""
        import vosk

        rec = vosk.KaldiRecognizer(self._model, float(self.sample_rate_hz))
        rec.SetWords(True)
        # Partial words carry times too, so a window gets the words said in it before the
        # utterance ends (Vosk finalises only at a pause).
        rec.SetPartialWords(True)
        return AsrStream(rec, self.sample_rate_hz, t0_s)


class WordStream:
    """What every speech-to-text stream keeps: final words, the current partial ones, the clock."""

    sample_rate_hz: int
    t0_s: float
    samples_fed: int
    _final: list[Word]
    _partial: list[Word]

    @property
    def t_end_s(self) -> float:
        """Stream time just after the last sample fed."""
        return self.t0_s + self.samples_fed / self.sample_rate_hz

    def words(self, since_s: float | None = None) -> list[Word]:
        """Final words and the current partial ones, in time order; ``since_s`` keeps the words
        ending after it."""
        out = self._final + self._partial
        if since_s is not None:
            out = [w for w in out if w.end_s > since_s]
        return out

    def forget_before(self, t_s: float) -> None:
        """Drop final words that ended before ``t_s`` (bounds memory on long sessions)."""
        self._final = [w for w in self._final if w.end_s >= t_s]


class AsrStream(WordStream):
    """Per-session recognition state: feed samples in order, read words with times."""

    def __init__(self, recognizer, sample_rate_hz: int, t0_s: float) -> None:
        self._rec = recognizer
        self.sample_rate_hz = sample_rate_hz
        self.t0_s = t0_s
        self.samples_fed = 0
        self._final: list[Word] = []
        self._partial: list[Word] = []

    def accept(self, samples: np.ndarray) -> None:
        """Feed mono float32 samples in [-1, 1] (converted to 16-bit PCM, what Vosk reads)."""
        if samples.size == 0:
            return
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        self.samples_fed += samples.size
        if self._rec.AcceptWaveform(pcm):
            self._take(json.loads(self._rec.Result()).get("result", []), final=True)
            self._partial = []
        else:
            self._partial = self._parse(json.loads(self._rec.PartialResult()).get("partial_result", []), final=False)

    def finish(self) -> None:
        """End of audio: finalise the last utterance."""
        self._take(json.loads(self._rec.FinalResult()).get("result", []), final=True)
        self._partial = []

    def _parse(self, items: list[dict], final: bool) -> list[Word]:
        return [
            Word(str(it.get("word", "")), self.t0_s + float(it["start"]), self.t0_s + float(it["end"]),
                 float(it.get("conf", 1.0)), final)
            for it in items
            if it.get("word") and "start" in it and "end" in it
        ]

    def _take(self, items: list[dict], final: bool) -> None:
        self._final.extend(self._parse(items, final))
