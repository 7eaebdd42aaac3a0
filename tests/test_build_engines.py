"""export/build_engines.py: the options it documents, the one-line refusal without TensorRT, the
ONNX Runtime path (a bundle `edge-mer info` accepts, outputs unchanged), optimisation profiles;
and, where TensorRT and a GPU exist, real engines checked against ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bundle_fixture import make_tiny_bundle
from edge_mer.bundle import Bundle
from export import build_engines
from export.build_engines import DEFAULT_PROFILES, Target, iter_targets, main, profile_shapes


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_bundle(tmp_path / "tiny")


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for action in build_engines.build_parser()._actions:
        for opt in action.option_strings:
            assert opt in text
        assert action.help, action.dest
    for word in ("fp16", "int8", "best", "onnxruntime", "calibration", "timing cache", "Jetson"):
        assert word.lower() in text.lower()


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed here: the refusal path cannot be reached")
def test_without_tensorrt_one_line_and_exit_4(tiny, capsys):
    before = (tiny / "manifest.json").read_bytes()
    assert main(["--bundle", str(tiny), "--precision", "fp16"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("build_engines: TensorRT is not installed (on a Jetson it comes with JetPack")
    assert (tiny / "manifest.json").read_bytes() == before
    assert not (tiny / "engines").exists()


def test_trt_backend_refuses_cleanly_without_tensorrt(tiny):
    if _has_tensorrt():
        pytest.skip("TensorRT is installed here")
    from edge_mer.backends.trt_backend import TrtModel
    from edge_mer.errors import DeviceError

    with pytest.raises(DeviceError, match="TensorRT is not installed"):
        TrtModel.from_file(tiny / "encoders" / "audio.fp32.onnx")


def test_onnxruntime_backend_writes_a_loadable_bundle(tiny, tmp_path, capsys):
    from edge_mer.cli import main as edge_mer_main
    from export.onnx_export import run_onnx

    out = tmp_path / "ort"
    assert main(["--bundle", str(tiny), "--backend", "onnxruntime", "--precision", "best", "--out", str(out)]) == 0
    bundle = Bundle.load(out)
    variants = bundle.manifest["encoders"]["audio"]["variants"]
    assert set(variants) == {"fp32", "int8", "fp16"}
    assert bundle.manifest["encoders"]["audio"]["int8_mode"] == "dynamic"  # no calibration inputs given
    assert "onnxruntime_optimised" in bundle.manifest["provenance"]
    assert (out / "build_engines_config.toml").is_file()
    assert edge_mer_main(["info", str(out)]) == 0
    assert "int8" in capsys.readouterr().out
    x = np.random.default_rng(0).normal(size=(2, 128, 150)).astype(np.float32)
    ref = run_onnx(tiny / "encoders" / "audio.fp32.onnx", {"logmel": x})["feature"]
    np.testing.assert_allclose(run_onnx(out / "encoders" / "audio.fp32.onnx", {"logmel": x})["feature"], ref, atol=1e-5)
    got16 = run_onnx(out / "encoders" / "audio.fp16.onnx", {"logmel": x})["feature"]
    np.testing.assert_allclose(got16, ref, atol=2e-2 * np.abs(ref).max())


def test_onnxruntime_backend_static_int8_with_calibration(tiny, tmp_path):
    calib = tmp_path / "calib.npz"
    rng = np.random.default_rng(1)
    np.savez(calib, **{"encoders.audio:logmel": rng.normal(-8, 3, size=(6, 128, 201)).astype(np.float32)})
    out = tmp_path / "ort"
    assert main(["--bundle", str(tiny), "--backend", "onnxruntime", "--precision", "int8",
                 "--calibration", str(calib), "--out", str(out)]) == 0
    enc = Bundle.load(out).manifest["encoders"]["audio"]
    assert "int8_mode" not in enc and "int8" in enc["variants"]


def test_bad_inputs_are_one_line_errors(tmp_path, tiny, capsys):
    assert main(["--bundle", str(tmp_path / "nope"), "--backend", "onnxruntime"]) == 2
    assert capsys.readouterr().err.strip().startswith("build_engines: bundle")
    assert main(["--bundle", str(tiny), "--backend", "onnxruntime", "--calibration", str(tmp_path / "x.npz")]) == 2
    assert "calibration file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--profile", "frames=9,3,1"])
    assert "MIN <= OPT <= MAX" in capsys.readouterr().err


def test_profiles_and_targets(tiny):
    bundle = Bundle.load(tiny)
    targets = list(iter_targets(bundle))
    names = [t.name for t in targets]
    assert names == ["encoders.audio", "heads.audio"]
    shapes = profile_shapes(targets[0], DEFAULT_PROFILES)
    assert shapes == {"logmel": ((1, 128, 8), (1, 128, 201), (8, 128, 1001))}
    odd = Target("x", tiny / "heads" / "audio.onnx", [{"name": "x", "shape": ["batch", "pixels"]}], [])
    from edge_mer.errors import BundleError

    with pytest.raises(BundleError, match="--profile pixels="):
        profile_shapes(odd, DEFAULT_PROFILES)
    # An encoder shipped only as dynamic INT8 is reported, not built.
    manifest = json.loads((tiny / "manifest.json").read_text())
    enc = manifest["encoders"]["audio"]
    enc["variants"] = {"int8": enc["variants"]["fp32"]}
    enc["int8_mode"] = "dynamic"
    skipped = list(iter_targets(Bundle(tiny, manifest)))[0]
    assert isinstance(skipped, tuple) and "dynamic-INT8" in skipped[1]


@pytest.mark.trt
@pytest.mark.gpu
def test_engines_match_onnxruntime(tiny, tmp_path):
    pytest.importorskip("tensorrt")
    from edge_mer.backends.trt_backend import TrtModel, probe_gpu
    from edge_mer.errors import DeviceError
    from export.onnx_export import run_onnx

    try:
        probe_gpu()
    except DeviceError as exc:
        pytest.skip(str(exc))
    out = tmp_path / "trt"
    assert main(["--bundle", str(tiny), "--precision", "fp16", "--out", str(out)]) == 0
    bundle = Bundle.load(out)
    engine = next(e for e in bundle.engines() if e["target"] == "encoders.audio")
    assert engine["tensorrt_version"] and engine["device"]
    x = np.random.default_rng(0).normal(size=(1, 128, 201)).astype(np.float32)
    got = TrtModel.from_file(bundle.path(engine)).run({"logmel": x})["feature"]
    ref = run_onnx(out / "encoders" / "audio.fp32.onnx", {"logmel": x})["feature"]
    np.testing.assert_allclose(got, ref, atol=2e-2 * np.abs(ref).max())
