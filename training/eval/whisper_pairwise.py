"""The pairwise projection on the Whisper tiny.en trunk, in the RAVDESS protocol (issue 12):
``python -m training.eval.whisper_pairwise``.

Same clips, same speaker-independent folds (:data:`training.eval.protocol.FOLDS`) and same
probes (:meth:`training.eval.protocol.RavdessFold.probe_spk`: the linear probe on the features
as they are, and on per-speaker standardised features, ``<arm>_spk``) as
``python -m training.eval.protocol ravdess``. Arms, per fold:

- ``w_frozen``: the frozen ``whisper_tiny`` trunk (pretrained weights, nothing trained),
  mean+std pooled over the whole clip's encoder frames (768-d): the probe baseline;
- ``w_frozen_pair``: the same frozen features as a fixed vector stream (``wfeat``), an MLP
  (``encoder.features``) over them pretrained label-free with the pairwise loss against the
  action units (``wfeat-au``), the way the protocol's ``c_pair_stats`` arm trains an MLP over the
  log-mel statistics; the probe reads the MLP's features;
- ``w_tuned1_pair``: ``whisper_tiny`` as the audio encoder of the pairwise trainer (``audio-au``,
  2 s crops), its top transformer layer and final layer norm tuned
  (``whisper_tiny.trainable_layers=1``), the rest frozen; the probe reads the tuned trunk's
  whole-clip features. One learning rate for the tuned layer, the projectors and the AU MLP
  (``--tuned-lr``, 3e-4: between the protocol's 1e-3 for encoders trained from scratch and a
  1-epoch pilot at 1e-4 whose contrastive loss hardly moved; not tuned on any probe result),
  ``--tuned-epochs`` 6 (about 30 s an epoch on one CPU thread, 864 clips of 2 s).

Label-free and speaker-independent: pretraining gets the fold's 16 training actors' clips
only (:class:`training.train.PretrainData`, no labels; model selection by the contrastive loss
on held-out clips of those actors). The trunk's frozen features of the test actors are computed
once (a fixed function, nothing fitted) and read only by the probes. Audio is Whisper's own
log-mel of each clip (:func:`training.encoders.whisper_trunk.whisper_logmels_for_cache`), never
standardised; AUs as recorded.

Writes ``results.json``, ``results.md`` (mean +/- std over folds, per-fold UA, and the paired
comparison of each trained arm with ``w_frozen`` on the per-speaker probe: per-fold
differences, paired t-test, Wilcoxon signed-rank) and ``per_fold.json`` into ``--out``; runs go
to ``--runs`` and resume when restarted.

    OMP_NUM_THREADS=1 python -m training.eval.whisper_pairwise --config configs/ravdess_protocol.toml \\
        --cache cache/ravdess_audio --au-csv ../shared/data/ravdess/openface_au/au_audio_per_clip.csv \\
        --out results/protocol_whisper --threads 1
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

from edge_mer.cli import add_config_args
from edge_mer.config import Config, load_config, save_config
from edge_mer.errors import EdgeMerError, MediaError
from edge_mer.io import atomic_write_bytes, atomic_write_text
from training.checkpoint import load_encoders
from training.datasets import ClipStore, actor_of
from training.eval.probe import encode_logmels, write_json
from training.eval.protocol import (
    CPU,
    FOLDS,
    RavdessFold,
    load_ravdess,
    markdown_table,
    summarise,
    with_loss,
    with_train,
)
from training.train import PretrainData, pretrain

log = logging.getLogger("training.eval.whisper_pairwise")

ARMS = ("w_frozen", "w_frozen_pair", "w_tuned1_pair")
FROZEN = "wfeat"  # the vector stream of frozen trunk features


def with_whisper_audio(cfg: Config, trainable_layers: int) -> Config:
    """``cfg`` with ``whisper_tiny`` as the audio encoder (80 mel bins), its top
    ``trainable_layers`` transformer layers tuned."""
    options = (*cfg.encoder.options, f"whisper_tiny.trainable_layers={trainable_layers}")
    return dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, audio="whisper_tiny", options=options),
                               audio=dataclasses.replace(cfg.audio, n_mels=80))


def frozen_trunk_features(logmels: dict[str, np.ndarray], ids: list[str], cache_file: Path | None = None) -> np.ndarray:
    """``[N, 768]`` frozen ``whisper_tiny`` features of the whole clips ``ids`` (Whisper
    log-mels), by the probes' own encoder path (:func:`training.eval.probe.encode_logmels`).
    With ``cache_file`` they are kept there (an ``.npz`` with the ids) and reused when the ids
    match: the trunk is fixed, so they are the same for every fold."""
    from training.encoders import build_encoder

    if cache_file is not None and cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as z:
            if list(z["ids"]) == list(ids):
                return z["feats"]
    t0 = time.time()
    feats = encode_logmels(build_encoder("whisper_tiny", {}), [logmels[i] for i in ids])
    log.info("frozen whisper_tiny features of %d clips (%.0f s)", len(ids), time.time() - t0)
    if cache_file is not None:
        import io

        buf = io.BytesIO()
        np.savez(buf, ids=np.asarray(ids), feats=feats)
        atomic_write_bytes(cache_file, buf.getvalue())
    return feats


def whisper_store(store: ClipStore, cache: str, ids: list[str], feature_file: Path | None = None) -> ClipStore:
    """A store for the Whisper arms: Whisper log-mels of ``ids`` (replacing the cache's
    torchaudio log-mels), the action units, and the frozen trunk features as the vector stream
    ``wfeat``."""
    from training.encoders.whisper_trunk import whisper_logmels_for_cache

    t0 = time.time()
    mels = whisper_logmels_for_cache(cache, ids)
    missing = [i for i in ids if i not in mels]
    if missing:
        raise MediaError(f"{cache}: no audio file for {len(missing)} clips, e.g. {missing[0]}")
    log.info("Whisper log-mels of %d clips (%.0f s)", len(mels), time.time() - t0)
    feats = frozen_trunk_features(mels, ids, feature_file)
    return ClipStore(logmels=mels, vectors={"au": store.vectors["au"], FROZEN: dict(zip(ids, feats.astype(np.float32)))},
                     frames_per_s=100.0)


def run_whisper_fold(fold: RavdessFold, cfg: Config, runs: Path, arms: tuple[str, ...] = ARMS, pair_epochs: int = 30,
                     tuned_epochs: int = 6, tuned_lr: float = 3e-4) -> dict[str, Any]:
    """The arms of :data:`ARMS` named in ``arms`` on one fold (docstring of this module);
    ``fold.store`` from :func:`whisper_store`."""
    store, tr = fold.store, fold.train_ids
    fold_dir = runs / f"fold{fold.fold}"
    data = PretrainData(store, tr, {"dataset": "ravdess", "fold": fold.fold, "test_actors": FOLDS[fold.fold],
                                    "audio": "whisper log-mel"},
                        speakers={i: f"actor{actor_of(i):02d}" for i in tr})
    seconds: dict[str, float] = {}
    if "w_frozen" in arms:
        fold.probe_spk("w_frozen", *(np.stack([store.vectors[FROZEN][i] for i in part]) for part in (tr, fold.test_ids)))
    if "w_frozen_pair" in arms:
        t0 = time.time()
        cfg_p = with_loss(with_train(cfg, modalities=(FROZEN, "au"), epochs=pair_epochs), pairs=(f"{FROZEN}-au",))
        pretrain(cfg_p, data, fold_dir / "w_frozen_pair", info=CPU)
        fold.probe_spk("w_frozen_pair", *fold.feats(load_encoders(fold_dir / "w_frozen_pair"), (FROZEN,)))
        seconds["w_frozen_pair"] = round(time.time() - t0, 1)
    if "w_tuned1_pair" in arms:
        t0 = time.time()
        cfg_t = with_whisper_audio(with_loss(with_train(cfg, modalities=("audio", "au"), epochs=tuned_epochs, lr=tuned_lr),
                                             pairs=("audio-au",)), trainable_layers=1)
        pretrain(cfg_t, data, fold_dir / "w_tuned1_pair", info=CPU)
        fold.probe_spk("w_tuned1_pair", *fold.feats(load_encoders(fold_dir / "w_tuned1_pair"), ("audio",)))
        seconds["w_tuned1_pair"] = round(time.time() - t0, 1)
    return {"fold": fold.fold, "test_actors": FOLDS[fold.fold], "n_train": len(tr), "n_test": len(fold.test_ids),
            "metrics": fold.results, "seconds": seconds}


def paired_comparison(per_fold: list[dict[str, Any]], arm: str, base: str, metric: str = "ua") -> dict[str, Any] | None:
    """``arm`` minus ``base`` on the folds that have both: per-fold differences, their mean and
    std, the paired t-test and the Wilcoxon signed-rank test (two-sided; with 5 folds its
    smallest possible p is 0.0625), and how many folds ``arm`` wins."""
    from scipy import stats

    pairs = [(f["fold"], f["metrics"][arm][metric], f["metrics"][base][metric]) for f in per_fold
             if arm in f["metrics"] and base in f["metrics"]]
    if not pairs:
        return None
    diff = np.array([a - b for _, a, b in pairs])
    out: dict[str, Any] = {"arm": arm, "base": base, "metric": metric, "folds": [p[0] for p in pairs],
                           "diff": [round(float(d), 2) for d in diff], "diff_mean": float(diff.mean()),
                           "diff_std": float(diff.std()), "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum()),
                           "t_p": None, "wilcoxon_p": None}
    if len(diff) >= 2 and diff.std() > 0:
        out["t_p"] = float(stats.ttest_rel([p[1] for p in pairs], [p[2] for p in pairs]).pvalue)
    if np.any(diff != 0):
        out["wilcoxon_p"] = float(stats.wilcoxon(diff).pvalue)
    return out


def report(per_fold: list[dict[str, Any]], classes: list[str], command: str, seconds: float, settings: dict[str, Any]
           ) -> tuple[dict[str, Any], str]:
    """``results.json``'s object and ``results.md``'s text."""
    summary = summarise(per_fold, classes)
    comparisons = [c for c in (paired_comparison(per_fold, f"{arm}_spk", "w_frozen_spk") for arm in ARMS[1:]) if c]
    folds = [f["fold"] for f in per_fold]
    result = {"protocol": "ravdess speech, 8 classes, speaker-independent folds of 4 actors; Whisper tiny.en trunk arms",
              "folds": folds, "command": command, "seconds": round(seconds), "settings": settings,
              "paired_vs_w_frozen_spk": comparisons, **summary}
    names = list(summary["conditions"])
    lines = [markdown_table(summary, f"RAVDESS, Whisper tiny.en trunk, folds {folds} (speaker-independent; mean ± std over folds)"),
             "Per-fold UA % (test actors):", "",
             "| condition | " + " | ".join(f"fold {f} ({FOLDS[f][0]:02d}-{FOLDS[f][-1]:02d})" for f in folds) + " |",
             "|---|" + "---|" * len(folds)]
    for name in names:
        cells = [f"{p['metrics'][name]['ua']:.1f}" if name in p["metrics"] else "–" for p in per_fold]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Paired over folds, per-speaker probe, UA % (arm − w_frozen_spk):", "",
              "| arm | folds | per-fold difference | mean ± std | wins/losses | paired t p | Wilcoxon p |",
              "|---|---|---|---|---|---|---|"]
    for c in comparisons:
        fmt = lambda p: "–" if p is None else f"{p:.3f}"
        lines.append(f"| {c['arm']} | {','.join(map(str, c['folds']))} | {', '.join(f'{d:+.1f}' for d in c['diff'])} | "
                     f"{c['diff_mean']:+.1f} ± {c['diff_std']:.1f} | {c['wins']}/{c['losses']} | {fmt(c['t_p'])} | {fmt(c['wilcoxon_p'])} |")
    lines += ["", "Settings: " + ", ".join(f"{k} = {v}" for k, v in settings.items()), "",
              f"Command ({round(seconds)} s wall, this run):", "", "```bash", command, "```", ""]
    return result, "\n".join(lines)


def run(cfg: Config, cache: str, au_csv: str, out: Path, runs: Path, folds: list[int], tuned_folds: list[int],
        pair_epochs: int, tuned_epochs: int, tuned_lr: float, command: str = "") -> dict[str, Any]:
    """Every fold of ``folds`` (the tuned arm on those of ``tuned_folds`` only); results
    rewritten after every fold, so an interrupted run still reports."""
    t0 = time.time()
    base, ids, labels, classes = load_ravdess(cache, au_csv)
    store = whisper_store(base, cache, ids, runs / "frozen_whisper_tiny_features.npz")
    settings = {"pair_epochs": pair_epochs, "tuned_epochs": tuned_epochs, "tuned_lr": tuned_lr, "tuned_folds": tuned_folds,
                "trainable_layers (w_tuned1_pair)": 1, "batch_size": cfg.train.batch_size, "crop_s": cfg.train.crop_s,
                "threads": torch.get_num_threads()}
    per_fold: list[dict[str, Any]] = []
    for f in folds:
        arms = ARMS if f in tuned_folds else ARMS[:2]
        per_fold.append(run_whisper_fold(RavdessFold(f, store, ids, labels, classes), cfg, runs, arms, pair_epochs,
                                         tuned_epochs, tuned_lr))
        log.info("fold %d done (%.0f s since start)", f, time.time() - t0)
        result, md = report(per_fold, classes, command, time.time() - t0, settings)
        write_json(out / "per_fold.json", per_fold)
        write_json(out / "results.json", result)
        atomic_write_text(out / "results.md", md)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.eval.whisper_pairwise", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="results directory (results.json, results.md, per_fold.json)")
    p.add_argument("--runs", default="runs/protocol_whisper", help="where the pretraining runs go")
    p.add_argument("--cache", default="cache/ravdess_audio", help="RAVDESS audio cache (its index names the audio files)")
    p.add_argument("--au-csv", default="../shared/data/ravdess/openface_au/au_audio_per_clip.csv", help="RAVDESS per-clip AUs")
    p.add_argument("--folds", default="1-5", help="folds to run, e.g. 1-5 or 1")
    p.add_argument("--tuned-folds", help="folds of those that also run w_tuned1_pair (default: all of --folds)")
    p.add_argument("--pair-epochs", type=int, default=30, help="pretraining epochs of the MLP over frozen features")
    p.add_argument("--tuned-epochs", type=int, default=6, help="pretraining epochs of the tuned trunk")
    p.add_argument("--tuned-lr", type=float, default=3e-4,
                   help="learning rate of the tuned trunk's run (train.lr; one rate for the tuned layer, projectors and AU MLP)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    add_config_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from training.train import parse_actors

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    command = "python -m training.eval.whisper_pairwise " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args.config, args.overrides)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)
        folds = parse_actors(args.folds)
        tuned = parse_actors(args.tuned_folds) if args.tuned_folds else folds
        result = run(cfg, args.cache, args.au_csv, out, Path(args.runs), folds, tuned, args.pair_epochs, args.tuned_epochs,
                     args.tuned_lr, command)
    except EdgeMerError as exc:
        print(f"training.eval.whisper_pairwise: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
