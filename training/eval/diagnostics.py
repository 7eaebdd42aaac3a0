"""Collapse diagnostics of label-free pairwise runs: ``python -m training.eval.diagnostics``.

Why: a pairwise audio <-> AU run can reach a low contrastive loss in ways that do not make a
useful audio representation: the embeddings can collapse onto a few directions, or the task can be
too easy (a clip's AU vector told apart from 31 others by something that is not emotion). These
numbers say which, without a label: they read the run's inputs and weights only (never an emotion
label; the clip ids, their speakers and their partner clip are all they use).

For every run (``RUNS/fold<k>/seed<s>/<condition>``, or one run directory) and each of two clip
sets, the fold's test actors' clips and its training actors' clips, per stream pair of the loss
(e.g. ``audio-au``), for the run's weights and for the same architecture at random init (seeded by
the run's ``train.seed`` unless ``--random-seed``: the weights the run started from, with the input
standardisation of the AU MLP set from the same training clips, as the trainer does):

- on the **projected, L2-normalised embeddings the loss sees** (the projectors' outputs, on the
  centred ``train.crop_s`` crop of each clip, built as the trainer builds its validation batches:
  :class:`training.datasets.ContrastiveDataset` with ``fixed=True``):
  - alignment (Wang & Isola 2020): mean squared distance between the two streams' unit embeddings
    of the same clip (0: identical; 2: orthogonal on average; 4: opposite);
  - uniformity (Wang & Isola 2020), per stream: log of the mean of exp(-2 * squared distance) over
    pairs of different clips (0: all clips on one point; about -4 for points spread uniformly on a
    high-dimensional sphere);
  - effective rank (Roy & Vetterli 2007), per stream: exp of the entropy of the singular values,
    normalised to sum 1, of the centred embedding matrix (1: a line; the dimension: isotropic);
  - partner retrieval top-1, each direction: is the nearest (cosine) embedding of the other stream
    the clip's own partner, among the clips of the same speaker (within speaker), among all clips
    of the set (all), and among random groups of ``train.batch_size`` clips (a training batch's
    candidates); chance is 1 / candidates;
- on the **encoder features the probes read** (before the projector, whole clips, as
  :func:`training.eval.protocol.stream_feats` computes them): effective rank and uniformity of the
  L2-normalised features per stream (the two streams' features live in different spaces, so no
  alignment or retrieval there); for a feature-vector stream (AUs) also the effective rank of its
  standardised input, the most such an encoder could carry.

Inputs: the protocol's RAVDESS clips (:func:`training.eval.protocol.load_ravdess` without the
labels: the cache's log-mels and the per-clip AUs of ``--actors``), standardised per speaker when
the run was trained on such inputs. A run directory does not say so in its config (the protocol's
``--speaker-norm`` standardises before pretraining), so ``--inputs auto`` tells from the weights:
the AU encoder's saved input mean and std are those of the training clips it saw, and they match
either the raw or the per-speaker standardised AUs of the run's training split (to 1e-4; neither
matching is an error). Folds: the protocol's :func:`training.eval.protocol.make_folds` (default:
actors 01-04, 05-08, ..., 17-20), checked against the test and training actors in the run's
checkpoint.

Writes ``OUT/results.json`` (every run, both clip sets, both models) and ``OUT/results.md`` (mean
± std over runs of each diagnostic, pairwise vs random init, and a per-run table).

    OMP_NUM_THREADS=1 python -m training.eval.diagnostics --runs runs/protocol_seeds --cache /tmp/rav_cache \\
        --au-csv ../shared/data/ravdess/openface_au/au_audio_per_clip.csv --out results/protocol_seeds/diagnostics
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_mer.errors import ConfigError, EdgeMerError
from edge_mer.io import atomic_write_text

log = logging.getLogger("training.eval.diagnostics")

# Streams the RAVDESS loader serves: log-mels, the per-clip AUs, the floor's log-mel statistics.
SUPPORTED_STREAMS = ("audio", "au", "stats")
INPUT_MATCH_TOL = 1e-4
BATCH_DRAWS = 20
SETS = ("test", "train")
MODELS = ("pairwise", "random_init")


# --------------------------------------------------------------------------- the metrics


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero), float64."""
    x = np.asarray(x, np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def alignment(za: np.ndarray, zb: np.ndarray) -> float:
    """Wang & Isola's alignment (alpha = 2): mean over rows of ``||za_i - zb_i||^2`` of the unit
    rows; row i of both is the same clip.

    >>> alignment(np.eye(3), np.eye(3))
    0.0
    """
    za, zb = unit_rows(za), unit_rows(zb)
    if za.shape != zb.shape:
        raise ValueError(f"alignment: {za.shape} and {zb.shape} embeddings")
    return float(np.mean(np.sum((za - zb) ** 2, axis=1)))


def uniformity(z: np.ndarray, t: float = 2.0) -> float:
    """Wang & Isola's uniformity: ``log mean_{i<j} exp(-t ||z_i - z_j||^2)`` of the unit rows, over
    the pairs of different rows (0 when every row is the same point).

    >>> round(uniformity(np.array([[1.0, 0.0], [-1.0, 0.0]])), 6)   # two antipodes: -2 * 4
    -8.0
    """
    z = unit_rows(z)
    n = len(z)
    if n < 2:
        raise ValueError("uniformity: needs at least two rows")
    sq = np.maximum(2.0 - 2.0 * (z @ z.T), 0.0)
    d = sq[np.triu_indices(n, k=1)]
    m = float(np.max(-t * d))
    return float(m + np.log(np.mean(np.exp(-t * d - m))))


def effective_rank(x: np.ndarray) -> float:
    """Roy & Vetterli's effective rank of the column-centred ``x`` [N, D]: exp of the Shannon
    entropy of its singular values normalised to sum 1. Between 1 (one direction) and min(N-1, D);
    0.0 for a matrix whose rows are all equal (nothing left after centring).

    >>> round(effective_rank(np.outer(np.arange(5.0), [1.0, 2.0, 3.0])), 6)
    1.0
    """
    x = np.asarray(x, np.float64)
    scale = float(np.abs(x).max(initial=0.0))
    x = x - x.mean(axis=0, keepdims=True)
    s = np.linalg.svd(x, compute_uv=False)
    total = float(s.sum())
    # What centring leaves of equal rows is rounding error, relative to the entries' size.
    if total == 0.0 or total <= 1e-10 * scale * np.sqrt(x.size):
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def partner_top1(za: np.ndarray, zb: np.ndarray, groups: np.ndarray | list | None = None) -> tuple[float, float]:
    """``(top-1 %, chance %)``: for each row i of ``za``, is the row of ``zb`` with the highest
    cosine similarity, among the rows of the same group as i (all rows when ``groups`` is None; a
    group of one row is left out), row i itself? Chance: the mean of 1 / candidates.

    >>> partner_top1(np.eye(4), np.eye(4))
    (100.0, 25.0)
    """
    za, zb = unit_rows(za), unit_rows(zb)
    if za.shape != zb.shape:
        raise ValueError(f"partner_top1: {za.shape} and {zb.shape} embeddings")
    groups = np.zeros(len(za), dtype=int) if groups is None else np.asarray(groups)
    if len(groups) != len(za):
        raise ValueError(f"partner_top1: {len(groups)} group ids for {len(za)} rows")
    hits, n, counted = 0, 0, 0
    for g in np.unique(groups):
        rows = np.nonzero(groups == g)[0]
        if len(rows) < 2:
            continue
        sim = za[rows] @ zb[rows].T
        hits += int(np.sum(np.argmax(sim, axis=1) == np.arange(len(rows))))
        n += len(rows)
        counted += 1  # each of the group's rows has 1 / len(rows) chance: the group adds 1 in all
    if n == 0:
        raise ValueError("partner_top1: no group with two or more rows")
    return 100.0 * hits / n, 100.0 * counted / n


def batch_top1(za: np.ndarray, zb: np.ndarray, batch_size: int, draws: int = BATCH_DRAWS, seed: int = 0) -> tuple[float, float]:
    """``(top-1 %, chance %)`` of :func:`partner_top1` within random groups of ``batch_size`` rows
    (the candidates of one training batch; rows beyond the last full group are left out of a
    draw), averaged over ``draws`` random partitions."""
    n = len(za)
    b = min(batch_size, n)
    if b < 2:
        raise ValueError(f"batch_top1: {n} rows, batch size {batch_size}")
    rng = np.random.default_rng(seed)
    tops = []
    for _ in range(draws):
        perm = rng.permutation(n)[: (n // b) * b]
        groups = np.empty(n, dtype=int)
        groups[:] = -1
        groups[perm] = np.arange(len(perm)) // b
        keep = groups >= 0
        tops.append(partner_top1(za[keep], zb[keep], groups[keep])[0])
    return float(np.mean(tops)), 100.0 / b


def pair_diagnostics(za: np.ndarray, zb: np.ndarray, speakers: np.ndarray, batch_size: int) -> dict[str, float]:
    """Alignment and partner retrieval (both directions and their mean) of one stream pair's
    projected embeddings ``[N, D]`` (row i of both: clip i; ``speakers``: its speaker)."""
    out: dict[str, float] = {"alignment": alignment(za, zb)}
    for name, groups in (("within_speaker", speakers), ("all", None)):
        ab, chance = partner_top1(za, zb, groups)
        ba, _ = partner_top1(zb, za, groups)
        out.update({f"top1_{name}_ab": ab, f"top1_{name}_ba": ba, f"top1_{name}": 0.5 * (ab + ba), f"chance_{name}": chance})
    ab, chance = batch_top1(za, zb, batch_size)
    ba, _ = batch_top1(zb, za, batch_size)
    out.update({"top1_batch_ab": ab, "top1_batch_ba": ba, "top1_batch": 0.5 * (ab + ba), "chance_batch": chance})
    return out


def stream_diagnostics(z: np.ndarray, feats: np.ndarray, inputs: np.ndarray | None = None) -> dict[str, float]:
    """Uniformity and effective rank of one stream's projected embeddings ``z`` and of its encoder
    features ``feats`` (uniformity of the L2-normalised features), and the effective rank of its
    standardised input vectors when given."""
    out = {"uniformity": uniformity(z), "effective_rank": effective_rank(z), "dim": int(z.shape[1]),
           "feature_uniformity": uniformity(feats), "feature_effective_rank": effective_rank(feats),
           "feature_dim": int(feats.shape[1])}
    if inputs is not None:
        out["input_effective_rank"] = effective_rank(inputs)
        out["input_dim"] = int(inputs.shape[1])
    return out


# --------------------------------------------------------------------------- data and models


def load_clips(cache: str, au_csv: str, actors: list[int]):
    """``(raw store, per-speaker store, ids, speaker of each id)``: the protocol's RAVDESS clips of
    ``actors`` (:func:`training.eval.protocol.load_ravdess` without reading a label): the cache's
    log-mels and the per-clip AUs, the ids those with both; the per-speaker store standardises
    every actor's inputs by that actor's own clips, as ``--speaker-norm`` does."""
    from training.datasets import actor_of, load_action_unit_vectors, load_cache_store, normalise_per_speaker
    from training.eval.protocol import logmel_stats

    store, ids = load_cache_store(cache, ("audio",))
    ids = [i for i in ids if i.startswith("ravdess/") and actor_of(i) in set(actors)]
    if not ids:
        raise ConfigError(f"{cache}: no RAVDESS clips of actors {sorted(actors)}")
    store.vectors["au"] = load_action_unit_vectors(au_csv, ids)
    ids = [i for i in ids if i in store.vectors["au"] and i in store.logmels]
    if not ids:
        raise ConfigError(f"{au_csv}: no action units for the clips of actors {sorted(actors)} in {cache}")
    speakers = {i: f"actor{actor_of(i):02d}" for i in ids}
    per_speaker = normalise_per_speaker(store, speakers)
    for s in (store, per_speaker):
        # The floor's statistics (a c_pair_stats run's stream), from the inputs as they are.
        s.vectors["stats"] = dict(zip(ids, logmel_stats(s, ids).astype(np.float32)))
    return store, per_speaker, ids, speakers


@dataclasses.dataclass
class Run:
    path: Path
    fold: int | None
    seed: int | None
    cfg: Any
    meta: dict[str, Any]


def find_runs(runs: Path, condition: str) -> list[Run]:
    """``runs`` itself when it is a run directory (holds ``checkpoint.json``), else every
    ``runs/fold<k>/seed<s>/<condition>`` holding one, in fold then seed order."""
    from training import checkpoint as ckpt
    from training.eval.probe import run_config

    if not runs.is_dir():
        raise ConfigError(f"--runs {runs}: not a directory")
    if (runs / ckpt.META_FILE).is_file():
        dirs = [runs]
    else:
        dirs = [d for d in runs.glob(f"fold*/seed*/{condition}") if (d / ckpt.META_FILE).is_file()]
        if not dirs:
            raise ConfigError(f"--runs {runs}: no run directory fold*/seed*/{condition} with a {ckpt.META_FILE}")
    out = []
    for d in dirs:
        m_fold = re.search(r"fold(\d+)", str(d))
        meta = ckpt.read_meta(d)
        cfg = run_config(d)
        out.append(Run(d, int(m_fold.group(1)) if m_fold else None, cfg.train.seed, cfg, meta))
    return sorted(out, key=lambda r: (r.fold if r.fold is not None else -1, r.seed if r.seed is not None else -1, str(r.path)))


def run_actors(run: Run, folds: dict[int, list[int]], actors: list[int]) -> tuple[list[int], list[int]]:
    """``(test actors, training actors)`` of ``run``: its fold's in the fold definition (the run's
    own record when it has no fold in its path), checked against the actors its checkpoint
    records."""
    saved = run.meta.get("data", {})
    if run.fold is not None:
        if run.fold not in folds:
            raise ConfigError(f"{run.path}: fold {run.fold} is not in the fold definition (folds {sorted(folds)})")
        test = sorted(folds[run.fold])
    elif saved.get("test_actors"):
        test = sorted(int(a) for a in saved["test_actors"])
    else:
        raise ConfigError(f"{run.path}: no fold<k> in its path and no test actors in its checkpoint")
    train = sorted(set(actors) - set(test))
    for key, mine in (("test_actors", test), ("train_actors", train)):
        if key in saved and sorted(int(a) for a in saved[key]) != mine:
            raise ConfigError(f"{run.path}: pretrained with {key} {sorted(saved[key])}, the fold definition gives {mine}")
    return test, train


def build_model(run: Run, store, train_ids: list[str], seed: int | None = None) -> nn.Module:
    """The run's :class:`training.train.ContrastiveModel` (encoders and projectors) in eval mode:
    its saved weights, or with ``seed`` the same architecture at random init, built as the trainer
    builds it (``torch.manual_seed(seed)`` then the model; feature-vector encoders' input
    standardisation from ``train_ids``)."""
    from training import checkpoint as ckpt
    from training.train import ContrastiveModel, encoder_specs

    streams = tuple(run.meta["streams"])
    vector_dims = {s: len(next(iter(tab.values()))) for s, tab in store.vectors.items() if tab}
    specs = encoder_specs(run.cfg, streams, vector_dims)
    saved = run.meta["encoders"]
    for key, spec in specs.items():
        if key not in saved or saved[key]["name"] != spec["name"] or any(saved[key]["cfg"].get(k) != (list(v) if isinstance(v, tuple) else v)
                                                                          for k, v in spec["cfg"].items()):
            raise ckpt.CheckpointError(f"{run.path}: its run_config.toml does not rebuild the encoder '{key}' of {ckpt.META_FILE}")
    proj = run.meta["projector"]
    if seed is not None:
        torch.manual_seed(seed)
    model = ContrastiveModel(specs, streams, proj["hidden"], proj["dim"])
    if seed is None:
        missing, unexpected = model.load_state_dict(ckpt.read_tensors(run.path), strict=False)
        if missing or unexpected:
            raise ckpt.CheckpointError(f"{run.path}: does not match its config's model (missing {missing[:2]}, unexpected {unexpected[:2]})")
    else:
        for key, enc in model.encoders.items():
            if hasattr(enc, "set_input_stats"):
                enc.set_input_stats(np.stack([store.vectors[key][i] for i in train_ids]))
    return model.eval()


def training_split(run: Run, store, train_ids: list[str], speakers: dict[str, str]) -> tuple[list[str], list[str]]:
    """``(fitted, held out)``: the clips the run's encoders were fitted on, its fold's training
    clips less the validation clips, and those (:func:`training.train.adapt_to_data`, as the
    trainer splits them)."""
    from training.train import PretrainData, adapt_to_data

    data = PretrainData(store, list(train_ids), {}, speakers={i: speakers[i] for i in train_ids})
    cfg = dataclasses.replace(run.cfg, train=dataclasses.replace(run.cfg.train, modalities=tuple(run.meta["streams"])))
    adapted = adapt_to_data(cfg, data)
    return adapted.train_ids, adapted.val_ids


@torch.no_grad()
def recomputed_val_loss(model: nn.Module, run: Run, store, val_ids: list[str]) -> float | None:
    """The run's validation loss recomputed here (:func:`training.train.validation_loss` on its
    held-out clips): equal to the ``val_loss`` in its checkpoint only if the inputs, the split and
    the weights are the trainer's, which is the check that these embeddings are the ones the loss
    saw. None without held-out clips."""
    from training import checkpoint as ckpt
    from training.datasets import ContrastiveDataset
    from training.loss import PairwiseInfoNCE
    from training.train import ContrastiveTask, crop_spec, validation_loss

    loss = PairwiseInfoNCE(run.cfg.loss)
    if run.cfg.loss.learn_temperature:
        loss.load_state_dict(ckpt.read_trainer_state(run.path)["loss"])
    ds = ContrastiveDataset(store, val_ids, tuple(run.meta["streams"]), crop_spec(run.cfg), seed=run.cfg.train.seed, fixed=True)
    return validation_loss(ContrastiveTask(model, loss).eval(), ds, run.cfg.train.batch_size, torch.device("cpu"))


def detect_inputs(run: Run, stores: dict[str, Any], fit_ids: list[str]) -> tuple[str, float | None]:
    """``(inputs, deviation)``: which store (``raw`` or ``speaker``) the run was trained on, from
    its feature-vector encoders' saved input mean and std (set by the trainer from the training
    clips' inputs), with the largest deviation of the match; falls back to the config's
    ``train.speaker_norm`` when no encoder carries such statistics."""
    from training import checkpoint as ckpt

    tensors = ckpt.read_tensors(run.path)
    keys = [k for k in run.meta["encoders"] if f"encoders.{k}.input_mean" in tensors]
    if not keys:
        return ("speaker" if run.cfg.train.speaker_norm else "raw"), None
    devs = {}
    for name, store in stores.items():
        dev = 0.0
        for k in keys:
            x = np.stack([store.vectors[k][i] for i in fit_ids]).astype(np.float64)
            std = x.std(axis=0)
            std[std < 1e-6] = 1.0
            dev = max(dev, float(np.max(np.abs(tensors[f"encoders.{k}.input_mean"].numpy() - x.mean(axis=0)))),
                      float(np.max(np.abs(tensors[f"encoders.{k}.input_std"].numpy() - std))))
        devs[name] = dev
    best = min(devs, key=devs.get)
    if devs[best] > INPUT_MATCH_TOL:
        raise ConfigError(f"{run.path}: the saved input statistics of its {', '.join(keys)} encoder match neither the raw nor the "
                          f"per-speaker inputs of its training clips (deviations {', '.join(f'{n} {d:.2g}' for n, d in devs.items())}); "
                          "other clips or another cache? give --inputs raw or --inputs speaker to force one")
    return best, devs[best]


@torch.no_grad()
def embed(model: nn.Module, run: Run, store, ids: list[str], batch: int = 64) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(projected, features)``: per stream, the unit embeddings the loss sees (the centred
    training crop, as the validation batches are built) and the encoder features the probes read
    (whole clips, :func:`training.eval.protocol.stream_feats`), ``[len(ids), D]`` each."""
    from training.datasets import ContrastiveDataset, collate_streams
    from training.eval.protocol import stream_feats
    from training.train import crop_spec, encoder_key

    streams = tuple(run.meta["streams"])
    ds = ContrastiveDataset(store, ids, streams, crop_spec(run.cfg), seed=run.cfg.train.seed, fixed=True)
    proj: dict[str, list[np.ndarray]] = {s: [] for s in streams}
    for start in range(0, len(ids), batch):
        b = collate_streams([ds[i] for i in range(start, min(start + batch, len(ids)))])
        if not all(bool(b["present"][s].all()) for s in streams):
            raise ConfigError(f"{run.path}: clips without every stream of {streams}")
        for s, z in model(b["inputs"]).items():
            proj[s].append(z.numpy())
    encoders = {encoder_key(s): model.encoders[encoder_key(s)] for s in streams}
    feats = {s: stream_feats(encoders, encoder_key(s), ids, store) for s in streams}
    return {s: np.concatenate(v) for s, v in proj.items()}, feats


def standardised_inputs(model: nn.Module, stream: str, store, ids: list[str]) -> np.ndarray | None:
    """A feature-vector stream's inputs as its encoder standardises them (None for other streams)."""
    enc = model.encoders[stream] if stream in model.encoders else None
    if enc is None or not hasattr(enc, "input_mean") or stream not in store.vectors:
        return None
    x = np.stack([store.vectors[stream][i] for i in ids]).astype(np.float64)
    return (x - enc.input_mean.numpy()) / enc.input_std.numpy()


def diagnose(model: nn.Module, run: Run, store, ids: list[str], speakers: dict[str, str]) -> dict[str, Any]:
    """Every diagnostic of ``model`` on the clips ``ids``: ``{"pairs": {"a-b": ...}, "streams":
    {s: ...}}``."""
    from training.loss import PairwiseInfoNCE

    streams = list(run.meta["streams"])
    proj, feats = embed(model, run, store, ids)
    spk = np.array([speakers[i] for i in ids])
    pairs = PairwiseInfoNCE(run.cfg.loss).active_pairs(streams)
    return {"pairs": {f"{a}-{b}": pair_diagnostics(proj[a], proj[b], spk, run.cfg.train.batch_size) for a, b in pairs},
            "streams": {s: stream_diagnostics(proj[s], feats[s], standardised_inputs(model, s, store, ids)) for s in streams}}


def evaluate_run(run: Run, stores: dict[str, Any], ids: list[str], speakers: dict[str, str], folds: dict[int, list[int]],
                 actors: list[int], inputs: str = "auto", random_seed: int | None = None) -> dict[str, Any]:
    """One run's record: its actors, the inputs it was trained on, and the diagnostics of its
    weights and of the random init on its test and training actors' clips."""
    from training.datasets import actor_of
    from training.train import encoder_key

    unsupported = sorted({encoder_key(s) for s in run.meta["streams"]} - set(SUPPORTED_STREAMS))
    if unsupported:
        raise ConfigError(f"{run.path}: streams {unsupported}; this diagnostic serves {', '.join(SUPPORTED_STREAMS)}")
    if run.cfg.encoder.audio == "whisper_tiny":
        raise ConfigError(f"{run.path}: a Whisper-trunk run (its own log-mels); not served here")
    test_actors, train_actors = run_actors(run, folds, actors)
    clip_sets = {"test": [i for i in ids if actor_of(i) in test_actors], "train": [i for i in ids if actor_of(i) in train_actors]}
    for name, members in clip_sets.items():
        if len(members) < 2:
            raise ConfigError(f"{run.path}: {len(members)} {name} clips (actors {test_actors if name == 'test' else train_actors})")
    fit_ids, val_ids = training_split(run, stores["raw"], clip_sets["train"], speakers)
    deviation = None
    if inputs == "auto":
        inputs, deviation = detect_inputs(run, stores, fit_ids)
    store = stores[inputs]
    seed = run.cfg.train.seed if random_seed is None else random_seed
    models = {"pairwise": build_model(run, store, fit_ids), "random_init": build_model(run, store, fit_ids, seed=seed)}
    rec: dict[str, Any] = {"run": str(run.path), "fold": run.fold, "seed": run.seed, "random_seed": seed,
                           "test_actors": test_actors, "train_actors": train_actors,
                           "inputs": "standardised per speaker (label-free)" if inputs == "speaker" else "as recorded",
                           "input_stats_deviation": deviation, "streams": list(run.meta["streams"]), "sets": {}}
    val = recomputed_val_loss(models["pairwise"], run, store, val_ids)
    rec["val_loss"] = {"checkpoint": run.meta.get("val_loss"), "recomputed": val}
    if val is not None and run.meta.get("val_loss") is not None and abs(val - run.meta["val_loss"]) > 1e-3:
        log.warning("%s: validation loss recomputed %.4f, the checkpoint says %.4f: these are not the inputs it was trained on",
                    run.path, val, run.meta["val_loss"])
    for name, members in clip_sets.items():
        rec["sets"][name] = {"clips": len(members), "speakers": len({speakers[i] for i in members}),
                             **{m: diagnose(model, run, store, members, speakers) for m, model in models.items()}}
    return rec


# --------------------------------------------------------------------------- summary and tables


PAIR_ROWS = (
    ("alignment", "alignment (mean sq. distance of partners; 0 = identical)", 3),
    ("top1_within_speaker_ab", "top-1 {a}→{b}, within speaker (%)", 1),
    ("top1_within_speaker_ba", "top-1 {b}→{a}, within speaker (%)", 1),
    ("top1_all_ab", "top-1 {a}→{b}, all clips of the set (%)", 1),
    ("top1_all_ba", "top-1 {b}→{a}, all clips of the set (%)", 1),
    ("top1_batch_ab", "top-1 {a}→{b}, random batches of train.batch_size (%)", 1),
    ("top1_batch_ba", "top-1 {b}→{a}, random batches of train.batch_size (%)", 1),
)
STREAM_ROWS = (
    ("uniformity", "{s}: uniformity, projected (t = 2; 0 = one point)", 3),
    ("effective_rank", "{s}: effective rank, projected (of {dim})", 1),
    ("feature_uniformity", "{s}: uniformity, encoder features (normalised)", 3),
    ("feature_effective_rank", "{s}: effective rank, encoder features (of {feature_dim})", 1),
    ("input_effective_rank", "{s}: effective rank, standardised input (of {input_dim})", 1),
)


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over the runs of every diagnostic: ``{set: {model: {"pairs"|"streams": {name:
    {key: {"mean", "std", "n"}}}}}}``, plus the chance levels' means."""
    out: dict[str, Any] = {}
    for set_name in SETS:
        out[set_name] = {}
        for model in MODELS:
            diag = [r["sets"][set_name][model] for r in records if set_name in r["sets"]]
            entry: dict[str, Any] = {}
            for part in ("pairs", "streams"):
                entry[part] = {}
                for name in dict.fromkeys(n for d in diag for n in d[part]):
                    keys = dict.fromkeys(k for d in diag if name in d[part] for k in d[part][name])
                    entry[part][name] = {k: _mean_std([d[part][name][k] for d in diag if k in d[part][name]]) for k in keys}
            out[set_name][model] = entry
    return out


def _cell(e: dict[str, float] | None, digits: int) -> str:
    if e is None:
        return "—"
    return f"{e['mean']:.{digits}f} ± {e['std']:.{digits}f}"


def summary_table(summary: dict[str, Any], n_runs: int) -> str:
    lines = [f"### Collapse diagnostics: mean ± std over {n_runs} runs, pairwise vs the same architecture at random init", "",
             "| diagnostic | pairwise, test actors | random init, test actors | pairwise, training actors | random init, training actors |",
             "|---|---|---|---|---|"]
    first = summary["test"]["pairwise"]
    for pair in first["pairs"]:
        a, b = pair.split("-", 1)
        for key, label, digits in PAIR_ROWS:
            cells = [_cell(summary[s][m]["pairs"].get(pair, {}).get(key), digits) for s in SETS for m in MODELS]
            lines.append(f"| {pair}: {label.format(a=a, b=b)} | " + " | ".join(cells) + " |")
        chance = [f"{s}: within speaker {summary[s]['pairwise']['pairs'][pair]['chance_within_speaker']['mean']:.1f} %, "
                  f"all {summary[s]['pairwise']['pairs'][pair]['chance_all']['mean']:.2f} %, "
                  f"batch {summary[s]['pairwise']['pairs'][pair]['chance_batch']['mean']:.1f} %" for s in SETS]
        lines.append(f"| {pair}: top-1 chance | " + " | ".join([chance[0], "same", chance[1], "same"]) + " |")
    for stream, e in first["streams"].items():
        dims = {k: int(e[k]["mean"]) for k in ("dim", "feature_dim", "input_dim") if k in e}
        for key, label, digits in STREAM_ROWS:
            if key not in e:
                continue
            cells = [_cell(summary[s][m]["streams"].get(stream, {}).get(key), digits) for s in SETS for m in MODELS]
            lines.append(f"| {label.format(s=stream, **dims)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_run_table(records: list[dict[str, Any]], set_name: str = "test") -> str:
    """One row per run on ``set_name`` clips, each cell ``pairwise / random init``."""
    rec0 = records[0]["sets"][set_name]["pairwise"]
    pair = next(iter(rec0["pairs"]))
    a, b = pair.split("-", 1)
    streams = list(rec0["streams"])
    cols = ([("pairs", pair, "alignment", "alignment", 2), ("pairs", pair, "top1_within_speaker", "top-1 within speaker %", 0),
             ("pairs", pair, "top1_all", "top-1 all %", 0)]
            + [("streams", s, "uniformity", f"{s} uniformity", 2) for s in streams]
            + [("streams", s, "effective_rank", f"{s} eff. rank (proj.)", 1) for s in streams]
            + [("streams", s, "feature_effective_rank", f"{s} eff. rank (features)", 1) for s in streams])
    lines = [f"Per run, {set_name} actors' clips, each cell pairwise / random init ({pair}; top-1: mean of {a}→{b} and {b}→{a}):", "",
             "| fold (test actors) | seed | " + " | ".join(c[3] for c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in records:
        d = r["sets"][set_name]
        cells = [f"{d['pairwise'][part][name][key]:.{dg}f} / {d['random_init'][part][name][key]:.{dg}f}" for part, name, key, _, dg in cols]
        actors = ",".join(f"{x:02d}" for x in r["test_actors"])
        lines.append(f"| {r['fold'] if r['fold'] is not None else '—'} ({actors}) | {r['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(out: Path, records: list[dict[str, Any]], command: str, seconds: float) -> dict[str, Any]:
    from training.eval.probe import write_json

    diffs = [abs(r["val_loss"]["recomputed"] - r["val_loss"]["checkpoint"]) for r in records
             if r["val_loss"]["recomputed"] is not None and r["val_loss"]["checkpoint"] is not None]
    result = {"what": "label-free collapse diagnostics of pairwise runs: alignment, uniformity, effective rank, partner retrieval",
              "command": command, "seconds": round(seconds), "runs": len(records),
              "inputs": sorted({r["inputs"] for r in records}),
              "val_loss_check": {"runs": len(diffs), "max_abs_diff": max(diffs) if diffs else None},
              "summary": summarise(records), "per_run": records}
    write_json(out / "results.json", result)
    md = (summary_table(result["summary"], len(records))
          + f"\nInputs: {', '.join(result['inputs'])}. Projected: the projectors' unit embeddings of each clip's centred crop "
            "(as the validation batches); encoder features: the whole-clip features the probes read. Random init: the run's "
            "architecture seeded by its train.seed (the weights it started from). "
          + (f"Check: the validation loss recomputed from these inputs and weights equals the checkpoint's (within 1e-3) on "
             f"{sum(d <= 1e-3 for d in diffs)} of {len(records)} runs (largest difference {max(diffs):.1e})" if diffs
             else "No run has a validation loss to check")
          + ".\n\n"
          + per_run_table(records, "test") + "\n" + per_run_table(records, "train")
          + f"\n{result['seconds']} s. Made by:\n\n```bash\nOMP_NUM_THREADS=1 {command}\n```\n")
    atomic_write_text(out / "results.md", md)
    return result


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.eval.diagnostics", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, help="a run directory, or a protocol runs folder (fold<k>/seed<s>/<condition>)")
    p.add_argument("--condition", default="c_pair", help="the run folder name under fold<k>/seed<s> (default c_pair)")
    p.add_argument("--cache", required=True, help="the RAVDESS audio cache (python -m training.preprocess)")
    p.add_argument("--au-csv", default="../shared/data/ravdess/openface_au/au_audio_per_clip.csv", help="RAVDESS per-clip AUs")
    p.add_argument("--out", required=True, help="results directory (results.json, results.md)")
    p.add_argument("--actors", default="1-20", help="the protocol's actors (default 1-20)")
    p.add_argument("--fold-size", type=int, default=4, help="test actors per fold, as the protocol's --fold-size")
    p.add_argument("--fold-actors", metavar="'1-4;5-8;...'", help="the folds' test actors, as the protocol's --fold-actors")
    p.add_argument("--inputs", choices=("auto", "raw", "speaker"), default="auto",
                   help="the inputs the runs were trained on: auto (from the AU encoder's saved input statistics), raw, "
                        "or speaker (standardised per speaker)")
    p.add_argument("--random-seed", type=int, help="seed of the random-init reference (default: each run's train.seed)")
    return p


def main(argv: list[str] | None = None) -> int:
    from training.eval.protocol import make_folds
    from training.train import parse_actors

    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw_argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    t0 = time.time()
    try:
        for flag, path, kind in (("--runs", args.runs, "dir"), ("--cache", args.cache, "dir"), ("--au-csv", args.au_csv, "file")):
            if not (Path(path).is_dir() if kind == "dir" else Path(path).is_file()):
                raise ConfigError(f"{flag} {path}: no such {'directory' if kind == 'dir' else 'file'}")
        actors = parse_actors(args.actors)
        folds = make_folds(actors, args.fold_size, args.fold_actors)
        runs = find_runs(Path(args.runs), args.condition)
        raw, per_speaker, ids, speakers = load_clips(args.cache, args.au_csv, actors)
        stores = {"raw": raw, "speaker": per_speaker}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        records = []
        for run in runs:
            t_run = time.time()
            records.append(evaluate_run(run, stores, ids, speakers, folds, actors, args.inputs, args.random_seed))
            s = records[-1]["sets"]["test"]
            pair = next(iter(s["pairwise"]["pairs"]))
            log.info("%s: %s top-1 within speaker %.1f %% (random %.1f), alignment %.3f (random %.3f) (%.0f s)", run.path, pair,
                     s["pairwise"]["pairs"][pair]["top1_within_speaker"], s["random_init"]["pairs"][pair]["top1_within_speaker"],
                     s["pairwise"]["pairs"][pair]["alignment"], s["random_init"]["pairs"][pair]["alignment"], time.time() - t_run)
        result = write_results(out, records, " ".join(["python -m training.eval.diagnostics", *raw_argv]), time.time() - t0)
    except EdgeMerError as exc:
        print(f"training.eval.diagnostics: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
