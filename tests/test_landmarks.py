"""dlib 68-point landmarks on real faces (RAVDESS face stills), checked against MTCNN's own
5 facial points, plus the jaw-dropping and min-max normalisation helpers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import shared_data
from edge_mer.config import FaceCfg
from edge_mer.errors import MediaError
from edge_mer.face.landmarks import LandmarkPredictor, default_model_path, drop_jaw, normalise_minmax


@pytest.fixture(scope="module")
def predictor():
    return LandmarkPredictor()


@pytest.fixture(scope="module")
def detector():
    from training.face_detect import FaceDetector

    return FaceDetector(FaceCfg())


def test_model_ships_in_the_package():
    path = default_model_path()
    assert path.name == "shape_predictor_68_face_landmarks.dat" and path.stat().st_size > 50_000_000


@pytest.mark.data
@pytest.mark.parametrize("actor", ["01", "08", "15", "24"])
def test_landmarks_on_real_faces_agree_with_mtcnn(predictor, detector, actor):
    bgr = cv2.imread(str(shared_data("ravdess", "face_stills", f"Actor_{actor}.png")))
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    [det] = detector.detect([rgb])
    assert det is not None and det.score > 0.9
    pts = predictor.predict(rgb, det.box)
    assert pts.shape == (68, 2) and pts.dtype == np.float32
    width = det.box[2] - det.box[0]
    # iBUG order: 36-41 is the subject's right eye (image left), 42-47 the left eye, 30 the nose
    # tip, 48/54 the mouth corners; each must land within 12% of the face width of MTCNN's point.
    ours = np.stack([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])
    err = np.linalg.norm(ours - det.points5, axis=1) / width
    assert err.max() < 0.12, f"landmarks off MTCNN's points by {err.round(3)} face widths"
    # the jaw runs from one side of the face to the other, below the eyes
    assert pts[0, 0] < pts[8, 0] < pts[16, 0] and pts[8, 1] > pts[30, 1] > pts[36:48, 1].mean()


@pytest.mark.data
def test_landmarks_follow_the_face_when_the_image_shifts(predictor, detector):
    rgb = np.ascontiguousarray(cv2.imread(str(shared_data("ravdess", "face_stills", "Actor_03.png")))[:, :, ::-1])
    [det] = detector.detect([rgb])
    shifted = np.zeros((rgb.shape[0] + 20, rgb.shape[1] + 30, 3), np.uint8)
    shifted[20:, 30:] = rgb
    a = predictor.predict(rgb, det.box)
    b = predictor.predict(shifted, det.box + np.array([30, 20, 30, 20], np.float32))
    np.testing.assert_allclose(b - a, np.tile([30, 20], (68, 1)), atol=1.0)


def test_bad_inputs_are_clear_errors(predictor):
    with pytest.raises(MediaError, match="uint8"):
        predictor.predict(np.zeros((10, 10, 3), np.float32), (0, 0, 5, 5))
    with pytest.raises(MediaError, match="empty face box"):
        predictor.predict(np.zeros((10, 10, 3), np.uint8), (5, 5, 5, 9))


def test_drop_jaw_and_normalise():
    pts = np.random.default_rng(0).uniform(10, 200, (4, 68, 2)).astype(np.float32)
    nojaw = drop_jaw(pts)
    assert nojaw.shape == (4, 51, 2)
    np.testing.assert_array_equal(nojaw[:, 0], pts[:, 17])
    clip = normalise_minmax(nojaw, "clip")
    assert clip.min() == 0.0 and clip.max() == 1.0
    np.testing.assert_allclose(clip.reshape(-1, 2).min(0), 0) and np.testing.assert_allclose(clip.reshape(-1, 2).max(0), 1)
    frame = normalise_minmax(nojaw, "frame")
    np.testing.assert_allclose(frame.min(1), 0, atol=1e-6)
    np.testing.assert_allclose(frame.max(1), 1, atol=1e-6)
    assert np.isfinite(normalise_minmax(np.ones((1, 51, 2)), "clip")).all()
    with pytest.raises(ValueError):
        drop_jaw(nojaw)
