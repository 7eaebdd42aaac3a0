"""Face detection for preprocessing: facenet-pytorch's MTCNN (P/R/O-Net weights ship in its
wheel), one face per frame (largest or tracked), square RGB crops of ``face.image_size``.

>>> detector = FaceDetector(FaceCfg())                                  # doctest: +SKIP
>>> [det] = detector.detect([rgb_frame]); det.box                       # doctest: +SKIP
array([150.1,  43.8, 246.1, 174.5], dtype=float32)
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_mer.config import FaceCfg
from edge_mer.errors import ConfigError
from edge_mer.stream.stages.face import crop_face  # the runtime's own crop: train/serve parity


@dataclass(frozen=True)
class Detection:
    """One selected face: box ``(x1, y1, x2, y2)`` in frame pixels, MTCNN score, 5 points."""

    box: np.ndarray  # float32 [4]
    score: float
    points5: np.ndarray  # float32 [5, 2]: eyes, nose, mouth corners


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    return inter / (_area(box[None])[0] + _area(boxes) - inter + 1e-9)


def select_face(boxes: np.ndarray, previous: np.ndarray | None, mode: str) -> int:
    """Index of the face to keep: the largest, or (``"tracked"``) the one overlapping the previous
    frame's face most, falling back to the largest when nothing overlaps."""
    if mode == "tracked" and previous is not None:
        overlap = _iou(previous, boxes)
        if overlap.max() > 0.3:
            return int(overlap.argmax())
    return int(_area(boxes).argmax())


class FaceDetector:
    """MTCNN over batches of RGB frames of one video, keeping one face per frame.

    ``max_side_px`` downsizes frames for detection only (boxes are mapped back to full
    resolution): a 1280x720 frame's image pyramid costs ~4x a 640-pixel one on CPU, and faces in
    talking-head video are far larger than MTCNN's 12-pixel minimum. Crops are cut from the full
    frame. Frames are passed in time order so ``select="tracked"`` can follow one face.
    """

    def __init__(self, cfg: FaceCfg, device: str = "cpu", max_side_px: int = 640) -> None:
        if cfg.select not in ("largest", "tracked"):
            raise ConfigError(f"face.select must be 'largest' or 'tracked', got {cfg.select!r}")
        from facenet_pytorch import MTCNN

        self.cfg = cfg
        self.max_side_px = max_side_px
        self._mtcnn = MTCNN(
            keep_all=True,
            min_face_size=cfg.min_face_size_px,
            thresholds=list(cfg.thresholds),
            factor=cfg.scale_factor,
            post_process=False,
            device=device,
        )
        self._previous: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the tracked face (call between videos)."""
        self._previous = None

    def detect(self, frames_rgb: list[np.ndarray]) -> list[Detection | None]:
        """One :class:`Detection` (or None: no face) per frame; all frames the same size."""
        if not frames_rgb:
            return []
        h, w = frames_rgb[0].shape[:2]
        scale = min(1.0, self.max_side_px / max(h, w))
        if scale < 1.0:
            size = (int(round(w * scale)), int(round(h * scale)))
            small = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames_rgb]
        else:
            small = frames_rgb
        # min_face_size is in full-resolution pixels; keep that meaning after downsizing
        self._mtcnn.min_face_size = max(12, int(round(self.cfg.min_face_size_px * scale)))
        boxes, probs, points = self._mtcnn.detect(small, landmarks=True)
        out: list[Detection | None] = []
        for b, p, pts in zip(boxes, probs, points):
            if b is None or len(b) == 0:
                out.append(None)
                continue
            b = np.asarray(b, dtype=np.float32) / scale
            k = select_face(b, self._previous, self.cfg.select)
            self._previous = b[k]
            out.append(Detection(box=b[k], score=float(p[k]), points5=np.asarray(pts[k], np.float32) / scale))
        return out

    def crop(self, frame_rgb: np.ndarray, detection: Detection) -> np.ndarray:
        return crop_face(frame_rgb, detection.box, self.cfg.margin_px, self.cfg.image_size)
