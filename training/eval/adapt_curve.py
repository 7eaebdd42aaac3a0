"""The k-curve of ``edge-mer adapt`` on people the bundle has never seen: ``python -m training.eval.adapt_curve``.

For each speaker-independent RAVDESS fold, the fold's bundle from the bundle-level evaluation
(``python -m training.eval.bundle_cv``: built from the 16 training actors only, exactly as the
default is built) and, per test actor, the same "one recording per person" replay (all 60 clips in
stream order with pauses). Per k in ``--ks`` and draw: k clips per label of that person become
labelled moments (their time spans; neutral has 4 clips, so at most 3 of them), the rest of the
person's clips are scored (clip UA, smoothing as shipped). Three readings of the same replay:

- **unadapted**: the fold bundle as it is;
- **adapted**: ``edge-mer adapt``'s fit (:func:`edge_mer.adapt.fit_heads`: the residual on the
  bundle's head, lambda by held-out moments) applied to the same windows;
- **k clips alone**: the same fit on a uniform prior instead of the bundle's head (a head fitted on
  the k clips only).

The windows' head inputs and probabilities are the runtime's (:func:`edge_mer.adapt.head_windows`
on the replay's ``--emit-features`` events), and the adapted probabilities are what ``edge-mer run
--bundle USER_BUNDLE`` computes (tests/test_adapt.py checks the parity on a real replay). Paired
over (actor, draw): mean difference and a Wilcoxon signed-rank test.

    python -m training.eval.adapt_curve --work runs/bundle_cv --data ../shared/data --out results/adapt_curve
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge_mer.errors import ConfigError, EdgeMerError

log = logging.getLogger("training.eval.adapt_curve")

KS = (1, 3, 5, 10)
READINGS = ("unadapted", "adapted", "residual_only", "alone", "fresh_unadapted", "fresh_adapted", "fresh_residual_only")
PAIRS = (("adapted", "unadapted"), ("adapted", "alone"), ("adapted", "residual_only"), ("fresh_adapted", "fresh_unadapted"),
         ("fresh_adapted", "fresh_residual_only"))


def _score(events: list[dict], spans, probs: dict[int, np.ndarray], skip: set[str], tau: float) -> tuple[list, list]:
    """Clip predictions of the unlabelled clips when window ``k``'s fused probabilities are ``probs[k]``."""
    from training.eval.bundle_cv import resmooth
    from training.eval.recordings import LABELS
    from training.eval.scoring import clip_predictions

    evs = []
    for k, e in enumerate(events):
        p = probs.get(k)
        evs.append({"t_start": e["t_start"], "t_end": e["t_end"],
                    "probs_raw": None if p is None else dict(zip(LABELS, map(float, p)))})
    smoothed = resmooth(evs, tau)
    windows = [(e["t_start"], e["t_end"], np.array([e["probs"][lab] for lab in LABELS]) if e.get("probs") else None)
               for e in smoothed]
    clips = [c for c in clip_predictions(windows, spans, LABELS) if c["clip"] not in skip]
    return [c["label"] for c in clips], [c["pred"] for c in clips]


def clip_windows(events: list[dict], spans, slack_s: float = 0.25) -> list[list[int]]:
    """Per clip: the replay's windows that lie inside it (``slack_s`` of tolerance), or, when none
    does, the windows it owns: what a fresh run on the clip alone would read, approximately."""
    from training.eval.scoring import owner

    inside: list[list[int]] = [[] for _ in spans]
    owned: list[list[int]] = [[] for _ in spans]
    for k, e in enumerate(events):
        i, overlap = owner(e["t_start"], e["t_end"], spans)
        if i is None or overlap <= 0:
            continue
        owned[i].append(k)
        if e["t_start"] >= spans[i].t_start_s - slack_s and e["t_end"] <= spans[i].t_end_s + slack_s:
            inside[i].append(k)
    return [a or b for a, b in zip(inside, owned)]


