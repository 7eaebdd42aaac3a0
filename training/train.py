"""Label-free pairwise contrastive pretraining: ``python -m training.train``.

Every stream of ``train.modalities`` gets its registered encoder and a projector; each batch is
a set of clips with all their streams cropped to the same time span; the loss is
:class:`training.loss.PairwiseInfoNCE`. No label is read: the data come from the cache's arrays
(or feature files) alone, batches are drawn uniformly at random, and the kept model is the one
with the lowest contrastive loss on held-out clips. Runs under ``torchrun`` (DDP; gloo on CPU).

Small sets (:func:`adapt_to_data`): a stream no clip has is dropped from ``train.modalities``
(refused when fewer than two remain), a ``val_fraction`` holding out fewer than two clips becomes
0 (the last epoch is kept) and a ``batch_size`` the clips cannot fill is lowered (refused below two
clips), each with a one-line warning; the effective config is the one saved with the run.

Outputs in ``--out``: the selected checkpoint (lowest validation loss) in the directory itself,
the latest state in ``last/`` (what ``--resume`` continues from), ``log.csv`` and
``run_config.toml``.

    python -m training.train --config configs/ravdess_audio_au.toml --cache cache/ravdess_audio \\
        --au-csv ../shared/data/ravdess/openface_au/au_audio_per_clip.csv --actors 1-16 --out runs/fold1
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import random
import sys
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from edge_mer.cli import add_config_args
from edge_mer.config import Config, config_to_dict, load_config, parse_override, save_config
from edge_mer.errors import ConfigError, EdgeMerError
from edge_mer.io import atomic_write_text
from training import checkpoint as ckpt
from training.datasets import (ClipStore, ContrastiveDataset, CropSpec, check_label_free, collate_streams,
                               load_action_unit_vectors, load_cache_store, load_mosi, logmel_speaker_prior,
                               normalise_per_speaker)
from training.distributed import DistInfo, all_reduce_mean, init_distributed, shutdown
from training.encoders import Projector, build_encoder, cfg_from_dict, encoder_class
from training.loss import PairwiseInfoNCE

log = logging.getLogger("training.train")

RAW_MODALITIES = ("audio", "face", "landmarks", "text")


# --------------------------------------------------------------------------- model


def encoder_key(stream: str) -> str:
    """The encoder serving ``stream``: the second audio view shares the audio encoder."""
    return "audio" if stream == "audio_view2" else stream


# Encoders that start from published pretrained weights (a run with train.epochs = 0 keeps them).
PUBLISHED_WEIGHTS = frozenset({"whisper_tiny", "face_fer", "text_minilm"})


def encoder_specs(cfg: Config, streams: tuple[str, ...], vector_dims: dict[str, int]) -> dict[str, dict[str, Any]]:
    """``{encoder key: {"name", "cfg"}}`` from the config sections: the encoder names of
    ``[encoder]``, the shared sizes, then ``encoder.options`` (``NAME.key=value`` by encoder
    name or by stream)."""
    options: dict[str, dict[str, Any]] = {}
    for text in cfg.encoder.options:
        name, key, value = parse_override(text)
        options.setdefault(name, {})[key] = value
    specs = {}
    for key in dict.fromkeys(encoder_key(s) for s in streams):
        name = getattr(cfg.encoder, key) if key in RAW_MODALITIES else cfg.encoder.features
        cls = encoder_class(name)
        derived: dict[str, Any] = {
            "feature_dim": cfg.encoder.feature_dim,
            "n_mels": cfg.audio.n_mels,
            "image_size": cfg.face.image_size,
            "max_tokens": cfg.text.max_tokens,
            "trainable_layers": cfg.text.trainable_layers,
        }
        if key == "face":
            derived["frames"] = cfg.face.frames_per_window
        elif key == "landmarks":
            derived["frames"] = cfg.landmarks.frames_per_window
        if key in vector_dims:
            derived["in_dim"] = vector_dims[key]
        fields = cls.Cfg.__dataclass_fields__
        enc_cfg = {k: v for k, v in derived.items() if k in fields}
        enc_cfg.update(options.get(name, {}))
        enc_cfg.update(options.get(key, {}))
        cfg_from_dict(cls.Cfg, enc_cfg, f"encoder.options for '{key}' ({name})")  # validate early
        specs[key] = {"name": name, "cfg": enc_cfg}
    return specs


class ContrastiveModel(nn.Module):
    """Encoders and projectors of every stream, ``{stream: inputs} -> {stream: unit embedding}``."""

    def __init__(self, specs: dict[str, dict[str, Any]], streams: tuple[str, ...], proj_hidden: int, proj_dim: int) -> None:
        super().__init__()
        self.streams = tuple(streams)
        self.encoders = nn.ModuleDict({k: build_encoder(s["name"], s["cfg"]) for k, s in specs.items()})
        self.projectors = nn.ModuleDict({k: Projector(e.feature_dim, proj_hidden, proj_dim) for k, e in self.encoders.items()})

    def features(self, inputs: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {s: self.encoders[encoder_key(s)](**x) for s, x in inputs.items()}

    def forward(self, inputs: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {s: self.projectors[encoder_key(s)](f) for s, f in self.features(inputs).items()}


class ContrastiveTask(nn.Module):
    """Model and loss in one module, so DDP wraps both (a learned temperature is a parameter too)."""

    def __init__(self, model: ContrastiveModel, loss: PairwiseInfoNCE) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, inputs: dict, present: dict) -> dict[str, torch.Tensor]:
        return self.loss(self.model(inputs), present)


# --------------------------------------------------------------------------- data


@dataclass
class PretrainData:
    """Unlabelled clips to pretrain on: the arrays and the ids (never a label)."""

    store: ClipStore
    ids: list[str]
    description: dict[str, Any] = field(default_factory=dict)
    # Speaker of each clip, for ``train.batch_by = "speaker"``: metadata that unlabelled recordings
    # have too (who is speaking), never an emotion label.
    speakers: dict[str, str] | None = None
    # With ``train.speaker_norm``: per stream, the population statistics (mean, std) a per-user
    # input normalisation starts from; written next to the checkpoint as input_norm.npz.
    input_prior: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def split_validation(ids: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out ``fraction`` of the clips, at random (label-free), for model selection."""
    ids = sorted(ids)
    n_val = int(round(len(ids) * fraction))
    perm = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[i] for i in perm[:n_val])
    train = sorted(ids[i] for i in perm[n_val:])
    return train, val


