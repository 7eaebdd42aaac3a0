"""Reduced-precision variants of exported networks, with ONNX Runtime's tools.

- :func:`quantize_static_int8`: static INT8 in QDQ format, per-channel symmetric int8 weights and
  asymmetric uint8 activations (ONNX Runtime's fast U8S8 path on x86 and ARM), the weights in 7
  bits (see below), calibrated on real
  inputs (log-mels of training clips, never of a test fold). TensorRT INT8 engines are built from
  the fp32 file with their own entropy calibrator instead (``export/build_engines.py``): symmetric
  activations, which TensorRT's explicit quantisation would need, cost accuracy here whenever a
  layer's outputs are one-signed (after ReLU or pooling).
- :func:`quantize_dynamic_int8`: dynamic INT8 (weights only, per-channel), for the text backbone
  whose activations vary too much between sentences for static ranges.
- Both INT8 functions keep the weights in 7 bits (``reduce_range``), so that **every CPU computes
  the same features**. ONNX Runtime's U8S8 kernels on x86 CPUs without VNNI (AVX2, e.g. AMD Zen 2
  and 3) multiply with ``vpmaddubsw``, which adds two uint8 x int8 products into an int16 and
  saturates: with 8-bit weights, ``2 * 255 * 127`` does not fit, so those CPUs compute other
  numbers than CPUs with VNNI (``vpdpbusd``, exact int32) and ARM. Measured on the default's
  Whisper encoder (dynamic INT8, one real 2 s window; ``python benchmarks/int8_cpus.py``): 8-bit
  weights give a relative error against fp32 of 1.8 % with VNNI and 4.3 % on an emulated AMD
  EPYC-Rome (``qemu-x86_64 -cpu EPYC-Rome``), the two CPUs 3.9 % apart; 7-bit weights give 2.9 %
  on both, identical to 1e-6, at the same speed (U8U8, the other remedy, is more accurate but
  about 65 % slower on a VNNI CPU). ``tests/test_quantize.py`` runs a quantised model on the emulated AVX2
  CPU and checks it against this machine's own result.
- :func:`convert_fp16`: fp16 weights and compute with fp32 inputs/outputs (Cast nodes at the
  edges), so callers feed the same arrays whatever the precision.

Every function writes its output atomically (to a temporary name, renamed on success).

>>> quantize_static_int8("audio.fp32.onnx", "audio.int8.onnx", calibration_batches)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from export.onnx_export import IR_VERSION, finalize_model, ort_session

log = logging.getLogger(__name__)

QUANTIZED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# 7-bit weights: no int16 saturation in the AVX2 U8S8 kernels, so every CPU computes the same
# integers (module docstring). False reproduces the bundles built before 2026-12-06.
REDUCE_RANGE = True


@contextlib.contextmanager
def _atomic_path(dst: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``dst`` for tools that write files themselves; renamed onto
    ``dst`` on success, removed on failure."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=".onnx", dir=dst.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dst)
    finally:
        tmp_path.unlink(missing_ok=True)


def _pin_ir(path: Path) -> None:
    """The quantiser copies the input's IR version but may raise it; keep what runtimes read."""
    import onnx

    model = onnx.load(str(path))
    if model.ir_version > IR_VERSION:
        model.ir_version = IR_VERSION
        onnx.save(model, str(path))


class _ListReader:
    """onnxruntime.quantization.CalibrationDataReader over a list of input dicts."""

    def __init__(self, batches: list[Mapping[str, np.ndarray]]) -> None:
        self._batches = batches
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return dict(next(self._it, None) or {}) or None

    def rewind(self) -> None:
        self._it = iter(self._batches)


