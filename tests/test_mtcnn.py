"""MTCNN: P/R/O-Net ONNX export parity, and the torch-free numpy cascade against facenet-pytorch
on real faces (boxes within 1 px)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from conftest import shared_data
from edge_mer.config import FaceCfg, RuntimeCfg
from edge_mer.errors import BundleError, MediaError

torch = pytest.importorskip("torch")
pytest.importorskip("facenet_pytorch")
cv2 = pytest.importorskip("cv2")

from edge_mer.backends.onnx_backend import OnnxModel  # noqa: E402
from edge_mer.face.mtcnn import MTCNN, area_resize, nms_iou, nms_min  # noqa: E402
from export.mtcnn_export import export_mtcnn  # noqa: E402

CFG = FaceCfg(min_face_fraction=0.0)  # facenet-pytorch has only the absolute minimum


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.set_num_threads(1)
    return export_mtcnn(tmp_path_factory.mktemp("mtcnn"))


@pytest.fixture(scope="module")
def detector(exported):
    rc = RuntimeCfg(threads=1)
    return MTCNN(*(OnnxModel.from_file(exported[n][0], rc) for n in ("pnet", "rnet", "onet")), CFG)


@pytest.fixture(scope="module")
def reference():
    from facenet_pytorch import MTCNN as TorchMTCNN

    return TorchMTCNN(
        min_face_size=CFG.min_face_size_px, thresholds=list(CFG.thresholds), factor=CFG.scale_factor,
        select_largest=True, device="cpu",
    )


def test_export_parity_and_checker(exported):
    import onnx

    for name, (path, report) in exported.items():
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        assert report.max_abs_err <= 1e-4, (name, report.errors)
        assert set(report.errors) == {"pnet": {"reg", "prob"}, "rnet": {"reg", "prob"},
                                      "onet": {"reg", "landmarks", "prob"}}[name]


def test_pnet_is_fully_convolutional(exported):
    out = OnnxModel.from_file(exported["pnet"][0]).run({"image": np.zeros((1, 3, 100, 57), np.float32)})
    # two 3x3 convs and a 2x2 pool: (100-2)/2 ceil -> 49 -2 -2 = 45; (57-2)=55 -> 28 -4 = 24
    assert out["prob"].shape == (1, 2, 45, 24) and out["reg"].shape == (1, 4, 45, 24)


def test_area_resize_matches_torch_area_interpolation():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, size=(3, 37, 53)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(img)[None], size=(24, 17), mode="area")[0].numpy()
    np.testing.assert_allclose(area_resize(img, 24, 17), ref, atol=1e-3)


def test_nms_variants():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [2, 2, 5, 5]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
    # IoU: the small box barely overlaps the first (9/100), the second overlaps it heavily.
    assert nms_iou(boxes, scores, 0.5).tolist() == [3, 0, 2]
    # Min: the small box lies inside the first, so the first goes when the small one is kept.
    assert sorted(nms_min(boxes, scores, 0.7).tolist()) == [2, 3]


def _compare(detector, reference, bgr):
    boxes, probs, points = detector.detect(bgr)
    ref_boxes, ref_probs, ref_points = reference.detect(np.ascontiguousarray(bgr[:, :, ::-1]), landmarks=True)
    assert ref_boxes is not None, "facenet-pytorch found no face in a real face image"
    assert boxes.dtype == np.float32 and boxes.shape == (len(ref_boxes), 4)
    assert np.abs(boxes - ref_boxes).max() <= 1.0
    assert np.abs(points - ref_points).max() <= 1.0
    assert np.abs(probs - ref_probs).max() <= 1e-3
    return boxes


@pytest.mark.slow
def test_matches_facenet_on_real_face_stills(detector, reference):
    stills = sorted(shared_data("ravdess", "face_stills").glob("*.png"))[:8]
    assert stills
    for path in stills:
        boxes = _compare(detector, reference, cv2.imread(str(path)))
        assert len(boxes) >= 1, path


@pytest.mark.slow
def test_matches_facenet_on_real_video_frames(detector, reference):
    from edge_mer.media import iter_video_frames

    clip = sorted(shared_data("ravdess", "video_actor01").glob("*.mp4"))[0]
    for _, frame in itertools.islice(iter_video_frames(clip, fps=1.0), 2):
        boxes = _compare(detector, reference, frame)
        assert len(boxes) == 1


def test_two_faces_largest_first(detector, reference):
    stills = shared_data("ravdess", "face_stills")
    big = cv2.imread(str(stills / "Actor_01.png"))
    small = cv2.resize(cv2.imread(str(stills / "Actor_02.png")), None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    canvas = np.full((big.shape[0], big.shape[1] + small.shape[1], 3), 128, np.uint8)
    canvas[:, : big.shape[1]] = big
    canvas[: small.shape[0], big.shape[1]:] = small
    boxes = _compare(detector, reference, canvas)
    assert len(boxes) == 2
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert areas[0] > areas[1] and boxes[0, 0] < big.shape[1] <= boxes[1, 2]


def test_no_face_gives_empty_arrays(detector):
    boxes, probs, points = detector.detect(np.full((120, 160, 3), 90, np.uint8))
    assert boxes.shape == (0, 4) and probs.shape == (0,) and points.shape == (0, 5, 2)
    # Smaller than the smallest face: the pyramid is empty.
    assert detector.detect(np.zeros((20, 20, 3), np.uint8))[0].shape == (0, 4)


@pytest.mark.parametrize("bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32), "frame.png"])
def test_bad_input_is_a_media_error(detector, bad):
    with pytest.raises(MediaError, match="MTCNN input"):
        detector.detect(bad)


def test_from_bundle_needs_detectors(tmp_path):
    from bundle_fixture import make_tiny_bundle
    from edge_mer.bundle import Bundle

    bundle = Bundle.load(make_tiny_bundle(tmp_path / "b"))
    with pytest.raises(BundleError, match="no MTCNN detector"):
        MTCNN.from_bundle(bundle, RuntimeCfg())


def test_bad_config_is_refused(exported):
    nets = [OnnxModel.from_file(exported[n][0]) for n in ("pnet", "rnet", "onet")]
    with pytest.raises(ValueError, match="min_face_size_px"):
        MTCNN(*nets, FaceCfg(min_face_size_px=5))
