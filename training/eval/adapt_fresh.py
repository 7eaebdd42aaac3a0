"""A person's later sessions with their user bundle, measured end to end: ``python -m training.eval.adapt_fresh``.

The k-curve (``python -m training.eval.adapt_curve``) scores the adaptation on the same replay it
was fitted on, and simulates fresh sessions from that replay's windows. This measures the product
path itself, with no simulation, on people the bundle has never seen:

1. for each speaker-independent RAVDESS fold, the fold's bundle of the bundle-level evaluation
   (``python -m training.eval.bundle_cv``: built from the 16 training actors only);
2. per test actor, k clips per label (neutral: at most 3 of its 4; one draw) are joined into an
   *adaptation recording* (random order, 0.5 s pauses): the person's guided session (a clip in
   which the speech detector hears no speech is dropped, as ``edge-mer adapt`` refuses it);
3. ``edge-mer adapt`` (:func:`edge_mer.adapt.adapt`, its replay and fit, the moments being the
   clips' time ranges) writes a user bundle from that recording alone;
4. every other clip of the person is a *later session*: each one alone, a fresh ``edge-mer run
   --audio CLIP --fast``, with the fold bundle and with the user bundle. Clip prediction: arg-max of
   the mean smoothed window probabilities, as in the bundle-level evaluation's fresh runs.

Paired over actors: mean difference, Wilcoxon signed-rank p, wins/losses.

    python -m training.eval.adapt_fresh --work runs/bundle_cv --data ../shared/data --out results/adapt_fresh
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_mer.errors import EdgeMerError

log = logging.getLogger("training.eval.adapt_fresh")


def actor_sessions(bundle_dir: Path, clips, actor: int, k: int, seed: int, work: Path, max_scored: int = 0) -> dict[str, Any]:
    """Adapt on ``k`` clips per label of ``actor``, then each other clip alone with both bundles
    (``max_scored`` > 0: only that many of them, spread over the labels; tests)."""
    from edge_mer.adapt import Moment, adapt, moment_of, replay_events
    from edge_mer.bundle import Bundle
    from edge_mer.media import probe
    from training.eval.bundle_cv import run_events, score_run
    from training.eval.metrics import unweighted_accuracy
    from training.eval.recordings import Span, write_recording

    labels = Bundle.load(bundle_dir).labels
    rng = np.random.default_rng(seed)
    mine = sorted((c for c in clips if c.speaker == actor), key=lambda c: c.clip_id)
    chosen = []
    for lab in labels:
        pool = [c for c in mine if c.label == lab]
        chosen += [pool[i] for i in rng.choice(len(pool), size=min(k, len(pool) - 1), replace=False)]
    order = rng.permutation(len(chosen))
    work.mkdir(parents=True, exist_ok=True)
    rec = write_recording([chosen[i] for i in order], work / "adaptation.wav", pause_s=0.5)
    moments = [Moment(rec.path, s.t_start_s, s.t_end_s, s.clip.label, j) for j, s in enumerate(rec.spans)]
    # A clip in which the speech detector hears no speech reaches no head: edge-mer adapt refuses
    # such a moment (one line naming it), and a person would record it again; here it is dropped.
    overrides = ["runtime.threads=1"]
    events = replay_events(bundle_dir, rec.path, overrides, has_video=False)
    heard = [m for m in moments if any(e.get("features") and moment_of(e["t_start"], e["t_end"], [m]) for e in events)]
    user = work / "user_bundle"
    record = adapt(bundle_dir, heard, user, overrides, source="file", name=f"actor{actor:02d}",
                   events_by_media={rec.path: events})
    taken = {c.clip_id for c in chosen}
    out: dict[str, Any] = {"labelled_clips": len(chosen), "dropped_no_speech": len(moments) - len(heard),
                           "adaptation_s": round(rec.spans[-1].t_end_s, 1),
                           "lambda": record["heads"].get("audio", {}).get("lam"),
                           "user_statistics_windows": record["heads"].get("audio", {}).get("user_statistics_windows")}
    scored = [c for c in mine if c.clip_id not in taken]
    if max_scored:
        scored = sorted(scored, key=lambda c: (labels.index(c.label), c.clip_id))[:: max(1, len(scored) // max_scored)][:max_scored]
    for name, b in (("unadapted", bundle_dir), ("adapted", user)):
        y, pred = [], []
        for c in scored:
            events = run_events(b, c.path, work / f"{name}.jsonl", [])
            clip = score_run(events, [Span(c, 0.0, probe(c.path).duration_s)])["clips"][0]
            y.append(clip["label"])
            pred.append(clip["pred"])
        out[name] = unweighted_accuracy(y, pred)
        out["scored_clips"] = len(y)
    return out


def markdown(per_actor: dict[str, dict], summary: dict, argv, seconds: float) -> str:
    lines = ["# `edge-mer adapt`, then later sessions: each clip alone, a fresh run", "",
             f"Command: `python -m training.eval.adapt_fresh {' '.join(argv)}` ({seconds / 60:.0f} min here).",
             "Per unseen RAVDESS actor (fold bundles of `python -m training.eval.bundle_cv --encoder whisper`): "
             f"{summary['k']} clips per label (neutral at most 3) joined into one adaptation recording, `edge-mer adapt` "
             "on it, then each of the person's other clips alone through a fresh `edge-mer run --audio CLIP --fast`, "
             "with the fold bundle and with the user bundle. Clip UA %, 8 labels.", "",
             "| | unadapted | adapted | adapted − unadapted (Wilcoxon p, wins/losses over actors) |", "|---|---:|---:|---:|",
             f"| {summary['actors']} actors | {summary['unadapted']['mean']:.1f} ± {summary['unadapted']['std']:.1f} | "
             f"{summary['adapted']['mean']:.1f} ± {summary['adapted']['std']:.1f} | {summary['diff']['mean']:+.1f} "
             f"(p {'n/a' if summary['diff']['wilcoxon_p'] is None else format(summary['diff']['wilcoxon_p'], '.2g')}, "
             f"{summary['diff']['wins']}/{summary['diff']['losses']}) |", "",
             "| actor | labelled clips (without speech, dropped) | adaptation recording (s) | scored clips | unadapted | adapted |",
             "|---|---:|---:|---:|---:|---:|"]
    for a, r in per_actor.items():
        lines.append(f"| {a} | {r['labelled_clips']} ({r['dropped_no_speech']}) | {r['adaptation_s']} | {r['scored_clips']} | "
                     f"{r['unadapted']:.1f} | {r['adapted']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from edge_mer.io import atomic_write_text
    from edge_mer.stream.app import one_blas_thread
    from training.eval.adapt_curve import fold_bundle, wilcoxon
    from training.eval.bundle_cv import default_folds, parse_actor_list
    from training.eval.recordings import ravdess_speech_clips

    p = argparse.ArgumentParser(prog="python -m training.eval.adapt_fresh", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="runs/bundle_cv", help="bundle_cv's work directory (fold bundles)")
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--encoder", default="whisper")
    p.add_argument("--folds", default="1-5")
    p.add_argument("--k", type=int, default=5, help="labelled clips per label (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    t0 = time.time()
    try:
        clips = ravdess_speech_clips(args.data)
        folds = default_folds(sorted({c.speaker for c in clips}))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        per_actor: dict[str, dict] = {}
        with one_blas_thread():
            for f in parse_actor_list(args.folds):
                bundle_dir = fold_bundle(args.work, args.encoder, f)
                for a in folds[f - 1]:
                    per_actor[f"{a:02d}"] = actor_sessions(bundle_dir, clips, a, args.k, args.seed + a,
                                                           Path(args.work) / "adapt_fresh" / f"actor{a:02d}")
                    r = per_actor[f"{a:02d}"]
                    print(f"fold {f} actor {a:02d}: unadapted {r['unadapted']:.1f}, adapted {r['adapted']:.1f}", flush=True)
        u = np.array([r["unadapted"] for r in per_actor.values()])
        v = np.array([r["adapted"] for r in per_actor.values()])
        d = v - u
        summary = {"k": args.k, "actors": len(per_actor),
                   "unadapted": {"mean": round(float(u.mean()), 2), "std": round(float(u.std()), 2)},
                   "adapted": {"mean": round(float(v.mean()), 2), "std": round(float(v.std()), 2)},
                   "diff": {"mean": round(float(d.mean()), 2), "wilcoxon_p": wilcoxon(list(d)),
                            "wins": int((d > 0).sum()), "losses": int((d < 0).sum())}}
        seconds = time.time() - t0
        atomic_write_text(out / "results.json", json.dumps({"summary": summary, "per_actor": per_actor, "argv": argv,
                                                            "seconds": round(seconds)}, indent=1, default=float) + "\n")
        md = markdown(per_actor, summary, argv, seconds)
        atomic_write_text(out / "results.md", md)
        print(md, end="")
    except (EdgeMerError, ValueError) as exc:
        print(f"training.eval.adapt_fresh: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
