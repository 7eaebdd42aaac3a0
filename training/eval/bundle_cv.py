"""Bundle-level cross-validation: the headline accuracy of edge-mer, the bundle as it ships run
through the runtime on people it has never seen.

    python -m training.eval.bundle_cv --data ../shared/data --out results/bundle_cv

For each speaker-independent fold (default: RAVDESS actors 01-20 in 5 folds of 4 consecutive
actors), a complete bundle is built from the 16 training actors only. ``--encoder whisper`` (the
shipped default's recipe) builds it with the very ``python -m export.build_bundle --sessions``
call of ``export/make_default_bundle.py`` (:func:`build_published_fold`: the published Whisper
encoder frozen, the fold's training actors as the labels, heads fitted on the runtime's own window
features of each actor's session, calibration, INT8 under the 1-point rule); the other arms
(``pretrained``: label-free pretraining on their audio with the release config; ``logmel_stats``;
``random``) by :func:`export.audio_bundle.build_audio_bundle`, with the same head fit. Each test actor is then replayed through
``edge-mer run --audio FILE --fast`` (the real source -> windower -> stages -> fusion -> sink path,
shipped settings: speech detection, per-user statistics and smoothing on) in two conditions:

- *one recording per actor*: their 60 clips joined in a random order with 0.5 s pauses, one run;
- *fresh runs*: each clip alone, a new run each (cold start: nothing known about the person).

Scores: clip UA (a clip's prediction is the arg-max of the mean probabilities of the windows that
overlap it most; a clip without any such window counts wrong), window UA, WA, confusion matrix,
expected calibration error (ECE, 15 bins) of the windows' raw and smoothed probabilities and of
the clips' mean probabilities, and the cold-start curve (clip UA over the clips that start in the
first 15, 30, 60, 120 s of the person's recording, and after). The smoothing time constant is
also re-applied to the recorded raw probabilities (the runtime's own Smoother) for a few values,
to choose the default. ``--encoder logmel_stats`` measures the log-mel statistics floor through
exactly the same path.

Any actor set and data root: ``--actors 1-24 --folds 21-24`` style fold lists via ``--test``
(e.g. ``--test 21-24 --train 1-20`` for speakers never seen by anything).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge_mer.errors import EdgeMerError
from edge_mer.io import atomic_write_bytes, atomic_write_text
from training.eval.metrics import accuracy, confusion, expected_calibration_error, mean_std, unweighted_accuracy
from training.eval.recordings import LABELS, LabelledClip, Span, ravdess_speech_clips, speaker_recording
from training.eval.scoring import clip_predictions, window_labels

log = logging.getLogger("training.eval.bundle_cv")

COLD_BINS = ((0, 15), (15, 30), (30, 60), (60, 120), (120, None))  # seconds into the person's recording
TAUS = (0.0, 0.5, 1.0, 2.0, 4.0)
TEST_SEED_OFFSET = 1000  # test recordings use another order than the training actors' recordings


def parse_actor_list(text: str) -> list[int]:
    """``"1-4,9"`` -> ``[1, 2, 3, 4, 9]`` (the trainer's ``--actors`` syntax); empty is an error."""
    from training.train import parse_actors

    out = parse_actors(text)
    if not out:
        raise EdgeMerError(f"empty actor list {text!r}")
    return out


def default_folds(actors: Sequence[int], size: int = 4) -> list[list[int]]:
    actors = sorted(actors)
    return [actors[i:i + size] for i in range(0, len(actors), size)]


# --------------------------------------------------------------------------- running the runtime


def run_events(bundle: Path, audio: Path, out: Path, overrides: Sequence[str]) -> list[dict]:
    """``edge-mer run --audio AUDIO --fast --bundle BUNDLE --out OUT`` in this process; its events."""
    from edge_mer.cli import main as cli_main

    argv = ["run", "--audio", str(audio), "--fast", "--bundle", str(bundle), "--out", str(out)]
    for o in ("runtime.threads=1", *overrides):
        argv += ["--set", o]
    with contextlib.redirect_stdout(io.StringIO()):
        rc = cli_main(argv)
    if rc != 0:
        raise EdgeMerError(f"edge-mer {' '.join(argv)} failed with exit {rc}")
    with out.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def compact(event: dict) -> list:
    """[t_start, t_end, raw probs, smoothed probs, audio absent reason] of an event (results file)."""
    def r(p: dict) -> list | None:
        return [round(p[label], 4) for label in LABELS] if p else None

    return [event["t_start"], event["t_end"], r(event.get("probs_raw")), r(event.get("probs")),
            event.get("absent", {}).get("audio")]


def _probs(event: dict, key: str) -> np.ndarray | None:
    p = event.get(key) or {}
    return np.array([p[label] for label in LABELS]) if p else None


def score_run(events: Sequence[dict], spans: Sequence[Span], key: str = "probs") -> dict[str, Any]:
    """Clip and window predictions of one run (``key``: ``probs`` smoothed, ``probs_raw``)."""
    windows = [(e["t_start"], e["t_end"], _probs(e, key)) for e in events]
    clips = clip_predictions(windows, spans, LABELS)
    wl = window_labels(windows, spans)
    win = [(lab, p) for lab, (_, _, p) in zip(wl, windows) if lab is not None and p is not None]
    return {"clips": clips, "windows": win,
            "absent": sum(1 for e in events if "audio" in e.get("absent", {})), "events": len(events)}


def resmooth(events: Sequence[dict], tau_s: float) -> list[dict]:
    """The events' raw probabilities smoothed again with ``tau_s`` by the runtime's Smoother
    (which restarts after a window without prediction, as the runtime does)."""
    from edge_mer.stream.fusion import Smoother

    sm = Smoother(tau_s)
    out = []
    for e in events:
        p = _probs(e, "probs_raw")
        if p is None:
            sm.reset()
            out.append({**e, "probs": {}})
        else:
            s = sm.update(e["t_end"], p)
            out.append({**e, "probs": dict(zip(LABELS, s.tolist()))})
    return out


def summarise_predictions(clips: Sequence[dict], windows: Sequence[tuple[str, np.ndarray]]) -> dict[str, Any]:
    y = [c["label"] for c in clips]
    pred = [c["pred"] for c in clips]
    out = {"clip_ua": round(unweighted_accuracy(y, pred), 2), "clip_wa": round(accuracy(y, pred), 2),
           "clips": len(clips), "clips_without_prediction": sum(p is None for p in pred)}
    with_p = [c for c in clips if c["probs"] is not None]
    if with_p:
        out["clip_ece"] = round(expected_calibration_error(np.array([c["probs"] for c in with_p]),
                                                           np.array([LABELS.index(c["label"]) for c in with_p])), 4)
    if windows:
        wy = [lab for lab, _ in windows]
        wp = np.stack([p for _, p in windows])
        out["window_ua"] = round(unweighted_accuracy(wy, [LABELS[i] for i in wp.argmax(axis=1)]), 2)
        out["window_ece"] = round(expected_calibration_error(wp, np.array([LABELS.index(v) for v in wy])), 4)
        out["windows"] = len(windows)
    return out


def cold_start_curve(clips: Sequence[dict]) -> dict[str, float]:
    out = {}
    for lo, hi in COLD_BINS:
        sel = [c for c in clips if c["t_start_s"] >= lo and (hi is None or c["t_start_s"] < hi)]
        name = f"{lo}-{hi} s" if hi is not None else f">= {lo} s"
        out[name] = round(unweighted_accuracy([c["label"] for c in sel], [c["pred"] for c in sel]), 2) if sel else None
    first30 = [c for c in clips if c["t_start_s"] < 30]
    out["first 30 s"] = round(unweighted_accuracy([c["label"] for c in first30], [c["pred"] for c in first30]), 2)
    return out


# --------------------------------------------------------------------------- one fold


def published_audio_run(work: Path, data: Path) -> tuple[Path, Path]:
    """(run, cache): the published Whisper tiny.en encoder, frozen, as a ``training.train`` run
    (``configs/published_frozen.toml``, audio only, ``train.epochs = 0``), over a RAVDESS audio cache
    (its inputs serve the export's parity checks only). Nothing is learned, so one run serves every fold."""
    from export.audio_bundle import ravdess_audio_cache
    from export.make_default_bundle import published_run

    cache = ravdess_audio_cache(work, data)
    run = published_run(cache, work / "runs" / "published_frozen_audio", ['train.modalities=["audio"]'])
    return run, cache


def build_published_fold(bundle: Path, k: int, train_actors: Sequence[int], args, clips: Sequence[LabelledClip]) -> dict:
    """Fold ``k``'s bundle by ``python -m export.build_bundle --sessions`` on its training actors only."""
    from export.build_bundle import build_run_bundle
    from export.make_default_bundle import LABELS as BUNDLE_LABELS
    from export.make_default_bundle import write_labels

    work = Path(args.work)
    run, cache = published_audio_run(work, Path(args.data))
    suffix = f"_{args.clips_per_actor}clips" if args.clips_per_actor else ""
    labels = write_labels([c for c in clips if c.speaker in set(train_actors)], work / "labels" / f"fold{k}{suffix}.csv")
    return build_run_bundle(run, cache, labels, bundle, name=f"bundle-cv-fold{k}-whisper", label_set=BUNDLE_LABELS,
                            sessions=True, session_seed=args.seed,
                            sessions_dir=work / "recordings" / f"seed{args.seed}_pause0.5{suffix}",
                            command=f"python -m export.build_bundle --run {run} --cache {cache} --labels {labels} --out {bundle} "
                                    f"--label-set {','.join(BUNDLE_LABELS)} --sessions")


def run_fold(k: int, train: list[int], test: list[int], args, clips: list[LabelledClip]) -> dict[str, Any]:
    from edge_mer.config import load_config
    from export.audio_bundle import AudioBundlePlan, build_audio_bundle

    work = Path(args.work)
    fold_dir = work / f"fold{k}_{args.encoder}"
    bundle = fold_dir / "bundle"
    t0 = time.time()
    if not (args.reuse and (bundle / "manifest.json").is_file()):
        if args.encoder == "whisper":  # the shipped default's recipe: the very build_bundle call of make_default_bundle
            build_published_fold(bundle, k, train, args, clips)
        else:
            plan = AudioBundlePlan(data=Path(args.data), actors=tuple(train), work=work, encoder=args.encoder, seed=args.seed,
                                   clips_per_actor=args.clips_per_actor, name=f"bundle-cv-fold{k}-{args.encoder}")
            build_audio_bundle(bundle, plan, load_config(args.config, args.build_set))
    build_s = time.time() - t0
    runs = fold_dir / "events"
    runs.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"fold": k, "train_actors": train, "test_actors": test, "build_s": round(build_s)}
    # One recording per test actor.
    cont_events, cont_spans = {}, {}
    for a in test:
        folder = f"test_seed{args.seed + TEST_SEED_OFFSET}" + (f"_{args.clips_per_actor}clips" if args.clips_per_actor else "")
        rec = speaker_recording(clips, a, work / "recordings" / folder / f"actor{a:02d}.wav", args.seed + TEST_SEED_OFFSET)
        cont_events[a] = run_events(bundle, rec.path, runs / f"actor{a:02d}.jsonl", args.set)
        cont_spans[a] = rec.spans
    # Each clip alone, a fresh run.
    fresh: list[tuple[list[dict], list[Span]]] = []
    if not args.no_fresh:
        from edge_mer.media import probe

        for c in [c for c in clips if c.speaker in test]:
            fresh.append((run_events(bundle, c.path, runs / "fresh.jsonl", args.set), [Span(c, 0.0, probe(c.path).duration_s)]))
    result["seconds"] = round(time.time() - t0)
    result["replay_s"] = result["seconds"] - result["build_s"]
    result["raw"] = {"continuous": {str(a): {"events": [compact(e) for e in cont_events[a]],
                                             "spans": [[s.clip.clip_id, s.clip.label, round(s.t_start_s, 3), round(s.t_end_s, 3)]
                                                       for s in cont_spans[a]]} for a in test},
                     "fresh": [{"events": [compact(e) for e in ev], "clip": sp[0].clip.clip_id, "label": sp[0].clip.label}
                               for ev, sp in fresh]}
    result["scores"] = score_fold(cont_events, cont_spans, fresh)
    log.info("fold %d (%s): build %d s, replays %d s: %s", k, args.encoder, result["build_s"], result["replay_s"],
             json.dumps(result["scores"]["continuous"]["shipped"]))
    return result


