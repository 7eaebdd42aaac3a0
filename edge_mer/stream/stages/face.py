"""The visual stages: face detection and tracking (shared), the face-image and landmark stages.

- :class:`FaceObserver`: MTCNN every ``face.detect_every_n`` analysed frames, the box tracked in
  between; square crops (as preprocessing cuts them) for the face encoder; dlib 68-point
  landmarks inside the box; each frame observed once, whichever stage asks first;
- :class:`FaceImageStage`: ``face.frames_per_window`` crops, uniformly sampled from the window's
  frames with a face, through the face encoder; reliability = the product of four parts, each in
  [0, 1] and each in the event's ``reliability_parts``: ``coverage`` (the fraction of the window's
  frames with a face), ``size`` (``min(1, face side / face.image_size)``: a face smaller than the
  encoder's input is upsampled, less to read), ``frontal`` (``cos`` of the head's yaw from
  MTCNN's five points: a face turned away counts less) and ``sharpness`` (from the crops' blur,
  ``face.blur_sharp`` .. ``face.blur_max``); :mod:`edge_mer.face.quality`;
- :class:`LandmarkStage`: ``landmarks.frames_per_window`` landmark frames through the landmark
  encoder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edge_mer.config import Config, FaceCfg, LandmarksCfg
from edge_mer.errors import BundleError, EdgeMerError
from edge_mer.face.landmarks import drop_jaw, normalise_minmax
from edge_mer.face.quality import crop_blur, frontal_from_points, sharpness
from edge_mer.modality import Modality
from edge_mer.stream.stages.base import Stage, WindowFeatures, encoder_model
from edge_mer.stream.stats import Stats
from edge_mer.stream.windower import Window

if TYPE_CHECKING:
    from edge_mer.bundle import Bundle

log = logging.getLogger(__name__)

# A tracked box is re-detected early when the tracker's match score falls below this.
_TRACK_MIN_SCORE = 0.5


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
    frontal: float = 1.0  # cos(yaw) at the face's last detection (edge_mer.face.quality)


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
        self.frontal = 1.0  # the tracked face's cos(yaw), from its last detection's five points

    def update(self, bgr: np.ndarray, stats: Stats) -> tuple[np.ndarray | None, int, bool]:
        """``(box or None, faces in view, detected)`` for the next frame; :attr:`frontal` is the
        face's pose at its last detection."""
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
            boxes, _, points = self.detector.detect(bgr)
        self._since_detect = 0
        self._n_faces = len(boxes)
        self._box = boxes[0].copy() if len(boxes) else None  # MTCNN orders the largest first
        self.frontal = frontal_from_points(points[0]) if len(boxes) else 1.0
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


class FaceObserver:
    """Face boxes, crops and landmarks for a window's frames, each frame processed once (shared
    by the face-image and landmark stages: one detection pass serves both)."""

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
        obs.box, obs.frontal = box, self.tracker.frontal
        rgb = np.ascontiguousarray(frame.bgr[:, :, ::-1])
        if self.want_crops:
            obs.crop = crop_face(rgb, box, self.face_cfg.margin_px, self.face_cfg.image_size)
        if self.want_landmarks:
            with stats.time("landmarks"):
                obs.landmarks = self.predictor.predict(rgb, box)
        return obs


def _reason(obs: list[FaceObservation]) -> str:
    return "no frames in the window" if not obs else "no face in view"