# A contrastive batch needs at least two clips: one clip alone has no negatives.
MIN_BATCH = 2
# Fewer held-out clips than this give no validation loss (one batch of two at the least).
MIN_VAL_CLIPS = 2

MISSING_STREAM_FIX = {
    "text": "preprocess with text.vosk_model set or give transcripts",
    "face": "preprocess video clips with the face stream",
    "landmarks": "preprocess video clips with the landmarks stream",
    "audio": "preprocess clips with audio and the audio stream",
    "audio_view2": "preprocess clips with audio and the audio stream",
}


def present_streams(data: "PretrainData", streams: tuple[str, ...]) -> tuple[tuple[str, ...], list[str]]:
    """``streams`` split into those at least one clip of ``data`` has, and the absent ones."""
    have: set[str] = set()
    for clip_id in data.ids:
        have |= data.store.streams_of(clip_id)
    return tuple(s for s in streams if s in have), [s for s in streams if s not in have]


def batch_capacity(n_train: int, world_size: int, group_sizes: list[int] | None, batch_size: int) -> int:
    """The largest batch size <= ``batch_size`` that gives every process at least one full batch
    per epoch (0 when not even a batch of :data:`MIN_BATCH` fits): ``n_train // world_size``
    when batches mix all clips, else the largest size of which the groups (speakers) cut at least
    ``world_size`` batches."""
    if group_sizes is None:
        return min(batch_size, n_train // max(1, world_size))
    for b in range(batch_size, MIN_BATCH - 1, -1):
        if sum(n // b for n in group_sizes) >= world_size:
            return b
    return 0


@dataclass(frozen=True)
class Adapted:
    """What :func:`adapt_to_data` settled on: the effective config, the train/val split, and the
    changes made (``{config key: {"from", "to", "reason"}}``), all a function of data and config
    alone, so a resumed run gets the same."""

    cfg: Config
    train_ids: list[str]
    val_ids: list[str]
    changes: dict[str, dict[str, Any]]


def adapt_to_data(cfg: Config, data: "PretrainData", world_size: int = 1) -> Adapted:
    """Fit ``train.modalities``, ``train.val_fraction`` and ``train.batch_size`` to the data, with
    a one-line warning for each change, or refuse with one line naming the fix (label-free: only
    the clip ids, their streams and their speakers are read).

    - a stream of ``train.modalities`` that no clip has is dropped when at least two streams
      remain (refused otherwise): its encoder would never see an input;
    - a ``val_fraction`` that holds out fewer than two clips (no validation loss) is set to 0:
      every clip trains and the last epoch is kept;
    - a ``batch_size`` larger than the training clips allow (per process; with ``batch_by =
      "speaker"``, per speaker) is lowered to the largest that fits, down to two clips; below
      that the run is refused."""
    import dataclasses

    t = cfg.train
    changes: dict[str, dict[str, Any]] = {}
    streams = tuple(t.modalities)
    if not streams:
        raise ConfigError("train.modalities is empty: name at least two streams to pair")
    kept, absent = present_streams(data, streams)
    if absent:
        source = "cache" if data.description.get("dataset") == "cache" else "data"
        why = "; ".join(f"the {source} has no {s}: {MISSING_STREAM_FIX.get(s, f'give clips with the {s} stream')}" for s in absent)
        if len(kept) < 2:
            raise ConfigError(f"train.modalities={list(streams)}: {why}; fewer than two streams remain to pair")
        if cfg.loss.pairs and not PairwiseInfoNCE(cfg.loss).active_pairs(list(kept)):
            raise ConfigError(f"loss.pairs={list(cfg.loss.pairs)}: no pair left once {', '.join(absent)} is dropped ({why}); "
                              "name pairs of the streams the data have, or loss.pairs=[] for all of them")
        log.warning("train.modalities: dropping %s (%s); pretraining %s", ", ".join(absent), why, "+".join(kept))
        changes["train.modalities"] = {"from": list(streams), "to": list(kept), "reason": why}
    n = len(data.ids)
    val_fraction = t.val_fraction
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n_val < MIN_VAL_CLIPS:
        reason = (f"holds out {n_val} of {n} clips, fewer than the {MIN_VAL_CLIPS} a validation loss needs; "
                  "all clips train and the last epoch is kept")
        log.warning("train.val_fraction=%s %s (set train.val_fraction=0 to silence, or add clips)", val_fraction, reason)
        changes["train.val_fraction"] = {"from": val_fraction, "to": 0.0, "reason": reason}
        val_fraction = 0.0
    train_ids, val_ids = split_validation(data.ids, val_fraction, t.seed)
    groups = batch_groups(data, train_ids, t.batch_by)
    group_sizes = None if groups is None else sorted(Counter(groups).values())
    fit = batch_capacity(len(train_ids), world_size, group_sizes, t.batch_size)
    where = (f"{len(train_ids)} training clips for {world_size} process(es)" if groups is None else
             f"the largest speaker has {group_sizes[-1] if group_sizes else 0} training clips "
             f"for {world_size} process(es) (train.batch_by=speaker)")
    if fit < MIN_BATCH:
        fix = "add clips" + (", set train.batch_by='clip'" if groups is not None else "") + \
              (" or lower train.val_fraction" if val_ids else "") + (" or use fewer processes" if world_size > 1 else "")
        raise ConfigError(f"train.batch_size={t.batch_size}: {where}, and a contrastive batch needs at least "
                          f"{MIN_BATCH}: {fix}")
    if fit < t.batch_size:
        log.warning("train.batch_size=%d: %s; using train.batch_size=%d", t.batch_size, where, fit)
        changes["train.batch_size"] = {"from": t.batch_size, "to": fit, "reason": where}
    if changes:
        train = dataclasses.replace(t, modalities=kept, val_fraction=val_fraction, batch_size=fit)
        cfg = dataclasses.replace(cfg, train=train)
    return Adapted(cfg, train_ids, val_ids, changes)


def crop_spec(cfg: Config) -> CropSpec:
    return CropSpec(crop_s=cfg.train.crop_s, face_frames=cfg.face.frames_per_window,
                    landmark_frames=cfg.landmarks.frames_per_window, max_tokens=cfg.text.max_tokens)


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, info: DistInfo,
                  groups: list[str] | None = None) -> list[list[int]]:
    """This rank's batches for ``epoch``: one permutation shared by every rank (seeded by the
    epoch, not the rank), dealt round-robin, incomplete batches dropped (InfoNCE compares clips
    within a batch, so a tiny last batch would be a different, easier task).

    With ``groups`` (one group name per clip, e.g. its speaker) every batch is cut from a single
    group's shuffled clips, and the batches are then shuffled and dealt to the ranks: the other
    clips of a batch share the speaker's voice and face, so identity cannot tell them apart."""
    gen = torch.Generator().manual_seed(seed * 100003 + epoch)
    if groups is None:
        perm = torch.randperm(n, generator=gen).tolist()
        per_rank = n // info.world_size
        mine = perm[info.rank: per_rank * info.world_size: info.world_size]
        return _full_chunks(mine, batch_size)
    if len(groups) != n:
        raise ValueError(f"epoch_batches: {len(groups)} group names for {n} clips")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    batches = []
    for g in sorted(members):
        idx = members[g]
        order = [idx[j] for j in torch.randperm(len(idx), generator=gen).tolist()]
        batches += _full_chunks(order, batch_size)
    batches = [batches[j] for j in torch.randperm(len(batches), generator=gen).tolist()]
    per_rank = len(batches) // info.world_size
    return batches[info.rank: per_rank * info.world_size: info.world_size]


def _full_chunks(seq: list[int], size: int) -> list[list[int]]:
    """``seq`` cut into consecutive runs of ``size``; a shorter tail is dropped."""
    return [seq[i:i + size] for i in range(0, len(seq) - size + 1, size)]


def batch_groups(data: "PretrainData", ids: list[str], batch_by: str) -> list[str] | None:
    """Group name of each of ``ids`` for :func:`epoch_batches` (None: batches mix all clips)."""
    if batch_by == "clip":
        return None
    if batch_by != "speaker":
        raise ConfigError(f"train.batch_by must be clip or speaker, got '{batch_by}'")
    if not data.speakers:
        raise ConfigError("train.batch_by=speaker: these clips carry no speaker ids (use a cache or manifest with a speaker column)")
    missing = [i for i in ids if not data.speakers.get(i)]
    if missing:
        raise ConfigError(f"train.batch_by=speaker: {len(missing)} clips have no speaker id, e.g. {missing[0]}")
    return [str(data.speakers[i]) for i in ids]


# --------------------------------------------------------------------------- optimisation


def make_optimizer(params: list[nn.Parameter], cfg: Config) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    raise ConfigError(f"train.optimizer must be sgd or adamw, got '{t.optimizer}'")


def make_scheduler(opt: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    t = cfg.train
    total = max(1, t.epochs * steps_per_epoch)
    if t.schedule not in ("step", "cosine", "constant"):
        raise ConfigError(f"train.schedule must be step, cosine or constant, got '{t.schedule}'")

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps > 0 else 1.0
        if t.schedule == "step":  # the paper's StepLR, x gamma after every epoch
            return warm * t.step_gamma ** (step // max(1, steps_per_epoch))
        if t.schedule == "cosine":
            return warm * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        return warm

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_device(batch: dict, device: torch.device) -> dict:
    return {
        "inputs": {s: {k: v.to(device, non_blocking=True) for k, v in x.items()} for s, x in batch["inputs"].items()},
        "present": {s: v.to(device) for s, v in batch["present"].items()},
    }


@torch.no_grad()
def validation_loss(task: ContrastiveTask, dataset: ContrastiveDataset, batch_size: int, device: torch.device) -> float | None:
    """Mean contrastive loss over fixed (centred-crop) batches of the held-out clips; None when
    there are fewer than two of them. This label-free number selects the model."""
    n = len(dataset)
    if n < 2:
        return None
    bs = min(batch_size, n)
    was_training = task.training
    task.eval()
    total, count = 0.0, 0
    for start in range(0, n - bs + 1, bs):
        batch = _to_device(collate_streams([dataset[i] for i in range(start, start + bs)]), device)
        total += float(task(batch["inputs"], batch["present"])["loss"])
        count += 1
    task.train(was_training)
    return total / count


# --------------------------------------------------------------------------- the loop


ADAPTED_KEYS = ("modalities", "val_fraction", "batch_size")


def _check_same_adaptation(last_dir: Path, meta: dict[str, Any], cfg: Config, adapted: Adapted) -> None:
    """A resume must train what the saved run trained: when either run adapted the config to its
    data, the effective modalities, validation fraction and batch size must agree."""
    if not (adapted.changes or meta.get("adapted")):
        return
    saved = meta.get("config", {}).get("train", {})
    for key in ADAPTED_KEYS:
        now = getattr(cfg.train, key)
        now = list(now) if isinstance(now, tuple) else now
        if key in saved and saved[key] != now:
            raise ckpt.CheckpointError(
                f"{last_dir}: trained with train.{key}={saved[key]!r}, this run's data and config give {now!r}; "
                "resume with the same data, or start over with --no-resume or a new --out")


def _meta(model: ContrastiveModel, specs: dict, cfg: Config, data: PretrainData, epoch: int, step: int,
          best: float | None, val: float | None, adapted: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "streams": list(model.streams),
        "stream_encoders": {s: encoder_key(s) for s in model.streams},
        "encoders": {k: {"name": model.encoders[k].name, "cfg": _plain(model.encoders[k].cfg)} for k in specs},
        "projector": {"hidden": cfg.encoder.proj_hidden, "dim": cfg.encoder.proj_dim},
        "config": config_to_dict(cfg),
        "data": data.description,
        "epoch": epoch,
        "step": step,
        "val_loss": val,
        "best_val_loss": best,
        # Config keys adapted to the data ({key: {"from", "to", "reason"}}); "config" holds the
        # effective values.
        "adapted": adapted or {},
        "git_commit": ckpt.git_commit(),
    }


def _plain(cfg_obj: Any) -> dict[str, Any]:
    import dataclasses

    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg_obj).items()}


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def pretrain(cfg: Config, data: PretrainData, out_dir: str | Path, resume: bool = True,
             info: DistInfo | None = None) -> dict[str, Any]:
    """Pretrain on ``data`` (label-free) into ``out_dir``; returns a summary dict.

    With ``resume`` and a complete ``out_dir/last`` checkpoint, training continues after its
    last epoch with the saved optimizer, scheduler and RNG states, reproducing the
    uninterrupted run exactly (crops and batch order depend only on seed and epoch)."""
    info = info or init_distributed(cfg.train.device)
    out_dir = Path(out_dir)
    # Small data: streams no clip has, a validation split too small to give a loss, a batch
    # larger than the clips allow are adapted (with a warning) or refused; the effective config
    # is what is saved (run_config.toml, the checkpoint's meta) and what a resume recomputes.
    adapted = adapt_to_data(cfg, data, info.world_size)
    cfg, train_ids, val_ids = adapted.cfg, adapted.train_ids, adapted.val_ids
    t = cfg.train
    streams = tuple(t.modalities)
    vector_dims = {s: len(next(iter(tab.values()))) for s, tab in data.store.vectors.items() if tab}
    specs = encoder_specs(cfg, streams, vector_dims)
    torch.manual_seed(t.seed)  # identical initial weights on every rank
    model = ContrastiveModel(specs, streams, cfg.encoder.proj_hidden, cfg.encoder.proj_dim)
    for key, enc in model.encoders.items():
        if hasattr(enc, "set_input_stats"):
            # Standardisation statistics from the training clips only, never the held-out ones.
            enc.set_input_stats(np.stack([data.store.vectors[key][i] for i in train_ids if i in data.store.vectors[key]]))
    task = ContrastiveTask(model, PairwiseInfoNCE(cfg.loss)).to(info.device)
    train_set = ContrastiveDataset(data.store, train_ids, streams, crop_spec(cfg), seed=t.seed)
    val_set = ContrastiveDataset(data.store, val_ids, streams, crop_spec(cfg), seed=t.seed, fixed=True)
    groups = batch_groups(data, train_ids, t.batch_by)
    steps_per_epoch = len(epoch_batches(len(train_set), t.batch_size, 0, t.seed, info, groups))
    if steps_per_epoch == 0:  # adapt_to_data sizes the batch so that this cannot happen
        raise ConfigError(f"train.batch_size={t.batch_size}: no full batch of training clips per process")
    opt = make_optimizer([p for p in task.parameters() if p.requires_grad], cfg)
    sched = make_scheduler(opt, cfg, steps_per_epoch)
    use_amp = t.amp and info.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch, step, best = 0, 0, None
    log_rows = _read_log(out_dir / "log.csv") if resume else []
    last_dir = out_dir / "last"
    found = ckpt.resume_dir(last_dir) if resume else None
    if found is not None:
        last_dir = found
        meta = ckpt.read_meta(last_dir)
        _check_same_adaptation(last_dir, meta, cfg, adapted)
        missing, unexpected = model.load_state_dict(ckpt.read_tensors(last_dir), strict=False)
        if missing or unexpected:
            raise ckpt.CheckpointError(f"{last_dir}: does not match this config's model (missing {missing[:2]}, unexpected {unexpected[:2]})")
        state = ckpt.read_trainer_state(last_dir)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"][min(info.rank, len(state["rng"]) - 1)])
        task.loss.load_state_dict(state["loss"])
        start_epoch, step, best = meta["epoch"], meta["step"], meta["best_val_loss"]
        if info.is_main and (meta["val_loss"] is None or meta["val_loss"] == best):
            # Killed between saving 'last' and the selected root copy: bring the root up to date.
            root_epoch = ckpt.read_meta(out_dir)["epoch"] if (out_dir / ckpt.META_FILE).is_file() else None
            if root_epoch != start_epoch:
                ckpt.save_checkpoint(out_dir, model, meta, state)
        log_rows = [r for r in log_rows if int(r["epoch"]) <= start_epoch]
        if info.is_main:
            log.info("resuming %s after epoch %d (step %d)", out_dir, start_epoch, step)
    else:
        torch.manual_seed(t.seed + info.rank)  # dropout differs per rank; weights were set above
    ddp = nn.parallel.DistributedDataParallel(task) if info.distributed else task
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir)
        log.info("pretraining %s on %d clips (%d held out), %d steps/epoch, pairs %s", "+".join(streams),
                 len(train_ids), len(val_ids), steps_per_epoch, task.loss.active_pairs(list(streams)))
    def trainer_state(rng_states: list) -> dict[str, Any]:
        return {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                "rng": rng_states, "loss": task.loss.state_dict()}

    if t.epochs == 0 and info.is_main and found is None:
        # No pretraining: the run holds the encoders as initialised, i.e. the shipped pretrained
        # networks as published (the projectors, random, are never exported). A bundle is then
        # built from it like from any run (python -m export.build_bundle --run ...).
        untrained = [f"{k} ({e.name})" for k, e in model.encoders.items() if e.name not in PUBLISHED_WEIGHTS]
        if untrained:
            log.warning("train.epochs = 0: %s %s no published weights and stay%s randomly initialised",
                        ", ".join(untrained), "has" if len(untrained) == 1 else "have", "s" if len(untrained) == 1 else "")
        state = trainer_state([_rng_state()])
        meta = _meta(model, specs, cfg, data, 0, 0, None, None, adapted.changes)
        last_dir = ckpt.save_slot(out_dir / "last", model, meta, state)
        ckpt.save_checkpoint(out_dir, model, meta, state)
    for epoch in range(start_epoch, t.epochs):
        t0 = time.time()
        task.train()
        train_set.set_epoch(epoch)
        loader = DataLoader(train_set, batch_sampler=epoch_batches(len(train_set), t.batch_size, epoch, t.seed, info, groups),
                            collate_fn=collate_streams, num_workers=t.num_workers)
        sums: dict[str, float] = {}
        n_batches = 0
        for batch in loader:
            check_label_free(batch)
            batch = _to_device(batch, info.device)
            with torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext():
                losses = ddp(batch["inputs"], batch["present"])
            opt.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            n_batches += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if info.is_main and t.log_every > 0 and step % t.log_every == 0:
                log.info("epoch %d step %d lr %.2e %s", epoch + 1, step, sched.get_last_lr()[0],
                         " ".join(f"{k} {float(v.detach()):.4f}" for k, v in losses.items()))
        train_loss = {k: all_reduce_mean(v / max(1, n_batches), info) for k, v in sums.items()}
        val = validation_loss(task, val_set, t.batch_size, info.device)
        improved = val is not None and (best is None or val < best)
        if improved:
            best = val
        if info.is_main:
            row = {"epoch": epoch + 1, "step": step, "lr": sched.get_last_lr()[0], "train_loss": train_loss.get("loss"),
                   "val_loss": val, "seconds": round(time.time() - t0, 1)}
            row.update({f"train_{k}": v for k, v in train_loss.items() if k != "loss"})
            log_rows.append(row)
            _write_log(out_dir / "log.csv", log_rows)
            log.info("epoch %d/%d train loss %.4f %s (%.0f s)", epoch + 1, t.epochs, train_loss.get("loss", float("nan")),
                     "no validation clips" if not val_ids else "val loss n/a" if val is None else f"val loss {val:.4f}",
                     time.time() - t0)
        rng_states = [_rng_state()]
        if info.distributed:
            gathered: list[Any] = [None] * info.world_size
            torch.distributed.all_gather_object(gathered, rng_states[0])
            rng_states = gathered
        if info.is_main and ((epoch + 1) % max(1, t.checkpoint_every) == 0 or epoch + 1 == t.epochs):
            state = trainer_state(rng_states)
            meta = _meta(model, specs, cfg, data, epoch + 1, step, best, val, adapted.changes)
            last_dir = ckpt.save_slot(out_dir / "last", model, meta, state)
            # Without held-out clips the latest model is the selected one.
            if improved or val is None:
                ckpt.save_checkpoint(out_dir, model, meta, state)
    if info.is_main and not (out_dir / ckpt.META_FILE).is_file() and (last_dir / ckpt.META_FILE).is_file():
        # Resumed past the end with nothing new: the root still needs a selected checkpoint.
        ckpt.save_checkpoint(out_dir, model, ckpt.read_meta(last_dir), ckpt.read_trainer_state(last_dir))
    return {"out_dir": str(out_dir), "epochs": t.epochs, "steps": step, "best_val_loss": best,
            "train_clips": len(train_ids), "val_clips": len(val_ids), "streams": list(streams),
            "batch_size": t.batch_size, "adapted": adapted.changes}


