"""Classifier heads as ONNX: standardise → Gemm → Softmax, built from numpy with onnx.helper.

A linear probe fitted on frozen features (``training`` writes ``probe_<subset>.npz`` with
``mean`` [D], ``scale`` [D], ``weight`` [D, C], ``bias`` [C], ``classes`` [C]) becomes a head file
with input ``features`` [batch, D] and output ``probs`` [batch, C], C = the bundle's labels in
order. :func:`remap_classes` puts a probe fitted on another label set (MELD's seven emotions) onto
the bundle's labels, giving a label without a source class the logit of a stated stand-in.

>>> probe = LinearProbe.from_npz("runs/release_audio_au/probe_audio.npz")   # doctest: +SKIP
>>> write_head(probe, "heads/audio.onnx")                                  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from edge_mer.errors import BundleError
from export.onnx_export import finalize_model

# Heads use only opset-13 operators; 17 keeps every file of a bundle on one opset.
HEAD_OPSET = 17


@dataclass(frozen=True)
class LinearProbe:
    """``softmax(((x - mean) / scale) @ weight + bias)`` over ``classes``."""

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    classes: tuple[str, ...]
    # Fitted on per-speaker standardised features: the population prior ([D] each) of the
    # runtime's per-user normalisation (the bundle's heads.<key>.input_norm).
    user_mean: np.ndarray | None = None
    user_std: np.ndarray | None = None

    def __post_init__(self) -> None:
        d, c = self.weight.shape
        if self.mean.shape != (d,) or self.scale.shape != (d,) or self.bias.shape != (c,) or len(self.classes) != c:
            raise ValueError(
                f"inconsistent probe: weight {self.weight.shape}, mean {self.mean.shape}, scale {self.scale.shape}, "
                f"bias {self.bias.shape}, {len(self.classes)} classes"
            )
        if np.any(self.scale <= 0):
            raise ValueError("probe scale must be positive (a standard deviation per feature)")
        if (self.user_mean is None) != (self.user_std is None):
            raise ValueError("probe user_mean and user_std come together")
        if self.user_mean is not None and (self.user_mean.shape != (d,) or self.user_std.shape != (d,) or np.any(self.user_std <= 0)):
            raise ValueError(f"inconsistent probe: user_mean {self.user_mean.shape} / user_std {self.user_std.shape} "
                             f"for {d} features (std must be positive)")

    @property
    def feature_dim(self) -> int:
        return int(self.weight.shape[0])

    @classmethod
    def from_npz(cls, path: str | os.PathLike) -> "LinearProbe":
        path = Path(path)
        if not path.is_file():
            raise BundleError(f"{path}: probe file not found")
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("mean", "scale", "weight", "bias", "classes") if k not in z.files]
            if missing:
                raise BundleError(f"{path}: probe lacks {', '.join(missing)}")
            return cls(
                mean=z["mean"].astype(np.float32),
                scale=z["scale"].astype(np.float32),
                weight=z["weight"].astype(np.float32),
                bias=z["bias"].astype(np.float32),
                classes=tuple(str(c) for c in z["classes"]),
                user_mean=z["user_mean"].astype(np.float32) if "user_mean" in z.files else None,
                user_std=z["user_std"].astype(np.float32) if "user_std" in z.files else None,
            )

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """The same maths as the ONNX head, in numpy (tests and evaluation)."""
        logits = ((x - self.mean) / self.scale) @ self.weight + self.bias
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)


def remap_classes(probe: LinearProbe, labels: Sequence[str], source_of: Mapping[str, str]) -> LinearProbe:
    """A probe over ``labels``: each label takes the weight column and bias of its source class
    ``source_of[label]`` (default: the class of the same name). Two labels with one source get
    identical logits (so softmax splits that class's probability evenly between them)."""
    cols = []
    for label in labels:
        src = source_of.get(label, label)
        if src not in probe.classes:
            raise ValueError(f"label '{label}' has no source class '{src}' among {list(probe.classes)}")
        cols.append(probe.classes.index(src))
    return LinearProbe(probe.mean, probe.scale, probe.weight[:, cols], probe.bias[cols], tuple(labels),
                       user_mean=probe.user_mean, user_std=probe.user_std)


def build_head_model(probe: LinearProbe, name: str = "head"):
    """The ONNX model of a probe: ``features`` [batch, D] → ``probs`` [batch, C]."""
    from onnx import TensorProto, helper, numpy_helper

    # Fold the standardisation into one Mul/Add pair: (x - mean) / scale = x * (1/scale) - mean/scale.
    inv = (1.0 / probe.scale).astype(np.float32)
    shift = (-probe.mean * inv).astype(np.float32)
    d, c = probe.weight.shape
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["features", "inv_scale"], ["scaled"]),
            helper.make_node("Add", ["scaled", "shift"], ["standardised"]),
            helper.make_node("Gemm", ["standardised", "weight", "bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        name,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", d])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", c])],
        initializer=[
            numpy_helper.from_array(inv, "inv_scale"),
            numpy_helper.from_array(shift, "shift"),
            numpy_helper.from_array(probe.weight.astype(np.float32), "weight"),
            numpy_helper.from_array(probe.bias.astype(np.float32), "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", HEAD_OPSET)], producer_name="edge-mer")
    model.doc_string = "classes: " + ", ".join(probe.classes)
    return model


def write_head(probe: LinearProbe, path: str | os.PathLike, name: str = "head") -> Path:
    """Build, check and atomically write a head; returns the path."""
    path = Path(path)
    finalize_model(build_head_model(probe, name), path)
    return path


ABSENT_LOGIT = -30.0  # a label no labelled example shows: a fitted head never gives it


def fit_linear_head(x: np.ndarray, y: Sequence[str], labels: Sequence[str], c: float = 1.0) -> LinearProbe:
    """Standardise + class-balanced logistic regression of window features ``x`` on their
    recordings' labels ``y``, as a head over all of the bundle's ``labels`` (the ones without an
    example get a fixed logit of :data:`ABSENT_LOGIT`: that modality leaves them to the others)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y)
    unknown = sorted(set(y) - set(labels))
    if unknown:
        raise BundleError(f"labels {unknown} are not among the bundle's {list(labels)}")
    classes = sorted(set(y))
    if len(classes) < 2:
        raise BundleError(f"fitting a head needs at least two labels, got {classes}")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-6, scale, 1.0)
    clf = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit((x - mean) / scale, y)
    coef, bias = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:  # sklearn's binary form: one logit z; softmax([-z/2, z/2]) = sigmoid(z)
        coef, bias = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-bias[0] / 2, bias[0] / 2])
    fitted = [str(k) for k in clf.classes_]
    weight = np.zeros((x.shape[1], len(labels)), np.float32)
    b = np.full(len(labels), ABSENT_LOGIT, np.float32)
    for j, label in enumerate(fitted):
        k = list(labels).index(label)
        weight[:, k], b[k] = coef[j], bias[j]
    return LinearProbe(mean.astype(np.float32), scale.astype(np.float32), weight, b, tuple(labels))
