"""MTCNN face detection without torch: the three-stage cascade in numpy over any back-end.

The P-, R- and O-Net run as ONNX (or TensorRT) models exported from facenet-pytorch's weights by
``export/mtcnn_export.py``; this module ports the glue around them (image pyramid, area
resampling, score thresholds, non-maximum suppression, box regression and squaring) so that
:meth:`MTCNN.detect` returns what ``facenet_pytorch.MTCNN.detect(rgb, landmarks=True)`` returns
for the same settings, to within a pixel (tests/test_mtcnn.py checks this on real faces).

Differences from facenet-pytorch, on purpose: the input is a BGR ``uint8`` frame (OpenCV's order);
no face gives empty arrays rather than ``None``; and a candidate box whose crop is empty is
dropped together with its crop (facenet-pytorch drops only the crop, which misaligns boxes and
scores in that rare case).

>>> det = MTCNN.from_bundle(Bundle.load("models/default"), RuntimeCfg())   # doctest: +SKIP
>>> boxes, probs, points = det.detect(cv2.imread("face.png"))               # doctest: +SKIP
>>> boxes.shape, probs.shape, points.shape                                  # doctest: +SKIP
((1, 4), (1,), (1, 5, 2))
"""

from __future__ import annotations

import functools

import logging
from typing import TYPE_CHECKING

import numpy as np

from edge_mer.config import FaceCfg, RuntimeCfg
from edge_mer.errors import BundleError, MediaError

if TYPE_CHECKING:
    from edge_mer.backends.base import Model
    from edge_mer.bundle import Bundle

log = logging.getLogger(__name__)

# Constants of the MTCNN paper / facenet-pytorch: P-Net sees 12x12 cells with stride 2, the
# refinement stages read 24x24 and 48x48 crops, pixels are scaled to (x - 127.5) / 128.
_CELL = 12
_STRIDE = 2
_RNET_SIDE = 24
_ONET_SIDE = 48
_PIXEL_MEAN = 127.5
_PIXEL_SCALE = 0.0078125
# IoU thresholds of the cascade's suppression steps (facenet-pytorch's values).
_NMS_PER_SCALE = 0.5
_NMS_STAGE = 0.7


# --------------------------------------------------------------------------- numpy kernels


