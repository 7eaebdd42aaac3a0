"""Face selection and cropping for the cache (training/face_detect.py), on a real face still."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import shared_data
from edge_mer.config import FaceCfg
from edge_mer.errors import ConfigError
from training.face_detect import FaceDetector, crop_face, select_face


def test_select_largest_or_tracked():
    boxes = np.array([[0, 0, 50, 50], [100, 100, 120, 120]], np.float32)
    assert select_face(boxes, None, "largest") == 0
    assert select_face(boxes, np.array([101, 99, 121, 119], np.float32), "tracked") == 1
    # nothing overlaps the previous face: fall back to the largest
    assert select_face(boxes, np.array([300, 300, 310, 310], np.float32), "tracked") == 0


def test_crop_is_square_and_padded_at_the_frame_edge():
    frame = np.full((100, 200, 3), 200, np.uint8)
    crop = crop_face(frame, np.array([-10, -10, 30, 50], np.float32), margin_px=5, size=32)
    assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
    assert crop[0, 0].sum() == 0 and crop[-1, -1].sum() > 0  # outside the frame is black


def test_bad_select_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="face.select"):
        FaceDetector(FaceCfg(select="nearest"))


@pytest.mark.data
def test_large_frames_are_detected_downsized_and_mapped_back():
    rgb = np.ascontiguousarray(cv2.imread(str(shared_data("ravdess", "face_stills", "Actor_10.png")))[:, :, ::-1])
    big = cv2.resize(rgb, (rgb.shape[1] * 4, rgb.shape[0] * 4), interpolation=cv2.INTER_CUBIC)  # 1592 px wide
    detector = FaceDetector(FaceCfg(), max_side_px=640)
    [small_det], [big_det] = detector.detect([rgb]), detector.detect([big])
    assert small_det is not None and big_det is not None
    # the same face, in full-resolution coordinates of the big frame
    np.testing.assert_allclose(big_det.box / 4, small_det.box, atol=0.06 * (small_det.box[2] - small_det.box[0]))
    crop = detector.crop(big, big_det)
    assert crop.shape == (64, 64, 3) and crop.std() > 20
