"""Probes on frozen features: ``python -m training.eval.probe``.

Two modes of the command:

- **any run, any labelled cache** (the default): the features of every modality a pretraining run
  has (``--streams all``, or a list such as ``audio,face,landmarks``), read as the run was trained
  (:func:`run_clip_features`: the run's own config, its training-crop windows averaged per clip);
  labels from the cache or, re-read at probe time, from the preprocessing manifest
  (``--labels my_recordings.csv``: labels added after preprocessing count, nothing is rebuilt);
  the label set from the data (or ``--classes``); speaker-independent folds from the cache's
  ``speaker`` column (leave-one-speaker-out up to ``--folds`` speakers, or ``--test-speakers``);
  a linear head per modality and their fusion as the runtime's fusion reads them (geometric mean
  of the heads of the modalities a clip has). Writes metrics.json/.md and the fused confusion.
- **RAVDESS actors** (``--train-actors``/``--test-actors``): the streams' features concatenated
  into one linear or MLP probe, fitted on some actors and scored on others (the protocol's figures).

Library: :func:`fit_linear_probe` (standardisation + multinomial logistic regression, returned as
plain numpy arrays, :class:`LinearProbe`, so it exports to ONNX or runs in numpy without
scikit-learn); :func:`fit_mlp_probe`, the paper's Linear-ReLU-Linear classifier. Metrics: UA
(balanced accuracy), WA (accuracy), weighted F1, per-class recall and the confusion matrix (also
drawn as a PNG). Few-shot probes use k labelled clips per class, several draws.

    python -m training.eval.probe --checkpoint runs/mine --cache cache/mine --labels my_recordings.csv --out runs/mine/probe
    python -m training.eval.probe --checkpoint runs/fold1 --cache cache/ravdess_audio \\
        --au-csv ../shared/data/ravdess/openface_au/au_audio_per_clip.csv --streams audio,au \\
        --train-actors 5-20 --test-actors 1-4 --out runs/fold1/probe
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from edge_mer.cli import add_config_args
from edge_mer.config import load_config, save_config
from edge_mer.errors import ConfigError, EdgeMerError
from edge_mer.io import atomic_open, atomic_write_bytes, atomic_write_text

log = logging.getLogger("training.eval.probe")


# --------------------------------------------------------------------------- probes


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class LinearProbe:
    """``softmax(((x - mean) / scale) @ weight + bias)`` over ``classes``; numpy only."""

    mean: np.ndarray  # [D] feature means of the training clips
    scale: np.ndarray  # [D] feature standard deviations of the training clips
    weight: np.ndarray  # [D, C]
    bias: np.ndarray  # [C]
    classes: np.ndarray  # [C] class names (str) or values
    # Set when the probe was fitted on per-speaker standardised features: the population's
    # per-speaker statistics, the prior of the runtime's per-user normalisation ([D] each).
    user_mean: np.ndarray | None = None
    user_std: np.ndarray | None = None

    def logits(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.mean) / self.scale) @ self.weight + self.bias

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return _softmax(self.logits(x))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes[self.logits(x).argmax(axis=1)]

    def save(self, path: str | Path) -> None:
        """Write an ``.npz`` (mean, scale, weight, bias, classes) atomically."""
        buf = io.BytesIO()
        extra = {} if self.user_mean is None else {"user_mean": self.user_mean.astype(np.float32),
                                                     "user_std": self.user_std.astype(np.float32)}
        np.savez(buf, mean=self.mean.astype(np.float32), scale=self.scale.astype(np.float32),
                 weight=self.weight.astype(np.float32), bias=self.bias.astype(np.float32),
                 classes=np.asarray(self.classes).astype(str), **extra)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "LinearProbe":
        with np.load(path, allow_pickle=False) as z:
            probe = cls(*(z[k].astype(np.float64) if k != "classes" else z[k] for k in ("mean", "scale", "weight", "bias", "classes")))
            if "user_mean" in z.files:
                probe.user_mean, probe.user_std = z["user_mean"].astype(np.float64), z["user_std"].astype(np.float64)
            return probe


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-8] = 1.0  # a constant feature carries nothing; keep it finite
    return mean, scale


def standardise_per_group(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each group's rows (e.g. one speaker's clips) standardised by that group's own mean and std:
    label-free speaker normalisation. Applied to test speakers too, it uses their unlabelled clips
    (transductive), as a running per-user normalisation would on a device."""
    x = np.asarray(x, np.float64)
    groups = np.asarray(groups)
    if len(groups) != len(x):
        raise ValueError(f"standardise_per_group: {len(groups)} group ids for {len(x)} rows")
    out = np.empty_like(x)
    for g in np.unique(groups):
        rows = groups == g
        mean, scale = _standardiser(x[rows])
        out[rows] = (x[rows] - mean) / scale
    return out


