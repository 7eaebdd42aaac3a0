"""The evaluation protocols behind docs/RESULTS.md: ``python -m training.eval.protocol ravdess|mosi``.

``ravdess`` (BRIEF section 4): by default actors 01-20 in 5 speaker-independent folds of 4
consecutive actors; any actor set and fold definition with ``--actors``, ``--fold-size`` or
``--fold-actors "1-4;5-8;..."`` (and any cache and AU table: ``--cache``, ``--au-csv``). For each
fold, every encoder is pretrained and every probe fitted on the fold's training actors only (never
a test actor's clips, not even unlabelled), then scored on its test actors. ``--seeds 0,1,2`` runs
every seeded condition per fold per seed (the floors are seed-independent: once per fold) and the
summary adds paired comparisons per (fold, seed) (Wilcoxon signed-rank and sign test,
:func:`paired_summary`); ``--conditions`` picks the conditions; ``--release-config
configs/ravdess_audio_au.toml`` adds the release architecture's rows (its wider TCN). Conditions:

- ``floor_*``: supervised logistic regression on fixed features (log-mel mean+std, action units,
  both): the floors every learned encoder must beat;
- ``a_random``: linear probe on a randomly initialised audio encoder;
- ``b_audio_ssl``: audio-only self-supervised baseline, two crops of a clip as the positive pair;
- ``c_pair_*``: label-free pairwise audio <-> action units, probes on audio, on AUs, on both
  (linear and the paper's MLP probe), and few-shot curves (k labelled clips per class);
- ``a_random_stats_mlp``, ``c_pair_stats_mlp*``: (a') and (c') with an MLP over the floor's
  log-mel statistics instead of the TCN (``--stats-epochs``);
- ``w_frozen``, ``w_frozen_pair``, ``w_tuned1_pair``: the Whisper tiny.en trunk frozen, with an
  MLP over its frozen features pretrained pairwise against the AUs, and with its top layer tuned
  by the pairwise trainer (``python -m training.eval.whisper_pairwise``, same folds and probes);
- ``d_sup_*``: the same encoders trained WITH labels (cross-entropy): the upper bound. This is the
  only place where labels meet an encoder's training, and it is kept apart from the label-free
  path (it uses :class:`training.datasets.LabelledDataset`, never :func:`training.train.pretrain`).

``mosi``: CMU-MOSI feature triples (text, audio, video; binary sentiment), official speaker-
independent split; pairwise pretraining over all three pairs on the train split vs the same
encoders at random init vs supervised, linear-probe accuracy and F1, over several seeds.

``--speaker-norm`` standardises every actor's log-mels (per bin) and AUs by that actor's own
clips before anything else (label-free; test actors by their own unlabelled clips), as
``train.speaker_norm`` does for pretraining and the runtime's per-user statistics do on a device.

Every run writes ``results.json`` and ``results.md`` (mean +/- std over folds or seeds) and
confusion-matrix PNGs into ``--out``; runs go to ``--runs`` (``fold<k>/seed<s>/<condition>``) and
resume when restarted; a RAVDESS record already in ``--out/per_run.json`` is kept, and a rerun
with more ``--conditions`` runs only the missing ones.

    python -m training.eval.protocol ravdess --cache cache/ravdess_audio \\
        --au-csv ../shared/data/ravdess/openface_au/au_audio_per_clip.csv --out results/ravdess
    python -m training.eval.protocol ravdess --config configs/ravdess_protocol.toml --speaker-norm \\
        --seeds 0,1,2 --conditions floors,a_random,c_pair,release --release-config configs/ravdess_audio_au.toml \\
        --out results/protocol_seeds --runs runs/protocol_seeds
    python -m training.eval.protocol mosi --mosi ../shared/data/cmu-mosi/data --out results/mosi
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from edge_mer.cli import add_config_args
from edge_mer.config import Config, load_config, save_config
from edge_mer.errors import ConfigError, EdgeMerError
from edge_mer.io import atomic_write_text
from training.checkpoint import load_encoders
from training.datasets import (ClipStore, ContrastiveDataset, LabelledDataset, actor_of, collate_streams,
                               load_action_unit_vectors, load_cache_store, load_mosi, normalise_per_speaker)
from training.distributed import DistInfo
from training.eval.probe import (classification_metrics, encode_logmels, encode_vectors, few_shot, fit_linear_probe,
                            fit_mlp_probe, save_confusion_png, standardise_per_group, write_json)
from training.train import (ContrastiveModel, PretrainData, crop_spec, encoder_specs, epoch_batches, make_optimizer,
                            make_scheduler, pretrain)

log = logging.getLogger("training.eval.protocol")

FOLDS = {f: list(range(4 * f - 3, 4 * f + 1)) for f in range(1, 6)}
DEFAULT_ACTORS = list(range(1, 21))
CPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def make_folds(actors: list[int], fold_size: int = 4, fold_actors: str | None = None) -> dict[int, list[int]]:
    """Speaker-independent folds over ``actors``: ``{fold number: its test actors}``. Either given
    (``fold_actors``, e.g. ``"1-4;5-8;9,11"``: one actor list per fold, separated by ``;``) or
    consecutive groups of ``fold_size`` of the sorted actors (a smaller last group if they do not
    divide). Folds are disjoint, inside ``actors``, and each leaves at least 2 training actors.

    >>> make_folds(list(range(1, 21))) == FOLDS
    True
    >>> make_folds([21, 22, 23, 24, 25], fold_size=2)
    {1: [21, 22], 2: [23, 24], 3: [25]}
    >>> make_folds(list(range(1, 9)), fold_actors="1-2;7,8")
    {1: [1, 2], 2: [7, 8]}
    """
    from training.train import parse_actors

    actors = sorted(set(actors))
    if fold_actors:
        groups = [parse_actors(part) for part in fold_actors.split(";") if part.strip()]
    else:
        if fold_size < 1:
            raise ConfigError(f"--fold-size {fold_size}: must be at least 1")
        groups = [actors[i:i + fold_size] for i in range(0, len(actors), fold_size)]
    seen: set[int] = set()
    for g in groups:
        if not g:
            raise ConfigError(f"--fold-actors '{fold_actors}': an empty fold")
        outside = sorted(set(g) - set(actors))
        if outside:
            raise ConfigError(f"fold {g}: actors {outside} are not in --actors {actors}")
        if seen & set(g):
            raise ConfigError(f"folds overlap: actors {sorted(seen & set(g))} are in two folds")
        seen |= set(g)
        if len(actors) - len(g) < 2:
            raise ConfigError(f"fold {g}: leaves {len(actors) - len(g)} training actors; need at least 2")
    return {k: g for k, g in enumerate(groups, 1)}


def with_train(cfg: Config, **changes: Any) -> Config:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes))


def with_loss(cfg: Config, **changes: Any) -> Config:
    return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, **changes))


def random_encoders(cfg: Config, streams: tuple[str, ...], vector_dims: dict[str, int] | None = None) -> dict[str, nn.Module]:
    """The encoders of ``streams`` at random init, seeded by ``train.seed`` (the same weights a
    pretraining run of that config starts from): condition (a) and its kin."""
    torch.manual_seed(cfg.train.seed)
    return dict(ContrastiveModel(encoder_specs(cfg, streams, vector_dims or {}), streams, 8, 8).encoders)


# --------------------------------------------------------------------------- supervised (labels!)


def train_supervised(cfg: Config, store: ClipStore, ids: list[str], labels: dict[str, int], n_classes: int,
                     streams: tuple[str, ...]) -> tuple[dict[str, nn.Module], nn.Module]:
    """SUPERVISED UPPER BOUND: the pretraining encoders plus a linear head on their concatenated
    features, trained with cross-entropy on the labelled training clips (same crops, optimizer,
    schedule and epochs as pretraining). Returns the encoders and the head."""
    t = cfg.train
    vector_dims = {s: len(next(iter(tab.values()))) for s, tab in store.vectors.items() if tab}
    torch.manual_seed(t.seed)
    model = ContrastiveModel(encoder_specs(cfg, streams, vector_dims), streams, 8, 8)
    encoders = model.encoders
    for key, enc in encoders.items():
        if hasattr(enc, "set_input_stats"):
            enc.set_input_stats(np.stack([store.vectors[key][i] for i in ids]))
    head = nn.Linear(sum(e.feature_dim for e in encoders.values()), n_classes)
    params = [p for m in (encoders, head) for p in m.parameters() if p.requires_grad]
    dataset = LabelledDataset(ContrastiveDataset(store, ids, streams, crop_spec(cfg), seed=t.seed), labels)
    steps = len(epoch_batches(len(dataset), t.batch_size, 0, t.seed, CPU))
    opt, sched = make_optimizer(params, cfg), None
    sched = make_scheduler(opt, cfg, steps)
    encoders.train()
    head.train()
    for epoch in range(t.epochs):
        dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_sampler=epoch_batches(len(dataset), t.batch_size, epoch, t.seed, CPU),
                            collate_fn=lambda items: (collate_streams([i for i, _ in items]), torch.tensor([y for _, y in items])))
        for batch, y in loader:
            feats = torch.cat([encoders[s](**batch["inputs"][s]) for s in streams], dim=1)
            loss = nn.functional.cross_entropy(head(feats), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    encoders.eval()
    head.eval()
    return dict(encoders), head


# --------------------------------------------------------------------------- RAVDESS


def stream_feats(encoders: dict[str, nn.Module], stream: str, ids: list[str], store: ClipStore) -> np.ndarray:
    if stream == "audio":
        return encode_logmels(encoders["audio"], [store.logmels[i] for i in ids])
    return encode_vectors(encoders[stream], np.stack([store.vectors[stream][i] for i in ids]))


def logmel_stats(store: ClipStore, ids: list[str]) -> np.ndarray:
    """The floor's fixed audio features: per-bin mean and std of the log-mel over the clip."""
    return np.stack([np.concatenate([store.logmels[i].mean(axis=1), store.logmels[i].std(axis=1)]) for i in ids])


