"""``edge-mer adapt``: a person's own few labelled moments make the bundle theirs, on the device.

    edge-mer adapt --bundle models/default --media me.mp4 --moments me.csv --out models/me
    edge-mer adapt --bundle models/default --camera 0 --mic default --out models/me   # guided, live
    edge-mer run --bundle models/me --camera 0 --mic default

**What is fitted.** For every per-modality head of the bundle that the labelled moments reach, a
*residual* on the head's log-probabilities, read from the head's own input ``z`` (the window's
features after the runtime's per-user normalisation, or the raw features for a head without
one)::

    p_user = softmax(log p_head + ((z - mean) / scale) @ W + b)

``W`` and ``b`` start at zero (zero is the bundle's own head) and are fitted by class-balanced
cross-entropy on the labelled windows with an L2 penalty ``lambda (|W|^2 + |b|^2) / 2`` that pulls
them back to zero; ``lambda`` is chosen by leave-one-moment-out log-loss on the person's own
moments, and when no ``lambda`` beats the head itself the residual stays zero: one example per
class cannot wreck the bundle. numpy only (no torch), seconds on a CPU.

**Where the features come from.** The runtime's own path: the media are replayed through
``edge-mer run --fast --emit-features`` on the base bundle (encoders, speech detection, per-user
statistics), and the fusion's own code recomputes each window's head input and probabilities. A
window belongs to a moment when at least half of it lies inside the moment's time range.

**The user bundle** is a small directory that references the base bundle by the checksum of its
manifest (no copy of the encoders): ``manifest.json`` (``kind = "user"``, ``base``, what it was
adapted on: counts per label, never the media) and ``adapt/<head>.npz`` (``weight`` [D, C],
``bias`` [C], ``mean``/``scale`` [D]). :meth:`edge_mer.bundle.Bundle.load` validates it like any
bundle and refuses it when the base bundle changed. It stores features and labels only; frames and
audio are kept only with ``--record DIR``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from edge_mer import __version__
from edge_mer.errors import BundleError, ConfigError, EdgeMerError, MediaError

if TYPE_CHECKING:
    from edge_mer.bundle import Bundle

log = logging.getLogger(__name__)

LOG_FLOOR = 1e-8  # as the fusion's: a hard zero cannot veto
LAMBDAS = (0.01, 0.1, 1.0, 10.0)  # L2 strengths tried by held-out-moment log-loss
MIN_INSIDE = 0.5  # share of a window that must lie inside a moment for it to be that moment's example
STEPS = 300  # gradient steps of a fit


# --------------------------------------------------------------------------- the residual


@dataclass
class UserStats:
    """A person's statistics of a head's raw input (before the per-user normalisation), from the
    adaptation session: the runtime's per-user normalisation starts from them instead of the
    population's (:meth:`edge_mer.stream.usernorm.RunningNorm.start_from`)."""

    mean: np.ndarray  # [D]
    std: np.ndarray  # [D]
    windows: int  # how many windows they rest on


def user_stats(rows: Sequence[np.ndarray], memory_windows: int) -> UserStats | None:
    """Mean and std of a head's raw input over a session's windows (``None`` for fewer than two);
    the count is capped at the runtime's memory of a person."""
    if len(rows) < 2:
        return None
    x = np.stack([np.asarray(r, np.float64).reshape(-1) for r in rows])
    std = np.sqrt(x.var(axis=0) + 1e-6)
    return UserStats(x.mean(axis=0), std, int(min(len(x), max(1, memory_windows))))


@dataclass
class Residual:
    weight: np.ndarray  # [D, C]
    bias: np.ndarray  # [C]
    mean: np.ndarray  # [D]
    scale: np.ndarray  # [D]
    user: UserStats | None = None  # the person's input statistics (heads with per-user normalisation)

    def logits(self, z: np.ndarray) -> np.ndarray:
        return ((np.asarray(z, np.float64) - self.mean) / self.scale) @ self.weight + self.bias


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def apply_residual(probs: np.ndarray, z: np.ndarray, residual: Residual) -> np.ndarray:
    """The adapted distribution of one window (or rows): ``softmax(log p + residual(z))``."""
    logp = np.log(np.maximum(np.asarray(probs, np.float64), LOG_FLOOR))
    return _softmax(logp + residual.logits(z))


