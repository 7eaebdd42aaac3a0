"""Face reliability from pose and sharpness (edge_mer.face.quality), and the face stage using them
on real video frames of the bundled sample through the default bundle's MTCNN and face encoder."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_mer.face.quality import NOSE_DEPTH_OVER_IPD, blur_metric, crop_blur, frontal_from_points, sharpness

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "crema-d_1001_DFA_six_emotions.mp4"
STILLS = REPO.parent / "shared" / "data" / "ravdess" / "face_stills"


def projected_points(yaw_deg: float, roll_deg: float = 0.0, ipd: float = 20.0) -> np.ndarray:
    """MTCNN's five points of a face model (eyes, nose tip NOSE_DEPTH_OVER_IPD * ipd in front of
    them, mouth corners) turned by ``yaw`` and rolled by ``roll``, projected orthographically."""
    pts = np.array([[-ipd / 2, 0, 0], [ipd / 2, 0, 0], [0, 0.6 * ipd, NOSE_DEPTH_OVER_IPD * ipd],
                    [-0.4 * ipd, ipd, 0.1 * ipd], [0.4 * ipd, ipd, 0.1 * ipd]])
    y, r = np.radians(yaw_deg), np.radians(roll_deg)
    turn = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    xy = (pts @ turn.T)[:, :2]
    roll = np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]])
    return xy @ roll.T + np.array([100.0, 80.0])


@pytest.mark.parametrize("yaw", [0.0, 20.0, 45.0, 70.0, -45.0])
@pytest.mark.parametrize("roll", [0.0, 25.0])
def test_frontal_is_cos_yaw_of_a_turned_face_whatever_its_roll(yaw, roll):
    assert frontal_from_points(projected_points(yaw, roll)) == pytest.approx(np.cos(np.radians(yaw)), abs=1e-9)


def test_frontal_of_degenerate_points_is_zero():
    assert frontal_from_points(np.zeros((5, 2))) == 0.0


def test_blur_grows_with_gaussian_blur_of_real_texture_and_sharpness_maps_it():
    rng = np.random.default_rng(0)
    # A real-looking texture: smoothed noise with edges (no data needed).
    img = cv2.resize(rng.integers(0, 256, (16, 16), dtype=np.uint8), (64, 64), interpolation=cv2.INTER_NEAREST)
    values = [blur_metric(img)] + [blur_metric(cv2.GaussianBlur(img, (0, 0), s)) for s in (1, 2, 3)]
    assert values == sorted(values) and values[0] < values[-1]
    assert blur_metric(np.full((10, 10), 7)) == 1.0  # flat: nothing to read
    assert sharpness(0.5, 0.75, 0.93) == 1.0 and sharpness(0.95, 0.75, 0.93) == 0.0
    assert sharpness(0.84, 0.75, 0.93) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="blur_max"):
        sharpness(0.5, 0.9, 0.8)
    with pytest.raises(ValueError, match="at least 3 x 3"):
        blur_metric(np.zeros((2, 9)))


@pytest.mark.skipif(not STILLS.is_dir(), reason="../shared/data/ravdess/face_stills is absent")
def test_defaults_keep_real_in_focus_faces_whole_and_cut_blurred_ones():
    from edge_mer.bundle import Bundle
    from edge_mer.config import RuntimeCfg
    from edge_mer.face.mtcnn import MTCNN
    from edge_mer.modality import Modality
    from edge_mer.stream.stages.face import crop_face

    bundle = Bundle.load(REPO / "models" / "default")
    cfg = bundle.feature_cfg(Modality.FACE)
    detector = MTCNN.from_bundle(bundle, RuntimeCfg(), cfg)
    for still in sorted(STILLS.glob("*.png"))[:6]:
        bgr = cv2.imread(str(still))
        boxes, _, points = detector.detect(bgr)
        assert len(boxes), still.name
        assert frontal_from_points(points[0]) > 0.95, still.name  # the stills face the camera
        face = crop_face(np.ascontiguousarray(bgr[:, :, ::-1]), boxes[0], cfg.margin_px, cfg.image_size)
        assert sharpness(crop_blur(face), cfg.blur_sharp, cfg.blur_max) == 1.0, still.name
        assert sharpness(crop_blur(cv2.GaussianBlur(face, (0, 0), 2)), cfg.blur_sharp, cfg.blur_max) < 0.3, still.name


def _frames(n: int, blur_sigma: float = 0.0, shift: int = 0):
    from edge_mer.stream.sources import Frame

    cap = cv2.VideoCapture(str(SAMPLE))
    out = []
    while len(out) < n:
        ok, bgr = cap.read()
        assert ok, "the sample ended early"
        if blur_sigma:
            bgr = cv2.GaussianBlur(bgr, (0, 0), blur_sigma)
        out.append(Frame(t_s=len(out) / 10.0, seq=len(out) + shift, bgr=bgr))
    return out


def _face_stage():
    from edge_mer.bundle import Bundle
    from edge_mer.config import load_config
    from edge_mer.stream.stages.face import visual_stages
    from edge_mer.stream.stats import Stats

    bundle = Bundle.load(REPO / "models" / "default")
    absent: dict[str, str] = {}
    _, stages = visual_stages(bundle, load_config([], ["runtime.threads=1"]), Stats(), True, absent)
    return next(s for s in stages if s.modality.value == "face")


def test_face_stage_reports_its_reliability_parts_and_blur_lowers_the_face_weight():
    from edge_mer.modality import Modality
    from edge_mer.stream.stages.base import WindowFeatures
    from edge_mer.stream.windower import Window

    results = {}
    for name, sigma in (("sharp", 0.0), ("blurred", 8.0)):
        stage = _face_stage()
        window = Window(0, 0.0, 2.0, frames=_frames(20, sigma))
        out = WindowFeatures()
        stage(window, out)
        assert Modality.FACE in out.features, name
        parts = out.reliability_parts[Modality.FACE]
        assert set(parts) == {"coverage", "size", "frontal", "sharpness"}
        assert out.reliability[Modality.FACE] == pytest.approx(np.prod(list(parts.values())), abs=2e-3)
        results[name] = parts
    # The sample's speaker faces the camera in focus: her face keeps (nearly) its whole weight.
    assert results["sharp"]["frontal"] > 0.95 and results["sharp"]["sharpness"] == 1.0
    assert results["blurred"]["sharpness"] < 0.5