class RavdessFold:
    """One fold's clips, labels and the probe bookkeeping."""

    def __init__(self, fold: int, store: ClipStore, ids: list[str], labels: dict[str, str], classes: list[str],
                 test_actors: list[int] | None = None) -> None:
        self.fold, self.store, self.classes = fold, store, classes
        # The fold's test actors (default: the fixed 5-fold split of actors 01-20); every other
        # actor among ``ids`` trains.
        self.test_actors = sorted(test_actors if test_actors is not None else FOLDS[fold])
        self.test_ids = [i for i in ids if actor_of(i) in self.test_actors]
        self.train_ids = [i for i in ids if actor_of(i) not in self.test_actors]
        self.train_actors = sorted({actor_of(i) for i in self.train_ids})
        self.y_train = np.array([labels[i] for i in self.train_ids])
        self.y_test = np.array([labels[i] for i in self.test_ids])
        self.groups = np.array([actor_of(i) for i in self.train_ids])
        self.test_groups = np.array([actor_of(i) for i in self.test_ids])
        self.results: dict[str, dict[str, Any]] = {}

    def probe(self, name: str, x_train: np.ndarray, x_test: np.ndarray, kind: str = "linear") -> dict[str, Any]:
        if kind == "linear":
            probe: Any = fit_linear_probe(x_train, self.y_train, groups=self.groups)
        else:
            probe = fit_mlp_probe(x_train, self.y_train)
        m = classification_metrics(self.y_test, probe.predict(x_test), self.classes)
        self.results[name] = m
        log.info("fold %d %-22s UA %.1f WA %.1f F1 %.1f", self.fold, name, m["ua"], m["wa"], m["f1_weighted"])
        return m

    def probe_spk(self, name: str, x_train: np.ndarray, x_test: np.ndarray) -> None:
        """The linear probe on the features as they are, and again on per-speaker standardised
        features (``<name>_spk``; label-free, see :func:`training.eval.probe.standardise_per_group`)."""
        self.probe(name, x_train, x_test)
        self.probe(f"{name}_spk", standardise_per_group(x_train, self.groups), standardise_per_group(x_test, self.test_groups))

    def feats(self, encoders: dict[str, nn.Module], streams: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        both = [np.concatenate([stream_feats(encoders, s, part, self.store) for s in streams], axis=1)
                for part in (self.train_ids, self.test_ids)]
        return both[0], both[1]

    def probe_pair(self, name: str, encoders: dict[str, nn.Module], stream: str,
                   au_name: str | None = None) -> tuple[np.ndarray, ...]:
        """Probes of a pairwise ``stream`` <-> AU run: ``name`` on the stream's features, the AU
        encoder's alone as ``au_name`` when given, and ``name+au`` on both (the stream's and the
        pair's also per speaker); returns the four feature blocks (stream train/test, AU
        train/test) for further probes."""
        s_tr, s_te = self.feats(encoders, (stream,))
        u_tr, u_te = self.feats(encoders, ("au",))
        self.probe_spk(name, s_tr, s_te)
        if au_name is not None:
            self.probe(au_name, u_tr, u_te)
        self.probe_spk(f"{name}+au", np.hstack([s_tr, u_tr]), np.hstack([s_te, u_te]))
        return s_tr, s_te, u_tr, u_te


# The protocol's conditions, selectable with --conditions (``all``: every one but ``release``,
# which needs --release-config). ``floors`` do not depend on the seed: run once per fold.
CONDITIONS = ("floors", "a_random", "b_audio_ssl", "c_pair", "c_stats", "d_sup", "few_shot", "release")


def parse_conditions(text: str, release: bool = False) -> tuple[str, ...]:
    """``"all"`` or a comma list of :data:`CONDITIONS` -> the tuple, in protocol order.

    >>> parse_conditions("c_pair,floors,a_random")
    ('floors', 'a_random', 'c_pair')
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        names = [c for c in CONDITIONS if c != "release" or release]
    unknown = sorted(set(names) - set(CONDITIONS))
    if unknown:
        raise ConfigError(f"--conditions: unknown {unknown}; choose from all or {', '.join(CONDITIONS)}")
    if "release" in names and not release:
        raise ConfigError("--conditions release needs --release-config FILE (e.g. configs/ravdess_audio_au.toml)")
    return tuple(c for c in CONDITIONS if c in names)


def fold_data(fold: RavdessFold, seed: int) -> PretrainData:
    """The fold's label-free pretraining data: its training actors' clips only (never a test
    actor's, not even unlabelled), described by actors and seed in the checkpoint's meta."""
    return PretrainData(fold.store, fold.train_ids,
                        {"dataset": "ravdess", "fold": fold.fold, "test_actors": fold.test_actors,
                         "train_actors": fold.train_actors, "seed": seed},
                        speakers={i: f"actor{actor_of(i):02d}" for i in fold.train_ids})


def pretrain_checked(cfg: Config, data: PretrainData, run_dir: Path) -> dict[str, nn.Module]:
    """``pretrain`` into ``run_dir`` (resuming a saved run), then its selected encoders. A saved
    run of other training actors, test actors or seed (a ``--runs`` folder of another fold
    definition) is refused rather than silently reused."""
    from training import checkpoint as ckpt

    for d in (run_dir, ckpt.resume_dir(run_dir / "last")):
        if d is None or not (d / ckpt.META_FILE).is_file():
            continue
        meta = ckpt.read_meta(d)
        saved = meta.get("data", {})
        for key in ("train_actors", "test_actors"):
            if key in saved and list(saved[key]) != list(data.description[key]):
                raise ConfigError(f"{run_dir}: pretrained with {key} {saved[key]}, this fold has {data.description[key]}; "
                                  "use another --runs folder")
        saved_seed = meta.get("config", {}).get("train", {}).get("seed")
        if saved_seed is not None and saved_seed != cfg.train.seed:
            raise ConfigError(f"{run_dir}: pretrained with seed {saved_seed}, this run has {cfg.train.seed}")
    pretrain(cfg, data, run_dir, info=CPU)
    return load_encoders(run_dir)


def _record(fold: RavdessFold, seed: int | None, conditions: tuple[str, ...], few: dict[str, Any]) -> dict[str, Any]:
    return {"fold": fold.fold, "seed": seed, "test_actors": fold.test_actors, "train_actors": fold.train_actors,
            "n_train": len(fold.train_ids), "n_test": len(fold.test_ids), "conditions": list(conditions),
            "metrics": fold.results, "few_shot": few}


def run_fold_floors(fold: RavdessFold, fewshot_draws: int, few_shot_curves: bool = True) -> dict[str, Any]:
    """The floors of one fold: supervised logistic regression on fixed features (log-mel mean+std,
    AUs, both). Deterministic: the same for every pretraining seed (``seed`` None)."""
    store, tr, te = fold.store, fold.train_ids, fold.test_ids
    fold.results = {}
    stats_tr, stats_te = logmel_stats(store, tr), logmel_stats(store, te)
    au_tr = np.stack([store.vectors["au"][i] for i in tr])
    au_te = np.stack([store.vectors["au"][i] for i in te])
    fold.probe_spk("floor_logmel_stats", stats_tr, stats_te)
    fold.probe_spk("floor_au", au_tr, au_te)
    fold.probe_spk("floor_logmel_stats+au", np.hstack([stats_tr, au_tr]), np.hstack([stats_te, au_te]))
    few = {}
    if few_shot_curves:
        few["floor_logmel_stats+au"] = few_shot(np.hstack([stats_tr, au_tr]), fold.y_train, np.hstack([stats_te, au_te]),
                                                fold.y_test, fold.classes, draws=fewshot_draws, seed=fold.fold)
    return _record(fold, None, ("floors",), few)


def run_fold_seed(fold: RavdessFold, cfg: Config, runs: Path, seed: int, conditions: tuple[str, ...], fewshot_draws: int,
                  stats_epochs: int = 30, release_cfg: Config | None = None) -> dict[str, Any]:
    """Every seeded condition of one fold for one pretraining seed (``train.seed = seed``: the
    encoders' initial weights, crops and batch order). Pretraining runs go to
    ``runs/fold<k>/seed<seed>/<condition>`` and resume from there."""
    store, tr = fold.store, fold.train_ids
    fold.results = {}
    cfg = with_train(cfg, seed=seed)
    fold_dir = runs / f"fold{fold.fold}" / f"seed{seed}"
    data = fold_data(fold, seed)
    few: dict[str, Any] = {}

    if "a_random" in conditions:
        # (a) random init: the same encoders, never trained.
        fold.probe_spk("a_random_audio", *fold.feats(random_encoders(cfg, ("audio",)), ("audio",)))

    if "c_stats" in conditions:
        # (a') and (c') on the floor's own features: an MLP over the log-mel statistics, at random
        # init and pretrained pairwise against the AUs (label-free), probed like the TCN.
        stats_tr = logmel_stats(store, tr)
        cfg_s = with_loss(with_train(cfg, modalities=("stats", "au"), epochs=stats_epochs), pairs=("stats-au",))
        random_mlp = random_encoders(cfg_s, ("stats",), {"stats": stats_tr.shape[1]})
        random_mlp["stats"].set_input_stats(stats_tr)
        random_mlp["stats"].eval()
        fold.probe_spk("a_random_stats_mlp", *fold.feats(random_mlp, ("stats",)))
        fold.probe_pair("c_pair_stats_mlp", pretrain_checked(cfg_s, data, fold_dir / "c_pair_stats"), "stats")

    if "c_pair" in conditions:
        # (c) label-free pairwise audio <-> action units.
        cfg_c = with_loss(with_train(cfg, modalities=("audio", "au")), pairs=("audio-au",))
        a_tr, a_te, u_tr, u_te = fold.probe_pair("c_pair_audio", pretrain_checked(cfg_c, data, fold_dir / "c_pair"), "audio",
                                                 au_name="c_pair_au")
        if "few_shot" in conditions:
            fold.probe("c_pair_audio+au_mlp", np.hstack([a_tr, u_tr]), np.hstack([a_te, u_te]), kind="mlp")
            fold.probe("c_pair_audio_mlp", a_tr, a_te, kind="mlp")
            # (e) few-shot curves of (c).
            few["c_pair_audio"] = few_shot(a_tr, fold.y_train, a_te, fold.y_test, fold.classes, draws=fewshot_draws, seed=fold.fold)
            few["c_pair_audio+au"] = few_shot(np.hstack([a_tr, u_tr]), fold.y_train, np.hstack([a_te, u_te]), fold.y_test,
                                              fold.classes, draws=fewshot_draws, seed=fold.fold)

    if "b_audio_ssl" in conditions:
        # (b) audio-only self-supervision: two crops of the same clip are the positive pair.
        cfg_b = with_loss(with_train(cfg, modalities=("audio", "audio_view2")), pairs=("audio-audio_view2",))
        enc_b = pretrain_checked(cfg_b, data, fold_dir / "b_audio_ssl")
        fold.probe_spk("b_audio_ssl_audio", *fold.feats(enc_b, ("audio",)))

    if "release" in conditions and release_cfg is not None:
        # The release architecture (the release config's encoders and schedule, e.g. the wider
        # TCN of configs/ravdess_audio_au.toml), at random init and pretrained pairwise audio <-> AU
        # on the same training actors: the protocol's figure for what the release recipe does.
        cfg_r = with_loss(with_train(release_cfg, seed=seed, modalities=("audio", "au"), device="cpu", log_every=0),
                          pairs=("audio-au",))
        fold.probe_spk("a_random_release_audio", *fold.feats(random_encoders(cfg_r, ("audio",)), ("audio",)))
        fold.probe_pair("c_pair_release_audio", pretrain_checked(cfg_r, data, fold_dir / "c_pair_release"), "audio")

    if "d_sup" in conditions:
        # (d) the same encoders trained with labels: the upper bound.
        class_index = {c: k for k, c in enumerate(fold.classes)}
        labels_idx = {i: class_index[str(y)] for i, y in zip(tr, fold.y_train)}
        for streams, name in ((("audio",), "d_sup_audio"), (("audio", "au"), "d_sup_audio+au")):
            encoders, head = train_supervised(with_train(cfg, modalities=streams), store, tr, labels_idx, len(fold.classes), streams)
            x_tr, x_te = fold.feats(encoders, streams)
            with torch.no_grad():
                pred = head(torch.as_tensor(x_te, dtype=torch.float32)).argmax(dim=1).numpy()
            fold.results[name] = classification_metrics(fold.y_test, np.array(fold.classes)[pred], fold.classes)
            log.info("fold %d %-22s UA %.1f", fold.fold, name, fold.results[name]["ua"])
            fold.probe_spk(f"{name}_linear_probe", x_tr, x_te)
    return _record(fold, seed, tuple(c for c in conditions if c != "floors"), few)


def run_ravdess_fold(fold: RavdessFold, cfg: Config, runs: Path, fewshot_draws: int, stats_epochs: int = 30) -> dict[str, Any]:
    """Every condition of one fold at the config's seed, floors included, as one record."""
    floors = run_fold_floors(fold, fewshot_draws)
    seeded = run_fold_seed(fold, cfg, runs, cfg.train.seed, CONDITIONS[1:-1], fewshot_draws, stats_epochs)
    return {**seeded, "metrics": {**floors["metrics"], **seeded["metrics"]}, "few_shot": {**seeded["few_shot"], **floors["few_shot"]}}


# Paired comparisons reported by the RAVDESS summary: (arm, reference). Each is paired per (fold,
# seed); a floor (seed-independent) is paired with every seed's run of its fold. The same pairs of
# per-speaker standardised rows (``_spk``) are added where both exist.
PAIRED = (
    ("c_pair_audio", "a_random_audio"),
    ("c_pair_audio", "b_audio_ssl_audio"),
    ("c_pair_audio", "floor_logmel_stats"),
    ("c_pair_audio+au", "floor_logmel_stats+au"),
    ("b_audio_ssl_audio", "a_random_audio"),
    ("c_pair_stats_mlp", "a_random_stats_mlp"),
    ("c_pair_release_audio", "a_random_release_audio"),
    ("c_pair_release_audio", "floor_logmel_stats"),
    ("c_pair_release_audio+au", "floor_logmel_stats+au"),
    ("c_pair_release_audio", "c_pair_audio"),
)


def paired_summary(records: list[dict[str, Any]], metric: str = "ua", pairs: tuple[tuple[str, str], ...] = PAIRED) -> dict[str, Any]:
    """Paired comparisons of UA (or ``metric``) over the records of :func:`run_ravdess_loaded`:
    per (fold, seed) pairs, and again over folds with each fold's seeds averaged first (the
    conservative view: seeds of one fold share its test speakers, so fold x seed pairs are not
    independent). Tests: :func:`training.eval.metrics.paired_comparison`."""
    from training.eval.metrics import paired_comparison

    floors = {r["fold"]: r["metrics"] for r in records if r["seed"] is None}
    seeded = [r for r in records if r["seed"] is not None]
    all_pairs = list(pairs) + [(f"{a}_spk", f"{b}_spk") for a, b in pairs]
    out: dict[str, Any] = {}
    for arm, ref in all_pairs:
        keys, xs, ys = [], [], []
        for r in seeded:
            ref_metrics = r["metrics"] if ref in r["metrics"] else floors.get(r["fold"], {})
            if arm in r["metrics"] and ref in ref_metrics:
                keys.append((r["fold"], r["seed"]))
                xs.append(r["metrics"][arm][metric])
                ys.append(ref_metrics[ref][metric])
        if not keys:
            continue
        entry = paired_comparison(xs, ys, keys)
        folds = sorted({k[0] for k in keys})
        fx = [float(np.mean([x for k, x in zip(keys, xs) if k[0] == f])) for f in folds]
        fy = [float(np.mean([y for k, y in zip(keys, ys) if k[0] == f])) for f in folds]
        entry["fold_means"] = paired_comparison(fx, fy, folds)
        entry["meets_3_points_p05"] = bool(entry["mean_diff"] >= 3.0 and entry["wilcoxon"]["p_two_sided"] is not None
                                           and entry["wilcoxon"]["p_two_sided"] < 0.05)
        out[f"{arm} vs {ref}"] = {"arm": arm, "reference": ref, "metric": metric, **entry}
    return out


def summarise(per_fold: list[dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    """Mean and std over the records (folds, or folds x seeds; a seed-independent floor counts
    once per fold) of UA, WA and weighted F1, the summed confusion matrix, and the few-shot
    curves. ``folds`` in each entry is the number of records averaged."""
    names = list(dict.fromkeys(n for f in per_fold for n in f["metrics"]))
    summary: dict[str, Any] = {}
    for name in names:
        ms = [f["metrics"][name] for f in per_fold if name in f["metrics"]]
        entry = {f"{k}_{s}": float(fn([m[k] for m in ms])) for k in ("ua", "wa", "f1_weighted")
                 for s, fn in (("mean", np.mean), ("std", np.std))}
        entry["folds"] = len(ms)
        entry["confusion"] = np.sum([m["confusion"] for m in ms], axis=0).tolist()
        # A class absent from every test fold has no recall (None), not a crash.
        recalls = {c: [m["per_class_recall"][c] for m in ms if m["per_class_recall"][c] is not None] for c in classes}
        entry["per_class_recall_mean"] = {c: float(np.mean(r)) if r else None for c, r in recalls.items()}
        summary[name] = entry
    fewshot: dict[str, Any] = {}
    for name in dict.fromkeys(n for f in per_fold for n in f.get("few_shot", {})):
        fewshot[name] = {}
        having = [f for f in per_fold if name in f.get("few_shot", {})]
        for k in having[0]["few_shot"][name]:
            uas = [f["few_shot"][name][k]["ua_mean"] for f in having]
            was = [f["few_shot"][name][k]["wa_mean"] for f in having]
            fewshot[name][k] = {"ua_mean": float(np.mean(uas)), "ua_std": float(np.std(uas)),
                                "wa_mean": float(np.mean(was)), "wa_std": float(np.std(was))}
    return {"conditions": summary, "few_shot": fewshot}


LABELS = {
    "floor_logmel_stats": "floor: log-mel mean+std, supervised LR",
    "floor_au": "floor: action units, supervised LR",
    "floor_logmel_stats+au": "floor: log-mel stats + AUs, supervised LR",
    "a_random_audio": "(a) random-init audio TCN, linear probe",
    "b_audio_ssl_audio": "(b) audio-only SSL (two crops), linear probe",
    "a_random_stats_mlp": "(a') random-init MLP on log-mel stats, linear probe",
    "c_pair_stats_mlp": "(c') pairwise log-mel-stats MLP<->AU, probe on stats MLP",
    "c_pair_stats_mlp+au": "(c') pairwise log-mel-stats MLP<->AU, probe on both encoders",
    "c_pair_audio": "(c) pairwise audio<->AU, probe on audio",
    "c_pair_au": "(c) pairwise audio<->AU, probe on AU encoder",
    "c_pair_audio+au": "(c) pairwise audio<->AU, probe on audio+AU",
    "c_pair_audio_mlp": "(c) pairwise, audio, MLP probe",
    "c_pair_audio+au_mlp": "(c) pairwise, audio+AU, MLP probe",
    "a_random_release_audio": "(a) random-init audio TCN, release config (wider), linear probe",
    "c_pair_release_audio": "(c) pairwise audio<->AU, release config (wider TCN), probe on audio",
    "c_pair_release_audio+au": "(c) pairwise audio<->AU, release config (wider TCN), probe on audio+AU",
    "d_sup_audio": "(d) supervised audio TCN (its own head)",
    "d_sup_audio_linear_probe": "(d) supervised audio TCN, linear probe",
    "d_sup_audio+au": "(d) supervised audio TCN + AU MLP (its own head)",
    "d_sup_audio+au_linear_probe": "(d) supervised audio+AU, linear probe",
    "w_frozen": "Whisper tiny.en trunk frozen, mean+std pooled (768-d), linear probe",
    "w_frozen_pair": "frozen Whisper trunk + MLP pretrained pairwise <->AU, probe on the MLP",
    "w_tuned1_pair": "Whisper trunk (top layer tuned) pretrained pairwise <->AU, probe on the trunk",
    "floor_raw_features": "floor: the raw text+audio+video features, supervised LR",
    "random_init": "random-init MLP encoders, linear probe on text+audio+video",
    "pairwise": "pairwise (3 pairs), linear probe on text+audio+video",
    "pairwise_mosi_text": "pairwise, probe on text features",
    "pairwise_mosi_audio": "pairwise, probe on audio features",
    "pairwise_mosi_video": "pairwise, probe on video features",
    "supervised": "supervised encoders (their own head)",
    "supervised_linear_probe": "supervised encoders, linear probe",
}
# The rows that fold.probe_spk adds: the same features, standardised per speaker.
LABELS.update({f"{k}_spk": f"{LABELS[k]}, per-speaker standardised" for k in (
    "floor_logmel_stats", "floor_au", "floor_logmel_stats+au", "a_random_audio", "b_audio_ssl_audio", "c_pair_audio",
    "c_pair_audio+au", "d_sup_audio_linear_probe", "d_sup_audio+au_linear_probe", "a_random_stats_mlp", "c_pair_stats_mlp",
    "c_pair_stats_mlp+au", "w_frozen", "w_frozen_pair", "w_tuned1_pair", "a_random_release_audio", "c_pair_release_audio",
    "c_pair_release_audio+au")})


def markdown_table(summary: dict[str, Any], title: str, metric_names: tuple[str, ...] = ("ua", "wa", "f1_weighted"),
                   wa_name: str = "WA %") -> str:
    heads = {"ua": "UA %", "wa": wa_name, "f1_weighted": "weighted F1 %"}
    lines = [f"### {title}", "", "| condition | " + " | ".join(heads[m] for m in metric_names) + " | n |",
             "|---|" + "---|" * (len(metric_names) + 1)]
    for name, e in summary["conditions"].items():
        cells = " | ".join(f"{e[f'{m}_mean']:.1f} ± {e[f'{m}_std']:.1f}" for m in metric_names)
        lines.append(f"| {LABELS.get(name, name)} | {cells} | {e['folds']} |")
    if summary.get("few_shot"):
        ks = list(next(iter(summary["few_shot"].values())))
        lines += ["", "Few-shot (k labelled clips per class, linear probe, UA % mean ± std over folds):", "",
                  "| features | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
        for name, curve in summary["few_shot"].items():
            lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(f"{curve[k]['ua_mean']:.1f} ± {curve[k]['ua_std']:.1f}" for k in ks) + " |")
    return "\n".join(lines) + "\n"


def save_fewshot_png(fewshot: dict[str, Any], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edge_mer.io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=100)
    for name, curve in fewshot.items():
        ks = [int(k) for k in curve]
        ax.errorbar(ks, [curve[str(k)]["ua_mean"] for k in ks], yerr=[curve[str(k)]["ua_std"] for k in ks],
                    marker="o", capsize=3, label=LABELS.get(name, name))
    ax.set_xscale("log")
    ax.set_xticks([1, 5, 10, 20], ["1", "5", "10", "20"])
    ax.set_xlabel("labelled clips per class")
    ax.set_ylabel("UA % (5 folds)")
    ax.axhline(12.5, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def load_ravdess(cache: str, au_csv: str, speaker_norm: bool = False, actors: list[int] | None = None,
                 ) -> tuple[ClipStore, list[str], dict[str, str], list[str]]:
    """The protocol's RAVDESS clips: ``(store, ids, labels, classes)``, the store holding the
    cache's log-mels and the per-clip action units (``au``) of ``actors`` (default 01-20), the ids
    those with both and a label. Labels are for the probes and the supervised bound only;
    pretrain() never sees them."""
    from training.cache import open_cache
    from training.data.ravdess import EMOTIONS

    wanted = set(actors if actors is not None else DEFAULT_ACTORS)
    store, ids = load_cache_store(cache, ("audio",))
    ids = [i for i in ids if i.startswith("ravdess/") and actor_of(i) in wanted]
    if not ids:
        raise ConfigError(f"{cache}: no RAVDESS clips of actors {sorted(wanted)}")
    store.vectors["au"] = load_action_unit_vectors(au_csv, ids)
    ids = [i for i in ids if i in store.vectors["au"]]
    if not ids:
        raise ConfigError(f"{au_csv}: no action units for the clips of actors {sorted(wanted)} in {cache}")
    if speaker_norm:
        # Label-free: every actor's inputs standardised by that actor's own unlabelled clips, test
        # actors included (transductive, as a per-user running normalisation would be on a device).
        store = normalise_per_speaker(store, {i: f"actor{actor_of(i):02d}" for i in ids})
    labels = open_cache(cache).labels()
    return store, [i for i in ids if i in labels], labels, list(EMOTIONS)


def _same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("fold", "seed", "test_actors", "train_actors", "inputs"))


def run_ravdess(cfg: Config, cache: str, au_csv: str, out: Path, runs: Path, folds: list[int] | dict[int, list[int]],
                fewshot_draws: int, speaker_norm: bool = False, stats_epochs: int = 30, seeds: list[int] | None = None,
                conditions: tuple[str, ...] | None = None, release_cfg: Config | None = None,
                actors: list[int] | None = None, command: str | None = None) -> dict[str, Any]:
    """Load the clips of ``actors`` and run :func:`run_ravdess_loaded`. ``folds``: fold numbers of
    the default 5-fold split, or ``{fold: test actors}`` (:func:`make_folds`)."""
    store, ids, labels, classes = load_ravdess(cache, au_csv, speaker_norm, actors)
    fold_map = folds if isinstance(folds, dict) else {f: FOLDS[f] for f in folds}
    return run_ravdess_loaded(cfg, store, ids, labels, classes, fold_map, out, runs, fewshot_draws, speaker_norm,
                              stats_epochs, seeds, conditions, release_cfg, command)


def run_ravdess_loaded(cfg: Config, store: ClipStore, ids: list[str], labels: dict[str, str], classes: list[str],
                       folds: dict[int, list[int]], out: Path, runs: Path, fewshot_draws: int = 5, speaker_norm: bool = False,
                       stats_epochs: int = 30, seeds: list[int] | None = None, conditions: tuple[str, ...] | None = None,
                       release_cfg: Config | None = None, command: str | None = None) -> dict[str, Any]:
    """The RAVDESS protocol over ``folds`` (``{fold: test actors}``; every other actor of ``ids``
    trains) and ``seeds`` (default: the config's ``train.seed``): the floors once per fold, every
    seeded condition per fold per seed. One record per (fold, seed) (``seed`` None: the floors) in
    ``out/per_run.json``; a record already there for the same fold, seed, actors and inputs is
    kept and only its missing conditions run, so an interrupted run resumes (pretraining resumes
    from ``runs`` too). ``results.json``/``results.md``: mean and std over folds x seeds, and the
    paired comparisons (:func:`paired_summary`), rewritten after every record."""
    seeds = list(seeds) if seeds else [cfg.train.seed]
    conditions = conditions or parse_conditions("all", release=release_cfg is not None)
    inputs = "standardised per speaker (label-free)" if speaker_norm else "as recorded"
    store.vectors["stats"] = dict(zip(ids, logmel_stats(store, ids).astype(np.float32)))
    import json

    records: list[dict[str, Any]] = []
    previous: list[dict[str, Any]] = []
    if (out / "per_run.json").is_file():
        previous = json.loads((out / "per_run.json").read_text(encoding="utf-8"))
    # Every command that added to these results (a resumed run may add conditions).
    commands: list[str] = []
    prior_seconds = 0
    if previous and (out / "results.json").is_file():
        before = json.loads((out / "results.json").read_text(encoding="utf-8"))
        commands = list(before.get("commands", []))
        prior_seconds = int(before.get("seconds", 0))  # the time of the invocations that made the kept records
    if command and command not in commands:
        commands.append(command)
    t0 = time.time()
    result: dict[str, Any] = {}

    def write() -> None:
        nonlocal result
        summary = summarise(records, classes)
        paired = paired_summary(records)
        done = sorted({r["fold"] for r in records})
        result = {"protocol": "ravdess speech, 8 classes, speaker-independent folds", "commands": commands,
                  "folds": {str(k): folds[k] for k in done}, "seeds": seeds, "conditions_run": list(conditions),
                  "inputs": inputs, "config": {"encoder_options": list(cfg.encoder.options), "epochs": cfg.train.epochs,
                                               "release_epochs": release_cfg.train.epochs if release_cfg else None,
                                               "release_encoder_options": list(release_cfg.encoder.options) if release_cfg else None},
                  "seconds": prior_seconds + round(time.time() - t0), **summary, "paired": paired}
        write_json(out / "per_run.json", records)
        write_json(out / "results.json", result)
        title = (f"RAVDESS, folds {done} x seeds {seeds} (speaker-independent; mean ± std over folds x seeds)"
                 + ("; inputs standardised per speaker" if speaker_norm else ""))
        footer = (f"\n{result['seconds']} s of compute in all. Made by:\n\n```bash\n"
                  + "\n".join(f"OMP_NUM_THREADS=1 {c}" for c in commands) + "\n```\n") if commands else ""
        atomic_write_text(out / "results.md", markdown_table(summary, title) + "\n" + per_run_table(records)
                          + "\n" + paired_table(paired) + footer)

    for k, test_actors in folds.items():
        fold = RavdessFold(k, store, ids, labels, classes, test_actors)
        if not fold.test_ids:
            raise ConfigError(f"fold {k}: no clips of test actors {test_actors}")
        todo: list[tuple[int | None, tuple[str, ...]]] = []
        if "floors" in conditions:
            todo.append((None, ("floors",) + (("few_shot",) if "few_shot" in conditions else ())))
        seeded = tuple(c for c in conditions if c != "floors")
        if [c for c in seeded if c != "few_shot"]:
            todo += [(s, seeded) for s in seeds]
        for seed, conds in todo:
            key = {"fold": k, "seed": seed, "test_actors": fold.test_actors, "train_actors": fold.train_actors, "inputs": inputs}
            old = next((r for r in previous if _same_run(r, key)), None)
            missing = tuple(c for c in conds if not old or c not in old["conditions"])
            if old and not [c for c in missing if c != "few_shot"]:
                records.append(old)
                log.info("fold %d seed %s: kept from %s", k, seed, out / "per_run.json")
                continue
            if seed is None:
                rec = run_fold_floors(fold, fewshot_draws, "few_shot" in conds)
            else:
                rec = run_fold_seed(fold, cfg, runs, seed, missing, fewshot_draws, stats_epochs, release_cfg)
            rec["inputs"] = inputs
            if old:
                rec["metrics"] = {**old["metrics"], **rec["metrics"]}
                rec["few_shot"] = {**old.get("few_shot", {}), **rec["few_shot"]}
                rec["conditions"] = list(dict.fromkeys(old["conditions"] + rec["conditions"]))
            records.append(rec)
            write()
            log.info("fold %d seed %s done (%.0f s since start)", k, seed, time.time() - t0)
    write()
    summary = {"conditions": result["conditions"], "few_shot": result["few_shot"]}
    for name in ("floor_logmel_stats+au", "a_random_audio", "b_audio_ssl_audio", "c_pair_audio", "c_pair_audio+au",
                 "c_pair_release_audio", "d_sup_audio+au"):
        if name in summary["conditions"]:
            save_confusion_png(summary["conditions"][name]["confusion"], classes, out / f"confusion_{name}.png",
                               f"{LABELS.get(name, name)}\n(summed over {summary['conditions'][name]['folds']} runs)")
    if summary["few_shot"]:
        save_fewshot_png(summary["few_shot"], out / "few_shot.png")
    return result


PER_RUN_COLUMNS = ("floor_logmel_stats", "floor_logmel_stats+au", "a_random_audio", "b_audio_ssl_audio", "c_pair_audio",
                   "c_pair_audio+au", "a_random_release_audio", "c_pair_release_audio", "c_pair_release_audio+au")


def per_run_table(records: list[dict[str, Any]], columns: tuple[str, ...] = PER_RUN_COLUMNS) -> str:
    """UA % per (fold, seed): one row per seeded run, the fold's floors beside it."""
    floors = {r["fold"]: r["metrics"] for r in records if r["seed"] is None}
    seeded = [r for r in records if r["seed"] is not None] or [r for r in records if r["seed"] is None]
    cols = [c for c in columns if any(c in r["metrics"] or c in floors.get(r["fold"], {}) for r in seeded)]
    lines = ["Per run, UA % (linear probe; floors are seed-independent: the fold's value on every row):", "",
             "| fold (test actors) | seed | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in seeded:
        m = {**floors.get(r["fold"], {}), **r["metrics"]}
        cells = " | ".join(f"{m[c]['ua']:.1f}" if c in m else "—" for c in cols)
        actors = ",".join(f"{a:02d}" for a in r["test_actors"])
        lines.append(f"| {r['fold']} ({actors}) | {'—' if r['seed'] is None else r['seed']} | {cells} |")
    return "\n".join(lines) + "\n"


def paired_table(paired: dict[str, Any]) -> str:
    """The paired comparisons as a markdown table (UA points, arm - reference)."""
    if not paired:
        return ""

    def p(x: float | None) -> str:
        return "—" if x is None else f"{x:.3g}"

    lines = ["Paired comparisons, UA points (arm − reference). Pairs: one per (fold, seed), a floor paired with",
             "every seed of its fold; Wilcoxon signed-rank (scipy) and sign test, two-sided, and one-sided",
             "(arm better). Last column: the same over folds, each fold's seeds averaged first (n = folds).", "",
             "| arm | reference | pairs | mean diff ± std | wins/losses/ties | sign p (2-s / 1-s) | Wilcoxon p (2-s / 1-s) "
             "| over folds: mean diff, wins/losses, Wilcoxon p 2-s |",
             "|---|---|---|---|---|---|---|---|"]
    for e in paired.values():
        s, w, f = e["sign"], e["wilcoxon"], e["fold_means"]
        lines.append(f"| {e['arm']} | {e['reference']} | {e['n']} | {e['mean_diff']:+.1f} ± {e['std_diff']:.1f} "
                     f"| {s['wins']}/{s['losses']}/{s['ties']} | {p(s['p_two_sided'])} / {p(s['p_greater'])} "
                     f"| {p(w['p_two_sided'])} / {p(w['p_greater'])} "
                     f"| {f['mean_diff']:+.1f}, {f['sign']['wins']}/{f['sign']['losses']}, {p(f['wilcoxon']['p_two_sided'])} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CMU-MOSI


def run_mosi(cfg: Config, root: str, out: Path, runs: Path, seeds: list[int]) -> dict[str, Any]:
    data = load_mosi(root)
    tr, te = data["train"], data["test"]
    streams = ("mosi_text", "mosi_audio", "mosi_video")
    store = ClipStore(vectors={s: {**dict(zip(tr["ids"], tr["vectors"][s])), **dict(zip(te["ids"], te["vectors"][s]))} for s in streams})
    classes = ["negative", "positive"]
    y_tr = np.array([classes[v] for v in tr["labels"]])
    y_te = np.array([classes[v] for v in te["labels"]])
    groups = np.array(tr["video"])
    per_seed = []
    t0 = time.time()

    def probe(name: str, x_train: np.ndarray, x_test: np.ndarray, results: dict) -> None:
        m = classification_metrics(y_te, fit_linear_probe(x_train, y_tr, groups=groups).predict(x_test), classes)
        results[name] = m
        log.info("mosi %-24s acc %.1f F1 %.1f", name, m["wa"], m["f1_weighted"])

    def feats(encoders: dict[str, nn.Module], names: tuple[str, ...], ids: list[str]) -> np.ndarray:
        return np.hstack([encode_vectors(encoders[s], np.stack([store.vectors[s][i] for i in ids])) for s in names])

    for seed in seeds:
        scfg = with_train(cfg, seed=seed, modalities=streams)
        results: dict[str, Any] = {}
        if seed == seeds[0]:
            raw = lambda ids: np.hstack([np.stack([store.vectors[s][i] for i in ids]) for s in streams])  # noqa: E731
            probe("floor_raw_features", raw(tr["ids"]), raw(te["ids"]), results)
        dims = {s: len(store.vectors[s][tr["ids"][0]]) for s in streams}
        torch.manual_seed(seed)
        random_model = ContrastiveModel(encoder_specs(scfg, streams, dims), streams, 8, 8)
        for key, enc in random_model.encoders.items():
            enc.set_input_stats(np.stack([store.vectors[key][i] for i in tr["ids"]]))
        probe("random_init", feats(dict(random_model.encoders), streams, tr["ids"]), feats(dict(random_model.encoders), streams, te["ids"]), results)
        # Pretraining sees the train split's features only (no labels, no test videos).
        pretrain(scfg, PretrainData(store, list(tr["ids"]), {"dataset": "cmu-mosi", "split": "train", "seed": seed}),
                 runs / f"seed{seed}" / "pairwise", info=CPU)
        enc = load_encoders(runs / f"seed{seed}" / "pairwise")
        probe("pairwise", feats(enc, streams, tr["ids"]), feats(enc, streams, te["ids"]), results)
        for s in streams:
            probe(f"pairwise_{s}", feats(enc, (s,), tr["ids"]), feats(enc, (s,), te["ids"]), results)
        sup_enc, head = train_supervised(scfg, store, list(tr["ids"]), {i: int(v) for i, v in zip(tr["ids"], tr["labels"])}, 2, streams)
        with torch.no_grad():
            pred = head(torch.as_tensor(feats(sup_enc, streams, te["ids"]), dtype=torch.float32)).argmax(dim=1).numpy()
        results["supervised"] = classification_metrics(y_te, np.array(classes)[pred], classes)
        probe("supervised_linear_probe", feats(sup_enc, streams, tr["ids"]), feats(sup_enc, streams, te["ids"]), results)
        per_seed.append({"seed": seed, "metrics": results})
        write_json(out / "per_seed.json", per_seed)
    summary = summarise(per_seed, classes)
    result = {"protocol": "CMU-MOSI feature triples, binary sentiment, official speaker-independent split",
              "seeds": seeds, "seconds": round(time.time() - t0), **summary}
    write_json(out / "results.json", result)
    atomic_write_text(out / "results.md", markdown_table(summary, f"CMU-MOSI test split (mean ± std over {len(seeds)} seeds)",
                                                         ("wa", "f1_weighted"), wa_name="accuracy %"))
    return result


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.eval.protocol", description=__doc__.split("\n\n")[0])
    p.add_argument("protocol", choices=("ravdess", "mosi"))
    p.add_argument("--out", required=True, help="results directory (results.json, results.md, PNGs)")
    p.add_argument("--runs", help="where the pretraining runs go (default: runs/protocol_<protocol>)")
    p.add_argument("--cache", default="cache/ravdess_audio", help="RAVDESS audio cache (ravdess)")
    p.add_argument("--au-csv", default="../shared/data/ravdess/openface_au/au_audio_per_clip.csv", help="RAVDESS per-clip AUs (ravdess)")
    p.add_argument("--mosi", default="../shared/data/cmu-mosi/data", help="CMU-MOSI feature folder (mosi)")
    p.add_argument("--actors", default="1-20", help="RAVDESS actors the protocol uses, e.g. 1-20 or 1-8,13 (ravdess)")
    p.add_argument("--fold-size", type=int, default=4,
                   help="test actors per fold: consecutive groups of the sorted --actors (ravdess; default 4)")
    p.add_argument("--fold-actors", metavar="'1-4;5-8;...'",
                   help="the folds' test actors, one list per fold separated by ';' (ravdess; overrides --fold-size)")
    p.add_argument("--folds", help="which folds to run by number, e.g. 1-5 or 1 (ravdess; default: all of the definition)")
    p.add_argument("--seeds", help="pretraining seeds, e.g. 0,1,2: every seeded condition per fold per seed "
                                   "(ravdess default: the config's train.seed; mosi default 0,1,2)")
    p.add_argument("--conditions", default="all",
                   help=f"ravdess conditions to run, comma-separated: all or {','.join(CONDITIONS)}")
    p.add_argument("--release-config", metavar="FILE",
                   help="also run the release architecture from this config (e.g. configs/ravdess_audio_au.toml): "
                        "random-init and pairwise rows of its wider TCN (ravdess; adds the 'release' condition)")
    p.add_argument("--release-epochs", type=int, default=0, help="pretraining epochs of the release rows (0: the release config's)")
    p.add_argument("--fewshot-draws", type=int, default=5, help="random draws per k in the few-shot probes")
    p.add_argument("--speaker-norm", action="store_true",
                   help="standardise every actor's log-mels and AUs by that actor's own clips first (ravdess; label-free)")
    p.add_argument("--stats-epochs", type=int, default=30, help="pretraining epochs of the log-mel-statistics MLP (ravdess)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave the default)")
    add_config_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from training.train import parse_actors

    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw_argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = load_config(args.config, args.overrides)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)
        runs = Path(args.runs or f"runs/protocol_{args.protocol}")
        if args.protocol == "ravdess":
            actors = parse_actors(args.actors)
            fold_map = make_folds(actors, args.fold_size, args.fold_actors)
            if args.folds:
                wanted = parse_actors(args.folds)
                unknown = sorted(set(wanted) - set(fold_map))
                if unknown:
                    raise ConfigError(f"--folds {args.folds}: no fold {unknown}; the definition has folds 1-{len(fold_map)}")
                fold_map = {k: fold_map[k] for k in wanted}
            speaker_norm = args.speaker_norm
            if cfg.train.speaker_norm and not speaker_norm:
                # A config that pretrains on per-speaker inputs (the release config) is evaluated on them.
                log.info("train.speaker_norm is set in the config: inputs standardised per speaker (--speaker-norm)")
                speaker_norm = True
            release_cfg = None
            if args.release_config:
                release_cfg = load_config([args.release_config])
                if args.release_epochs:
                    release_cfg = with_train(release_cfg, epochs=args.release_epochs)
                if release_cfg.train.speaker_norm and not speaker_norm:
                    log.warning("%s pretrains on per-speaker inputs (train.speaker_norm) but this run has no --speaker-norm: "
                                "its release rows are on raw inputs", args.release_config)
            seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [cfg.train.seed]
            result = run_ravdess(cfg, args.cache, args.au_csv, out, runs, fold_map, args.fewshot_draws, speaker_norm,
                                 args.stats_epochs, seeds, parse_conditions(args.conditions, release_cfg is not None),
                                 release_cfg, actors, command=" ".join(["python -m training.eval.protocol", *raw_argv]))
        else:
            result = run_mosi(cfg, args.mosi, out, runs, [int(s) for s in (args.seeds or "0,1,2").split(",")])
    except EdgeMerError as exc:
        print(f"training.eval.protocol: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
