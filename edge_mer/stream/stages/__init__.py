"""Stages: a window in, per-modality features out; one stage per modality.

Each modality has its own stage, built from the bundle with its own reason for being off and
its own call (``edge_mer/stream/stages/``):

- :mod:`~edge_mer.stream.stages.face`: face detection and tracking (shared), the face-image
  stage (crops -> face encoder) and the landmark stage (dlib 68 points -> landmark encoder);
- :mod:`~edge_mer.stream.stages.audio`: the window's speech (silence floor, speech detection,
  the bundle's front end, per-user input statistics) -> audio encoder;
- :mod:`~edge_mer.stream.stages.text`: speech-to-text on its own thread (Vosk or Whisper
  tiny.en), a window's words -> text encoder;
- encoders: one :class:`~edge_mer.backends.base.Model` per modality (ONNX Runtime, or a TensorRT
  engine when the bundle has one built for this device), :func:`load_model`.

:class:`FeatureExtractor` only composes them. A modality that a window lacks (no face in view,
silence or no speech, no words, no speech-to-text model) is left out of the result, with the
reason in ``absent``; it is never a zero tensor. A modality the bundle has no encoder for is
named absent too ("the bundle has no face encoder"). Each present modality carries a
reliability in [0, 1] (``reliability``) that fusion weighs it by.

>>> extractor = FeatureExtractor.from_bundle(bundle, cfg, None, Stats(), has_video=True, has_audio=True)  # doctest: +SKIP
>>> out = extractor(window)                                                       # doctest: +SKIP
>>> sorted(out.features), out.absent                                              # doctest: +SKIP
([<Modality.AUDIO: 'audio'>], {'face': 'the bundle has no face encoder', ...})
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from edge_mer.config import Config
from edge_mer.errors import BundleError
from edge_mer.modality import Modality
from edge_mer.stream.sources import AudioChunk
from edge_mer.stream.stages.audio import MIN_AUDIO_COVERAGE, SILENCE_RMS_DBFS, AudioStage, check_audio_frontend
from edge_mer.stream.stages.base import Stage, WindowFeatures, encoder_model, load_model
from edge_mer.stream.stages.face import (FaceCountStage, FaceImageStage, FaceObserver, FaceTracker, LandmarkStage,
                                         crop_face, normalise_landmarks, uniform_indices, visual_stages)
from edge_mer.stream.stages.text import AsrWorker, TextStage
from edge_mer.stream.stats import Stats
from edge_mer.stream.windower import Window

if TYPE_CHECKING:
    from concurrent.futures import Future

    from edge_mer.bundle import Bundle

__all__ = [
    "AsrWorker", "AudioStage", "FaceCountStage", "FaceImageStage", "FaceObserver", "FaceTracker", "FeatureExtractor",
    "LandmarkStage", "MIN_AUDIO_COVERAGE", "SILENCE_RMS_DBFS", "Stage", "TextStage", "WindowFeatures",
    "check_audio_frontend", "crop_face", "encoder_model", "load_model", "normalise_landmarks", "uniform_indices",
]

log = logging.getLogger(__name__)


class FeatureExtractor:
    """Everything between a window and the fusion: the face counter and the modality stages."""

    def __init__(self, stages: list[Stage], absent_reason: dict[str, str], stats: Stats,
                 face_count: FaceCountStage | None = None, parallel: bool = False) -> None:
        self.stages = stages
        self.absent_reason = absent_reason  # modalities that can never be present this session
        self.stats = stats
        self.face_count = face_count
        # With runtime.parallel_stages the visual stages (which share the face observer, so run
        # in order among themselves) run on a worker thread while audio and text run here; each
        # writes only its own modality's entries, so the result does not depend on the timing.
        self._visual = [s for s in stages if s.modality in (Modality.FACE, Modality.LANDMARKS)]
        self._other = [s for s in stages if s not in self._visual]
        self._pool = None
        self._ahead: dict[int, tuple[Future, WindowFeatures]] = {}  # window index -> its visual part, started early
        if parallel and (self._visual or face_count is not None) and self._other:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-mer-visual")

    @property
    def modalities(self) -> tuple[Modality, ...]:
        """The modalities that can be present this session."""
        return tuple(s.modality for s in self.stages)

    def stage(self, m: Modality) -> Stage | None:
        """This session's stage for ``m`` (None when the modality is off)."""
        return next((s for s in self.stages if s.modality is m), None)

    @classmethod
    def from_bundle(cls, bundle: "Bundle", cfg: Config, vosk_model_dir: str | None, stats: Stats,
                    has_video: bool, has_audio: bool, realtime: bool = False) -> "FeatureExtractor":
        """Load what the bundle's modalities need; a modality that cannot run here (no
        speech-to-text model, no detector, no video) is logged once and left out of every
        window. ``realtime`` sources never wait on a slow stage (its queue drops instead)."""
        absent: dict[str, str] = {}
        for m in bundle.modalities:
            norm = bundle.encoder(m).get("input_norm")
            if norm is not None and m is not Modality.AUDIO:
                raise BundleError(f"bundle {bundle.root}: encoders.{m.value}.input_norm: per-user input "
                                  "normalisation is supported for audio (log-mel bins) only")
        text = TextStage.from_bundle(bundle, cfg, stats, vosk_model_dir, has_audio, realtime, absent)
        audio = AudioStage.from_bundle(bundle, cfg, stats, has_audio, absent)
        face_count, visual = visual_stages(bundle, cfg, stats, has_video, absent)
        stages = [*visual, *([audio] if audio else []), *([text] if text else [])]
        for m in Modality:
            if m not in bundle.modalities and (m in (Modality.AUDIO, Modality.TEXT) or has_video):
                absent[m.value] = f"the bundle has no {m.value} encoder"
        for m, why in absent.items():
            if not why.startswith("the bundle has no"):
                log.warning("%s modality off for this run: %s", m, why)
        return cls(stages, absent, stats, face_count, parallel=cfg.runtime.parallel_stages)

    def prefetch(self, window: Window) -> bool:
        """Start ``window``'s visual part now, on the worker thread, behind the windows already
        started there. The visual stages must see the windows in order, so every earlier window
        must have been started (or processed) first. The run loop calls this with the current
        window, then the next queued one, so that the face of window k + 1 overlaps the voice of
        window k. Nothing without the worker thread. True when this call started it."""
        if self._pool is None or window.index in self._ahead:
            return False
        out = WindowFeatures(absent=dict(self.absent_reason))
        self._ahead[window.index] = (self._pool.submit(self._visual_part, window, out), out)
        return True

    def __call__(self, window: Window) -> WindowFeatures:
        if self._pool is None:
            out = WindowFeatures(absent=dict(self.absent_reason))
            self._visual_part(window, out)
            for stage in self._other:
                stage(window, out)
            return out
        self.prefetch(window)
        visual, out = self._ahead.pop(window.index)
        try:
            for stage in self._other:
                stage(window, out)
        finally:
            visual.result()  # re-raises the visual stages' error, if any
        return out

    def _visual_part(self, window: Window, out: WindowFeatures) -> None:
        if self.face_count is not None:
            self.face_count(window, out)
        for stage in self._visual:
            stage(window, out)

    def close(self) -> None:
        """Stop the worker threads, the stages' too (idempotent)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for stage in self.stages:
            stage.close()

    def start(self) -> None:
        """Start the background stages (speech-to-text) before the source runs."""
        for stage in self.stages:
            stage.start()

    def push_audio(self, chunk: AudioChunk) -> None:
        """Every audio chunk of the source, as it arrives (called on the reader thread)."""
        for stage in self.stages:
            stage.push_audio(chunk)

    def end_audio(self) -> None:
        for stage in self.stages:
            stage.end_audio()

    def drops(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for stage in self.stages:
            out.update(stage.drops())
        return out
