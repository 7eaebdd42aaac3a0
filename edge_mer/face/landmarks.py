"""68-point facial landmarks in the iBUG-300W / OpenFace convention, with dlib's shape predictor.

Why dlib: its 68-point predictor uses exactly the iBUG order OpenFace uses (0-16 jaw, 17-26 brows,
27-35 nose, 36-47 eyes, 48-67 mouth), which is what the paper's landmark stream reads; ``dlib-bin``
has wheels for x86_64 and aarch64 (Jetson); the model file ships in the PyPI package
``face-recognition-models`` (nothing is downloaded); and it needs no numpy<2 pin, unlike mediapipe
0.10.18, whose 468-point mesh would also have to be mapped to 68. Caveat: the model's training data
(iBUG 300-W) is described as for non-commercial use.

The predictor refines points inside a face box given by any detector (MTCNN here). It is torch-free
and used by both preprocessing and the runtime.

>>> predictor = LandmarkPredictor()                                    # doctest: +SKIP
>>> predictor.predict(rgb_image, (150, 44, 246, 174)).shape            # doctest: +SKIP
(68, 2)
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from edge_mer.errors import DeviceError, MediaError

N_POINTS = 68
JAW = slice(0, 17)  # the 17 jaw-line points the paper drops (-> 51 nodes)
MODEL_FILE = "shape_predictor_68_face_landmarks.dat"


def default_model_path() -> Path:
    """The 68-point model inside the installed ``face-recognition-models`` package.

    Located without importing the package: its ``__init__`` needs ``pkg_resources``, which recent
    setuptools no longer provides."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DeviceError("face-recognition-models is not installed (pip install 'edge-mer[landmarks]')")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / MODEL_FILE


class LandmarkPredictor:
    """dlib's 68-point shape predictor applied inside a face box.

    ``predict(image, box)`` takes an RGB (or grayscale) uint8 image and a box ``(x1, y1, x2, y2)``
    in pixels and returns float32 ``[68, 2]`` pixel coordinates ``(x, y)`` in iBUG order.

    >>> import numpy as np
    >>> LandmarkPredictor().predict(np.zeros((240, 320, 3), np.uint8), (100, 60, 200, 180)).shape
    (68, 2)
    """

    def __init__(self, model_path: str | os.PathLike | None = None) -> None:
        try:
            import dlib
        except ImportError:
            raise DeviceError("dlib is not installed (pip install 'edge-mer[landmarks]')") from None
        path = Path(model_path) if model_path is not None else default_model_path()
        if not path.is_file():
            raise DeviceError(f"{path}: landmark model file not found")
        self.model_path = path
        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(path))

    def predict(self, image: np.ndarray, box: tuple[float, float, float, float] | np.ndarray) -> np.ndarray:
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise MediaError(f"landmarks: expected an HxWx3 or HxW uint8 image, got {image.dtype} {image.shape}")
        x1, y1, x2, y2 = (float(v) for v in box)
        if not (x2 > x1 and y2 > y1):
            raise MediaError(f"landmarks: empty face box {tuple(box)}")
        rect = self._dlib.rectangle(int(round(x1)), int(round(y1)), int(round(x2)), int(round(y2)))
        shape = self._predictor(np.ascontiguousarray(image), rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def drop_jaw(points: np.ndarray) -> np.ndarray:
    """``[..., 68, 2]`` -> ``[..., 51, 2]`` without the jaw line (points 0-16), as the paper does."""
    if points.shape[-2] != N_POINTS:
        raise ValueError(f"expected 68 points, got {points.shape[-2]}")
    return points[..., JAW.stop :, :]


def normalise_minmax(points: np.ndarray, per: str = "clip") -> np.ndarray:
    """Min-max scale ``[N, P, 2]`` landmarks to [0, 1] in x and y.

    ``per="clip"`` uses one range over all frames (the paper: head motion across the clip stays
    visible); ``per="frame"`` rescales each frame alone (position and scale removed)."""
    pts = np.asarray(points, dtype=np.float32)
    if per == "clip":
        axes: tuple[int, ...] = (0, 1)
    elif per == "frame":
        axes = (1,)
    else:
        raise ValueError(f"per must be 'clip' or 'frame', got {per!r}")
    lo = pts.min(axis=axes, keepdims=True)
    span = pts.max(axis=axes, keepdims=True) - lo
    # a degenerate span (one frame, a single point) would divide by zero; leave it at 0 instead
    return (pts - lo) / np.where(span > 0, span, 1.0)