def load_residuals(bundle: "Bundle") -> dict[str, Residual]:
    """The residual of each adapted head of a user bundle ({} for any other bundle)."""
    if bundle.user_root is None:
        return {}
    labels = bundle.labels
    out = {}
    for key, entry in bundle.manifest["adaptation"]["heads"].items():
        path = bundle.user_path(entry)
        try:
            with np.load(path, allow_pickle=False) as z:
                r = Residual(*(z[k].astype(np.float64) for k in ("weight", "bias", "mean", "scale")))
                if "user_mean" in z.files:
                    r.user = UserStats(z["user_mean"].astype(np.float64), z["user_std"].astype(np.float64),
                                       int(z["user_windows"]))
        except (OSError, KeyError, ValueError) as exc:
            raise BundleError(f"bundle {bundle.user_root}: {entry['file']}: not an adaptation file ({exc})") from None
        dim = sum(int(bundle.encoder(m)["feature_dim"]) for m in bundle.manifest["heads"][key].get("modalities", key.split("+")))
        if r.weight.shape != (dim, len(labels)) or r.bias.shape != (len(labels),) or r.mean.shape != (dim,) or r.scale.shape != (dim,):
            raise BundleError(f"bundle {bundle.user_root}: {entry['file']}: shapes {r.weight.shape} do not fit head {key} "
                              f"({dim} features, {len(labels)} labels)")
        if r.user is not None and (r.user.mean.shape != (dim,) or r.user.std.shape != (dim,) or r.user.windows < 1
                                   or not np.all(r.user.std > 0)):
            raise BundleError(f"bundle {bundle.user_root}: {entry['file']}: the person's statistics do not fit head {key} "
                              f"({dim} features)")
        out[key] = r
    return out


def _fit_dual(K: np.ndarray, logp: np.ndarray, y: np.ndarray, lam: float, steps: int = STEPS) -> tuple[np.ndarray, np.ndarray]:
    """Minimise ``sum_i w_i CE(logp_i + (Z W)_i + b, y_i) + lam/2 (|W|^2 + |b|^2)`` with
    ``W = Z^T A`` (the optimum lies in the span of the windows: representer theorem), so a step
    costs N^2 C instead of N D C. Gradient descent in W-space (A moves by ``G + lam A``) with
    Nesterov momentum and step 1/L; convex, from zero. ``K = Z Z^T``. Returns (A, b)."""
    n, c = logp.shape
    counts = np.bincount(y, minlength=c).astype(np.float64)
    w = 1.0 / (counts[y] * np.count_nonzero(counts))  # class-balanced, summing to 1
    lip = 0.5 * float(w.max()) * (float(np.linalg.eigvalsh(K)[-1]) + 1.0) + lam
    eta = 1.0 / lip
    A, b = np.zeros((n, c)), np.zeros(c)
    A_prev, b_prev = A, b
    onehot = np.zeros((n, c))
    onehot[np.arange(n), y] = 1.0
    for t in range(1, steps + 1):
        mom = (t - 1) / (t + 2)
        Ay, by = A + mom * (A - A_prev), b + mom * (b - b_prev)
        G = (_softmax(logp + K @ Ay + by) - onehot) * w[:, None]
        A_prev, b_prev = A, b
        A, b = Ay - eta * (G + lam * Ay), by - eta * (G.sum(axis=0) + lam * by)
    return A, b


