"""ONNX Runtime back-end (CPU, CUDA or TensorRT execution provider)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edge_mer.config import RuntimeCfg
from edge_mer.errors import BundleError, DeviceError


def session_threads(configured: int) -> int:
    """Intra-op threads per session: ``runtime.threads``, or with 0 half the CPU cores (at least
    one, at most four). The runtime runs its stages one after another on one thread while the
    reader thread decodes and Vosk listens; sessions that spread over every core contended with
    them (on 2 cores, 1 thread per session ran the sample 1.3x faster than ONNX Runtime's default
    of one thread per core, and 2 threads 1.8x slower: docs/BENCHMARKS.md)."""
    if configured > 0:
        return configured
    return max(1, min(4, (os.cpu_count() or 2) // 2))

class OnnxModel:
    """An ONNX Runtime session behind :class:`edge_mer.backends.base.Model`.

    >>> m = OnnxModel.from_file("models/default/heads/audio.onnx", RuntimeCfg())   # doctest: +SKIP
    """

    def __init__(self, session, path: Path) -> None:
        self.session = session
        self.path = path
        self.input_names = tuple(i.name for i in session.get_inputs())
        self.output_names = tuple(o.name for o in session.get_outputs())
        self.providers = tuple(session.get_providers())

    @classmethod
    def from_file(cls, path: str | os.PathLike, cfg: RuntimeCfg | None = None) -> "OnnxModel":
        import onnxruntime as ort

        cfg = cfg or RuntimeCfg()
        path = Path(path)
        if not path.is_file():
            raise BundleError(f"{path}: model file not found")
        available = set(ort.get_available_providers())
        wanted = [p for p in cfg.providers if p in available]
        missing = [p for p in cfg.providers if p not in available]
        if not wanted:
            raise DeviceError(
                f"none of the ONNX Runtime providers {list(cfg.providers)} is available "
                f"(this onnxruntime has: {sorted(available)}); set runtime.providers"
            )
        if missing and "CPUExecutionProvider" not in wanted:
            wanted.append("CPUExecutionProvider")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        opts.intra_op_num_threads = session_threads(cfg.threads)
        opts.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"{path}: ONNX Runtime cannot load it ({' '.join(str(exc).split())[:200]})") from None
        return cls(session, path)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {name: inputs[name] for name in self.input_names}
        outs = self.session.run(list(self.output_names), feeds)
        return dict(zip(self.output_names, outs))
