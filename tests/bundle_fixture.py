"""A small, valid model bundle generated on the fly for loader and CLI tests: an audio encoder
(mean of log-mel frames through a fixed random projection) and a softmax head, as real ONNX
files built with onnx.helper."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from edge_mer import __version__
from edge_mer.bundle import SCHEMA_VERSION, file_entry, write_manifest
from edge_mer.config import Config

LABELS = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]


def _save(model, path: Path) -> None:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _encoder_model(n_mels: int, dim: int, seed: int):
    from onnx import TensorProto, helper, numpy_helper

    w = (np.random.default_rng(seed).normal(size=(n_mels, dim)) / np.sqrt(n_mels)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["logmel", "axes"], ["pooled"], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["feature"]),
        ],
        "tiny_audio_encoder",
        [helper.make_tensor_value_info("logmel", TensorProto.FLOAT, ["batch", n_mels, "frames"])],
        [helper.make_tensor_value_info("feature", TensorProto.FLOAT, ["batch", dim])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([2], np.int64), "axes")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _head_model(dim: int, n_labels: int, seed: int):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(size=(dim, n_labels)).astype(np.float32)
    b = np.zeros(n_labels, np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["features", "w", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "tiny_head",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", n_labels])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def make_tiny_bundle(root: Path, dim: int = 16) -> Path:
    cfg = Config()
    root = Path(root)
    _save(_encoder_model(cfg.audio.n_mels, dim, 0), root / "encoders" / "audio.fp32.onnx")
    _save(_head_model(dim, len(LABELS), 1), root / "heads" / "audio.onnx")
    io = {
        "inputs": [{"name": "logmel", "shape": ["batch", cfg.audio.n_mels, "frames"], "dtype": "float32"}],
        "outputs": [{"name": "feature", "shape": ["batch", dim], "dtype": "float32"}],
    }
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": "tiny-test-bundle",
        "created_utc": "2026-11-22T00:00:00Z",
        "edge_mer_version": __version__,
        "modalities": ["audio"],
        "labels": LABELS,
        "window": dataclasses.asdict(cfg.window),
        "features": {"audio": dataclasses.asdict(cfg.audio)},
        "encoders": {
            "audio": {
                "name": "tiny_projection",
                "feature_dim": dim,
                "default_precision": "fp32",
                "variants": {"fp32": file_entry(root, "encoders/audio.fp32.onnx", precision="fp32", **io)},
                "config": {},
            }
        },
        "heads": {
            "audio": file_entry(
                root,
                "heads/audio.onnx",
                type="softmax_linear",
                modalities=["audio"],
                inputs=[{"name": "features", "shape": ["batch", dim], "dtype": "float32"}],
                outputs=[{"name": "probs", "shape": ["batch", len(LABELS)], "dtype": "float32"}],
            )
        },
        "provenance": {"data": "none (random weights, test fixture)", "protocol": "none", "commit": "test", "metrics": {}},
    }
    write_manifest(root, manifest)
    return root