def score_fold(cont_events: dict, cont_spans: dict, fresh: list) -> dict[str, Any]:
    scores: dict[str, Any] = {"continuous": {}, "fresh": {}}
    for name, key in (("shipped", "probs"), ("raw", "probs_raw")):
        runs = [score_run(cont_events[a], cont_spans[a], key) for a in cont_events]
        clips = [c for r in runs for c in r["clips"]]
        wins = [w for r in runs for w in r["windows"]]
        scores["continuous"][name] = summarise_predictions(clips, wins)
        if name == "shipped":
            scores["continuous"]["cold_start"] = cold_start_curve(clips)
            scores["continuous"]["confusion"] = confusion([c["label"] for c in clips], [c["pred"] for c in clips], LABELS)
            scores["continuous"]["audio_absent_windows"] = sum(r["absent"] for r in runs)
            scores["continuous"]["events"] = sum(r["events"] for r in runs)
    scores["continuous"]["smoothing_tau_s"] = {}
    for tau in TAUS:
        runs = [score_run(resmooth(cont_events[a], tau), cont_spans[a]) for a in cont_events]
        scores["continuous"]["smoothing_tau_s"][str(tau)] = summarise_predictions(
            [c for r in runs for c in r["clips"]], [w for r in runs for w in r["windows"]])
    if fresh:
        for name, key in (("shipped", "probs"), ("raw", "probs_raw")):
            runs = [score_run(ev, sp, key) for ev, sp in fresh]
            scores["fresh"][name] = summarise_predictions([c for r in runs for c in r["clips"]], [w for r in runs for w in r["windows"]])
    return scores