def speaker_prior(x: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The statistics a per-user normalisation starts from, before it has seen the person: the
    mean over speakers of each speaker's feature means, and the spread a new speaker's features
    are expected to have about it: within a speaker plus between speakers' means ([D] each)."""
    from training.datasets import pool_speaker_stats

    x = np.asarray(x, np.float64)
    groups = np.asarray(groups)
    return pool_speaker_stats(np.stack([x[groups == g].mean(axis=0) for g in np.unique(groups)]),
                              np.stack([x[groups == g].var(axis=0) for g in np.unique(groups)]))


def _logistic(xs: np.ndarray, y: np.ndarray, c: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression

    # Balanced class weights: RAVDESS has half as many neutral clips, and UA weighs classes equally.
    return LogisticRegression(C=c, max_iter=max_iter, class_weight="balanced").fit(xs, y)


def fit_linear_probe(x: np.ndarray, y: np.ndarray, c: float | None = None, groups: np.ndarray | None = None,
                     cs: tuple[float, ...] = (0.1, 1.0, 10.0), max_iter: int = 500) -> LinearProbe:
    """Logistic-regression probe. ``c`` (inverse L2 strength) is given, or chosen from ``cs`` by
    balanced accuracy in a speaker-grouped cross-validation over the training clips alone
    (``groups`` = speaker per clip); without groups ``c`` defaults to 1."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y)
    mean, scale = _standardiser(x)
    xs = (x - mean) / scale
    if c is None:
        c = _choose_c(xs, y, groups, cs, max_iter) if groups is not None and len(set(groups)) >= 3 else 0.1
    clf = _logistic(xs, y, c, max_iter)
    weight, bias = clf.coef_.T, clf.intercept_
    if weight.shape[1] == 1:
        # Binary scikit-learn models keep one logit z for the second class; softmax([-z/2, z/2])
        # gives the same probabilities, so every probe has one column per class.
        weight = np.concatenate([-weight / 2, weight / 2], axis=1)
        bias = np.array([-bias[0] / 2, bias[0] / 2])
    return LinearProbe(mean, scale, weight, bias, np.asarray(clf.classes_))


def _choose_c(xs: np.ndarray, y: np.ndarray, groups: np.ndarray, cs: tuple[float, ...], max_iter: int) -> float:
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold

    folds = list(GroupKFold(n_splits=min(4, len(set(groups)))).split(xs, y, groups))
    scores = []
    for c in cs:
        accs = [balanced_accuracy_score(y[te], _logistic(xs[tr], y[tr], c, max_iter).predict(xs[te])) for tr, te in folds]
        scores.append(float(np.mean(accs)))
    best = cs[int(np.argmax(scores))]
    log.debug("probe C by grouped CV: %s -> %s", dict(zip(cs, scores)), best)
    return best


class MLPProbe:
    """The paper's classifier on frozen features: Linear-ReLU-Linear, fitted full-batch."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, net: nn.Module, classes: np.ndarray) -> None:
        self.mean, self.scale, self.net, self.classes = mean, scale, net, classes

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            z = self.net(torch.as_tensor((np.asarray(x, np.float64) - self.mean) / self.scale, dtype=torch.float32))
            return torch.softmax(z, dim=1).numpy().astype(np.float64)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes[self.predict_proba(x).argmax(axis=1)]


def fit_mlp_probe(x: np.ndarray, y: np.ndarray, hidden: int = 256, epochs: int = 150, lr: float = 1e-3,
                  weight_decay: float = 1e-2, dropout: float = 0.3, seed: int = 0) -> MLPProbe:
    x = np.asarray(x, np.float64)
    classes, y_idx = np.unique(np.asarray(y), return_inverse=True)
    mean, scale = _standardiser(x)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Dropout(dropout), nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, len(classes)))
    xt = torch.as_tensor((x - mean) / scale, dtype=torch.float32)
    yt = torch.as_tensor(y_idx, dtype=torch.int64)
    counts = np.bincount(y_idx, minlength=len(classes)).astype(np.float64)
    weights = torch.as_tensor(counts.sum() / (len(classes) * np.maximum(counts, 1)), dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), 128):
            idx = perm[start:start + 128]
            loss = nn.functional.cross_entropy(net(xt[idx]), yt[idx], weight=weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    return MLPProbe(mean, scale, net, classes)


# --------------------------------------------------------------------------- metrics


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """UA (balanced accuracy, %), WA (accuracy, %), weighted F1 (%), per-class recall (%) and the
    confusion matrix (rows true, columns predicted, in ``classes`` order)."""
    from sklearn.metrics import confusion_matrix, f1_score

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    cm = confusion_matrix(y_true, y_pred, labels=classes)
    support = cm.sum(axis=1)
    recall = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    return {
        "ua": float(100 * np.nanmean(recall)),
        "wa": float(100 * (y_true == y_pred).mean()),
        "f1_weighted": float(100 * f1_score(y_true, y_pred, labels=classes, average="weighted", zero_division=0)),
        "per_class_recall": {c: (None if np.isnan(r) else float(100 * r)) for c, r in zip(classes, recall)},
        "confusion": cm.tolist(),
        "classes": list(classes),
        "n_test": int(len(y_true)),
    }


def save_confusion_png(confusion: list[list[int]] | np.ndarray, classes: list[str], path: str | Path, title: str) -> None:
    """Row-normalised confusion matrix with counts, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=np.float64)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8, color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def few_shot(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, classes: list[str],
             ks: tuple[int, ...] = (1, 5, 10, 20), draws: int = 5, seed: int = 0,
             fit: Callable[..., Any] | None = None) -> dict[str, dict[str, Any]]:
    """Probe on ``k`` labelled training clips per class (``draws`` random draws per k); UA and
    WA mean and std over the draws. The full test set is scored every time."""
    fit = fit or (lambda x, y: fit_linear_probe(x, y, c=1.0))
    rng = np.random.default_rng(seed)
    y_train = np.asarray(y_train)
    out = {}
    for k in ks:
        runs = []
        for _ in range(draws):
            idx = np.concatenate([rng.choice(np.nonzero(y_train == c)[0], size=min(k, int((y_train == c).sum())), replace=False)
                                  for c in classes])
            probe = fit(x_train[idx], y_train[idx])
            m = classification_metrics(y_test, probe.predict(x_test), classes)
            runs.append({"ua": m["ua"], "wa": m["wa"], "f1_weighted": m["f1_weighted"]})
        out[str(k)] = {f"{m}_{s}": float(f(np.array([r[m] for r in runs]))) for m in ("ua", "wa", "f1_weighted")
                       for s, f in (("mean", np.mean), ("std", np.std))}
        out[str(k)]["draws"] = runs
    return out


# --------------------------------------------------------------------------- features


@torch.no_grad()
def encode_logmels(encoder: nn.Module, logmels: list[np.ndarray], batch: int = 32) -> np.ndarray:
    """Features of whole clips (the TCN averages over time). Clips are batched by length and each
    batch centre-cropped to its shortest clip, so no padding enters the mean; sorted by length,
    a batch of 32 of RAVDESS's 1200 clips loses a few frames at most."""
    encoder.eval()
    order = np.argsort([m.shape[1] for m in logmels], kind="stable")
    out = np.zeros((len(logmels), encoder.feature_dim), np.float32)
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        n = min(logmels[i].shape[1] for i in idx)
        crops = [logmels[i][:, (logmels[i].shape[1] - n) // 2:][:, :n] for i in idx]
        out[idx] = encoder(logmel=torch.from_numpy(np.ascontiguousarray(np.stack(crops)))).numpy()
    return out


@torch.no_grad()
def encode_vectors(encoder: nn.Module, x: np.ndarray, batch: int = 512) -> np.ndarray:
    encoder.eval()
    x = torch.as_tensor(np.asarray(x, np.float32))
    return torch.cat([encoder(x=x[i:i + batch]) for i in range(0, len(x), batch)]).numpy()


def stream_features(encoders: dict[str, nn.Module], stream: str, ids: list[str], logmels: dict[str, np.ndarray],
                    vectors: dict[str, dict[str, np.ndarray]]) -> np.ndarray:
    """``[N, F]`` frozen features of ``stream`` for the clips ``ids``."""
    if stream not in encoders:
        raise ConfigError(f"the checkpoint has no '{stream}' encoder (it has {', '.join(encoders)})")
    if stream == "audio":
        return encode_logmels(encoders[stream], [logmels[i] for i in ids])
    return encode_vectors(encoders[stream], np.stack([vectors[stream][i] for i in ids]))


# ------------------------------------------------------------------ any run, any labelled cache

RUNTIME_STREAMS = ("audio", "face", "landmarks", "text")  # the modalities a bundle can carry


def run_config(run_dir: str | Path):
    """The resolved config a pretraining run was trained with (``RUN/run_config.toml``)."""
    path = Path(run_dir) / "run_config.toml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no run_config.toml (not a run directory of python -m training.train)")
    return load_config([path])


def window_starts(duration_s: float, crop_s: float, hop_s: float, max_windows: int) -> list[float]:
    """Start times of ``crop_s`` windows every ``hop_s`` over a clip (one centred window when the
    clip is shorter), at most ``max_windows`` spread evenly."""
    slack = max(0.0, duration_s - crop_s)
    if slack <= 0:
        return [0.0]
    starts = list(np.arange(0.0, slack + 1e-9, hop_s))
    if len(starts) > max_windows:
        starts = [starts[i] for i in np.linspace(0, len(starts) - 1, max_windows).round().astype(int)]
    return [float(t) for t in starts]


@torch.no_grad()
def run_clip_features(run_dir: str | Path, cache_dir: str | Path, streams: list[str], ids: list[str] | None = None,
                      max_windows: int = 8, batch: int = 32, au_csv: str | None = None) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """``({stream: {clip id: feature [D]}}, ids)``: each clip's frozen (pre-projector) features of
    ``streams`` from the run's encoders, read as the run was trained: the inputs the trainer built
    (``training.train.load_pretrain_data`` with the run's own config: Whisper log-mels for a Whisper
    trunk, per-speaker standardised inputs for ``train.speaker_norm``), cut into the training crop
    length every half crop (at most ``max_windows``), the features averaged over a clip's windows.
    A clip lacking a stream has no entry for it. Reads no label."""
    import dataclasses

    from training.checkpoint import load_encoders
    from training.datasets import ContrastiveDataset, collate_streams
    from training.train import crop_spec, encoder_key, load_pretrain_data

    cfg = run_config(run_dir)
    encoders = load_encoders(run_dir)
    unknown = [s for s in streams if encoder_key(s) not in encoders]
    if unknown:
        raise ConfigError(f"{run_dir}: the run has no {', '.join(unknown)} encoder (it has: {', '.join(encoders)})")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, modalities=tuple(streams)))
    data = load_pretrain_data(cfg, str(cache_dir), au_csv, None, None)
    store = data.store
    ids = [i for i in (ids if ids is not None else data.ids) if i in set(data.ids)]
    crop = crop_spec(cfg)
    out: dict[str, dict[str, np.ndarray]] = {s: {} for s in streams}
    for stream in streams:
        have = [i for i in ids if stream in store.streams_of(i)]
        ds = ContrastiveDataset(store, have, (stream,), crop, seed=cfg.train.seed, fixed=True)
        jobs = [(k, t0) for k, clip in enumerate(have)
                for t0 in window_starts(store.duration_s(clip), crop.crop_s, crop.crop_s / 2, max_windows)]
        enc = encoders[encoder_key(stream)].eval()
        sums: dict[int, np.ndarray] = {}
        counts: dict[int, int] = {}
        for start in range(0, len(jobs), batch):
            chunk = jobs[start:start + batch]
            items = [ds.item_at(k, t0) for k, t0 in chunk]
            feats = enc(**collate_streams(items)["inputs"][stream]).numpy().astype(np.float64)
            for (k, _), f in zip(chunk, feats):
                sums[k] = sums.get(k, 0.0) + f
                counts[k] = counts.get(k, 0) + 1
        out[stream] = {have[k]: (sums[k] / counts[k]).astype(np.float32) for k in sums}
    return out, ids


