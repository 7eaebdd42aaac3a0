"""Stages: a window in, per-modality features out.

- faces: MTCNN every ``face.detect_every_n`` analysed frames, the box tracked in between; square
  crops (as preprocessing cuts them) for the face encoder; dlib 68-point landmarks inside the box;
- audio: the numpy log-mel of the window (the very features training computed with torchaudio),
  for windows above the silence floor in which the bundle's speech detector (Silero VAD,
  ``runtime.vad``) finds speech (:mod:`edge_mer.stream.speech`);
- text: the words of the run's speech-to-text (``text.asr``: Vosk, or Whisper tiny.en) whose
  times fall in the window (plus ``text.context_s`` before it), tokenised with the bundle's
  tokenizer;
- encoders: one :class:`~edge_mer.backends.base.Model` per modality (ONNX Runtime, or a TensorRT
  engine when the bundle has one built for this device).

A modality that a window lacks (no face in view, silence or no speech, no words, no speech-to-text model) is
left out of the result, with the reason in ``absent``; it is never a zero tensor.

>>> extractor = FeatureExtractor.from_bundle(bundle, cfg, None, Stats(), has_video=True, has_audio=True)  # doctest: +SKIP
>>> out = extractor(window)                                                       # doctest: +SKIP
>>> sorted(out.features), out.absent                                              # doctest: +SKIP
([<Modality.AUDIO: 'audio'>], {'text': 'no speech-to-text model (pass --asr whisper for built-in English, or --vosk-model DIR / text.vosk_model)'})
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edge_mer.config import AudioCfg, Config, FaceCfg, LandmarksCfg, RuntimeCfg, TextCfg, WindowCfg
from edge_mer.errors import BundleError, ConfigError, EdgeMerError
from edge_mer.face.landmarks import drop_jaw, normalise_minmax
from edge_mer.features.logmel import front_end
from edge_mer.modality import Modality
from edge_mer.stream.sources import AudioChunk, BoundedQueue
from edge_mer.stream.stats import Stats
from edge_mer.stream.usernorm import RunningNorm, user_norm_from_bundle
from edge_mer.stream.windower import Window

if TYPE_CHECKING:
    from edge_mer.backends.base import Model
    from edge_mer.bundle import Bundle
    from edge_mer.stream.speech import SpeechStream

log = logging.getLogger(__name__)

# A window whose audio RMS is below this is silence: the audio modality is left out. Speech near a
# microphone sits around -30 to -15 dBFS RMS; -60 dBFS leaves a wide margin for quiet talkers.
SILENCE_RMS_DBFS = -60.0
# A window with less real audio than this fraction (stream start, dropped chunks) has no audio.
MIN_AUDIO_COVERAGE = 0.5
# Gaps in the audio Vosk hears: filled with silence above this, a fresh session above the other.
_ASR_FILL_GAP_S = 0.05
_ASR_RESTART_GAP_S = 30.0
_END_OF_AUDIO = object()
# A tracked box is re-detected early when the tracker's match score falls below this.
_TRACK_MIN_SCORE = 0.5


# --------------------------------------------------------------------------- models


def load_model(bundle: "Bundle", entry: dict, target: str, runtime_cfg: RuntimeCfg) -> "Model":
    """The model for a bundle file entry: the TensorRT engine built for this device for ``target``
    (``encoders.audio``, ``heads.audio+text``) when ``runtime.backend == "tensorrt"`` and the
    bundle has one, else ONNX Runtime with ``runtime.providers``."""
    from edge_mer.backends.onnx_backend import OnnxModel

    if runtime_cfg.backend == "tensorrt":
        engine = _engine_for(bundle, target, runtime_cfg.precision)
        if engine is not None:
            from edge_mer.backends.trt_backend import TrtModel

            log.info("%s: TensorRT engine %s", target, engine["file"])
            return TrtModel.from_file(bundle.path(engine), runtime_cfg)
        log.info("%s: no TensorRT engine for this device in the bundle; using ONNX Runtime", target)
    elif runtime_cfg.backend != "onnxruntime":
        raise ConfigError(f"runtime.backend must be 'onnxruntime' or 'tensorrt', got {runtime_cfg.backend!r}")
    return OnnxModel.from_file(bundle.path(entry), runtime_cfg)


def _engine_for(bundle: "Bundle", target: str, precision: str) -> dict | None:
    """The bundle's engine for ``target`` built on this GPU with this TensorRT (engines are not
    portable), preferring ``precision`` when several were built."""
    from edge_mer.backends.trt_backend import probe_gpu

    gpu = probe_gpu()
    usable = [
        e for e in bundle.engines()
        if e.get("target") == target and e.get("device") == gpu.device
        and str(e.get("tensorrt_version")) == gpu.tensorrt_version
    ]
    preferred = [e for e in usable if e.get("precision") == precision]
    return (preferred or usable or [None])[0]


# --------------------------------------------------------------------------- faces


def normalise_landmarks(points68: np.ndarray, cfg: LandmarksCfg) -> np.ndarray:
    """``[T, 68, 2]`` pixel landmarks -> the encoder's input: jaw dropped (51 points) and min-max
    scaled over the window (``minmax_clip``) or per frame, as training's preprocessing does."""
    pts = drop_jaw(points68) if cfg.drop_jaw else np.asarray(points68, np.float32)
    per = {"minmax_clip": "clip", "minmax_frame": "frame"}.get(cfg.normalise)
    if per is None:
        raise BundleError(f"landmarks.normalise {cfg.normalise!r} is not known (minmax_clip or minmax_frame)")
    return normalise_minmax(pts, per).astype(np.float32)


