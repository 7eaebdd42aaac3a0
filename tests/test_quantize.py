"""Static QDQ INT8 (calibrated), dynamic INT8 and FP16 variants: format, and agreement with fp32
within stated tolerances (INT8: cosine ≥ 0.98 on normalised features; FP16: max abs error ≤ 2e-3
on normalised features)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_data

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from edge_mer.config import AudioCfg, ExportCfg  # noqa: E402
from export.onnx_export import export_encoder, l2_normalise, run_onnx  # noqa: E402
from export.quantize import convert_fp16, latency_ms, quantize_dynamic_int8, quantize_static_int8  # noqa: E402
from export_toys import ToyAudio, ToyLandmarks, speech_like_logmels  # noqa: E402

INT8_COSINE = 0.98
FP16_ATOL = 2e-3


@pytest.fixture(scope="module")
def audio_fp32(tmp_path_factory):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("q") / "audio.fp32.onnx"
    export_encoder(ToyAudio(), path, ExportCfg())
    return path


def _cosines(fp32, other, x):
    a = l2_normalise(run_onnx(fp32, {"logmel": x})["feature"])
    b = l2_normalise(run_onnx(other, {"logmel": x})["feature"])
    return np.sum(a * b, axis=1)


def _ops(path):
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_static_int8_is_per_channel_qdq(audio_fp32, tmp_path):
    calib = [{"logmel": x[None]} for x in speech_like_logmels(16, seed=0)]
    dst = quantize_static_int8(audio_fp32, tmp_path / "audio.int8.onnx", calib)
    model = onnx.load(str(dst))
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(dst)
    assert model.ir_version <= 10
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    # The conv weight is dequantised with one scale per output channel (per-channel) ...
    deq_w = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
             and inits[n.input[0]].ndim == 3]
    assert deq_w and inits[deq_w[0].input[1]].shape == (32,)
    # ... symmetric int8 weights (zero point 0) and uint8 activations.
    assert inits[deq_w[0].input[0]].dtype == np.int8 and np.all(inits[deq_w[0].input[2]] == 0)
    act_zps = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert act_zps and all(z.dtype == np.uint8 for z in act_zps)
    # The stem and the final projection stay float (see quantize.float_layers); the conv between
    # them is INT8.
    final = next(n for n in model.graph.node if "feature" in n.output)
    assert final.op_type == "Gemm" and final.input[1] in inits and inits[final.input[1]].dtype == np.float32
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2 and convs[0].input[1] in inits and inits[convs[0].input[1]].dtype == np.float32
    assert convs[1].input[1] not in inits
    held_out = speech_like_logmels(8, seed=99)
    assert _cosines(audio_fp32, dst, held_out).min() >= INT8_COSINE


@pytest.mark.slow
def test_static_int8_on_real_logmels(audio_fp32, tmp_path):
    from edge_mer.features.logmel import log_mel
    from edge_mer.media import load_audio

    root = shared_data("ravdess", "audio_speech")
    cfg = AudioCfg()

    def logmels(actors):
        out = []
        for actor in actors:
            for path in sorted((root / f"Actor_{actor:02d}").glob("*.flac"))[::15]:
                wave = load_audio(path, cfg.sample_rate_hz)[: 2 * cfg.sample_rate_hz]
                out.append(log_mel(wave, cfg)[:, :200])
        return np.stack(out)

    calib = [{"logmel": x[None]} for x in logmels(range(1, 9))]  # training actors only
    dst = quantize_static_int8(audio_fp32, tmp_path / "audio.int8.onnx", calib)
    assert _cosines(audio_fp32, dst, logmels(range(17, 21))).min() >= INT8_COSINE


def test_static_int8_needs_calibration(audio_fp32, tmp_path):
    with pytest.raises(ValueError, match="calibration"):
        quantize_static_int8(audio_fp32, tmp_path / "x.onnx", [])
    assert not (tmp_path / "x.onnx").exists()


def test_failed_quantisation_leaves_nothing(tmp_path):
    with pytest.raises(Exception):
        quantize_dynamic_int8(tmp_path / "missing.onnx", tmp_path / "out" / "m.int8.onnx")
    assert list((tmp_path / "out").iterdir()) == []


def test_dynamic_int8_per_channel(tmp_path):
    torch.manual_seed(0)
    enc = ToyLandmarks(dim=64)
    fp32 = tmp_path / "lm.fp32.onnx"
    export_encoder(enc, fp32, ExportCfg())
    dst = quantize_dynamic_int8(fp32, tmp_path / "lm.int8.onnx")
    assert "DynamicQuantizeLinear" in _ops(dst) or "MatMulInteger" in _ops(dst)
    x = np.random.default_rng(0).uniform(size=(6, 10, 51, 2)).astype(np.float32)
    a = l2_normalise(run_onnx(fp32, {"landmarks": x})["feature"])
    b = l2_normalise(run_onnx(dst, {"landmarks": x})["feature"])
    assert np.sum(a * b, axis=1).min() >= INT8_COSINE


def test_fp16_keeps_fp32_io(audio_fp32, tmp_path):
    dst = convert_fp16(audio_fp32, tmp_path / "audio.fp16.onnx")
    model = onnx.load(str(dst))
    from onnx import TensorProto

    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    assert dst.stat().st_size < 0.6 * audio_fp32.stat().st_size
    x = speech_like_logmels(4, seed=5)
    a = l2_normalise(run_onnx(audio_fp32, {"logmel": x})["feature"])
    b = l2_normalise(run_onnx(dst, {"logmel": x})["feature"])
    assert np.abs(a - b).max() <= FP16_ATOL


def test_latency_is_measured(audio_fp32):
    ms = latency_ms(audio_fp32, {"logmel": speech_like_logmels(1)}, runs=3, warmup=1)
    assert ms > 0.0


# --------------------------------------------------------------------------- the same features on every CPU

# A CPU with AVX2 and without VNNI, as QEMU's user-mode emulator presents it (AMD EPYC Rome: the
# ONNX Runtime U8S8 kernels there add two uint8 x int8 products into an int16, with saturation).
AVX2_CPU = "EPYC-Rome"
# argv: model, input .npy, output .npy, input name
_RUN_ONNX = """
import sys, numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
np.save(sys.argv[3], s.run(None, {sys.argv[4]: np.load(sys.argv[2])})[0])
"""


def _qemu_x86_64() -> str:
    import platform
    import re
    import shutil
    import subprocess

    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.skip("qemu-x86_64 not installed (Debian package qemu-user; scripts/setup.sh all installs it)")
    if platform.machine() != "x86_64":
        pytest.skip(f"emulating an x86-64 CPU is for x86-64 hosts (this one is {platform.machine()})")
    version = re.search(r"version (\d+)\.(\d+)", subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout)
    if version is None or tuple(map(int, version.groups())) < (7, 2):
        pytest.skip("QEMU before 7.2 does not emulate AVX2")
    return qemu


def _matmul_model(path, k: int = 64, n: int = 16) -> np.ndarray:
    """``y = ((x @ I) @ W) @ I`` with positive weights ``W``: with 8-bit weights every pair of
    uint8 x int8 products of a large input overflows int16. The identities are the first and the
    last layer, which static INT8 keeps float (:func:`export.quantize.float_layers`), so ``W`` is
    quantised either way. Returns W."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).uniform(0.5, 1.0, size=(k, n)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "I_in"], ["h"], name="stem"),
             helper.make_node("MatMul", ["h", "W"], ["g"], name="middle"),
             helper.make_node("MatMul", ["g", "I_out"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                              [numpy_helper.from_array(np.eye(k, dtype=np.float32), "I_in"), numpy_helper.from_array(w, "W"),
                               numpy_helper.from_array(np.eye(n, dtype=np.float32), "I_out")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return w


def _run(path, x_file, out, qemu: str | None = None, input_name: str = "x") -> np.ndarray:
    """One ONNX Runtime run of ``path`` in a fresh process, here or on the emulated AVX2 CPU."""
    import subprocess
    import sys

    cmd = ([qemu, "-cpu", AVX2_CPU] if qemu else []) + [sys.executable, "-c", _RUN_ONNX, str(path), str(x_file), str(out),
                                                         input_name]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return np.load(out)


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_computes_the_same_on_an_avx2_cpu(tmp_path, mode):
    """The INT8 we ship computes the same numbers on a CPU without VNNI (emulated) as on this one,
    and as fp32 to quantisation accuracy; 8-bit weights, as bundles had before, do not: on the
    AVX2 CPU the saturated sums halve the output (which also shows the emulator really ran
    ONNX Runtime's AVX2 kernel)."""
    qemu = _qemu_x86_64()
    fp32 = tmp_path / "mm.fp32.onnx"
    w = _matmul_model(fp32)
    x = np.random.default_rng(1).uniform(0.8, 1.0, size=(1, w.shape[0])).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    exact = x @ w
    out = {}
    for reduce_range in (True, False):
        dst = tmp_path / f"mm.{mode}.{reduce_range}.onnx"
        if mode == "dynamic":
            quantize_dynamic_int8(fp32, dst, reduce_range=reduce_range)
        else:
            quantize_static_int8(fp32, dst, [{"x": x}], reduce_range=reduce_range)
        out[reduce_range] = (_run(dst, tmp_path / "x.npy", tmp_path / "here.npy"),
                             _run(dst, tmp_path / "x.npy", tmp_path / "avx2.npy", qemu))
    here, avx2 = out[True]
    assert np.abs(avx2 - exact).max() / np.abs(exact).max() < 0.02
    np.testing.assert_allclose(avx2, here, rtol=1e-5, atol=1e-5)
    _, avx2_8bit = out[False]
    assert np.abs(avx2_8bit - exact).max() / np.abs(exact).max() > 0.2


def test_default_bundle_int8_encoders_compute_the_same_on_an_avx2_cpu(tmp_path):
    """The shipped bundle's INT8 encoders (the audio one runs by default) give this machine's
    features on an emulated CPU without VNNI: the heads, fitted on one machine's features, read
    the same inputs on any x86-64 or ARM device."""
    from edge_mer.bundle import Bundle
    from edge_mer.cli import DEFAULT_BUNDLE, REPO_ROOT
    from edge_mer.features.logmel import front_end
    from edge_mer.media import load_audio

    qemu = _qemu_x86_64()
    bundle = Bundle.load(DEFAULT_BUNDLE)
    cfg = bundle.feature_cfg("audio")
    wave = load_audio(REPO_ROOT / "samples" / "crema-d_1001_DFA_six_emotions.mp4", cfg.sample_rate_hz)
    window = int(bundle.manifest["window"]["window_s"] * cfg.sample_rate_hz)
    mel = front_end(wave[6 * cfg.sample_rate_hz: 6 * cfg.sample_rate_hz + window], cfg)[None].astype(np.float32)
    np.save(tmp_path / "x.npy", mel)
    _, entry = bundle.encoder_variant("audio", "int8")  # the INT8 encoder that runs by default
    assert entry["precision"] == "int8"
    here = _run(bundle.path(entry), tmp_path / "x.npy", tmp_path / "here.npy", input_name="logmel")
    avx2 = _run(bundle.path(entry), tmp_path / "x.npy", tmp_path / "avx2.npy", qemu, input_name="logmel")
    assert np.linalg.norm(avx2 - here) / np.linalg.norm(here) < 1e-4, "audio: INT8 features differ by CPU"
