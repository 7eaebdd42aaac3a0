"""Condition (c) of the RAVDESS protocol on one fold, with config overrides: a quick way to try a
pretraining setting before spending a full 5-fold run on it (docs/RESULTS.md, "What was tried").

    python -m training.eval.fold_sweep --fold 5 --tag t05 --set loss.temperature=0.5 \\
        --out results/ravdess/sweep.jsonl

Pretrains audio <-> AU on the fold's training actors (label-free; ``--actors``, ``--test-actors``
pick any actor set and fold), fits linear probes on their
labels and scores the 4 test actors: one JSON line per run (UA % on audio, AU and audio+AU
features). Choosing settings by these figures tunes on that fold's test actors: report it so.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


from edge_mer.config import load_config
from training.cache import open_cache
from training.checkpoint import load_encoders
from training.data.ravdess import EMOTIONS
from training.datasets import actor_of, load_action_unit_vectors, load_cache_store, normalise_per_speaker
from training.eval.protocol import FOLDS, CPU, RavdessFold, fold_data, logmel_stats, random_encoders, with_loss, with_train
from training.train import parse_actors, pretrain


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fold", type=int, required=True,
                   help="RAVDESS fold number: of the default split (test actors 4k-3..4k), or a label for --test-actors")
    p.add_argument("--actors", default="1-20", help="the actors used, e.g. 1-20 (the others are left out)")
    p.add_argument("--test-actors", help="this fold's test actors, e.g. 17-20 (default: the default split's fold)")
    p.add_argument("--seed", type=int, help="pretraining seed (default: the config's train.seed)")
    p.add_argument("--tag", required=True, help="name of this setting in the output")
    p.add_argument("--config", action="append", default=["configs/ravdess_protocol.toml"])
    p.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    p.add_argument("--cache", default="cache/ravdess_audio")
    p.add_argument("--au-csv", default="../shared/data/ravdess/openface_au/au_audio_per_clip.csv")
    p.add_argument("--runs", default="runs/sweep")
    p.add_argument("--out", default="results/ravdess/sweep.jsonl", help="JSON lines, appended")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--speaker-norm", action="store_true",
                   help="standardise log-mels and AUs per speaker before pretraining and probing (label-free)")
    p.add_argument("--baselines", action="store_true", help="also score random init and log-mel statistics")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    if args.seed is not None:
        cfg = with_train(cfg, seed=args.seed)
    actors = set(parse_actors(args.actors))
    test_actors = parse_actors(args.test_actors) if args.test_actors else FOLDS[args.fold]
    store, ids = load_cache_store(args.cache, ("audio",))
    ids = [i for i in ids if i.startswith("ravdess/") and actor_of(i) in actors]
    store.vectors["au"] = load_action_unit_vectors(args.au_csv, ids)
    ids = [i for i in ids if i in store.vectors["au"]]
    if args.speaker_norm:
        store = normalise_per_speaker(store, {i: f"actor{actor_of(i):02d}" for i in ids})
    labels = open_cache(args.cache).labels()  # for the probes only; pretrain() never sees them
    fold = RavdessFold(args.fold, store, [i for i in ids if i in labels], labels, list(EMOTIONS), test_actors)
    data = fold_data(fold, cfg.train.seed)
    t0 = time.time()
    run_dir = Path(args.runs) / f"{args.tag}_fold{args.fold}"
    pretrain(with_loss(with_train(cfg, modalities=("audio", "au")), pairs=("audio-au",)), data, run_dir,
             resume=False, info=CPU)
    enc = load_encoders(run_dir)
    a_tr, a_te = fold.feats(enc, ("audio",))
    u_tr, u_te = fold.feats(enc, ("au",))
    ua = {name: round(fold.probe(name, tr, te)["ua"], 2) for name, (tr, te) in
          {"audio": (a_tr, a_te), "au": (u_tr, u_te), "audio+au": (np.hstack([a_tr, u_tr]), np.hstack([a_te, u_te]))}.items()}
    if args.baselines:
        r_tr, r_te = fold.feats(random_encoders(cfg, ("audio",)), ("audio",))
        s_tr, s_te = logmel_stats(store, fold.train_ids), logmel_stats(store, fold.test_ids)
        au_tr = np.stack([store.vectors["au"][i] for i in fold.train_ids])
        au_te = np.stack([store.vectors["au"][i] for i in fold.test_ids])
        ua.update({name: round(fold.probe(name, tr, te)["ua"], 2) for name, (tr, te) in {
            "random_audio": (r_tr, r_te), "stats": (s_tr, s_te), "raw_au": (au_tr, au_te),
            "stats+raw_au": (np.hstack([s_tr, au_tr]), np.hstack([s_te, au_te])),
            "random_audio+raw_au": (np.hstack([r_tr, au_tr]), np.hstack([r_te, au_te])),
            "audio+raw_au": (np.hstack([a_tr, au_tr]), np.hstack([a_te, au_te]))}.items()})
    line = {"tag": args.tag, "fold": args.fold, "test_actors": fold.test_actors, "seed": cfg.train.seed, "overrides": args.overrides, "speaker_norm": args.speaker_norm, "ua": ua, "seconds": round(time.time() - t0)}
    print(json.dumps(line))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