class FaceImageStage(Stage):
    """Face crops of a window -> the face encoder's feature."""

    modality = Modality.FACE

    def __init__(self, encoder, observer: FaceObserver, cfg: FaceCfg, stats: Stats) -> None:
        super().__init__(encoder, stats)
        self.observer, self.cfg = observer, cfg

    def __call__(self, window: Window, out: WindowFeatures) -> None:
        obs = self.observer.observe(window, self.stats)
        crops = [o for o in obs if o.box is not None and o.crop is not None]
        if not crops:
            out.absent["face"] = _reason(obs)
            return
        idx = uniform_indices(len(crops), self.cfg.frames_per_window)
        clip = np.stack([crops[i].crop for i in idx]).astype(np.float32) / 255.0  # RGB in [0, 1]
        out.features[Modality.FACE] = self.encode({"face": clip.transpose(0, 3, 1, 2)[None]})
        side = float(np.median([max(o.box[2] - o.box[0], o.box[3] - o.box[1]) for o in crops]))
        with self.stats.time("face_quality"):
            # Three of the window's crops (first, middle, last) are enough for a median.
            blur = float(np.median([crop_blur(crops[i].crop) for i in np.unique(idx[[0, len(idx) // 2, -1]])]))
        parts = {"coverage": len(crops) / len(obs), "size": min(1.0, side / self.cfg.image_size),
                 "frontal": float(np.median([crops[i].frontal for i in idx])),
                 "sharpness": sharpness(blur, self.cfg.blur_sharp, self.cfg.blur_max)}
        out.reliability_parts[Modality.FACE] = {k: round(v, 3) for k, v in parts.items()}
        out.reliability[Modality.FACE] = round(float(np.prod(list(parts.values()))), 3)


class LandmarkStage(Stage):
    """Landmarks of a window's faces -> the landmark encoder's feature."""

    modality = Modality.LANDMARKS

    def __init__(self, encoder, observer: FaceObserver, cfg: LandmarksCfg, stats: Stats) -> None:
        super().__init__(encoder, stats)
        self.observer, self.cfg = observer, cfg

    def __call__(self, window: Window, out: WindowFeatures) -> None:
        obs = self.observer.observe(window, self.stats)
        marks = [o.landmarks for o in obs if o.box is not None and o.landmarks is not None]
        if not marks:
            out.absent["landmarks"] = _reason(obs)
            return
        idx = uniform_indices(len(marks), self.cfg.frames_per_window)
        pts = normalise_landmarks(np.stack([marks[i] for i in idx]), self.cfg)
        out.features[Modality.LANDMARKS] = self.encode({"landmarks": pts[None]})
        out.reliability[Modality.LANDMARKS] = round(len(marks) / len(obs), 3)


class FaceCountStage:
    """Not a modality: the face count, box and landmarks every event shows (``faces``, and the
    ``--display`` overlay), from the same observations. Runs first, so the observer's work is
    shared with the modality stages."""

    def __init__(self, observer: FaceObserver, stats: Stats) -> None:
        self.observer, self.stats = observer, stats

    def __call__(self, window: Window, out: WindowFeatures) -> None:
        obs = self.observer.observe(window, self.stats)
        with_face = [o for o in obs if o.box is not None]
        out.faces = max((o.n_faces for o in obs), default=0)
        if with_face:
            out.box = with_face[-1].box
            out.landmarks = next((o.landmarks for o in reversed(with_face) if o.landmarks is not None), None)


def visual_stages(bundle: "Bundle", cfg: Config, stats: Stats, has_video: bool,
                  absent: dict[str, str]) -> tuple[FaceCountStage | None, list[Stage]]:
    """The face counter and the face-image / landmark stages this bundle and source allow; a
    modality that cannot run gets its reason in ``absent``."""
    mods = bundle.modalities
    face_cfg = bundle.feature_cfg(Modality.FACE) if Modality.FACE in mods else cfg.face
    lm_cfg = bundle.feature_cfg(Modality.LANDMARKS) if Modality.LANDMARKS in mods else cfg.landmarks
    visual = [m for m in (Modality.FACE, Modality.LANDMARKS) if m in mods]
    if not has_video or "mtcnn" not in bundle.manifest.get("detectors", {}):
        why = "no video in the source" if not has_video else "the bundle has no face detector"
        for m in visual:
            absent[m.value] = why
        return None, []
    from edge_mer.face.mtcnn import MTCNN

    tracker = FaceTracker(MTCNN.from_bundle(bundle, cfg.runtime, face_cfg), face_cfg)
    predictor = _landmark_predictor(bundle, absent) if Modality.LANDMARKS in mods else None
    observer = FaceObserver(tracker, predictor, face_cfg, lm_cfg, Modality.FACE in mods, predictor is not None)
    stages: list[Stage] = []
    if Modality.FACE in mods:
        stages.append(FaceImageStage(encoder_model(bundle, Modality.FACE, cfg.runtime), observer, face_cfg, stats))
    if predictor is not None:
        stages.append(LandmarkStage(encoder_model(bundle, Modality.LANDMARKS, cfg.runtime), observer, lm_cfg, stats))
    return FaceCountStage(observer, stats), stages


def _landmark_predictor(bundle: "Bundle", absent: dict[str, str]):
    from edge_mer.face.landmarks import LandmarkPredictor

    entry = bundle.manifest.get("detectors", {}).get("landmarks")
    try:
        return LandmarkPredictor(bundle.path(entry) if isinstance(entry, dict) else None)
    except EdgeMerError as exc:
        absent["landmarks"] = str(exc)
        return None