def _fresh_scores(bundle, events, spans, windows_of, scored, runtime_cfg, tau, start=None, residual=None) -> tuple[list, list]:
    """Each scored clip alone, from a fresh session: the fusion's per-user statistics start again
    (from the population's, or the person's ``start``) for every clip, over its own windows."""
    from edge_mer.adapt import apply_residual
    from edge_mer.modality import Modality
    from edge_mer.stream.fusion import Fusion

    fusion = Fusion.from_bundle(bundle, runtime_cfg)
    if start:
        fusion.start_from(start)
    ys, ps = [], []
    for i in scored:
        fusion.reset_user()
        sub = [events[k] for k in windows_of[i]]
        probs = {}
        for j, e in enumerate(sub):
            feats = {Modality(m): np.asarray(f, np.float32) for m, f in (e.get("features") or {}).items()}
            if not feats:
                continue
            p = fusion.predict(feats).per_modality.get("audio")
            if p is not None:
                probs[j] = p if residual is None else apply_residual(p, fusion.last_inputs["audio"], residual)
        y, pred = _score(sub, [spans[i]], probs, set(), tau)
        ys += y
        ps += pred
    return ys, ps


def actor_curve(bundle, events: list[dict], spans, ks: Sequence[int], draws: int, seed: int, tau: float,
                runtime_cfg) -> dict[str, Any]:
    """Per k: UA of unadapted / adapted / residual only / k-alone per draw for one test actor, in
    the one-recording replay and, each scored clip alone, in fresh sessions."""
    from edge_mer.adapt import Moment, apply_residual, collect_labelled, fit_heads, head_windows, session_stats
    from training.eval.metrics import unweighted_accuracy

    labels = bundle.labels
    hw = head_windows(bundle, events, runtime_cfg)
    if set(hw) != {"audio"}:
        raise ConfigError(f"the fold bundle's heads read {sorted(hw)}; this curve is for the audio-only RAVDESS replays")
    audio = hw["audio"]
    base_probs = {k: p for k, p in zip(audio.event, audio.probs)}
    windows_of = clip_windows(events, spans)
    rng = np.random.default_rng(seed)
    by_label = {lab: [i for i, s in enumerate(spans) if s.clip.label == lab] for lab in labels}
    out: dict[str, Any] = {}
    for k in ks:
        rows = []
        for _ in range(draws):
            chosen = []
            for lab in labels:
                pool = by_label[lab]
                take = min(k, len(pool) - 1)
                chosen += [int(i) for i in rng.choice(pool, size=take, replace=False)]
            moments = [Moment(Path("rec"), spans[i].t_start_s, spans[i].t_end_s, spans[i].clip.label, j)
                       for j, i in enumerate(sorted(chosen))]
            skip = {spans[i].clip.clip_id for i in chosen}
            scored = [i for i in range(len(spans)) if i not in set(chosen)]
            # The person's statistics from the labelled clips only (the adaptation session).
            stats = session_stats(bundle, [events], runtime_cfg, moments)
            seeded = head_windows(bundle, events, runtime_cfg, stats)
            per_head = {"stats": {}, None: {}}  # the labelled windows, read with and without the person's statistics
            collect_labelled(bundle, events, moments, runtime_cfg, per_head["stats"], "rec", stats, seeded)
            collect_labelled(bundle, events, moments, runtime_cfg, per_head[None], "rec", None, hw)
            row: dict[str, Any] = {"labelled_clips": len(chosen)}
            y0, p0 = _score(events, spans, base_probs, skip, tau)
            row["unadapted"] = unweighted_accuracy(y0, p0)
            for name, start, uniform in (("adapted", stats, False), ("residual_only", None, False), ("alone", stats, True)):
                heads, infos = fit_heads(per_head["stats" if start else None], labels, uniform=uniform)
                r = heads["audio"]
                hwin = seeded["audio"] if start else audio
                probs = {e: apply_residual(np.full(len(labels), 1.0 / len(labels)) if uniform else p, z, r)
                         for e, p, z in zip(hwin.event, hwin.probs, hwin.z)}
                y, p = _score(events, spans, probs, skip, tau)
                row[name] = unweighted_accuracy(y, p)
                row[f"{name}_lambda"] = infos["audio"].get("lam")
                if name != "alone":  # a later, fresh session with the user bundle (and without its statistics)
                    y, p = _fresh_scores(bundle, events, spans, windows_of, scored, runtime_cfg, tau, start, r)
                    row[f"fresh_{name}"] = unweighted_accuracy(y, p)
            y, p = _fresh_scores(bundle, events, spans, windows_of, scored, runtime_cfg, tau)
            row["fresh_unadapted"] = unweighted_accuracy(y, p)
            rows.append(row)
        out[str(k)] = rows
    return out