def read_labels(cache, labels_file: str | Path | None) -> dict[str, str]:
    """``{clip id: label}``: from ``labels_file`` when given (a preprocessing manifest with a
    ``label`` column, read afresh, so labels added or corrected after preprocessing count without
    rebuilding the cache; or a CSV/JSONL of ``id,label`` with cache clip ids), else the cache's
    own ``labels.jsonl``. Multi-label rows are left out (the probe is single-label)."""
    if labels_file is None:
        raw = cache.labels()
    else:
        path = Path(labels_file)
        if not path.is_file():
            raise ConfigError(f"{path}: labels file not found")
        raw = _labels_from_file(path, cache)
    out = {i: str(v) for i, v in raw.items() if isinstance(v, str) and v.strip()}
    return {i: v.strip() for i, v in out.items() if i in set(cache.ids)}


def _labels_from_file(path: Path, cache) -> dict[str, Any]:
    import csv

    rows: list[dict] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raise ConfigError(f"{path}: labels file must be .csv or .jsonl")
    if rows and "path" in rows[0]:
        from training.data.manifest import ManifestReader

        reader = ManifestReader(path)
        labels = {cid: rec["label"] for cid, rec in reader.labels().items()}
        missing = [cid for cid in labels if cid not in set(cache.ids)]
        if labels and len(missing) == len(labels):
            raise ConfigError(f"{path}: none of its labelled clips is in the cache (e.g. {missing[0]}); "
                              "preprocess this manifest into the cache first")
        return labels
    if rows and not {"id", "label"} <= set(rows[0]):
        raise ConfigError(f"{path}: expected a preprocessing manifest (path, speaker, label) or columns id,label")
    return {str(r["id"]): r.get("label") for r in rows}