@functools.lru_cache(maxsize=256)
def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] averaging matrix of adaptive average pooling (torch's "area" resize):
    output i averages inputs floor(i*n_in/n_out) .. ceil((i+1)*n_in/n_out) - 1. Cached (the
    pyramid's sizes repeat every frame) and read-only, since callers share it."""
    mat = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = ((i + 1) * n_in + n_out - 1) // n_out
        mat[i, start:end] = 1.0 / (end - start)
    mat.flags.writeable = False
    return mat


def area_resize(chw: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a [C, H, W] float32 image by area averaging (separable, so two matrix products)."""
    rows = _area_matrix(chw.shape[1], height)
    cols = _area_matrix(chw.shape[2], width)
    return (rows @ chw @ cols.T).astype(np.float32, copy=False)


def nms_iou(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS by IoU with areas (x2-x1)*(y2-y1) (torchvision.ops.nms semantics): indices of
    the kept boxes, best score first; a box goes when its IoU with a kept one exceeds threshold."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[pos + 1:]
        rest = rest[~suppressed[rest]]
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[iou > threshold]] = True
    return np.asarray(keep, np.int64)


def nms_min(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """NMS of the final stage: overlap = intersection / smaller area with inclusive pixel areas
    ((x2-x1+1)*(y2-y1+1)), so a small box inside a big one is suppressed; keeps overlap ≤ threshold."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)
    keep = []
    while order.size > 0:
        i = order[-1]
        keep.append(i)
        rest = order[:-1]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        overlap = (w * h) / np.minimum(areas[i], areas[rest])
        order = rest[overlap <= threshold]
    return np.asarray(keep, np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square of its longer side around the same centre (MTCNN's rerec)."""
    boxes = boxes.copy()
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = np.maximum(w, h)
    boxes[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    boxes[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply the R-/O-Net box offsets, relative to the inclusive box size."""
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, 0] += reg[:, 0] * w
    boxes[:, 1] += reg[:, 1] * h
    boxes[:, 2] += reg[:, 2] * w
    boxes[:, 3] += reg[:, 3] * h
    return boxes


class MTCNN:
    """Three-stage MTCNN face detector; networks behind the back-end-neutral Model interface.

    ``detect`` returns ``(boxes, probs, points)``: float32 ``[N, 4]`` boxes ``x1, y1, x2, y2`` in
    pixels of the input frame, ``[N]`` face probabilities and ``[N, 5, 2]`` landmark points (eyes,
    nose, mouth corners). With ``cfg.select == "largest"`` faces are ordered by box area, largest
    first (facenet-pytorch's ``select_largest=True``), otherwise by the cascade's score order.

    >>> det = MTCNN(pnet, rnet, onet, FaceCfg(min_face_size_px=40))        # doctest: +SKIP
    >>> boxes, probs, points = det.detect(bgr_frame)                        # doctest: +SKIP
    """

    def __init__(self, pnet: "Model", rnet: "Model", onet: "Model", cfg: FaceCfg) -> None:
        if cfg.min_face_size_px < _CELL:
            raise ValueError(f"face.min_face_size_px={cfg.min_face_size_px}: MTCNN cannot find faces below {_CELL} px")
        if not 0.0 < cfg.scale_factor < 1.0:
            raise ValueError(f"face.scale_factor={cfg.scale_factor}: the pyramid step must be between 0 and 1")
        self.pnet, self.rnet, self.onet = pnet, rnet, onet
        self.cfg = cfg

    @classmethod
    def from_bundle(cls, bundle: "Bundle", runtime_cfg: RuntimeCfg, face_cfg: FaceCfg | None = None) -> "MTCNN":
        """Load the bundle's ``detectors.mtcnn`` networks. With ``runtime.backend = "tensorrt"``
        a TensorRT engine built for this device (target ``detectors.mtcnn.<net>``) is used when
        the bundle lists one; otherwise ONNX Runtime with ``runtime.providers``."""
        from edge_mer.backends.onnx_backend import OnnxModel

        entries = bundle.manifest.get("detectors", {}).get("mtcnn")
        if not isinstance(entries, dict) or not all(k in entries for k in ("pnet", "rnet", "onet")):
            raise BundleError(f"bundle {bundle.root}: has no MTCNN detector (detectors.mtcnn.pnet/rnet/onet)")
        engines = {e.get("target"): e for e in bundle.engines()} if runtime_cfg.backend == "tensorrt" else {}
        nets = {}
        for name in ("pnet", "rnet", "onet"):
            engine = engines.get(f"detectors.mtcnn.{name}")
            if engine is not None:
                from edge_mer.backends.trt_backend import TrtModel

                nets[name] = TrtModel.from_file(bundle.path(engine), runtime_cfg)
            else:
                nets[name] = OnnxModel.from_file(bundle.path(entries[name]), runtime_cfg)
        if face_cfg is None:
            face_cfg = bundle.feature_cfg("face") if "face" in bundle.manifest["features"] else FaceCfg()
        return cls(nets["pnet"], nets["rnet"], nets["onet"], face_cfg)

    # ------------------------------------------------------------------ stages

    def min_face_px(self, height: int, width: int) -> float:
        """The smallest face looked for in a frame this size: ``face.min_face_size_px``, or
        ``face.min_face_fraction`` of the shorter side when that is larger (the image pyramid, and
        so the cost, scales with the frame over this size: 112 ms vs 47 ms on a 720p frame)."""
        return max(float(self.cfg.min_face_size_px), self.cfg.min_face_fraction * min(height, width))

    def _scales(self, height: int, width: int) -> list[float]:
        scale = _CELL / self.min_face_px(height, width)
        side = min(height, width) * scale
        scales = []
        while side >= _CELL:
            scales.append(scale)
            scale *= self.cfg.scale_factor
            side *= self.cfg.scale_factor
        return scales

    def _proposals(self, img: np.ndarray) -> np.ndarray:
        """Stage 1: P-Net over the pyramid → [K, 9] (x1, y1, x2, y2, score, 4 offsets)."""
        _, height, width = img.shape
        per_scale = []
        for scale in self._scales(height, width):
            resized = area_resize(img, int(height * scale + 1), int(width * scale + 1))
            x = ((resized - _PIXEL_MEAN) * _PIXEL_SCALE)[None]
            out = self.pnet.run({"image": x})
            reg, prob = out["reg"][0], out["prob"][0, 1]
            ys, xs = np.nonzero(prob >= self.cfg.thresholds[0])
            if len(ys) == 0:
                continue
            cells = np.stack([xs, ys], axis=1).astype(np.float32)
            # Floor of float32 maths, as in facenet-pytorch, so box edges land on the same pixel.
            top_left = np.floor((_STRIDE * cells + 1) / np.float32(scale))
            bottom_right = np.floor((_STRIDE * cells + _CELL) / np.float32(scale))
            boxes = np.concatenate(
                [top_left, bottom_right, prob[ys, xs][:, None], reg[:, ys, xs].T], axis=1
            ).astype(np.float32)
            per_scale.append(boxes[nms_iou(boxes[:, :4], boxes[:, 4], _NMS_PER_SCALE)])
        if not per_scale:
            return np.zeros((0, 9), np.float32)
        boxes = np.concatenate(per_scale)
        return boxes[nms_iou(boxes[:, :4], boxes[:, 4], _NMS_STAGE)]

    @staticmethod
    def _crops(img: np.ndarray, boxes: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
        """Crops of ``boxes`` (1-based inclusive corners after truncation, clipped to the image)
        resized to side x side and normalised; also the mask of boxes whose crop is not empty."""
        _, height, width = img.shape
        ib = np.trunc(boxes[:, :4]).astype(np.int64)
        x, y = np.maximum(ib[:, 0], 1), np.maximum(ib[:, 1], 1)
        ex, ey = np.minimum(ib[:, 2], width), np.minimum(ib[:, 3], height)
        valid = (ey > y - 1) & (ex > x - 1)
        crops = [area_resize(img[:, y[k] - 1:ey[k], x[k] - 1:ex[k]], side, side) for k in np.flatnonzero(valid)]
        batch = np.stack(crops) if crops else np.zeros((0, 3, side, side), np.float32)
        return ((batch - _PIXEL_MEAN) * _PIXEL_SCALE).astype(np.float32), valid

    def _refine(self, img: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Stage 2: R-Net rescoring and regression → [K, 5]."""
        boxes = boxes.copy()
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        boxes[:, 0] += boxes[:, 5] * w
        boxes[:, 1] += boxes[:, 6] * h
        boxes[:, 2] += boxes[:, 7] * w
        boxes[:, 3] += boxes[:, 8] * h
        boxes = _square(boxes[:, :5])
        crops, valid = self._crops(img, boxes, _RNET_SIDE)
        boxes = boxes[valid]
        if len(boxes) == 0:
            return boxes
        out = self.rnet.run({"image": crops})
        score = out["prob"][:, 1]
        keep = score > self.cfg.thresholds[1]
        boxes = np.concatenate([boxes[keep, :4], score[keep, None]], axis=1)
        reg = out["reg"][keep]
        pick = nms_iou(boxes[:, :4], boxes[:, 4], _NMS_STAGE)
        return _square(_regress(boxes[pick], reg[pick]))

    def _output(self, img: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stage 3: O-Net scores, regression and landmarks → ([K, 5], [K, 5, 2])."""
        crops, valid = self._crops(img, boxes, _ONET_SIDE)
        boxes = boxes[valid]
        if len(boxes) == 0:
            return boxes, np.zeros((0, 5, 2), np.float32)
        out = self.onet.run({"image": crops})
        score = out["prob"][:, 1]
        keep = score > self.cfg.thresholds[2]
        boxes = np.concatenate([boxes[keep, :4], score[keep, None]], axis=1)
        marks = out["landmarks"][keep]
        # Landmarks are relative to the (pre-regression) box, 1-based.
        w = boxes[:, 2] - boxes[:, 0] + 1
        h = boxes[:, 3] - boxes[:, 1] + 1
        px = w[:, None] * marks[:, :5] + boxes[:, 0:1] - 1
        py = h[:, None] * marks[:, 5:10] + boxes[:, 1:2] - 1
        points = np.stack([px, py], axis=2)
        boxes = _regress(boxes, out["reg"][keep])
        pick = nms_min(boxes[:, :4], boxes[:, 4], _NMS_STAGE)
        return boxes[pick], points[pick]

    # ------------------------------------------------------------------ public

    def detect(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Faces in one BGR uint8 frame [H, W, 3] → (boxes [N,4], probs [N], points [N,5,2])."""
        if not isinstance(bgr, np.ndarray) or bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
            desc = f"{bgr.dtype} array of shape {bgr.shape}" if isinstance(bgr, np.ndarray) else type(bgr).__name__
            raise MediaError(f"MTCNN input: expected a BGR uint8 frame of shape [H, W, 3], got {desc}")
        # RGB channel order and float32 CHW: what the networks were trained on.
        img = np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32)
        empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
        boxes = self._proposals(img)
        if len(boxes):
            boxes = self._refine(img, boxes)
        if not len(boxes):
            return empty
        boxes, points = self._output(img, boxes)
        if not len(boxes):
            return empty
        if self.cfg.select == "largest":
            order = np.argsort((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[::-1]
            boxes, points = boxes[order], points[order]
        return (
            boxes[:, :4].astype(np.float32),
            boxes[:, 4].astype(np.float32),
            points.astype(np.float32),
        )