# --------------------------------------------------------------------------- CLI


def parse_actors(text: str) -> list[int]:
    """``"1-4,9,10"`` -> ``[1, 2, 3, 4, 9, 10]``."""
    out: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = (int(p) for p in part.split("-"))
                out += list(range(lo, hi + 1))
            elif part.strip():
                out.append(int(part))
    except ValueError:
        raise ConfigError(f"--actors '{text}': expected numbers and ranges like 1-16 or 1-4,9") from None
    return sorted(set(out))


def load_pretrain_data(cfg: Config, cache: str | None, au_csv: str | None, mosi: str | None,
                       actors: list[int] | None) -> PretrainData:
    """Gather the unlabelled arrays of ``train.modalities`` from the cache and feature files."""
    from training.datasets import actor_of

    streams = tuple(cfg.train.modalities)
    if mosi:
        # Only the train split of MOSI is ever pretrained on; its test videos stay unseen.
        split = load_mosi(mosi)["train"]
        store = ClipStore(vectors={s: dict(zip(split["ids"], split["vectors"][s])) for s in streams if s in split["vectors"]})
        return PretrainData(store, list(split["ids"]), {"dataset": "cmu-mosi", "split": "train"})
    if not cache:
        raise ConfigError("give --cache DIR (preprocessed clips) or --mosi DIR")
    store, ids = load_cache_store(cache, streams)
    if actors:
        ids = [i for i in ids if i.startswith("ravdess/") and actor_of(i) in actors]
        store.logmels = {i: store.logmels[i] for i in ids if i in store.logmels}
    if "au" in streams:
        if not au_csv:
            raise ConfigError("stream 'au' needs --au-csv (the RAVDESS per-clip action units)")
        store.vectors["au"] = load_action_unit_vectors(au_csv, ids)
    if not ids:
        raise ConfigError(f"{cache}: no clips left to pretrain on (actors {actors})")
    whisper_audio = bool(store.logmels) and cfg.encoder.audio == "whisper_tiny" \
        and any(encoder_key(s) == "audio" for s in streams)
    if whisper_audio:
        # The Whisper trunk reads Whisper's own log-mel, on its raw scale: the cache's torchaudio
        # log-mels are replaced, and they are never standardised per speaker.
        from training.encoders.whisper_trunk import whisper_logmels_for_cache

        if cfg.audio.n_mels != 80:
            raise ConfigError(f"encoder.audio = {cfg.encoder.audio!r} reads Whisper's 80-bin log-mel; set audio.n_mels = 80")
        store.logmels = whisper_logmels_for_cache(cache, [i for i in ids if i in store.logmels])
        log.info("audio: Whisper log-mels for %d clips (encoder %s)", len(store.logmels), cfg.encoder.audio)
    from training.cache import open_cache

    index = open_cache(cache)
    speakers = {i: str(index.index(i).get("speaker") or "") for i in ids}
    data = PretrainData(store, ids, {"dataset": "cache", "cache": str(cache), "actors": actors}, speakers)
    if cfg.train.speaker_norm:
        missing = [i for i in ids if not speakers[i]]
        if missing:
            raise ConfigError(f"train.speaker_norm: {len(missing)} clips of {cache} have no speaker id, e.g. {missing[0]}")
        if whisper_audio:
            log.info("train.speaker_norm: the Whisper trunk's log-mels stay unstandardised")
            data.store = normalise_per_speaker(store, speakers, audio=False)
        else:
            data.input_prior = {"audio": logmel_speaker_prior(store, speakers)} if store.logmels else {}
            data.store = normalise_per_speaker(store, speakers)
    return data