# --------------------------------------------------------------------------- summary


def summarise(folds: list[dict], args) -> dict[str, Any]:
    def over(path: Sequence[str]) -> dict[str, float]:
        vals = []
        for f in folds:
            node: Any = f["scores"]
            for p in path:
                node = node.get(p, {}) if isinstance(node, dict) else {}
            vals.append(node if isinstance(node, (int, float)) else float("nan"))
        return mean_std(vals)

    out: dict[str, Any] = {}
    for cond in ("continuous", "fresh"):
        for name in ("shipped", "raw"):
            for metric in ("clip_ua", "window_ua", "clip_wa", "window_ece", "clip_ece"):
                out[f"{cond}/{name}/{metric}"] = over((cond, name, metric))
    for b in folds[0]["scores"]["continuous"]["cold_start"]:
        out[f"cold_start/{b}"] = over(("continuous", "cold_start", b))
    for tau in TAUS:
        out[f"smoothing/{tau}/clip_ua"] = over(("continuous", "smoothing_tau_s", str(tau), "clip_ua"))
        out[f"smoothing/{tau}/window_ece"] = over(("continuous", "smoothing_tau_s", str(tau), "window_ece"))
    total = np.sum([np.array(f["scores"]["continuous"]["confusion"]) for f in folds], axis=0)
    out["confusion"] = total.tolist()
    return out


