"""Probes on frozen features: ``python -m training.eval.probe``.

Features of the chosen streams come from a pretrained checkpoint's encoders (pre-projector),
concatenated; a classifier fitted on labelled training clips reads them. Two probes:

- :func:`fit_linear_probe`: standardisation + multinomial logistic regression, returned as plain
  numpy arrays (:class:`LinearProbe`: ``mean``, ``scale``, ``weight`` [D, C], ``bias`` [C],
  ``classes``), so it exports to ONNX or runs in numpy without scikit-learn;
- :func:`fit_mlp_probe`: the paper's Linear-ReLU-Linear classifier.

Metrics: UA (balanced accuracy), WA (accuracy), weighted F1, per-class recall and the confusion
matrix (also drawn as a PNG). Few-shot probes use k labelled clips per class, several draws.

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


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.eval.probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="pretraining checkpoint directory")
    p.add_argument("--cache", required=True, help="preprocessed RAVDESS cache (log-mels and labels)")
    p.add_argument("--au-csv", help="RAVDESS per-clip action-unit CSV, for the 'au' stream")
    p.add_argument("--streams", default="audio", help="comma-separated streams whose features are concatenated")
    p.add_argument("--train-actors", default="1-20", help="actors the probe is fitted on")
    p.add_argument("--test-actors", default="", help="actors it is scored on (none: fit only)")
    p.add_argument("--probe", choices=("linear", "mlp"), default="linear")
    p.add_argument("--out", help="directory for metrics.json, metrics.md and confusion.png")
    p.add_argument("--save-probe", help="write the fitted linear probe as .npz (mean, scale, weight, bias, classes)")
    p.add_argument("--per-speaker", action="store_true",
                   help="standardise each actor's features by that actor's own clips before fitting and scoring "
                        "(label-free); the saved probe carries the population prior for the runtime's per-user normalisation")
    add_config_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from training.checkpoint import load_encoders, read_meta
    from training.data.ravdess import EMOTIONS
    from training.datasets import actor_of, load_action_unit_vectors, load_cache_store, normalise_per_speaker
    from training.train import parse_actors

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
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
