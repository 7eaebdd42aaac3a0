"""Generic encoder export and the head exporter: fp32 parity with PyTorch, the ONNX checker,
dynamic batch/time axes, and the manifest's I/O descriptions."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from edge_mer.config import ExportCfg  # noqa: E402
from edge_mer.errors import BundleError  # noqa: E402
from export.heads import LinearProbe, build_head_model, remap_classes, write_head  # noqa: E402
from export.onnx_export import (  # noqa: E402
    ParityError,
    PositionalEncoder,
    check_parity,
    export_encoder,
    export_module,
    io_entries,
    run_onnx,
)
from export_toys import ToyAudio, ToyFace, ToyLandmarks  # noqa: E402

CFG = ExportCfg()


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.mark.parametrize("toy", [ToyAudio, ToyFace, ToyLandmarks])
def test_encoder_export_fp32_parity_and_checker(tmp_path, toy):
    enc = toy()
    path = tmp_path / "enc.onnx"
    report = export_encoder(enc, path, CFG)
    assert report.max_abs_err <= CFG.fp32_tolerance
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17 and model.ir_version <= 10


def test_dynamic_batch_and_time(tmp_path):
    enc = ToyAudio().eval()
    path = tmp_path / "audio.onnx"
    export_encoder(enc, path, CFG)
    for batch, frames in [(1, 37), (5, 301)]:
        x = torch.randn(batch, 128, frames)
        with torch.no_grad():
            ref = enc(logmel=x).numpy()
        got = run_onnx(path, {"logmel": x.numpy()})["feature"]
        assert got.shape == (batch, 16)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    io = io_entries(path)
    assert io["inputs"] == [{"name": "logmel", "shape": ["batch", 128, "frames"], "dtype": "float32"}]
    assert io["outputs"][0]["name"] == "feature" and io["outputs"][0]["shape"][0] == "batch"


def test_parity_detects_a_wrong_export(tmp_path):
    from onnx import numpy_helper

    enc = ToyAudio().eval()
    path = tmp_path / "audio.onnx"
    export_encoder(enc, path, CFG)
    model = onnx.load(str(path))
    # Perturb one weight tensor: the check must now fail.
    init = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] += 5.0
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(path))
    inputs = {"logmel": torch.randn(2, 128, 50)}
    with pytest.raises(ParityError, match="differs from PyTorch"):
        check_parity(PositionalEncoder(enc, ["logmel"]), path, inputs, ["feature"], 1e-4, normalise=True).check()


def test_old_opset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="opset"):
        export_module(torch.nn.Linear(3, 2), {"x": torch.randn(1, 3)}, tmp_path / "m.onnx", ["y"], {}, opset=13)
    assert not (tmp_path / "m.onnx").exists()


def _probe(d=6, classes=("neutral", "happy", "sad"), seed=0):
    rng = np.random.default_rng(seed)
    return LinearProbe(
        mean=rng.normal(size=d).astype(np.float32),
        scale=rng.uniform(0.5, 2.0, size=d).astype(np.float32),
        weight=rng.normal(size=(d, len(classes))).astype(np.float32),
        bias=rng.normal(size=len(classes)).astype(np.float32),
        classes=tuple(classes),
    )


def test_head_matches_numpy_probe(tmp_path):
    probe = _probe()
    path = write_head(probe, tmp_path / "heads" / "audio.onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    x = np.random.default_rng(1).normal(size=(7, 6)).astype(np.float32) * 3
    probs = run_onnx(path, {"features": x})["probs"]
    np.testing.assert_allclose(probs, probe.predict_proba(x), atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_remap_gives_calm_the_neutral_logit(tmp_path):
    probe = _probe()
    mapped = remap_classes(probe, ["neutral", "calm", "happy", "sad"], {"calm": "neutral"})
    model_path = tmp_path / "h.onnx"
    write_head(mapped, model_path)
    x = np.random.default_rng(2).normal(size=(4, 6)).astype(np.float32)
    probs = run_onnx(model_path, {"features": x})["probs"]
    np.testing.assert_allclose(probs[:, 0], probs[:, 1], atol=1e-6)
    # neutral+calm together keep the source model's neutral share relative to happy.
    src = probe.predict_proba(x)
    np.testing.assert_allclose(probs[:, 0] / probs[:, 2], src[:, 0] / src[:, 1], rtol=1e-4)
    with pytest.raises(ValueError, match="no source class"):
        remap_classes(probe, ["angry"], {})


def test_probe_validation(tmp_path):
    with pytest.raises(ValueError, match="inconsistent probe"):
        LinearProbe(np.zeros(3), np.ones(3), np.zeros((4, 2)), np.zeros(2), ("a", "b"))
    np.savez(tmp_path / "p.npz", mean=np.zeros(3), scale=np.ones(3))
    with pytest.raises(BundleError, match="lacks weight, bias, classes"):
        LinearProbe.from_npz(tmp_path / "p.npz")
    probe = _probe()
    np.savez(tmp_path / "ok.npz", mean=probe.mean, scale=probe.scale, weight=probe.weight, bias=probe.bias,
             classes=np.array(probe.classes))
    loaded = LinearProbe.from_npz(tmp_path / "ok.npz")
    assert loaded.classes == probe.classes and build_head_model(loaded).graph.output[0].name == "probs"