def crop_face(frame_rgb: np.ndarray, box: np.ndarray, margin_px: int, size: int) -> np.ndarray:
    """A square crop centred on ``box`` (longest side plus ``margin_px`` each side), zero-padded
    outside the frame, resized to ``size``: the crop preprocessing cut for training."""
    import cv2

    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    half = max(box[2] - box[0], box[3] - box[1]) / 2.0 + margin_px
    x1, y1 = int(round(cx - half)), int(round(cy - half))
    side = max(1, int(round(2 * half)))
    h, w = frame_rgb.shape[:2]
    pad = max(0, -x1, -y1, x1 + side - w, y1 + side - h)
    if pad:
        frame_rgb = cv2.copyMakeBorder(frame_rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        x1, y1 = x1 + pad, y1 + pad
    crop = frame_rgb[y1 : y1 + side, x1 : x1 + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def uniform_indices(n: int, k: int) -> np.ndarray:
    """``k`` indices spread evenly over ``range(n)`` (repeating when ``n < k``)."""
    return np.round(np.linspace(0, n - 1, k)).astype(int) if n else np.zeros(0, int)


@dataclass
class FaceObservation:
    """What the face stage saw in one frame: the chosen face box (or None), crop and landmarks."""

    t_s: float
    seq: int
    box: np.ndarray | None = None
    n_faces: int = 0
    crop: np.ndarray | None = None  # RGB uint8 [S, S, 3]
    landmarks: np.ndarray | None = None  # float32 [68, 2] pixels
    detected: bool = False  # True when MTCNN ran on this frame, False when the box was tracked


class FaceTracker:
    """Per-session face state: MTCNN on every Nth frame, template tracking in between.

    Between detections the face patch of the last frame is searched for (normalised
    cross-correlation) around its previous place; a weak match triggers a fresh detection."""

    def __init__(self, detector, cfg: FaceCfg) -> None:
        self.detector = detector
        self.cfg = cfg
        self._since_detect = cfg.detect_every_n  # the first frame is always detected
        self._box: np.ndarray | None = None
        self._n_faces = 0
        self._template: np.ndarray | None = None

    def update(self, bgr: np.ndarray, stats: Stats) -> tuple[np.ndarray | None, int, bool]:
        """``(box or None, faces in view, detected)`` for the next frame."""
        import cv2

        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        if self._since_detect < self.cfg.detect_every_n - 1:
            if self._box is None:
                # No face at the last detection: none until the next one (an empty scene costs
                # one detection every N frames, not one per frame).
                self._since_detect += 1
                return None, 0, False
            with stats.time("track"):
                tracked = self._track(gray)
            if tracked is not None:
                self._since_detect += 1
                self._box = tracked
                return tracked, self._n_faces, False
        with stats.time("face_detect"):
            boxes, _, _ = self.detector.detect(bgr)
        self._since_detect = 0
        self._n_faces = len(boxes)
        self._box = boxes[0].copy() if len(boxes) else None  # MTCNN orders the largest first
        self._template = self._patch(gray, self._box) if self._box is not None else None
        return self._box, self._n_faces, True

    @staticmethod
    def _patch(gray: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        h, w = gray.shape
        x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
        x2, y2 = min(w, int(box[2])), min(h, int(box[3]))
        if x2 - x1 < 8 or y2 - y1 < 8:
            return None
        return gray[y1:y2, x1:x2].copy()

    def _track(self, gray: np.ndarray) -> np.ndarray | None:
        import cv2

        if self._template is None:
            return None
        box = self._box
        th, tw = self._template.shape
        h, w = gray.shape
        # Search a region half a face wider on every side than the last box.
        mx, my = tw // 2, th // 2
        x0, y0 = max(0, int(box[0]) - mx), max(0, int(box[1]) - my)
        x1, y1 = min(w, int(box[0]) + tw + mx), min(h, int(box[1]) + th + my)
        region = gray[y0:y1, x0:x1]
        if region.shape[0] < th or region.shape[1] < tw:
            return None
        scores = cv2.matchTemplate(region, self._template, cv2.TM_CCOEFF_NORMED)
        _, best, _, (bx, by) = cv2.minMaxLoc(scores)
        if best < _TRACK_MIN_SCORE:
            return None
        dx, dy = x0 + bx - int(box[0]), y0 + by - int(box[1])
        return (box + np.array([dx, dy, dx, dy], np.float32)).astype(np.float32)


class FaceStage:
    """Face boxes, crops and landmarks for a window's frames, each frame processed once."""

    def __init__(self, tracker: FaceTracker | None, predictor, face_cfg: FaceCfg | None,
                 landmarks_cfg: LandmarksCfg | None, want_crops: bool, want_landmarks: bool) -> None:
        self.tracker = tracker
        self.predictor = predictor
        self.face_cfg = face_cfg or FaceCfg()
        self.landmarks_cfg = landmarks_cfg or LandmarksCfg()
        self.want_crops = want_crops
        self.want_landmarks = want_landmarks and predictor is not None
        self._cache: dict[int, FaceObservation] = {}

    def observe(self, window: Window, stats: Stats) -> list[FaceObservation]:
        """Observations of the window's frames, in time order (cached across overlapping windows)."""
        out = []
        for frame in window.frames:
            obs = self._cache.get(frame.seq)
            if obs is None:
                obs = self._observe(frame, stats)
                self._cache[frame.seq] = obs
            out.append(obs)
        # Frames before this window never come back: the windows only move forward.
        first = window.frames[0].seq if window.frames else None
        if first is not None:
            self._cache = {k: v for k, v in self._cache.items() if k >= first}
        return out

    def _observe(self, frame, stats: Stats) -> FaceObservation:
        obs = FaceObservation(frame.t_s, frame.seq)
        if self.tracker is None:
            return obs
        box, n, detected = self.tracker.update(frame.bgr, stats)
        obs.n_faces, obs.detected = n, detected
        if box is None:
            return obs
        obs.box = box
        rgb = np.ascontiguousarray(frame.bgr[:, :, ::-1])
        if self.want_crops:
            obs.crop = crop_face(rgb, box, self.face_cfg.margin_px, self.face_cfg.image_size)
        if self.want_landmarks:
            with stats.time("landmarks"):
                obs.landmarks = self.predictor.predict(rgb, box)
        return obs


# --------------------------------------------------------------------------- text


class TextStage:
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

    def _run(self) -> None:
        try:
            while True:
                chunk = self.queue.get(timeout=0.1)
                if chunk is None:
                    continue
                with self._cond:
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


# --------------------------------------------------------------------------- all together


@dataclass
class WindowFeatures:
    """A window's features per modality, and what the sinks may show about it."""

    features: dict[Modality, np.ndarray] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)  # modality -> why it is missing
    faces: int = 0
    box: np.ndarray | None = None  # last face box of the window (for --display)
    landmarks: np.ndarray | None = None  # last landmarks of the window (for --display)
    text: str = ""


class FeatureExtractor:
    """Everything between a window and the fusion: face, audio and text stages and the encoders."""

    def __init__(self, modalities: tuple[Modality, ...], encoders: dict[Modality, "Model"], audio_cfg: AudioCfg,
                 face_cfg: FaceCfg, landmarks_cfg: LandmarksCfg, face_stage: FaceStage | None,
                 text_stage: TextStage | None, absent_reason: dict[str, str], stats: Stats) -> None:
        self.modalities = modalities
        self.encoders = encoders
        self.audio_cfg = audio_cfg
        self.face_cfg = face_cfg
        self.landmarks_cfg = landmarks_cfg
        self.face_stage = face_stage
        self.text_stage = text_stage
        self.absent_reason = absent_reason  # modalities that can never be present this session
        self.stats = stats
        # Encoders pretrained on per-speaker standardised inputs: their input's running per-user
        # statistics (log-mel bins for audio), see edge_mer.stream.usernorm.
        self.input_norms: dict[Modality, RunningNorm] = {}
        # Speech detection (runtime.vad and the bundle's detectors.vad): this session's detector
        # stream, and the fraction of a window's frames that must be speech for its audio to count.
        self.speech: "SpeechStream | None" = None
        self.vad_min_fraction = 0.0

    @classmethod
    def from_bundle(cls, bundle: "Bundle", cfg: Config, vosk_model_dir: str | None, stats: Stats,
                    has_video: bool, has_audio: bool, realtime: bool = False) -> "FeatureExtractor":
        """Load what the bundle's modalities need; a modality that cannot run here (no Vosk
        model, no detector, no video) is logged once and left out of every window. ``realtime``
        sources never wait on a slow stage (its queue drops instead)."""
        mods = bundle.modalities
        absent: dict[str, str] = {}
        audio_cfg = bundle.feature_cfg(Modality.AUDIO) if Modality.AUDIO in mods else cfg.audio
        face_cfg = bundle.feature_cfg(Modality.FACE) if Modality.FACE in mods else cfg.face
        lm_cfg = bundle.feature_cfg(Modality.LANDMARKS) if Modality.LANDMARKS in mods else cfg.landmarks
        text_cfg = bundle.feature_cfg(Modality.TEXT) if Modality.TEXT in mods else cfg.text

        text_stage = None
        if Modality.TEXT in mods:
            asr, why = _speech_to_text(cfg, vosk_model_dir, audio_cfg.sample_rate_hz) if has_audio else (None, "no audio in the source")
            if asr is None:
                absent["text"] = why
            else:
                from edge_mer.text import TextTokenizer

                tok_entry = bundle.encoder(Modality.TEXT).get("tokenizer")
                if tok_entry is None:
                    raise BundleError(f"bundle {bundle.root}: encoders.text has no tokenizer file entry")
                text_stage = TextStage(
                    asr,
                    TextTokenizer.from_file(bundle.path(tok_entry), text_cfg.max_tokens),
                    # the window's context comes from this run's config; the tokens from the bundle's
                    dataclasses.replace(text_cfg, context_s=cfg.text.context_s),
                    audio_cfg.sample_rate_hz,
                    BoundedQueue(cfg.runtime.queue_size, cfg.runtime.drop_policy),
                    block=not realtime,
                    # A real-time window waits for the words at most one hop, then uses the words so far.
                    wait_s=bundle.window().hop_s if realtime else None,
                    stats=stats,
                    window=bundle.window(),
                )
        if Modality.AUDIO in mods and not has_audio:
            absent["audio"] = "no audio in the source"

        face_stage = None
        visual = [m for m in (Modality.FACE, Modality.LANDMARKS) if m in mods]
        detectors = bundle.manifest.get("detectors", {})
        if has_video and "mtcnn" in detectors:
            from edge_mer.face.mtcnn import MTCNN

            tracker = FaceTracker(MTCNN.from_bundle(bundle, cfg.runtime, face_cfg), face_cfg)
            predictor = None
            if Modality.LANDMARKS in mods:
                predictor = _landmark_predictor(bundle, absent)
            face_stage = FaceStage(tracker, predictor, face_cfg, lm_cfg, Modality.FACE in mods, predictor is not None)
        else:
            why = "no video in the source" if not has_video else "the bundle has no face detector"
            for m in visual:
                absent[m.value] = why

        encoders = {}
        for m in mods:
            if m.value in absent:
                continue
            precision, entry = bundle.encoder_variant(m, cfg.runtime.precision)
            encoders[m] = load_model(bundle, entry, f"encoders.{m.value}", cfg.runtime)
            log.info("encoder %s: %s (%s)", m.value, entry["file"], precision)
        for m, why in absent.items():
            log.warning("%s modality off for this run: %s", m, why)
        if Modality.AUDIO in mods:
            check_audio_frontend(audio_cfg, f"bundle {bundle.root}: features.audio")
        out = cls(mods, encoders, audio_cfg, face_cfg, lm_cfg, face_stage, text_stage, absent, stats)
        if Modality.AUDIO in encoders:
            out.speech = _speech_stream(bundle, cfg.runtime, audio_cfg.sample_rate_hz)
            out.vad_min_fraction = cfg.runtime.vad_min_speech_fraction
        for m in encoders:
            norm = bundle.encoder(m).get("input_norm")
            if norm is None:
                continue
            where = f"bundle {bundle.root}: encoders.{m.value}.input_norm"
            if m is not Modality.AUDIO:
                raise BundleError(f"{where}: per-user input normalisation is supported for audio (log-mel bins) only")
            out.input_norms[m] = user_norm_from_bundle(bundle, norm, audio_cfg.n_mels, where, cfg.runtime)
            log.info("encoder %s: input standardised per user (%s)", m.value,
                     "adapting" if cfg.runtime.user_norm else "population statistics")
        return out

    def __call__(self, window: Window) -> WindowFeatures:
        out = WindowFeatures(absent=dict(self.absent_reason))
        if self.face_stage is not None:
            self._faces(window, out)
        if Modality.AUDIO in self.encoders:
            self._audio(window, out)
        if self.text_stage is not None:
            self._text(window, out)
        return out

    def _encode(self, m: Modality, feeds: dict[str, np.ndarray]) -> np.ndarray:
        with self.stats.time(f"encode_{m.value}"):
            return self.encoders[m].run(feeds)["feature"].astype(np.float32)

    def _faces(self, window: Window, out: WindowFeatures) -> None:
        obs = self.face_stage.observe(window, self.stats)
        with_face = [o for o in obs if o.box is not None]
        out.faces = max((o.n_faces for o in obs), default=0)
        if with_face:
            out.box = with_face[-1].box
            out.landmarks = next((o.landmarks for o in reversed(with_face) if o.landmarks is not None), None)
        reason = "no frames in the window" if not obs else "no face in view"
        if Modality.FACE in self.encoders:
            crops = [o.crop for o in with_face if o.crop is not None]
            if crops:
                idx = uniform_indices(len(crops), self.face_cfg.frames_per_window)
                clip = np.stack([crops[i] for i in idx]).astype(np.float32) / 255.0  # RGB in [0, 1]
                out.features[Modality.FACE] = self._encode(Modality.FACE, {"face": clip.transpose(0, 3, 1, 2)[None]})
            else:
                out.absent["face"] = reason
        if Modality.LANDMARKS in self.encoders:
            marks = [o.landmarks for o in with_face if o.landmarks is not None]
            if marks:
                idx = uniform_indices(len(marks), self.landmarks_cfg.frames_per_window)
                pts = normalise_landmarks(np.stack([marks[i] for i in idx]), self.landmarks_cfg)
                out.features[Modality.LANDMARKS] = self._encode(Modality.LANDMARKS, {"landmarks": pts[None]})
            else:
                out.absent["landmarks"] = reason

    def _audio(self, window: Window, out: WindowFeatures) -> None:
        audio = window.audio
        if audio is None or window.audio_coverage < MIN_AUDIO_COVERAGE:
            out.absent["audio"] = "no audio in the window"
            return
        if not np.all(np.isfinite(audio)):
            # A damaged file or driver can hand over NaN/Inf: no prediction beats a made-up one.
            out.absent["audio"] = "non-finite samples (NaN or Inf) in the window"
            return
        rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
        if rms <= 0 or 20 * np.log10(rms) < SILENCE_RMS_DBFS:
            out.absent["audio"] = "silence"
            return
        if self.speech is not None:
            # Noise, music, breathing: no speech, no emotion read from it (and the per-user input
            # statistics, updated in the log-mel step below, never see it).
            with self.stats.time("vad"):
                fraction = self.speech(audio, int(round(window.t_start_s * self.speech.sample_rate_hz)))
            if fraction < self.vad_min_fraction:
                out.absent["audio"] = "no speech"
                return
        with self.stats.time("logmel"):
            mel = front_end(audio, self.audio_cfg)
            if Modality.AUDIO in self.input_norms:
                # The window's frames update the person's per-bin statistics as one window.
                mel = self.input_norms[Modality.AUDIO](mel.T).T
        out.features[Modality.AUDIO] = self._encode(Modality.AUDIO, {"logmel": mel[None]})

    def _text(self, window: Window, out: WindowFeatures) -> None:
        with self.stats.time("asr_wait"):
            words = self.text_stage.words(window)
        out.text = " ".join(w.text for w in words)
        if not words:
            out.absent["text"] = "no words"
            return
        feeds = self.text_stage.tokenizer.encode(out.text)
        out.features[Modality.TEXT] = self._encode(Modality.TEXT, feeds)

    def start(self) -> None:
        """Start the background stages (speech-to-text) before the source runs."""
        if self.text_stage is not None:
            self.text_stage.start()

    def push_audio(self, chunk: AudioChunk) -> None:
        """Every audio chunk of the source, as it arrives (called on the reader thread)."""
        if self.text_stage is not None:
            self.text_stage.push(chunk)

    def end_audio(self) -> None:
        if self.text_stage is not None:
            self.text_stage.end()

    def drops(self) -> dict[str, int]:
        return {"asr_chunks": self.text_stage.queue.dropped} if self.text_stage is not None else {}


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
        return None, ("no speech-to-text model (pass --asr whisper for built-in English, "
                      "or --vosk-model DIR / text.vosk_model)")
    from edge_mer.backends.vosk_asr import VoskAsr

    return VoskAsr.from_dir(model_dir, sample_rate_hz), ""


def _speech_stream(bundle: "Bundle", runtime: RuntimeCfg, sample_rate_hz: int) -> "SpeechStream | None":
    """The session's speech detector stream, or None (``runtime.vad`` off, or a bundle without
    ``detectors.vad``: then only the silence floor drops windows, logged once)."""
    if not runtime.vad:
        log.info("speech detection off (runtime.vad = false): only silent windows lose their audio")
        return None
    if not 0.0 < runtime.vad_threshold < 1.0:
        raise ConfigError(f"runtime.vad_threshold must be a probability between 0 and 1 (exclusive), got {runtime.vad_threshold}")
    if not 0.0 <= runtime.vad_min_speech_fraction <= 1.0:
        raise ConfigError(f"runtime.vad_min_speech_fraction must be between 0 and 1, got {runtime.vad_min_speech_fraction}")
    entry = bundle.manifest.get("detectors", {}).get("vad")
    if entry is None:
        # Info, not a warning: bundles made before the detector existed are still good bundles.
        log.info("bundle %s has no speech detector (detectors.vad): only silent windows lose their audio, "
                 "noise and music are read as speech", bundle.name)
        return None
    from edge_mer.stream.speech import SpeechDetector

    try:
        stream = SpeechDetector.from_file(bundle.path(entry), runtime).create_stream(sample_rate_hz, runtime.vad_threshold)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; set runtime.vad=false to run without speech detection") from None
    log.info("speech detection: %s (frame threshold %g, speech in >= %g of a window)", entry["file"],
             runtime.vad_threshold, runtime.vad_min_speech_fraction)
    return stream


def check_audio_frontend(cfg: AudioCfg, where: str) -> None:
    """One line naming the problem when the audio front end cannot serve the encoder."""
    if cfg.frontend not in ("logmel", "whisper"):
        raise BundleError(f"{where}: frontend must be 'logmel' or 'whisper', got {cfg.frontend!r}")
    if cfg.frontend == "whisper" and (cfg.sample_rate_hz != 16000 or cfg.n_mels != 80 or cfg.hop_length != 160):
        raise BundleError(f"{where}: the whisper front end is 16 kHz, 80 bins, hop 160; the bundle says "
                          f"{cfg.sample_rate_hz} Hz, {cfg.n_mels} bins, hop {cfg.hop_length}")


def _landmark_predictor(bundle: "Bundle", absent: dict[str, str]):
    from edge_mer.face.landmarks import LandmarkPredictor

    entry = bundle.manifest.get("detectors", {}).get("landmarks")
    try:
        return LandmarkPredictor(bundle.path(entry) if isinstance(entry, dict) else None)
    except EdgeMerError as exc:
        absent["landmarks"] = str(exc)
        return None
