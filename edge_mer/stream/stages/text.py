"""The text stage: the words of the run's speech-to-text, through the text encoder.

Speech-to-text (``text.asr``: Vosk, or Whisper tiny.en) runs on its own thread
(:class:`AsrWorker`), fed with every audio chunk as it arrives; a window gets the words whose
times fall in it (plus ``text.context_s`` before it), tokenised with the bundle's tokenizer.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import TYPE_CHECKING

import numpy as np

from edge_mer.config import Config, TextCfg, WindowCfg
from edge_mer.errors import BundleError, ConfigError
from edge_mer.modality import Modality
from edge_mer.stream.sources import AudioChunk, BoundedQueue
from edge_mer.stream.stages.base import Stage, WindowFeatures, encoder_model
from edge_mer.stream.stats import Stats
from edge_mer.stream.windower import Window

if TYPE_CHECKING:
    from edge_mer.bundle import Bundle

log = logging.getLogger(__name__)

# Gaps in the audio Vosk hears: filled with silence above this, a fresh session above the other.
_ASR_FILL_GAP_S = 0.05
_ASR_RESTART_GAP_S = 30.0
_END_OF_AUDIO = object()


class AsrWorker:
    """Speech-to-text (Vosk or Whisper) on its own thread, fed with the stream's audio as it
    arrives; a window's words.

    Speech-to-text is the slowest stage, so it does not wait for windows: the reader hands it
    every audio chunk (:meth:`push`, through a bounded queue) and by the time a window is
    processed its words are mostly decoded. When Vosk has heard up to a window's end it keeps a
    snapshot of the words it knows then, which is what the window gets: causal (no later audio
    revises a window's words) and, for file replay, the same on every run whatever the threads'
    timing. :meth:`words` waits for the snapshot at most ``wait_s`` (None: as long as it takes,
    for ``--fast`` replay), then makes do with the words known so far.
    """

    def __init__(self, asr, tokenizer, cfg: TextCfg, sample_rate_hz: int, queue: BoundedQueue,
                 block: bool, wait_s: float | None, stats: Stats, window: WindowCfg) -> None:
        self.asr = asr
        self.window = window
        self._snapshots: dict[int, list] = {}  # window index -> words known when Vosk reached its end
        self._next_window = 0
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.sample_rate_hz = sample_rate_hz
        self.queue = queue
        self.block = block
        self.wait_s = wait_s
        self.stats = stats
        self.error: BaseException | None = None
        self._stream = None
        self._heard_until = -np.inf  # stream time up to which Vosk has been fed
        self._done = False
        self._stopping = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="edge-mer-asr", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def push(self, chunk: AudioChunk) -> None:
        """Called by the reader for every audio chunk; never blocks a real-time source."""
        # A dead worker cannot drain the queue: never wait on it then.
        self.queue.put(chunk, block=self.block and self._thread.is_alive())

    def end(self) -> None:
        """No more audio: Vosk finalises the last utterance."""
        self.queue.put(_END_OF_AUDIO, block=self._thread.is_alive())

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the worker and wait for it: a daemon thread left inside the recogniser's native
        code when the interpreter exits aborts the process ("terminate called without an active
        exception"). Audio still queued is skipped."""
        self._stopping = True
        try:
            self.queue.put(_END_OF_AUDIO, block=False)
        except Exception:  # a full queue: the worker sees _stopping at its next chunk
            pass
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            while True:
                chunk = self.queue.get(timeout=0.1)
                if chunk is None:
                    if self._stopping:
                        return
                    continue
                with self._cond:
                    if self._stopping and chunk is not _END_OF_AUDIO:
                        continue  # closing: skip the backlog
                    if chunk is _END_OF_AUDIO:
                        if self._stream is not None:
                            self._stream.finish()
                        return
                    self._feed(chunk)
                    self._heard_until = self._stream.t_end_s
                    self._snapshot()
                    self._cond.notify_all()
        except BaseException as exc:  # handed to the main thread through words()
            self.error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _feed(self, chunk: AudioChunk) -> None:
        sr = self.sample_rate_hz
        if self._stream is None or chunk.t_s - self._stream.t_end_s > _ASR_RESTART_GAP_S:
            # First audio, or a gap so long (a stalled microphone) that a fresh session is better.
            self._stream = self.asr.create_stream(t0_s=chunk.t_s)
        gap = chunk.t_s - self._stream.t_end_s
        if gap > _ASR_FILL_GAP_S:
            # Dropped chunks: silence keeps Vosk's clock (and so word times) on the stream's.
            with self.stats.time("asr", audio_s=gap):
                self._stream.accept(np.zeros(int(round(gap * sr)), np.float32))
        with self.stats.time("asr", audio_s=chunk.samples.size / sr):
            # NaN/Inf would turn into arbitrary 16-bit values: Vosk hears silence there instead.
            self._stream.accept(np.nan_to_num(chunk.samples, nan=0.0, posinf=0.0, neginf=0.0))

    def _window_end(self, k: int) -> float:
        return k * self.window.hop_s + self.window.window_s

    def _snapshot(self) -> None:
        # Called with the lock held, after each chunk: every window whose end Vosk has now heard.
        while self._heard_until >= self._window_end(self._next_window) - 1e-6:
            t_end = self._window_end(self._next_window)
            lo = t_end - self.cfg.context_s
            self._snapshots[self._next_window] = [
                w for w in self._stream.words() if w.end_s >= lo and w.start_s < t_end
            ]
            # Windows only move forward: words older than this window's context are not needed.
            self._stream.forget_before(lo - 1.0)
            self._next_window += 1

    def words(self, window: Window) -> list:
        """Words ending in ``[t_end - context_s, t_end]`` and starting before the window ends."""
        with self._cond:
            self._cond.wait_for(lambda: window.index in self._snapshots or self._done, self.wait_s)
            if self.error is not None:
                raise self.error
            words = self._snapshots.get(window.index)
            # Snapshots of this and earlier windows (dropped ones too) are never read again.
            self._snapshots = {k: v for k, v in self._snapshots.items() if k > window.index}
            if words is not None:
                return words
            if self._stream is None:
                return []
            # No snapshot: a real-time window that could not wait longer, or a last short window.
            lo = window.t_end_s - self.cfg.context_s
            return [w for w in self._stream.words() if w.end_s >= lo and w.start_s < window.t_end_s]


class TextStage(Stage):
    """A window's words -> the text encoder's feature (or "no words")."""

    modality = Modality.TEXT

    def __init__(self, encoder, worker: AsrWorker, stats: Stats) -> None:
        super().__init__(encoder, stats)
        self.worker = worker

    @classmethod
    def from_bundle(cls, bundle: "Bundle", cfg: Config, stats: Stats, vosk_model_dir: str | None, has_audio: bool,
                    realtime: bool, absent: dict[str, str]) -> "TextStage | None":
        if Modality.TEXT not in bundle.modalities:
            return None
        sample_rate_hz = (bundle.feature_cfg(Modality.AUDIO) if Modality.AUDIO in bundle.modalities else cfg.audio).sample_rate_hz
        asr, why = _speech_to_text(cfg, vosk_model_dir, sample_rate_hz) if has_audio else (None, "no audio in the source")
        if asr is None:
            absent["text"] = why
            return None
        from edge_mer.text import TextTokenizer

        text_cfg = bundle.feature_cfg(Modality.TEXT)
        tok_entry = bundle.encoder(Modality.TEXT).get("tokenizer")
        if tok_entry is None:
            raise BundleError(f"bundle {bundle.root}: encoders.text has no tokenizer file entry")
        worker = AsrWorker(
            asr,
            TextTokenizer.from_file(bundle.path(tok_entry), text_cfg.max_tokens),
            # the window's context comes from this run's config; the tokens from the bundle's
            dataclasses.replace(text_cfg, context_s=cfg.text.context_s),
            sample_rate_hz,
            BoundedQueue(cfg.runtime.queue_size, cfg.runtime.drop_policy),
            block=not realtime,
            # A real-time window waits for the words at most one hop, then uses the words so far.
            wait_s=bundle.window().hop_s if realtime else None,
            stats=stats,
            window=bundle.window(),
        )
        return cls(encoder_model(bundle, Modality.TEXT, cfg.runtime), worker, stats)

    def __call__(self, window: Window, out: WindowFeatures) -> None:
        with self.stats.time("asr_wait"):
            words = self.worker.words(window)
        out.text = " ".join(w.text for w in words)
        if not words:
            out.absent["text"] = "no words"
            return
        out.features[Modality.TEXT] = self.encode(self.worker.tokenizer.encode(out.text))
        out.reliability[Modality.TEXT] = 1.0

    def start(self) -> None:
        self.worker.start()

    def push_audio(self, chunk: AudioChunk) -> None:
        self.worker.push(chunk)

    def end_audio(self) -> None:
        self.worker.end()

    def close(self) -> None:
        self.worker.close()

    def drops(self) -> dict[str, int]:
        return {"asr_chunks": self.worker.queue.dropped}


def _speech_to_text(cfg: Config, vosk_model_dir: str | None, sample_rate_hz: int):
    """This run's speech-to-text model (``text.asr``: Vosk from a model directory, or Whisper
    tiny.en from the installed package), or None and why the text modality is off."""
    if cfg.text.asr == "whisper":
        from edge_mer.backends.whisper_asr import WhisperAsr

        threads = max(1, cfg.runtime.threads or 1)
        if cfg.text.whisper_model:
            return WhisperAsr.from_dir(cfg.text.whisper_model, sample_rate_hz, threads), ""
        return WhisperAsr.from_package(sample_rate_hz, threads), ""
    if cfg.text.asr != "vosk":
        raise ConfigError(f"text.asr must be 'vosk' or 'whisper', got {cfg.text.asr!r}")
    model_dir = vosk_model_dir or cfg.text.vosk_model
    if not model_dir:
        # The model `edge-mer models fetch vosk-en` installed in the data directory, if any.
        from edge_mer.models import installed_vosk_model

        model_dir, how = installed_vosk_model()
        if model_dir is None:
            log.info("no installed Vosk model: %s", how)
            return None, ("no speech-to-text model (pass --asr whisper for built-in English, "
                          "run 'edge-mer models fetch vosk-en' for Vosk English, or --vosk-model DIR / text.vosk_model)")
        log.info("words from the installed Vosk model %s (%s; --vosk-model DIR for another)", model_dir, how)
    from edge_mer.backends.vosk_asr import VoskAsr

    return VoskAsr.from_dir(model_dir, sample_rate_hz), ""