def speaker_folds(speakers: np.ndarray, test_speakers: list[str] | None, n_folds: int) -> list[tuple[str, np.ndarray]]:
    """``[(name, test mask)]``: the given test speakers as one fold, or leave-one-speaker-out when
    there are at most ``n_folds`` speakers, else ``n_folds`` speaker-grouped folds."""
    names = sorted(set(speakers))
    if test_speakers:
        unknown = sorted(set(test_speakers) - set(names))
        if unknown:
            raise ConfigError(f"--test-speakers: no labelled clips of {', '.join(unknown)} (speakers: {', '.join(names)})")
        return [("+".join(test_speakers), np.isin(speakers, test_speakers))]
    if len(names) < 2:
        raise ConfigError(f"speaker-independent folds need labelled clips of at least 2 speakers (have: {', '.join(names) or 'none'})")
    if len(names) <= n_folds:
        return [(s, speakers == s) for s in names]
    groups = [names[k::n_folds] for k in range(n_folds)]
    return [("+".join(g), np.isin(speakers, g)) for g in groups]


def aligned_log_proba(probe: LinearProbe, x: np.ndarray, classes: list[str], floor: float = -30.0) -> np.ndarray:
    """log-probabilities of ``probe`` over ``classes``; a class the probe never saw gets ``floor``
    (it leaves that class to the other modalities in the fusion, as the runtime's heads do)."""
    logp = np.log(np.clip(probe.predict_proba(x), 1e-12, None))
    out = np.full((len(x), len(classes)), floor)
    for j, c in enumerate(probe.classes):
        out[:, classes.index(str(c))] = logp[:, j]
    return out