def fold_bundle(work: str | Path, encoder: str, fold: int) -> Path:
    """The bundle-level evaluation's bundle of ``fold`` (built without its test actors)."""
    bundle_dir = Path(work) / f"fold{fold}_{encoder}" / "bundle"
    if not (bundle_dir / "manifest.json").is_file():
        raise ConfigError(f"{bundle_dir}: no fold bundle (python -m training.eval.bundle_cv --encoder {encoder} --work {work} first)")
    return bundle_dir


def wilcoxon(diffs: Sequence[float]) -> float | None:
    try:
        from scipy.stats import wilcoxon as _w
    except ImportError:  # pragma: no cover
        return None
    d = [x for x in diffs if abs(x) > 1e-9]
    if len(d) < 5:
        return None
    return float(_w(d).pvalue)


def summarise(per_actor: dict[str, dict], ks: Sequence[int]) -> dict[str, Any]:
    out = {}
    for k in ks:
        rows = [r for a in per_actor.values() for r in a[str(k)]]
        s: dict[str, Any] = {"pairs": len(rows), "labelled_clips_per_person": float(np.mean([r["labelled_clips"] for r in rows]))}
        for name in READINGS:
            v = np.array([r[name] for r in rows])
            s[name] = {"mean": round(float(v.mean()), 2), "std": round(float(v.std()), 2)}
        for a, b in PAIRS:
            d = [r[a] - r[b] for r in rows]
            s[f"{a}-{b}"] = {"mean": round(float(np.mean(d)), 2), "wilcoxon_p": wilcoxon(d),
                             "wins": sum(x > 0 for x in d), "losses": sum(x < 0 for x in d)}
        out[str(k)] = s
    return out