def markdown(summary: dict, folds: list[dict], args, seconds: float) -> str:
    def ms(key: str) -> str:
        v = summary[key]
        return f"{v['mean']:.1f} ± {v['std']:.1f}" if v["mean"] == v["mean"] else "n/a"

    def ms3(key: str) -> str:
        v = summary[key]
        return f"{v['mean']:.3f} ± {v['std']:.3f}" if v["mean"] == v["mean"] else "n/a"

    lines = [f"# Bundle-level cross-validation: encoder `{args.encoder}`", "",
             f"Command: `python -m training.eval.bundle_cv {' '.join(args.argv)}` ({seconds / 60:.0f} min on this machine).",
             f"Folds (test actors): {', '.join(str(f['test_actors']) for f in folds)}; each fold's bundle built from the other "
             "actors only; test actors replayed through `edge-mer run --audio FILE --fast` with shipped settings"
             + (f" plus `--set {' '.join(args.set)}`" if args.set else "") + ".", "",
             "| condition | clip UA % | window UA % | clip WA % | window ECE | clip ECE |", "|---|---|---|---|---|---|"]
    for cond, title in (("continuous", "one recording per actor"), ("fresh", "each clip a fresh run")):
        for name, sub in (("shipped", "`probs` (as shipped)"), ("raw", "`probs_raw` (unsmoothed)")):
            if summary[f"{cond}/{name}/clip_ua"]["mean"] == summary[f"{cond}/{name}/clip_ua"]["mean"]:
                lines.append(f"| {title}, {sub} | {ms(f'{cond}/{name}/clip_ua')} | {ms(f'{cond}/{name}/window_ua')} | "
                             f"{ms(f'{cond}/{name}/clip_wa')} | {ms3(f'{cond}/{name}/window_ece')} | {ms3(f'{cond}/{name}/clip_ece')} |")
    lines += ["", "Cold start (one recording per actor): clip UA % over the clips starting in each span of the person's recording:", "",
              "| " + " | ".join(b for b in folds[0]["scores"]["continuous"]["cold_start"]) + " |",
              "|" + "---|" * len(folds[0]["scores"]["continuous"]["cold_start"]),
              "| " + " | ".join(ms(f"cold_start/{b}") for b in folds[0]["scores"]["continuous"]["cold_start"]) + " |", "",
              "Smoothing time constant re-applied to the same runs' raw probabilities (runtime Smoother):", "",
              "| runtime.smoothing_tau_s | " + " | ".join(str(t) for t in TAUS) + " |", "|---|" + "---|" * len(TAUS),
              "| clip UA % | " + " | ".join(ms(f"smoothing/{t}/clip_ua") for t in TAUS) + " |",
              "| window ECE | " + " | ".join(ms3(f"smoothing/{t}/window_ece") for t in TAUS) + " |", "",
              "Per fold (one recording per actor, shipped): " + ", ".join(
                  f"fold {f['fold']} {f['scores']['continuous']['shipped']['clip_ua']:.1f}" for f in folds), "",
              "Confusion (all folds, one recording per actor; rows true, columns predicted, last column no prediction):", "",
              "| | " + " | ".join(LABELS) + " | none |", "|---|" + "---|" * (len(LABELS) + 1)]
    for label, row in zip(LABELS, summary["confusion"]):
        lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def save_plots(summary: dict, folds: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.eval.probe import save_confusion_png

    bins = list(folds[0]["scores"]["continuous"]["cold_start"])[:-1]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for f in folds:
        ax.plot(bins, [f["scores"]["continuous"]["cold_start"][b] or np.nan for b in bins], color="0.7", lw=1)
    ax.plot(bins, [summary[f"cold_start/{b}"]["mean"] for b in bins], color="C0", lw=2, marker="o", label="mean over folds")
    ax.axhline(100 / len(LABELS), color="C3", ls=":", label="chance")
    ax.set_ylabel("clip UA %")
    ax.set_xlabel("clips starting in this span of the person's recording")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(out / "cold_start.png", buf.getvalue())
    cm = np.array(summary["confusion"])[:, :len(LABELS)]
    save_confusion_png(cm, list(LABELS), out / "confusion.png", "bundle-level CV, one recording per actor")


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.eval.bundle_cv", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data", help="folder holding ravdess/audio_speech (and openface_au)")
    p.add_argument("--actors", default="1-20", help="actors taking part (default 1-20: 5 folds of 4)")
    p.add_argument("--test", action="append", default=[],
                   help="a fold's test actors, e.g. 17-20 (repeatable; default: consecutive folds of 4 over --actors)")
    p.add_argument("--train", help="training actors for every fold (default: --actors minus the fold's test actors)")
    p.add_argument("--folds", help="only these folds of the default split, e.g. 5 or 1,3")
    p.add_argument("--encoder", default="pretrained",
                   help="whisper (the shipped default's recipe), pretrained (label-free TCN), logmel_stats (the floor) or random")
    p.add_argument("--work", default="runs/bundle_cv", help="fold bundles, pretraining runs, recordings, events")
    p.add_argument("--out", default="results/bundle_cv", help="results folder (a sub-folder per encoder)")
    p.add_argument("--seed", type=int, default=0, help="stream orders (training recordings seed, test seed + 1000)")
    p.add_argument("--config", action="append", default=[], help="config file for the bundle build (repeatable)")
    p.add_argument("--build-set", action="append", default=[], metavar="KEY=VALUE", help="config override for the build")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="runtime override for the replays")
    p.add_argument("--reuse", action="store_true", help="reuse fold bundles already built in --work")
    p.add_argument("--no-fresh", action="store_true", help="skip the fresh-run (single clip) condition")
    p.add_argument("--clips-per-actor", type=int, default=0, help="use that many clips per actor (quick runs; 0 = all)")
    p.add_argument("--jobs", type=int, default=1, help="folds run side by side in this many processes (default 1; "
                   "each replay uses one ONNX Runtime thread, so up to one job per core)")
    return p


