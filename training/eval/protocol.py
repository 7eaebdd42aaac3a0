"""The evaluation protocols behind docs/RESULTS.md: ``python -m training.eval.protocol ravdess|mosi``.

``ravdess`` (BRIEF section 4): actors 01-20 in 5 speaker-independent folds of 4 consecutive
actors. For each fold, every encoder is pretrained and every probe fitted on the 16 other actors
only, then scored on the fold's 4. Conditions:

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
confusion-matrix PNGs into ``--out``; runs go to ``--runs`` and resume when restarted.

    python -m training.eval.protocol ravdess --cache cache/ravdess_audio \\
        --au-csv ../shared/data/ravdess/openface_au/au_audio_per_clip.csv --out results/ravdess
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
from edge_mer.errors import EdgeMerError
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
CPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


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

    def __init__(self, fold: int, store: ClipStore, ids: list[str], labels: dict[str, str], classes: list[str]) -> None:
        self.fold, self.store, self.classes = fold, store, classes
        self.test_ids = [i for i in ids if actor_of(i) in FOLDS[fold]]
        self.train_ids = [i for i in ids if actor_of(i) not in FOLDS[fold]]
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


def run_ravdess_fold(fold: RavdessFold, cfg: Config, runs: Path, fewshot_draws: int, stats_epochs: int = 30) -> dict[str, Any]:
    store, tr, te = fold.store, fold.train_ids, fold.test_ids
    fold_dir = runs / f"fold{fold.fold}"
    # Floors: supervised logistic regression on fixed features (BRIEF section 4).
    stats_tr, stats_te = logmel_stats(store, tr), logmel_stats(store, te)
    au_tr = np.stack([store.vectors["au"][i] for i in tr])
    au_te = np.stack([store.vectors["au"][i] for i in te])
    fold.probe_spk("floor_logmel_stats", stats_tr, stats_te)
    fold.probe_spk("floor_au", au_tr, au_te)
    fold.probe_spk("floor_logmel_stats+au", np.hstack([stats_tr, au_tr]), np.hstack([stats_te, au_te]))

    # (a) random init: the same encoders, never trained.
    fold.probe_spk("a_random_audio", *fold.feats(random_encoders(cfg, ("audio",)), ("audio",)))

    data = PretrainData(store, tr, {"dataset": "ravdess", "fold": fold.fold, "test_actors": FOLDS[fold.fold]},
                        speakers={i: f"actor{actor_of(i):02d}" for i in tr})
    # (a') and (c') on the floor's own features: an MLP over the log-mel statistics, at random init
    # and pretrained pairwise against the AUs (label-free), probed like the TCN.
    cfg_s = with_loss(with_train(cfg, modalities=("stats", "au"), epochs=stats_epochs), pairs=("stats-au",))
    random_mlp = random_encoders(cfg_s, ("stats",), {"stats": stats_tr.shape[1]})
    random_mlp["stats"].set_input_stats(stats_tr)
    random_mlp["stats"].eval()
    fold.probe_spk("a_random_stats_mlp", *fold.feats(random_mlp, ("stats",)))
    pretrain(cfg_s, data, fold_dir / "c_pair_stats", info=CPU)
    enc_s = load_encoders(fold_dir / "c_pair_stats")
    s_tr, s_te = fold.feats(enc_s, ("stats",))
    su_tr, su_te = fold.feats(enc_s, ("au",))
    fold.probe_spk("c_pair_stats_mlp", s_tr, s_te)
    fold.probe_spk("c_pair_stats_mlp+au", np.hstack([s_tr, su_tr]), np.hstack([s_te, su_te]))

    # (c) label-free pairwise audio <-> action units.
    cfg_c = with_loss(with_train(cfg, modalities=("audio", "au")), pairs=("audio-au",))
    pretrain(cfg_c, data, fold_dir / "c_pair", info=CPU)
    enc_c = load_encoders(fold_dir / "c_pair")
    a_tr, a_te = fold.feats(enc_c, ("audio",))
    u_tr, u_te = fold.feats(enc_c, ("au",))
    fold.probe_spk("c_pair_audio", a_tr, a_te)
    fold.probe("c_pair_au", u_tr, u_te)
    fold.probe_spk("c_pair_audio+au", np.hstack([a_tr, u_tr]), np.hstack([a_te, u_te]))
    fold.probe("c_pair_audio+au_mlp", np.hstack([a_tr, u_tr]), np.hstack([a_te, u_te]), kind="mlp")
    fold.probe("c_pair_audio_mlp", a_tr, a_te, kind="mlp")
    # (e) few-shot curves of (c).
    fewshot = {
        "c_pair_audio": few_shot(a_tr, fold.y_train, a_te, fold.y_test, fold.classes, draws=fewshot_draws, seed=fold.fold),
        "c_pair_audio+au": few_shot(np.hstack([a_tr, u_tr]), fold.y_train, np.hstack([a_te, u_te]), fold.y_test,
                                    fold.classes, draws=fewshot_draws, seed=fold.fold),
        "floor_logmel_stats+au": few_shot(np.hstack([stats_tr, au_tr]), fold.y_train, np.hstack([stats_te, au_te]),
                                          fold.y_test, fold.classes, draws=fewshot_draws, seed=fold.fold),
    }

    # (b) audio-only self-supervision: two crops of the same clip are the positive pair.
    cfg_b = with_loss(with_train(cfg, modalities=("audio", "audio_view2")), pairs=("audio-audio_view2",))
    pretrain(cfg_b, data, fold_dir / "b_audio_ssl", info=CPU)
    enc_b = load_encoders(fold_dir / "b_audio_ssl")
    fold.probe_spk("b_audio_ssl_audio", *fold.feats(enc_b, ("audio",)))

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
    return {"fold": fold.fold, "test_actors": FOLDS[fold.fold], "n_train": len(tr), "n_test": len(te),
            "metrics": fold.results, "few_shot": fewshot}


def summarise(per_fold: list[dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    """Mean and std over folds of UA, WA and weighted F1, the summed confusion matrix, and the
    few-shot curves."""
    names = list(per_fold[0]["metrics"])
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
    for name in per_fold[0].get("few_shot", {}):
        fewshot[name] = {}
        for k in per_fold[0]["few_shot"][name]:
            uas = [f["few_shot"][name][k]["ua_mean"] for f in per_fold]
            was = [f["few_shot"][name][k]["wa_mean"] for f in per_fold]
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
    "c_pair_stats_mlp+au", "w_frozen", "w_frozen_pair", "w_tuned1_pair")})


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


def load_ravdess(cache: str, au_csv: str, speaker_norm: bool = False) -> tuple[ClipStore, list[str], dict[str, str], list[str]]:
    """The protocol's RAVDESS clips: ``(store, ids, labels, classes)``, the store holding the
    cache's log-mels and the per-clip action units (``au``) of actors 01-20, the ids those with
    both and a label. Labels are for the probes and the supervised bound only; pretrain() never
    sees them."""
    from training.cache import open_cache
    from training.data.ravdess import EMOTIONS

    store, ids = load_cache_store(cache, ("audio",))
    ids = [i for i in ids if i.startswith("ravdess/") and 1 <= actor_of(i) <= 20]
    store.vectors["au"] = load_action_unit_vectors(au_csv, ids)
    ids = [i for i in ids if i in store.vectors["au"]]
    if speaker_norm:
        # Label-free: every actor's inputs standardised by that actor's own unlabelled clips, test
        # actors included (transductive, as a per-user running normalisation would be on a device).
        store = normalise_per_speaker(store, {i: f"actor{actor_of(i):02d}" for i in ids})
    labels = open_cache(cache).labels()
    return store, [i for i in ids if i in labels], labels, list(EMOTIONS)


def run_ravdess(cfg: Config, cache: str, au_csv: str, out: Path, runs: Path, folds: list[int], fewshot_draws: int,
                speaker_norm: bool = False, stats_epochs: int = 30) -> dict[str, Any]:
    store, ids, labels, classes = load_ravdess(cache, au_csv, speaker_norm)
    store.vectors["stats"] = dict(zip(ids, logmel_stats(store, ids).astype(np.float32)))
    per_fold = []
    t0 = time.time()
    for f in folds:
        fold = RavdessFold(f, store, ids, labels, classes)
        per_fold.append(run_ravdess_fold(fold, cfg, runs, fewshot_draws, stats_epochs))
        write_json(out / "per_fold.json", per_fold)
        log.info("fold %d done (%.0f s since start)", f, time.time() - t0)
        # The summary so far is rewritten after every fold, so an interrupted run still reports.
        summary = summarise(per_fold, classes)
        done = [p["fold"] for p in per_fold]
        result = {"protocol": "ravdess speech, 8 classes, speaker-independent folds of 4 actors", "folds": done,
                  "inputs": "standardised per speaker (label-free)" if speaker_norm else "as recorded",
                  "seconds": round(time.time() - t0), **summary}
        write_json(out / "results.json", result)
        atomic_write_text(out / "results.md", markdown_table(summary, f"RAVDESS, folds {done} (speaker-independent; mean ± std over folds)"
                                                                      + ("; inputs standardised per speaker" if speaker_norm else "")))
    for name in ("floor_logmel_stats+au", "a_random_audio", "b_audio_ssl_audio", "c_pair_audio", "c_pair_audio+au", "d_sup_audio+au"):
        if name in summary["conditions"]:
            save_confusion_png(summary["conditions"][name]["confusion"], classes, out / f"confusion_{name}.png",
                               f"{LABELS.get(name, name)}\n(summed over {len(folds)} folds)")
    save_fewshot_png(summary["few_shot"], out / "few_shot.png")
    return result


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
    p.add_argument("--folds", default="1-5", help="RAVDESS folds to run, e.g. 1-5 or 1")
    p.add_argument("--seeds", default="0,1,2", help="MOSI seeds")
    p.add_argument("--fewshot-draws", type=int, default=5, help="random draws per k in the few-shot probes")
    p.add_argument("--speaker-norm", action="store_true",
                   help="standardise every actor's log-mels and AUs by that actor's own clips first (ravdess; label-free)")
    p.add_argument("--stats-epochs", type=int, default=30, help="pretraining epochs of the log-mel-statistics MLP (ravdess)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave the default)")
    add_config_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from training.train import parse_actors

    args = build_parser().parse_args(argv)
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
            result = run_ravdess(cfg, args.cache, args.au_csv, out, runs, parse_actors(args.folds), args.fewshot_draws,
                                 args.speaker_norm, args.stats_epochs)
        else:
            result = run_mosi(cfg, args.mosi, out, runs, [int(s) for s in args.seeds.split(",")])
    except EdgeMerError as exc:
        print(f"training.eval.protocol: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