def fused_proba(parts: list[np.ndarray]) -> np.ndarray:
    """The runtime's fusion of per-modality heads: normalised geometric mean of the modalities present."""
    return _softmax(np.mean(parts, axis=0)[None])[0]  # parts: one clip's log-probabilities per modality


def probe_any(feats: dict[str, dict[str, np.ndarray]], labels: dict[str, str], speaker_of: dict[str, str],
              classes: list[str], test_speakers: list[str] | None = None, n_folds: int = 5,
              per_speaker: bool = False) -> dict[str, Any]:
    """Per-modality linear heads and their fusion, scored on speaker-independent folds.

    For each fold the heads are fitted on the other speakers' labelled clips of each modality;
    a test clip's fused prediction is the geometric mean of the heads of the modalities it has
    (the runtime's rule). Returns per-fold and pooled metrics per stream and ``fused``."""
    streams = list(feats)
    ids = sorted(i for i in labels if labels[i] in classes and any(i in feats[s] for s in streams))
    if not ids:
        raise ConfigError("no labelled clip has features of the chosen streams")
    spk = np.array([speaker_of[i] for i in ids])
    y = np.array([labels[i] for i in ids])
    folds = speaker_folds(spk, test_speakers, n_folds)
    pooled: dict[str, tuple[list, list]] = {k: ([], []) for k in streams + ["fused"]}
    per_fold = []
    for name, test in folds:
        fold: dict[str, Any] = {"test_speakers": name, "n_test": int(test.sum())}
        logps: dict[str, dict[str, np.ndarray]] = {}
        for s in streams:
            tr = [k for k in np.flatnonzero(~test) if ids[k] in feats[s]]
            te = [k for k in np.flatnonzero(test) if ids[k] in feats[s]]
            if len(set(y[tr])) < 2 or not te:
                fold[s] = {"skipped": f"{len(set(y[tr]))} training classes, {len(te)} test clips"}
                continue
            x = np.stack([feats[s][ids[k]] for k in tr + te]).astype(np.float64)
            if per_speaker:
                x = standardise_per_group(x, spk[tr + te])
            probe = fit_linear_probe(x[:len(tr)], y[tr], groups=spk[tr])
            lp = aligned_log_proba(probe, x[len(tr):], classes)
            logps[s] = {ids[k]: lp[j] for j, k in enumerate(te)}
            pred = [classes[j] for j in lp.argmax(axis=1)]
            fold[s] = classification_metrics(y[te], np.array(pred), classes) | {"train_classes": sorted(set(y[tr]))}
            pooled[s][0].extend(y[te]); pooled[s][1].extend(pred)
        te_ids = [ids[k] for k in np.flatnonzero(test)]
        scored = [i for i in te_ids if any(i in logps[s] for s in logps)]
        if scored:
            pred = [classes[int(np.argmax(fused_proba([logps[s][i] for s in logps if i in logps[s]])))] for i in scored]
            truth = [labels[i] for i in scored]
            fold["fused"] = classification_metrics(np.array(truth), np.array(pred), classes)
            pooled["fused"][0].extend(truth); pooled["fused"][1].extend(pred)
        per_fold.append(fold)
    summary = {k: classification_metrics(np.array(t), np.array(p), classes) for k, (t, p) in pooled.items() if t}
    return {"classes": classes, "folds": per_fold, "pooled": summary, "n_clips": len(ids),
            "speakers": sorted(set(spk)), "per_speaker": per_speaker}


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.eval.probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="pretraining run directory (python -m training.train --out RUN)")
    p.add_argument("--cache", required=True, help="preprocessed cache the clips' inputs come from")
    p.add_argument("--labels", help="labels read afresh at probe time: the preprocessing manifest with its label column "
                                    "(or a CSV/JSONL of id,label); default: the cache's labels.jsonl")
    p.add_argument("--au-csv", help="RAVDESS per-clip action-unit CSV, for the 'au' stream")
    p.add_argument("--streams", default="all", help="comma-separated streams, or 'all' (every bundle modality the run has)")
    p.add_argument("--classes", help="comma-separated label set (default: the labels found in the data)")
    p.add_argument("--test-speakers", help="comma-separated speakers scored (default: leave-one-speaker-out up to "
                                           "--folds speakers, else --folds speaker-grouped folds)")
    p.add_argument("--folds", type=int, default=5, help="speaker-grouped folds when there are more speakers (default 5)")
    p.add_argument("--train-actors", help="RAVDESS mode: actors the probe is fitted on (streams concatenated), e.g. 1-16")
    p.add_argument("--test-actors", help="RAVDESS mode: actors it is scored on (none: fit only)")
    p.add_argument("--probe", choices=("linear", "mlp"), default="linear", help="RAVDESS mode: the classifier")
    p.add_argument("--out", help="directory for metrics.json, metrics.md and confusion.png")
    p.add_argument("--save-probe", help="RAVDESS mode: write the fitted linear probe as .npz (mean, scale, weight, bias, classes)")
    p.add_argument("--per-speaker", action="store_true",
                   help="standardise each speaker's features by that speaker's own clips before fitting and scoring "
                        "(label-free; the saved probe carries the population prior for the runtime's per-user normalisation)")
    add_config_args(p)
    return p