def _fit(zs: np.ndarray, K: np.ndarray, logp: np.ndarray, y: np.ndarray, lam: float, steps: int = STEPS) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) on all windows; ``K = zs zs^T``."""
    A, b = _fit_dual(K, logp, y, lam, steps)
    return zs.T @ A, b


def _folds(groups: np.ndarray, y: np.ndarray, k: int = 5) -> list[np.ndarray]:
    """Moments dealt into at most ``k`` held-out sets, round-robin within each label (so every
    set holds moments of as many labels as possible); each set is a boolean mask of windows."""
    moments = sorted(set(groups), key=lambda g: (int(y[np.flatnonzero(groups == g)[0]]), g))
    sets = [moments[i::k] for i in range(min(k, len(moments)))]
    return [np.isin(groups, s) for s in sets]


def _heldout_logloss(K, logp, y, groups, lam: float | None) -> float:
    """Mean over held-out moment sets of their windows' log-loss (``lam`` None: the head alone);
    ``K`` is the windows' Gram matrix."""
    losses = []
    for te in _folds(groups, y):
        if lam is None:
            p = _softmax(logp[te])
        else:
            tr = ~te
            A, b = _fit_dual(K[np.ix_(tr, tr)], logp[tr], y[tr], lam)
            p = _softmax(logp[te] + K[np.ix_(te, tr)] @ A + b)
        losses.append(float(np.mean(-np.log(np.maximum(p[np.arange(te.sum()), y[te]], 1e-12)))))
    return float(np.mean(losses))


def fit_residual(z: np.ndarray, logp: np.ndarray, y: np.ndarray, groups: np.ndarray, session_z: np.ndarray | None = None,
                 lambdas: Sequence[float] = LAMBDAS, allow_head: bool = True) -> tuple[Residual, dict[str, Any]]:
    """The residual for labelled windows ``z`` [N, D] with the head's log-probabilities ``logp``
    [N, C], label indices ``y`` and moment ids ``groups``; ``session_z`` (all windows of the
    session, labelled or not) gives the standardisation. ``lambda`` by leave-one-moment-out
    log-loss; zero residual when the head alone is best or there are fewer than 3 moments."""
    z = np.asarray(z, np.float64)
    ref = z if session_z is None or len(session_z) < 2 else np.asarray(session_z, np.float64)
    mean, scale = ref.mean(axis=0), ref.std(axis=0)
    scale = np.where(scale > 1e-6, scale, 1.0)
    zs = (z - mean) / scale
    d, c = z.shape[1], logp.shape[1]
    zero = Residual(np.zeros((d, c)), np.zeros(c), mean, scale)
    info: dict[str, Any] = {"windows": int(len(y)), "moments": int(len(np.unique(groups)))}
    if len(np.unique(groups)) < 3 or len(np.unique(y)) < 2:
        if allow_head:
            info.update(lam=None, chosen="the head itself (fewer than 3 moments or 2 labels)")
            return zero, info
        lam = float(max(lambdas))
        W, b = _fit(zs, zs @ zs.T, logp, y, lam)
        info.update(lam=lam, chosen=f"lambda {lam:g} (too few moments to choose)")
        return Residual(W, b, mean, scale), info
    K = zs @ zs.T  # one Gram matrix serves every held-out fit and the final one
    scores = {"head": _heldout_logloss(K, logp, y, groups, None)} if allow_head else {}
    for lam in lambdas:
        scores[str(lam)] = _heldout_logloss(K, logp, y, groups, lam)
    best = min(scores, key=scores.get)
    info["heldout_logloss"] = {k: round(v, 4) for k, v in scores.items()}
    if best == "head":
        info.update(lam=None, chosen="the head itself (no lambda beat it on held-out moments)")
        return zero, info
    W, b = _fit(zs, K, logp, y, float(best))
    info.update(lam=float(best), chosen=f"lambda {best}")
    return Residual(W, b, mean, scale), info


# --------------------------------------------------------------------------- moments


@dataclass
class Moment:
    path: Path
    start_s: float
    end_s: float
    label: str
    index: int


def media_duration(path: Path) -> float:
    from edge_mer.media import probe

    info = probe(path)
    if info.duration_s is None:
        raise MediaError(f"{path}: its length is unknown (cannot check the moments' time ranges)")
    return float(info.duration_s)


