"""How well a face can be read: its pose (turned away?) and sharpness (blurred?), each in [0, 1].

The face stage multiplies a window's face reliability (the fusion weight of the face) by both:

- **frontal**: ``cos(yaw)`` of the head's yaw estimated from MTCNN's five points. The nose tip
  sits in front of the eyes' plane, so turning the head by ``yaw`` moves it sideways from the
  eyes' midpoint by about ``depth * sin(yaw)`` while the eyes' distance shrinks to
  ``ipd * cos(yaw)``: ``offset / eye distance = k * tan(yaw)`` with ``k = depth / ipd``, about 0.5
  for adult faces (:data:`NOSE_DEPTH_OVER_IPD`). Roll is removed first (the offset is measured
  along the eye axis). A frontal face counts fully, one turned 60 degrees half; a profile MTCNN
  rarely finds at all.
- **sharpness**: from the no-reference blur metric of Crete-Roffet et al. ("The blur effect:
  perception and estimation with a new no-reference perceptual blur metric", SPIE 2007): blur the
  grey crop again with a 9-tap mean filter and measure how much of its neighbour-to-neighbour
  variation that removes. A sharp image loses much of it (blur near 0), an already blurred one
  little (near 1). ``sharpness = 1`` up to ``blur_sharp`` and falls linearly to 0 at
  ``blur_max`` (``face.blur_sharp`` 0.75, ``face.blur_max`` 0.93). The defaults come from real
  faces with no emotion label, the 24 RAVDESS face stills as MTCNN crops at the encoder's 64 px:
  blur 0.57-0.71 as recorded, 0.79-0.86 after a Gaussian blur of sigma 1 px, 0.90-0.93 after
  sigma 2 px. So an in-focus face keeps its whole weight, sigma 1 keeps about half, sigma 2 almost
  none. (The labelled clips' crops, measured after the choice: 0.57-0.72, all in focus.)

>>> import numpy as np
>>> round(frontal_from_points(np.array([[30, 40], [50, 40], [40, 52], [32, 62], [48, 62]], float)), 3)
1.0
>>> 0.0 < frontal_from_points(np.array([[30, 40], [50, 40], [50, 52], [32, 62], [48, 62]], float)) < 0.6
True
"""

from __future__ import annotations

import numpy as np

NOSE_DEPTH_OVER_IPD = 0.5  # nose-tip depth in front of the eyes over the eyes' distance, adult faces


def frontal_from_points(points: np.ndarray) -> float:
    """``cos(yaw)`` from MTCNN's five points ``[[left eye], [right eye], [nose], [mouth left],
    [mouth right]]`` (x, y pixels): 1 for a frontal face, toward 0 as it turns away."""
    p = np.asarray(points, np.float64).reshape(5, 2)
    eye_l, eye_r, nose = p[0], p[1], p[2]
    axis = eye_r - eye_l
    ipd = float(np.hypot(*axis))
    if ipd < 1e-6:
        return 0.0
    offset = float(np.dot(nose - (eye_l + eye_r) / 2.0, axis / ipd)) / ipd
    yaw = np.arctan(abs(offset) / NOSE_DEPTH_OVER_IPD)
    return float(np.cos(yaw))


def blur_metric(gray: np.ndarray) -> float:
    """Crete-Roffet blur of a grey image (any numeric dtype, [H, W]): 0 sharp .. 1 blurred; the
    larger of its horizontal and vertical values."""
    import cv2

    f = np.asarray(gray, np.float64)
    if f.ndim != 2 or min(f.shape) < 3:
        raise ValueError(f"blur_metric: expected a grey image of at least 3 x 3 pixels, got shape {f.shape}")
    out = 0.0
    for axis, ksize in ((0, (1, 9)), (1, (9, 1))):
        blurred = cv2.blur(f, ksize, borderType=cv2.BORDER_REFLECT)
        d_f = np.abs(np.diff(f, axis=1 - axis))
        d_b = np.abs(np.diff(blurred, axis=1 - axis))
        s_f = float(d_f.sum())
        if s_f <= 0:
            return 1.0  # a flat image: nothing to read
        s_v = float(np.maximum(0.0, d_f - d_b).sum())
        out = max(out, (s_f - s_v) / s_f)
    return out


def sharpness(blur: float, blur_sharp: float, blur_max: float) -> float:
    """1 up to ``blur_sharp``, falling linearly to 0 at ``blur_max``."""
    if blur_max <= blur_sharp:
        raise ValueError(f"sharpness: blur_max ({blur_max}) must be above blur_sharp ({blur_sharp})")
    return float(np.clip((blur_max - blur) / (blur_max - blur_sharp), 0.0, 1.0))


def crop_blur(crop_rgb: np.ndarray) -> float:
    """:func:`blur_metric` of an RGB uint8 crop's grey image."""
    import cv2

    return blur_metric(cv2.cvtColor(np.ascontiguousarray(crop_rgb), cv2.COLOR_RGB2GRAY))