def main_any(args: argparse.Namespace) -> int:
    """Per-modality heads and their fusion for any run on any labelled cache (speaker folds)."""
    from training.cache import open_cache
    from training.checkpoint import read_meta
    from training.train import encoder_key

    meta = read_meta(args.checkpoint)
    have = [k for k in meta["encoders"]]
    if args.streams == "all":
        streams = [s for s in RUNTIME_STREAMS if s in have]
    else:
        streams = [s for s in args.streams.split(",") if s]
    missing = [s for s in streams if encoder_key(s) not in have]
    if missing or not streams:
        raise ConfigError(f"{args.checkpoint}: the run has no {', '.join(missing) or 'bundle-modality'} encoder "
                          f"(it has: {', '.join(have)})")
    cache = open_cache(args.cache)
    labels = read_labels(cache, args.labels)
    if not labels:
        raise ConfigError(f"{args.labels or args.cache}: no single-label clip of the cache is labelled "
                          "(add a label column to the manifest and pass it with --labels)")
    classes = [c for c in args.classes.split(",") if c] if args.classes else sorted(set(labels.values()))
    feats, _ = run_clip_features(args.checkpoint, args.cache, streams, ids=sorted(labels), au_csv=args.au_csv)
    speaker_of = {i: str(cache.index(i).get("speaker") or "") for i in labels}
    result = probe_any(feats, labels, speaker_of, classes, [s for s in (args.test_speakers or "").split(",") if s] or None,
                       args.folds, args.per_speaker)
    result.update(checkpoint=str(args.checkpoint), cache=str(args.cache), labels=str(args.labels or "cache"), streams=streams)
    rows = [(k, m) for k, m in result["pooled"].items()]
    table = "| streams | clips scored | UA | WA | F1 |\n|---|---:|---:|---:|---:|\n" + "".join(
        f"| {k} | {m['n_test']} | {m['ua']:.1f} | {m['wa']:.1f} | {m['f1_weighted']:.1f} |\n" for k, m in rows)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "metrics.json", result)
        folds = ", ".join(f["test_speakers"] for f in result["folds"])
        atomic_write_text(out / "metrics.md", f"Speaker-independent folds (test speakers: {folds}); per-modality linear heads, "
                                              f"fused by the geometric mean of the heads present.\n\n{table}")
        if "fused" in result["pooled"]:
            save_confusion_png(result["pooled"]["fused"]["confusion"], classes, out / "confusion.png", f"fused {'+'.join(streams)}")
    print(table, end="")
    return 0