def read_moments(csv_path: str | os.PathLike, media: str | os.PathLike | None, labels: Sequence[str]) -> list[Moment]:
    """Labelled time ranges: a CSV with ``start_s,end_s,label`` (and ``path``, relative to the
    CSV, when the moments span several files; else ``--media``). Each row is checked against the
    bundle's labels and the media's length, each problem one line naming the row."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ConfigError(f"{csv_path}: moments file not found")
    with csv_path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("start_s", "end_s", "label") if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"{csv_path}: needs columns start_s,end_s,label (missing: {', '.join(missing)})")
        rows = list(reader)
    durations: dict[Path, float] = {}
    out = []
    for i, row in enumerate(rows):
        where = f"{csv_path}:{i + 2}"
        if row.get("path"):
            path = Path(row["path"]) if os.path.isabs(row["path"]) else csv_path.parent / row["path"]
        elif media is not None:
            path = Path(media)
        else:
            raise ConfigError(f"{where}: no path column and no --media: which recording is this moment in?")
        label = (row.get("label") or "").strip()
        if label not in labels:
            raise ConfigError(f"{where}: unknown label '{label}' (the bundle's labels: {', '.join(labels)})")
        try:
            start, end = float(row["start_s"]), float(row["end_s"])
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: start_s and end_s must be seconds, got {row.get('start_s')!r}, {row.get('end_s')!r}") from None
        if not path.is_file():
            raise MediaError(f"{where}: {path}: not found")
        if path not in durations:
            durations[path] = media_duration(path)
        if not (0.0 <= start < end) or end > durations[path] + 0.05:
            raise ConfigError(f"{where}: time range {start:g}-{end:g} s is outside {path.name} "
                              f"({durations[path]:.2f} s long) or empty")
        out.append(Moment(path, start, end, label, i))
    if not out:
        raise ConfigError(f"{csv_path}: no moments")
    return out


# --------------------------------------------------------------------------- features through the runtime


def replay_events(bundle_dir: str | os.PathLike, media: Path, overrides: Sequence[str] = (), has_video: bool | None = None) -> list[dict]:
    """``edge-mer run --fast --emit-features`` on ``media`` with ``bundle_dir``, in this process:
    the events, each with the window's encoder features."""
    from edge_mer.cli import build_parser
    from edge_mer.stream.app import run_command

    if has_video is None:
        from edge_mer.media import probe

        has_video = probe(media).has_video
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "events.jsonl"
        argv = ["run", "--bundle", str(bundle_dir), "--video" if has_video else "--audio", str(media), "--fast",
                "--emit-features", "--out", str(out)]
        for o in overrides:
            argv += ["--set", o]
        args = build_parser().parse_args(argv)
        quiet = logging.getLogger("edge_mer").getEffectiveLevel() > logging.INFO  # the replay's notices are not news here
        runtime_log = logging.getLogger("edge_mer.stream")
        level = runtime_log.level
        if quiet:
            runtime_log.setLevel(logging.ERROR)
        try:
            rc = run_command(args)
        finally:
            runtime_log.setLevel(level)
        if rc != 0:
            raise EdgeMerError(f"{media}: the replay through the runtime failed (exit {rc})")
        return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass
class HeadWindows:
    """Per window of a session that a head read: its input ``z``, its probabilities, the times."""

    z: list[np.ndarray] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)
    t: list[tuple[float, float]] = field(default_factory=list)
    event: list[int] = field(default_factory=list)
    x: list[np.ndarray] = field(default_factory=list)  # the raw features the head read (before any normalisation)
    per_user: bool = False  # the head standardises by the person's running statistics