INPUT_PRIOR_FILE = "input_norm.npz"


def write_input_prior(out_dir: str | Path, prior: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """``OUT/input_norm.npz``: ``<stream>_mean`` and ``<stream>_std`` per stream (atomic)."""
    from edge_mer.io import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, **{f"{s}_{k}": v.astype(np.float32) for s, (m, sd) in prior.items() for k, v in (("mean", m), ("std", sd))})
    atomic_write_bytes(Path(out_dir) / INPUT_PRIOR_FILE, buf.getvalue())


def read_input_prior(run_dir: str | Path, stream: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``stream`` prior a ``train.speaker_norm`` run wrote, or None."""
    path = Path(run_dir) / INPUT_PRIOR_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        if f"{stream}_mean" not in z.files:
            return None
        return z[f"{stream}_mean"].astype(np.float64), z[f"{stream}_std"].astype(np.float64)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="run directory (checkpoint, last/, log.csv, run_config.toml)")
    p.add_argument("--cache", help="preprocessed cache directory (python -m training.preprocess)")
    p.add_argument("--au-csv", help="RAVDESS per-clip action-unit CSV, for the 'au' stream")
    p.add_argument("--mosi", help="CMU-MOSI feature folder, for the mosi_text/mosi_audio/mosi_video streams")
    p.add_argument("--actors", help="RAVDESS actors to pretrain on, e.g. 1-16 (default: all clips)")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT/last exists")
    add_config_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    info, finished = None, False
    try:
        cfg = load_config(args.config, args.overrides)
        info = init_distributed(cfg.train.device)
        data = load_pretrain_data(cfg, args.cache, args.au_csv, args.mosi, parse_actors(args.actors) if args.actors else None)
        summary = pretrain(cfg, data, args.out, resume=not args.no_resume, info=info)
        if info.is_main and data.input_prior:
            write_input_prior(args.out, data.input_prior)
        finished = True
    except EdgeMerError as exc:
        print(f"training.train: error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        if info is not None:
            shutdown(info, synchronize=finished)
    if info.is_main:
        selected = "last epoch (no validation clips)" if summary["val_clips"] == 0 else f"best val loss {summary['best_val_loss']}"
        print(f"checkpoint {summary['out_dir']}: {selected}, {summary['steps']} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