def _one_thread():
    from edge_mer.stream.app import one_blas_thread

    return one_blas_thread()


def main(argv: list[str] | None = None) -> int:
    from training.checkpoint import load_encoders, read_meta
    from training.data.ravdess import EMOTIONS
    from training.datasets import actor_of, load_action_unit_vectors, load_cache_store, normalise_per_speaker
    from training.train import parse_actors

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    if args.train_actors is None and args.test_actors is None:
        try:
            with _one_thread():
                return main_any(args)
        except (EdgeMerError, ValueError) as exc:
            print(f"training.eval.probe: error: {exc}", file=sys.stderr)
            return getattr(exc, "exit_code", 2)
    args.train_actors = args.train_actors or "1-20"
    args.test_actors = args.test_actors or ""
    args.streams = "audio" if args.streams == "all" else args.streams
    try:
        cfg = load_config(args.config, args.overrides)
        streams = [s for s in args.streams.split(",") if s]
        if args.probe == "mlp" and args.save_probe:
            raise ConfigError("--save-probe writes a linear probe; use --probe linear")
        train_actors, test_actors = parse_actors(args.train_actors), parse_actors(args.test_actors) if args.test_actors else []
        if set(train_actors) & set(test_actors):
            raise ConfigError(f"actors {sorted(set(train_actors) & set(test_actors))} are in both the training and the test set")
        encoders = load_encoders(args.checkpoint)
        store, ids = load_cache_store(args.cache, ("audio",))
        from training.cache import open_cache

        cache = open_cache(args.cache)
        labels = cache.labels()
        vectors = {}
        if "au" in streams:
            if not args.au_csv:
                raise ConfigError("stream 'au' needs --au-csv")
            vectors["au"] = load_action_unit_vectors(args.au_csv, ids)
        if read_meta(args.checkpoint)["config"].get("train", {}).get("speaker_norm"):
            # The encoders were pretrained on per-speaker standardised inputs: read them so too
            # (each speaker by their own unlabelled clips, the test speakers included).
            store.vectors = vectors
            store = normalise_per_speaker(store, {i: str(cache.index(i).get("speaker") or actor_of(i)) for i in ids})
            vectors = store.vectors
        usable = [i for i in ids if i in labels and all(i in vectors[s] for s in streams if s != "audio")]
        tr = [i for i in usable if actor_of(i) in train_actors]
        te = [i for i in usable if actor_of(i) in test_actors]
        if not tr:
            raise ConfigError(f"{args.cache}: no labelled clips of actors {args.train_actors}")
        feats = {s: stream_features(encoders, s, tr + te, store.logmels, vectors) for s in streams}
        x = np.concatenate([feats[s] for s in streams], axis=1)
        y = np.array([labels[i] for i in tr + te])
        groups = np.array([actor_of(i) for i in tr])
        prior = None
        if args.per_speaker:
            prior = speaker_prior(x[:len(tr)], groups)
            x = standardise_per_group(x, np.array([actor_of(i) for i in tr + te]))
        if args.probe == "linear":
            probe: Any = fit_linear_probe(x[:len(tr)], y[:len(tr)], groups=groups)
            if prior is not None:
                probe.user_mean, probe.user_std = prior
        else:
            probe = fit_mlp_probe(x[:len(tr)], y[:len(tr)])
        if args.save_probe:
            probe.save(args.save_probe)
        result: dict[str, Any] = {"checkpoint": str(args.checkpoint), "streams": streams, "probe": args.probe,
                                  "per_speaker": args.per_speaker,
                                  "train_actors": train_actors, "test_actors": test_actors, "n_train": len(tr)}
        if te:
            result["metrics"] = classification_metrics(y[len(tr):], probe.predict(x[len(tr):]), list(EMOTIONS))
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out)
            write_json(out / "metrics.json", result)
            if te:
                m = result["metrics"]
                with atomic_open(out / "metrics.md", "w", encoding="utf-8") as fh:
                    fh.write(f"| streams | probe | UA | WA | F1 |\n|---|---|---|---|---|\n"
                             f"| {'+'.join(streams)} | {args.probe} | {m['ua']:.1f} | {m['wa']:.1f} | {m['f1_weighted']:.1f} |\n")
                save_confusion_png(m["confusion"], list(EMOTIONS), out / "confusion.png", f"{'+'.join(streams)} ({args.probe} probe)")
    except (EdgeMerError, ValueError) as exc:
        print(f"training.eval.probe: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    if te:
        m = result["metrics"]
        print(f"UA {m['ua']:.1f}  WA {m['wa']:.1f}  F1 {m['f1_weighted']:.1f}  ({len(te)} test clips)")
    else:
        print(f"fitted a {args.probe} probe on {len(tr)} clips")
    return 0


if __name__ == "__main__":
    sys.exit(main())