def head_windows(bundle: "Bundle", events: Sequence[dict], runtime_cfg,
                 start: dict[str, UserStats] | None = None) -> dict[str, HeadWindows]:
    """Each per-modality head's input and output per window, recomputed by the runtime's fusion
    from the events' features in stream order (so the per-user statistics evolve as at run time);
    ``start``: the per-user statistics start from these (a known person) instead of the population's."""
    from edge_mer.modality import Modality
    from edge_mer.stream.fusion import Fusion

    fusion = Fusion.from_bundle(bundle, runtime_cfg)
    if start:
        fusion.start_from(start)
    out: dict[str, HeadWindows] = {}
    for k, e in enumerate(events):
        feats = {Modality(m): np.asarray(f, np.float32) for m, f in (e.get("features") or {}).items()}
        if not feats:
            continue
        rel = {Modality(m): float(r) for m, r in (e.get("reliability") or {}).items()}
        pred = fusion.predict(feats, rel)
        for key, p in pred.per_modality.items():
            if key in fusion.last_inputs and "+" not in key:
                hw = out.setdefault(key, HeadWindows(per_user=key in fusion.user_windows()))
                hw.x.append(np.asarray(feats[Modality(key)], np.float64).reshape(-1))
                hw.z.append(fusion.last_inputs[key].astype(np.float64))
                hw.probs.append(np.asarray(p, np.float64))
                hw.t.append((float(e["t_start"]), float(e["t_end"])))
                hw.event.append(k)
    return out


def moment_of(t0: float, t1: float, moments: Sequence[Moment]) -> Moment | None:
    """The moment a window belongs to: at least :data:`MIN_INSIDE` of it inside the range."""
    for m in moments:
        inside = min(t1, m.end_s) - max(t0, m.start_s)
        if inside >= MIN_INSIDE * (t1 - t0):
            return m
    return None


# --------------------------------------------------------------------------- adapt


def session_stats(base: "Bundle", sessions: Sequence[Sequence[dict]], runtime_cfg,
                  moments: Sequence[Moment] | None = None) -> dict[str, UserStats]:
    """Per head with per-user normalisation: the person's statistics of its raw input over the
    windows of ``sessions`` (each a replay's events), or only over the windows inside ``moments``."""
    rows: dict[str, list[np.ndarray]] = {}
    for events in sessions:
        for key, hw in head_windows(base, events, runtime_cfg).items():
            if hw.per_user:
                rows.setdefault(key, []).extend(x for x, (t0, t1) in zip(hw.x, hw.t)
                                                if moments is None or moment_of(t0, t1, moments) is not None)
    out = {key: user_stats(r, runtime_cfg.user_norm_memory_windows - runtime_cfg.user_norm_prior_windows)
           for key, r in rows.items()}
    return {key: st for key, st in out.items() if st is not None}


def collect_labelled(base: "Bundle", events: Sequence[dict], moments: Sequence[Moment], runtime_cfg,
                     per_head: dict[str, dict[str, list]], media_key: str, start: dict[str, UserStats] | None = None,
                     windows: dict[str, HeadWindows] | None = None) -> None:
    """Add one recording's windows to ``per_head``: every window a head read (``session``) and,
    for the windows inside a moment, the head input, log-probabilities, label index and moment id;
    ``start``: the person's statistics the per-user normalisation starts from (see :func:`head_windows`);
    ``windows``: the recording's :func:`head_windows` when already computed (with the same ``start``)."""
    labels = base.labels
    for key, hw in (windows if windows is not None else head_windows(base, events, runtime_cfg, start)).items():
        acc = per_head.setdefault(key, {"z": [], "logp": [], "y": [], "g": [], "session": []})
        for z, p, (t0, t1) in zip(hw.z, hw.probs, hw.t):
            acc["session"].append(z)
            m = moment_of(t0, t1, moments)
            if m is not None:
                acc["z"].append(z)
                acc["logp"].append(np.log(np.maximum(p, LOG_FLOOR)))
                acc["y"].append(labels.index(m.label))
                acc["g"].append(f"{media_key}:{m.index}")


def fit_heads(per_head: dict[str, dict[str, list]], labels: Sequence[str], uniform: bool = False) -> tuple[dict, dict]:
    """A residual per head with labelled windows (``uniform``: on a uniform prior instead of the
    head's own probabilities, i.e. a head fitted on the labelled windows alone: the baseline)."""
    heads, infos = {}, {}
    for key, acc in per_head.items():
        if not acc["y"]:
            continue
        logp = np.stack(acc["logp"])
        residual, info = fit_residual(np.stack(acc["z"]), np.zeros_like(logp) if uniform else logp, np.array(acc["y"]),
                                      np.array(acc["g"]), np.stack(acc["session"]), lambdas=LAMBDAS, allow_head=not uniform)
        info["windows_per_label"] = {labels[i]: int(n) for i, n in zip(*np.unique(acc["y"], return_counts=True))}
        heads[key], infos[key] = residual, info
    return heads, infos