def _log_to_stderr() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    # Our progress at INFO even when an imported library configured logging first.
    for name in ("training.eval.bundle_cv", "export.audio_bundle"):
        logging.getLogger(name).setLevel(logging.INFO)


def run_folds(folds: Sequence[tuple[int, list[int], list[int]]], args, clips: list[LabelledClip]) -> list[dict[str, Any]]:
    """:func:`run_fold` for each ``(k, train, test)``, in ``args.jobs`` processes (results in fold
    order). What the folds share (the published run and its cache) is made once, first; the
    training actors' session recordings that several folds write are written atomically with the
    same content, so two folds writing one is harmless."""
    if args.jobs <= 1 or len(folds) <= 1:
        return [run_fold(k, train, test, args, clips) for k, train, test in folds]
    import concurrent.futures
    import multiprocessing

    if args.encoder == "whisper":
        published_audio_run(Path(args.work), Path(args.data))
    ctx = multiprocessing.get_context("spawn")  # no forked ONNX Runtime or torch thread pools
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(args.jobs, len(folds)), mp_context=ctx,
                                                initializer=_log_to_stderr) as pool:
        futures = [pool.submit(run_fold, k, train, test, args, clips) for k, train, test in folds]
        return [f.result() for f in futures]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    _log_to_stderr()
    if args.jobs < 1:
        print(f"bundle_cv: --jobs must be >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    t0 = time.time()
    try:
        actors = parse_actor_list(args.actors)
        tests = [parse_actor_list(t) for t in args.test] or default_folds(actors)
        numbered = list(enumerate(tests, start=1))
        if args.folds:
            wanted = set(parse_actor_list(args.folds))
            numbered = [(k, t) for k, t in numbered if k in wanted]
        all_actors = sorted(set(actors) | {a for t in tests for a in t} | set(parse_actor_list(args.train) if args.train else []))
        clips = ravdess_speech_clips(args.data, all_actors, args.clips_per_actor)
        plan = []
        for k, test in numbered:
            train = parse_actor_list(args.train) if args.train else [a for a in actors if a not in test]
            if set(train) & set(test):
                raise EdgeMerError(f"fold {k}: actors {sorted(set(train) & set(test))} are in both train and test")
            plan.append((k, train, test))
        folds = run_folds(plan, args, clips)
    except EdgeMerError as exc:
        print(f"bundle_cv: {exc}", file=sys.stderr)
        return exc.exit_code
    seconds = time.time() - t0
    summary = summarise(folds, args)
    out = Path(args.out) / args.encoder
    out.mkdir(parents=True, exist_ok=True)
    result = {"command": "python -m training.eval.bundle_cv " + " ".join(args.argv), "seconds": round(seconds),
              "encoder": args.encoder, "summary": summary,
              "folds": [{k: v for k, v in f.items() if k != "raw"} for f in folds]}
    atomic_write_text(out / "results.json", json.dumps(result, indent=1, default=float) + "\n")
    import gzip

    # Every window's probabilities, so other mappings and smoothings can be scored later.
    atomic_write_bytes(out / "events.json.gz", gzip.compress(json.dumps([f["raw"] for f in folds]).encode(), mtime=0))
    md = markdown(summary, folds, args, seconds)
    atomic_write_text(out / "results.md", md)
    save_plots(summary, folds, out)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
