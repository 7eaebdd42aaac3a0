"""Native TensorRT 10 back-end: runs a serialized engine behind the :class:`Model` interface.

TensorRT is optional and comes with the platform (JetPack on a Jetson, NVIDIA's own index on a
workstation), never with edge-mer: ``tensorrt`` is imported only inside this module's functions,
and a missing TensorRT, CUDA runtime or GPU is a one-line :class:`~edge_mer.errors.DeviceError`.
Device memory and streams come from NVIDIA's ``cuda-python`` runtime bindings (``cuda.bindings``;
older releases spell it ``cuda.cudart``), so neither pycuda nor torch is needed.

The engine is driven with TensorRT 10's name-based tensor API: ``set_input_shape`` and
``set_tensor_address`` per named I/O tensor, then ``execute_async_v3`` on a CUDA stream. Timings
of :meth:`TrtModel.run` include the host↔device copies.

>>> model = TrtModel.from_file("engines/audio.int8.engine", RuntimeCfg(backend="tensorrt"))  # doctest: +SKIP
>>> model.run({"logmel": x})["feature"].shape                                               # doctest: +SKIP
(1, 512)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_mer.config import RuntimeCfg
from edge_mer.errors import BundleError, DeviceError

log = logging.getLogger(__name__)

JETPACK_HINT = (
    "on a Jetson it comes with JetPack: sudo apt install nvidia-jetpack; "
    "on an x86 workstation: NVIDIA's tensorrt wheel"
)


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or DeviceError saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError:
        raise DeviceError(f"TensorRT is not installed ({JETPACK_HINT})") from None
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise DeviceError(f"TensorRT {trt.__version__} is too old: edge-mer needs TensorRT 10 (JetPack 6.1 or later)")
    return trt


def import_cudart() -> Any:
    """cuda-python's runtime module (two spellings across releases), or DeviceError."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise DeviceError(
                "the CUDA runtime bindings are not installed (pip install cuda-python, matching the CUDA of JetPack)"
            ) from None
    return cudart


def _check(result: Any, what: str) -> Any:
    """cuda-python returns ``(error, *values)``; raise on error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise DeviceError(f"CUDA {what} failed ({err})")
    return values[0] if len(values) == 1 else tuple(values) if values else None


@dataclass(frozen=True)
class GpuInfo:
    """What an engine is built for: engines run only on the same GPU model and TensorRT version."""

    tensorrt_version: str
    device: str
    compute_capability: str


def probe_gpu() -> GpuInfo:
    """TensorRT's version and the first CUDA GPU, or DeviceError naming what is missing."""
    trt = import_tensorrt()
    cudart = import_cudart()
    try:
        count = _check(cudart.cudaGetDeviceCount(), "device query")
    except DeviceError:
        count = 0
    if not count:
        raise DeviceError("no CUDA GPU is visible (TensorRT engines need one; check the driver and CUDA_VISIBLE_DEVICES)")
    props = _check(cudart.cudaGetDeviceProperties(0), "device properties")
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(str(trt.__version__), name, f"{props.major}.{props.minor}")


class _DeviceBuffer:
    """A growable device allocation."""

    def __init__(self, cudart: Any) -> None:
        self.cudart = cudart
        self.ptr = 0
        self.nbytes = 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            self.free()
            self.ptr = int(_check(self.cudart.cudaMalloc(max(nbytes, 1)), "malloc"))
            self.nbytes = nbytes
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            _check(self.cudart.cudaFree(self.ptr), "free")
            self.ptr, self.nbytes = 0, 0


class TrtModel:
    """A deserialized TensorRT engine with one execution context and one CUDA stream.

    >>> m = TrtModel.from_file("engines/heads.audio.fp16.engine", RuntimeCfg(backend="tensorrt"))  # doctest: +SKIP
    >>> m.input_names, m.output_names                                                             # doctest: +SKIP
    (('features',), ('probs',))
    """

    def __init__(self, engine: Any, path: Path) -> None:
        self.trt = import_tensorrt()
        self.cudart = import_cudart()
        self.engine = engine
        self.path = path
        self.context = engine.create_execution_context()
        if self.context is None:
            raise DeviceError(f"{path}: TensorRT could not create an execution context (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT for n in names}
        self.input_names = tuple(n for n in names if is_input[n])
        self.output_names = tuple(n for n in names if not is_input[n])
        self.dtypes = {n: np.dtype(self.trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self.buffers = {n: _DeviceBuffer(self.cudart) for n in names}
        self.stream = _check(self.cudart.cudaStreamCreate(), "stream create")

    @classmethod
    def from_file(cls, path: str | os.PathLike, cfg: RuntimeCfg | None = None) -> "TrtModel":
        trt = import_tensorrt()
        path = Path(path)
        if not path.is_file():
            raise BundleError(f"{path}: engine file not found")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise DeviceError(
                f"{path}: TensorRT cannot load this engine; engines only run on the GPU and TensorRT version "
                "they were built with: rebuild it here with export/build_engines.py"
            )
        return cls(engine, path)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        memcpy = self.cudart.cudaMemcpyKind
        hosts = {}
        for name in self.input_names:
            if name not in inputs:
                raise ValueError(f"{self.path}: missing input '{name}' (inputs: {', '.join(self.input_names)})")
            host = np.ascontiguousarray(inputs[name], dtype=self.dtypes[name])
            hosts[name] = host  # kept alive until the stream is synchronised
            if not self.context.set_input_shape(name, host.shape):
                raise ValueError(f"{self.path}: input '{name}' shape {host.shape} is outside the engine's optimisation profile")
            ptr = self.buffers[name].ensure(host.nbytes)
            _check(self.cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, memcpy.cudaMemcpyHostToDevice, self.stream), "copy in")
            self.context.set_tensor_address(name, ptr)
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            out = np.empty(shape, dtype=self.dtypes[name])
            self.context.set_tensor_address(name, self.buffers[name].ensure(out.nbytes))
            outputs[name] = out
        if not self.context.execute_async_v3(self.stream):
            raise DeviceError(f"{self.path}: TensorRT execution failed")
        for name, out in outputs.items():
            _check(self.cudart.cudaMemcpyAsync(out.ctypes.data, self.buffers[name].ptr, out.nbytes,
                                               memcpy.cudaMemcpyDeviceToHost, self.stream), "copy out")
        _check(self.cudart.cudaStreamSynchronize(self.stream), "synchronise")
        return outputs

    def close(self) -> None:
        """Free the device buffers and the stream (also done when the model is collected)."""
        for buf in self.buffers.values():
            buf.free()
        if self.stream is not None:
            _check(self.cudart.cudaStreamDestroy(self.stream), "stream destroy")
            self.stream = None

    def __del__(self) -> None:  # best effort: interpreter shutdown may have unloaded CUDA
        if getattr(self, "stream", None) is not None:
            try:
                self.close()
            except DeviceError as exc:
                log.debug("releasing %s: %s", self.path, exc)