def adapt(base_dir: str | os.PathLike, moments: Sequence[Moment], out_dir: str | os.PathLike, overrides: Sequence[str] = (),
          source: str = "file", recorded: str | None = None, name: str | None = None,
          events_by_media: dict[Path, list[dict]] | None = None) -> dict[str, Any]:
    """Fit the residuals on ``moments`` and write the user bundle ``out_dir``; returns its adaptation record."""
    from edge_mer.bundle import MANIFEST, Bundle, file_entry
    from edge_mer.config import load_config
    from edge_mer.io import atomic_dir, atomic_open, atomic_write_text, sha256_file

    base = Bundle.load(base_dir)
    if base.user_root is not None:
        raise ConfigError(f"{base_dir}: is itself a user bundle; adapt its base bundle ({base.root}) instead")
    labels = base.labels
    cfg = load_config((), tuple(overrides))
    per_label = {lab: sum(1 for m in moments if m.label == lab) for lab in labels if any(m.label == lab for m in moments)}
    if len(per_label) < 2:
        raise ConfigError(f"adaptation needs moments of at least two labels (got only {', '.join(per_label) or 'none'}): "
                          "label a moment of another emotion too")
    per_head: dict[str, dict[str, list]] = {}
    replays = {media: (events_by_media or {}).get(media) or replay_events(base.root, media, overrides)
               for media in sorted({m.path for m in moments})}
    # The person's own statistics over the whole session (label-free): the user bundle's per-user
    # normalisation starts from them, and the residual is fitted on what the heads then read.
    stats = session_stats(base, list(replays.values()), cfg.runtime)
    for media, events in replays.items():
        collect_labelled(base, events, [m for m in moments if m.path == media], cfg.runtime, per_head, str(media), stats)
    used = {g for acc in per_head.values() for g in acc["g"]}
    empty = [m for m in moments if f"{m.path}:{m.index}" not in used]
    if empty:
        m = empty[0]
        raise ConfigError(f"moment {m.start_s:g}-{m.end_s:g} s ({m.label}) of {m.path.name}: no window of it reached a head "
                          f"(too short for a {base.window().window_s:g} s window, or no speech and no face in it)")
    heads, infos = fit_heads(per_head, labels)
    base_sha = sha256_file(base.root / MANIFEST)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out_dir, overwrite=True) as tmp:
        entries = {}
        for key, r in heads.items():
            rel = f"adapt/{key}.npz"
            (tmp / "adapt").mkdir(exist_ok=True)
            st = stats.get(key)
            user = {} if st is None else {"user_mean": st.mean.astype(np.float32), "user_std": st.std.astype(np.float32),
                                          "user_windows": np.int64(st.windows)}
            with atomic_open(tmp / rel, "wb") as fh:
                np.savez(fh, weight=r.weight.astype(np.float32), bias=r.bias.astype(np.float32),
                         mean=r.mean.astype(np.float32), scale=r.scale.astype(np.float32), **user)
            info = {**infos[key], **({"user_statistics_windows": st.windows} if st is not None else {})}
            entries[key] = file_entry(tmp, rel, type="log_prob_residual", **info)
        base_path = os.path.relpath(base.root.resolve(), out_dir.resolve().parent / out_dir.name)
        adaptation = {"labels": labels, "heads": entries, "moments": len(moments), "moments_per_label": per_label,
                      "source": source, "recorded": recorded, "base_manifest_sha256": base_sha,
                      "stores": "features and labels only" if recorded is None else f"features, labels and the media in {recorded}"}
        manifest = {"schema_version": 1, "kind": "user", "name": name or f"{base.name}+user",
                    "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "edge_mer_version": __version__,
                    "base": {"path": base_path, "name": base.name, "manifest_sha256": base_sha},
                    "adaptation": adaptation}
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, default=float) + "\n")
    Bundle.load(out_dir)  # validated like any bundle
    return adaptation