def float_layers(path: str | os.PathLike) -> list[str]:
    """Names of the weight-bearing nodes kept float in static INT8: the first one (the stem,
    whose error every later layer carries forward) and those writing a graph output (the final
    projection, whose input is a time-average with small between-clip differences next to a
    large common offset, which one per-tensor INT8 scale erases). Measured on a trained audio
    TCN (RAVDESS fold 1, probe fitted on fp32 features): all layers INT8 lose 3.9 UA points, the
    final projection float 3.9, stem and projection float 1.2; mean feature error 0.034 → 0.020
    of the between-clip std. Both layers are a few percent of the compute."""
    import onnx

    model = onnx.load(str(path))
    outputs = {o.name for o in model.graph.output}
    weighted = [n for n in model.graph.node if n.op_type in QUANTIZED_OPS]
    keep = [n.name for n in weighted if set(n.output) & outputs]
    if weighted and weighted[0].name not in keep:
        keep.insert(0, weighted[0].name)
    return keep


def quantize_static_int8(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    calibration: Iterable[Mapping[str, np.ndarray]],
    method: str = "minmax",
    reduce_range: bool = REDUCE_RANGE,
) -> Path:
    """Static QDQ INT8 of ``src`` calibrated on ``calibration`` (input dicts, one per batch).

    ``method``: ``"minmax"`` (ranges cover every calibration value) or ``"percentile"``
    (99.999th percentile, robust to a few loud frames). ``reduce_range``: 7-bit weights (the
    default: the same features on every CPU, module docstring)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    batches = [dict(b) for b in calibration]
    if not batches:
        raise ValueError(f"{src}: static INT8 needs at least one calibration batch")
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ValueError(f"unknown calibration method '{method}' (use {', '.join(methods)})")
    with tempfile.TemporaryDirectory() as tmp, _atomic_path(dst) as out:
        # Shape inference and constant folding first: the quantiser needs shapes to place
        # QDQ pairs, and fewer nodes means fewer requantisation steps.
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        keep_float = float_layers(pre)
        quantize_static(
            str(pre),
            str(out),
            _ListReader(batches),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            reduce_range=reduce_range,
            # Only the weight-bearing ops: they carry the compute and the size. Normalisations,
            # residual adds and activations stay float (quantising them costs accuracy and saves
            # nothing on CPU; TensorRT fuses them into the neighbouring INT8 kernels anyway).
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=keep_float,
            extra_options={"WeightSymmetric": True},
        )
        _pin_ir(out)
    log.info("static INT8 %s (%.1f kB, %d calibration batches)", dst, Path(dst).stat().st_size / 1e3, len(batches))
    return Path(dst)


def quantize_dynamic_int8(src: str | os.PathLike, dst: str | os.PathLike, reduce_range: bool = REDUCE_RANGE) -> Path:
    """Dynamic INT8 with per-channel weights (per-tensor costs MiniLM ~6 points of cosine), 7-bit
    unless ``reduce_range`` is False (module docstring)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _atomic_path(dst) as out:
        quantize_dynamic(str(src), str(out), per_channel=True, weight_type=QuantType.QInt8, reduce_range=reduce_range)
        _pin_ir(out)
    log.info("dynamic INT8 %s (%.1f MB)", dst, Path(dst).stat().st_size / 1e6)
    return Path(dst)


def convert_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """fp16 weights and compute, fp32 inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    _toposort(model.graph)
    finalize_model(model, dst)
    log.info("fp16 %s (%.1f kB)", dst, Path(dst).stat().st_size / 1e3)
    return Path(dst)


def _toposort(graph) -> None:
    """Reorder ``graph.node`` topologically in place. The fp16 converter appends its input
    Cast nodes at the end, which ONNX's checker (rightly) refuses."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError(f"graph {graph.name}: a cycle or a missing input among {[n.name for n in pending][:5]}")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    del graph.node[:]
    graph.node.extend(ordered)


def latency_ms(path: str | os.PathLike, inputs: Mapping[str, np.ndarray], runs: int = 30, warmup: int = 5,
               threads: int = 1) -> float:
    """Median wall-clock milliseconds of one ONNX Runtime CPU run (after ``warmup`` runs)."""
    sess = ort_session(path, threads=threads)
    feeds = {i.name: inputs[i.name] for i in sess.get_inputs()}
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