def markdown(summary: dict, args, seconds: float) -> str:
    lines = ["# `edge-mer adapt`: k labelled clips per label of a new person", "",
             f"Command: `python -m training.eval.adapt_curve {' '.join(args.argv)}` ({seconds / 60:.0f} min here).",
             "Fold bundles of `python -m training.eval.bundle_cv --encoder whisper` (built without the test actors); "
             "each test actor's one-recording replay; k clips per label of that person labelled (neutral: at most 3 of "
             "its 4), the other clips scored: clip UA %, 8 labels, smoothing as shipped; mean ± std over actors x draws; "
             "paired differences with a Wilcoxon signed-rank test over (actor, draw).", "",
             "**One recording per person** (the bundle-level evaluation's continuous replay). *adapted*: what "
             "`edge-mer run --bundle USER_BUNDLE` computes (the person's statistics from the labelled clips start the "
             "per-user normalisation, and the residual on the head); *residual only*: the residual without those "
             "statistics; *k clips alone*: the same fit on a uniform prior (a head from the k clips only).", "",
             "| k per label | labelled clips | unadapted | adapted | residual only | k clips alone | adapted − unadapted (p, wins/losses) | adapted − residual only (p) | adapted − alone (p) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def ms(s, name: str) -> str:
        return f"{s[name]['mean']:.1f} ± {s[name]['std']:.1f}"

    def diff(d, wins: bool = False) -> str:
        p = "n/a" if d["wilcoxon_p"] is None else f"{d['wilcoxon_p']:.2g}"
        return f"{d['mean']:+.1f} (p {p}" + (f", {d['wins']}/{d['losses']})" if wins else ")")

    for k, s in summary.items():
        lines.append(f"| {k} | {s['labelled_clips_per_person']:.0f} | {ms(s, 'unadapted')} | {ms(s, 'adapted')} | "
                     f"{ms(s, 'residual_only')} | {ms(s, 'alone')} | {diff(s['adapted-unadapted'], True)} | "
                     f"{diff(s['adapted-residual_only'])} | {diff(s['adapted-alone'])} |")
    lines += ["", "**Each clip alone, a fresh session** (a later session of the same person: the per-user statistics "
              "start again for every scored clip, from the population's, or, adapted, from the person's). Simulated "
              "from the same replay: each clip's windows that lie inside it, through a fresh fusion and smoother "
              "(`clip_windows`); the bundle-level evaluation's real fresh runs are in results/bundle_cv.", "",
              "| k per label | unadapted | adapted | residual only | adapted − unadapted (p, wins/losses) | adapted − residual only (p) |",
              "|---:|---:|---:|---:|---:|---:|"]
    for k, s in summary.items():
        lines.append(f"| {k} | {ms(s, 'fresh_unadapted')} | {ms(s, 'fresh_adapted')} | {ms(s, 'fresh_residual_only')} | "
                     f"{diff(s['fresh_adapted-fresh_unadapted'], True)} | {diff(s['fresh_adapted-fresh_residual_only'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from edge_mer.adapt import replay_events
    from edge_mer.bundle import Bundle
    from edge_mer.config import load_config
    from edge_mer.io import atomic_write_text
    from edge_mer.stream.app import one_blas_thread
    from training.eval.bundle_cv import TEST_SEED_OFFSET, default_folds, parse_actor_list
    from training.eval.recordings import ravdess_speech_clips, speaker_recording

    p = argparse.ArgumentParser(prog="python -m training.eval.adapt_curve", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="runs/bundle_cv", help="bundle_cv's work directory (fold bundles, recordings)")
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--encoder", default="whisper")
    p.add_argument("--folds", default="1-5")
    p.add_argument("--ks", default=",".join(map(str, KS)))
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t0 = time.time()
    try:
        cfg = load_config()
        clips = ravdess_speech_clips(args.data)
        folds = default_folds(sorted({c.speaker for c in clips}))
        ks = [int(k) for k in args.ks.split(",")]
        per_actor: dict[str, dict] = {}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with one_blas_thread():
            for f in parse_actor_list(args.folds):
                bundle_dir = fold_bundle(args.work, args.encoder, f)
                bundle = Bundle.load(bundle_dir)
                for a in folds[f - 1]:
                    rec = speaker_recording(clips, a, Path(args.work) / "recordings" / f"test_seed{args.seed + TEST_SEED_OFFSET}"
                                            / f"actor{a:02d}.wav", args.seed + TEST_SEED_OFFSET)
                    events = replay_events(bundle_dir, rec.path, ["runtime.threads=1"], has_video=False)
                    per_actor[f"{a:02d}"] = actor_curve(bundle, events, rec.spans, ks, args.draws, args.seed + a,
                                                        cfg.runtime.smoothing_tau_s, cfg.runtime)
                    log.info("fold %d actor %02d: %s", f, a, json.dumps({k: [round(r["adapted"] - r["unadapted"], 1) for r in v]
                                                                         for k, v in per_actor[f"{a:02d}"].items()}))
        summary = summarise(per_actor, ks)
        seconds = time.time() - t0
        atomic_write_text(out / "results.json", json.dumps({"summary": summary, "per_actor": per_actor, "argv": args.argv,
                                                            "seconds": round(seconds)}, indent=1, default=float) + "\n")
        atomic_write_text(out / "results.md", markdown(summary, args, seconds))
        print(markdown(summary, args, seconds), end="")
    except (EdgeMerError, ValueError) as exc:
        print(f"training.eval.adapt_curve: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