# --------------------------------------------------------------------------- live, guided


def session_plan(labels: Sequence[str], takes: int, seconds: float, lead_s: float = 3.0, gap_s: float = 2.0) -> list[Moment]:
    """The guided session's moments in stream time: ``lead_s`` to settle, then each label in turn
    (``takes`` rounds), ``seconds`` each, ``gap_s`` between them."""
    out, t = [], lead_s
    for i, lab in enumerate([lab for _ in range(takes) for lab in labels]):
        out.append(Moment(Path("live"), t, t + seconds, lab, i))
        t += seconds + gap_s
    return out


def live_session(args: argparse.Namespace, moments: Sequence[Moment], work: Path) -> list[dict]:
    """A guided session: the runtime runs on the live source (camera and/or microphone; or a file
    at real speed, a rehearsal) with ``--emit-features``, while the person is asked for each moment
    in turn on stderr; the session ends after the last one. Returns its events (the runtime's own
    features of every window). Stream time is read off the events themselves (``t_end`` and
    ``latency_ms`` of the first one give the source's clock), so the prompts follow the source,
    not the loading time."""
    import signal
    import threading

    from edge_mer.cli import build_parser
    from edge_mer.stream.app import run_command

    events_path = work / "events.jsonl"
    argv = ["run", "--bundle", str(args.bundle), "--emit-features", "--out", str(events_path)]
    if args.camera is not None:
        argv += ["--camera", str(args.camera)]
    if args.mic is not None:
        argv += ["--mic", str(args.mic)]
    if args.replay is not None:
        from edge_mer.media import probe

        argv += ["--video" if probe(args.replay).has_video else "--audio", str(args.replay)]
    if args.record:
        argv += ["--record", str(args.record)]
    if args.http:
        argv += ["--http", str(args.http)]
    for o in args.overrides:
        argv += ["--set", o]
    run_args = build_parser().parse_args(argv)
    end_s = max(m.end_s for m in moments) + 1.0
    partial = events_path.with_name(events_path.name + ".partial")
    from edge_mer.stream.sinks.http import broadcast_notice

    def say(text: str) -> None:
        broadcast_notice(text)  # the dashboard too, when the session serves one (--http)
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    done = threading.Event()

    def prompt() -> None:
        origin = None
        while origin is None and not done.is_set():  # the first event tells the source's clock
            for path in (partial, events_path):
                try:
                    line = path.read_text(encoding="utf-8").split("\n", 1)[0]
                except OSError:
                    continue
                if line.strip():
                    e = json.loads(line)
                    origin = time.monotonic() - float(e.get("latency_ms", 0.0)) / 1000.0 - float(e["t_end"])
                    break
            time.sleep(0.05)
        if origin is None:
            return
        say(f"edge-mer adapt: {len(moments)} moments; follow the prompts")
        for m in moments:
            time.sleep(max(0.0, origin + m.start_s - 1.0 - time.monotonic()))
            say(f"  in 1 s: {m.label} ({m.index + 1}/{len(moments)}) for {m.end_s - m.start_s:g} s")
            time.sleep(max(0.0, origin + m.end_s - time.monotonic()))
            say("  thank you")
        say("done: fitting your bundle")
        time.sleep(max(0.0, origin + end_s - time.monotonic()))
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGINT)  # end the session as Ctrl-C ends a run

    thread = threading.Thread(target=prompt, daemon=True)
    thread.start()
    try:
        rc = run_command(run_args)
    finally:
        done.set()
    if rc not in (0, 130):
        raise EdgeMerError(f"the live session ended with exit {rc}")
    events = [json.loads(line) for line in events_path.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if events_path.is_file() else []
    if not events or max(float(e["t_end"]) for e in events) < max(m.end_s for m in moments):
        raise EdgeMerError("the live session ended before its last moment (the source stopped early)")
    return events


# --------------------------------------------------------------------------- CLI


def add_adapt_parser(subparsers, add_config_args: Callable[[argparse.ArgumentParser], None], default_bundle) -> None:
    p = subparsers.add_parser("adapt", help="fit a person's own labelled moments into a small user bundle",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=str(default_bundle), help="base bundle (default: %(default)s)")
    p.add_argument("--out", required=True, help="user bundle directory to write (references the base by checksum)")
    p.add_argument("--media", help="the recording the moments are in (audio or video file)")
    p.add_argument("--moments", help="CSV of start_s,end_s,label (and path, when moments span several files)")
    p.add_argument("--camera", help="live: camera index or device (guided session)")
    p.add_argument("--mic", help="live: microphone ('default', index or name)")
    p.add_argument("--replay", metavar="FILE", help="rehearse the guided session on a recording played at real speed "
                                                     "instead of a camera/microphone (its moments at the session's times)")
    p.add_argument("--labels", help="live: comma-separated labels to ask for (default: all of the bundle's)")
    p.add_argument("--takes", type=int, default=2, help="live: moments per label (default 2)")
    p.add_argument("--seconds", type=float, default=5.0, help="live: length of each moment (default 5 s)")
    p.add_argument("--http", metavar="[HOST:]PORT", help="live: also show the prompts and the stream on the dashboard "
                                                          "(as edge-mer run --http)")
    p.add_argument("--record", metavar="DIR", help="keep the session's media in DIR (default: only features and labels are kept)")
    p.add_argument("--name", help="name of the user bundle")
    p.add_argument("--quiet", action="store_true", help="live: no prompts on stderr")
    add_config_args(p)
    p.set_defaults(func=adapt_command)


def _has_path_column(path: str) -> bool:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return "path" in (csv.DictReader(fh).fieldnames or [])
    except OSError:
        return False


def adapt_command(args: argparse.Namespace) -> int:
    from edge_mer.bundle import Bundle
    from edge_mer.stream.app import one_blas_thread

    base = Bundle.load(args.bundle)
    live = args.camera is not None or args.mic is not None or args.replay is not None
    if live == bool(args.moments):
        raise ConfigError("give either --moments CSV (with --media FILE) or a live source (--camera / --mic, or --replay FILE to rehearse)")
    with one_blas_thread():
        if live:
            labels = [x for x in (args.labels or ",".join(base.labels)).split(",") if x]
            unknown = [x for x in labels if x not in base.labels]
            if unknown:
                raise ConfigError(f"--labels: unknown label(s) {', '.join(unknown)} (the bundle's: {', '.join(base.labels)})")
            if len(labels) < 2:
                raise ConfigError("--labels: name at least two labels")
            if args.takes < 1 or args.seconds < base.window().window_s:
                raise ConfigError(f"--takes must be >= 1 and --seconds >= the bundle's window ({base.window().window_s:g} s)")
            moments = session_plan(labels, args.takes, args.seconds)
            with tempfile.TemporaryDirectory() as tmp:
                events = live_session(args, moments, Path(tmp))
            result = adapt(args.bundle, moments, args.out, args.overrides, "live session", args.record, args.name,
                           events_by_media={Path("live"): events})
        else:
            if args.record or args.http:
                raise ConfigError("--record and --http are for a live session (--camera / --mic / --replay); "
                                  "from a file, the file is the media")
            if not args.media and args.moments and not _has_path_column(args.moments):
                raise ConfigError(f"{args.moments}: has no path column: give the recording with --media FILE")
            moments = read_moments(args.moments, args.media, base.labels)
            result = adapt(args.bundle, moments, args.out, args.overrides, f"file {args.moments}", None, args.name)
    summary = ", ".join(f"{k}: {v['chosen']}" for k, v in result["heads"].items())
    print(f"edge-mer adapt: {args.out}: {result['moments']} moments "
          f"({', '.join(f'{k} {v}' for k, v in result['moments_per_label'].items())}); {summary}", file=sys.stderr)
    return 0
