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
