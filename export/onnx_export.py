"""Generic PyTorch → ONNX export with the checks every exported network must pass.

:func:`export_module` writes an ONNX file (TorchScript exporter, opset ≥ 17, named inputs and
outputs, dynamic axes), pins the IR version to one ONNX Runtime reads, runs ``onnx.checker`` and
writes the file atomically. :func:`check_parity` runs the same inputs through PyTorch and ONNX
Runtime and reports the worst absolute error per output; :func:`export_encoder` does both for an
encoder of ``training/encoders`` (``forward(**inputs) -> [B, feature_dim]``, ``input_spec()``,
``example_inputs(batch)``) and checks the L2-normalised features, the quantity the probe reads.

>>> report = export_encoder(encoder, "audio.fp32.onnx", ExportCfg())   # doctest: +SKIP
>>> report.max_abs_err <= 1e-4                                         # doctest: +SKIP
True
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from edge_mer.config import ExportCfg
from edge_mer.errors import EdgeMerError
from edge_mer.io import atomic_write_bytes

log = logging.getLogger(__name__)

# onnxruntime 1.31 reads ONNX IR ≤ 13 and the exporter may emit a newer IR than older runtimes on
# a Jetson (JetPack's onnxruntime-gpu lags PyPI); IR 10 (ONNX 1.16) is read by all of them.
IR_VERSION = 10


class ParityError(EdgeMerError):
    """An exported network disagrees with PyTorch beyond the stated tolerance."""


@dataclass
class ParityReport:
    """Worst absolute error per output between PyTorch and ONNX Runtime on the same inputs."""

    path: str
    errors: dict[str, float] = field(default_factory=dict)
    tolerance: float = 0.0

    @property
    def max_abs_err(self) -> float:
        return max(self.errors.values()) if self.errors else 0.0

    @property
    def ok(self) -> bool:
        return self.max_abs_err <= self.tolerance

    def check(self) -> "ParityReport":
        """Raise :class:`ParityError` when the worst error exceeds the tolerance."""
        if not self.ok:
            worst = max(self.errors, key=self.errors.get)
            raise ParityError(
                f"{self.path}: ONNX output '{worst}' differs from PyTorch by {self.errors[worst]:.3g} "
                f"(tolerance {self.tolerance:.3g})"
            )
        return self


def finalize_model(model, path: str | os.PathLike) -> None:
    """Pin the IR version, run the ONNX checker and write ``model`` atomically to ``path``."""
    import onnx

    if model.ir_version > IR_VERSION:
        model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    atomic_write_bytes(path, model.SerializeToString())


def export_module(
    module: torch.nn.Module,
    inputs: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    opset: int = 17,
) -> Path:
    """Export ``module`` called as ``module(*inputs.values())`` to ``path`` and return the path.

    Input names are the keys of ``inputs`` (in order); ``dynamic_axes`` names the symbolic
    dimensions of inputs and outputs (e.g. ``{"logmel": {0: "batch", 2: "frames"}}``)."""
    import onnx

    if opset < 17:
        raise ValueError(f"opset {opset} is too old: edge-mer exports with opset >= 17")
    module = module.eval()
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter announces its own deprecation on every call; it is the path
        # that handles our modules' data-dependent shapes without graph breaks.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            tuple(inputs.values()),
            buf,
            input_names=list(inputs),
            output_names=list(output_names),
            dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load_from_string(buf.getvalue())
    path = Path(path)
    finalize_model(model, path)
    log.info("exported %s (%.1f kB, opset %d)", path, path.stat().st_size / 1e3, opset)
    return path


def ort_session(path: str | os.PathLike, threads: int = 1):
    """A CPU ONNX Runtime session with full graph optimisation (what the runtime uses)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_onnx(path_or_session: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run an ONNX file (or an open session) on numpy inputs; outputs by name."""
    sess = path_or_session if hasattr(path_or_session, "run") else ort_session(path_or_session)
    names = [o.name for o in sess.get_outputs()]
    feeds = {i.name: inputs[i.name] for i in sess.get_inputs()}
    return dict(zip(names, sess.run(names, feeds)))


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def check_parity(
    module: torch.nn.Module,
    path: str | os.PathLike,
    inputs: Mapping[str, torch.Tensor],
    output_names: Sequence[str],
    tolerance: float,
    normalise: bool = False,
) -> ParityReport:
    """Worst absolute error of each output, PyTorch vs ONNX Runtime, on ``inputs``.

    With ``normalise`` both sides are L2-normalised along the last axis first (encoder features:
    the probe and the contrastive loss read the direction, and a raw-scale tolerance would be
    meaningless for features of norm 100)."""
    with torch.no_grad():
        ref = module.eval()(*inputs.values())
    if isinstance(ref, torch.Tensor):
        ref = (ref,)
    ref_np = {name: _as_numpy(t).astype(np.float32) for name, t in zip(output_names, ref)}
    got = run_onnx(path, {k: _as_numpy(v) for k, v in inputs.items()})
    report = ParityReport(path=str(path), tolerance=tolerance)
    for name in output_names:
        a, b = ref_np[name], got[name].astype(np.float32)
        if a.shape != b.shape:
            raise ParityError(f"{path}: output '{name}' has shape {b.shape} in ONNX, {a.shape} in PyTorch")
        if normalise:
            a, b = l2_normalise(a), l2_normalise(b)
        report.errors[name] = float(np.max(np.abs(a - b))) if a.size else 0.0
    log.info("parity %s: %s (tolerance %.1g)", path, {k: f"{v:.2e}" for k, v in report.errors.items()}, tolerance)
    return report


# --------------------------------------------------------------------------- encoders


def _dynamic_axes_from_spec(spec: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, str]]:
    """``input_spec()`` lists ``{"name", "shape", "dtype"}`` per input, symbolic dimensions as
    strings (``["batch", 128, "frames"]``); those become dynamic axes."""
    axes: dict[str, dict[int, str]] = {}
    for desc in spec:
        dims = {i: d for i, d in enumerate(desc["shape"]) if isinstance(d, str)}
        if dims:
            axes[desc["name"]] = dims
    return axes


class PositionalEncoder(torch.nn.Module):
    """Encoders take keyword inputs (``forward(logmel=...)``); the exporter passes positional
    ones in the order of ``names``."""

    def __init__(self, encoder: torch.nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.encoder = encoder
        self.names = tuple(names)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.encoder(**dict(zip(self.names, args)))


def io_entries(path: str | os.PathLike) -> dict[str, list[dict]]:
    """The manifest's ``inputs``/``outputs`` lists (name, shape with symbolic dims, dtype)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    init_names = {i.name for i in model.graph.initializer}

    def describe(values) -> list[dict]:
        out = []
        for v in values:
            if v.name in init_names:
                continue
            t = v.type.tensor_type
            shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
            out.append({"name": v.name, "shape": shape, "dtype": str(helper.tensor_dtype_to_np_dtype(t.elem_type))})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def export_encoder(
    encoder: torch.nn.Module,
    path: str | os.PathLike,
    cfg: ExportCfg,
    inputs: Mapping[str, torch.Tensor] | None = None,
    batch: int = 2,
) -> ParityReport:
    """Export an encoder to ``path`` (output ``feature`` [batch, feature_dim]) and check fp32
    parity on its own ``example_inputs`` plus any real ``inputs`` given."""
    spec = encoder.input_spec()
    example = dict(inputs) if inputs is not None else dict(encoder.example_inputs(batch))
    names = [desc["name"] for desc in spec]
    example = {n: example[n] for n in names}
    wrapper = PositionalEncoder(encoder.eval(), names)
    axes = _dynamic_axes_from_spec(spec)
    axes["feature"] = {0: "batch"}
    export_module(wrapper, example, path, ["feature"], axes, opset=cfg.opset)
    report = check_parity(wrapper, path, example, ["feature"], cfg.fp32_tolerance, normalise=True)
    return report.check()
