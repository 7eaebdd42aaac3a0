"""Rebuild the shipped default bundle (``models/default``) from the real data and the release
audio checkpoint, with one command:

    python export/make_default_bundle.py

What goes in (the manifest and MODEL_CARD.md say the same):

- audio: the release checkpoint's audio encoder (``runs/release_audio_au``: pretrained without
  labels, audio↔face-action-unit pairwise contrastive loss on RAVDESS), fp32 + static INT8 (QDQ,
  calibrated on log-mels of training actors 01–16) + the release probe ``probe_audio.npz`` as head
  "audio". INT8 becomes the default precision only when it costs at most 1 point of UA on the
  held-out actors 17–20 against fp32, both with a probe fitted on actors 01–16 and with the
  shipped head.
- text: the frozen all-MiniLM-L6-v2 backbone (mean-pooled, 384-d) as dynamic INT8 only (fp32 is
  90 MB), and head "text": a logistic regression on MELD train transcripts (C chosen on MELD
  dev), MELD's classes mapped onto the bundle's labels; "calm" has no MELD class and gets the
  logit of "neutral".
- detectors: MTCNN P/R/O-Net (fp32 ONNX, 2 MB); the 100 MB dlib landmark model is not included.
- calibration: 16 real log-mel windows (float16) so ``build_engines.py --precision int8`` can
  calibrate TensorRT on the device.

The precision table (size, CPU latency, UA per precision) is written to
``<out>/precision_report.json`` and into the model card. ``--random-audio`` replaces the release
checkpoint with a randomly initialised encoder and a probe fitted here (tests, and a dry run
before the checkpoint exists).
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

from edge_mer.bundle import Bundle, file_entry, write_manifest
from edge_mer.cli import DEFAULT_BUNDLE, add_config_args
from edge_mer.config import AudioCfg, Config, load_config
from edge_mer.errors import EdgeMerError
from edge_mer.io import atomic_dir, atomic_open, atomic_write_text
from edge_mer.modality import Modality
from export.bundle_builder import REPO_ROOT, BundleSpec, EncoderSource, build_bundle
from export.heads import LinearProbe, remap_classes
from export.onnx_export import run_onnx
from export.quantize import latency_ms

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


def windows(logmels: Sequence[np.ndarray], frames: int, count: int) -> np.ndarray:
    """``count`` windows of ``frames`` log-mel frames, one from the middle of each clip in turn."""
    out = []
    for lm in logmels[:: max(1, len(logmels) // count)][:count]:
        start = max(0, (lm.shape[1] - frames) // 2)
        win = lm[:, start:start + frames]
        if win.shape[1] < frames:  # a clip shorter than a window: pad with its quietest level
            win = np.pad(win, ((0, 0), (0, frames - win.shape[1])), constant_values=float(lm.min()))
        out.append(win)
    return np.stack(out).astype(np.float32)


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


def unweighted_accuracy(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    """UA: mean recall over the classes present in ``y_true`` (balanced accuracy), in points."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(100.0 * np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


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


def encode_clips(path: Path, logmels: Sequence[np.ndarray]) -> np.ndarray:
    from export.onnx_export import ort_session

    sess = ort_session(path)
    return np.concatenate([run_onnx(sess, {"logmel": lm[None]})["feature"] for lm in logmels])


# --------------------------------------------------------------------------- branches


def load_release(release: Path) -> tuple[torch.nn.Module, str, dict, AudioCfg, LinearProbe, tuple | None]:
    """(audio encoder, its registered name, its config, the AudioCfg it was trained with, probe,
    the per-user input prior (mean, std) of a ``train.speaker_norm`` run, else None)."""
    from edge_mer.config import section_from_dict
    from training.checkpoint import load_encoders, read_meta
    from training.encoders import encoder_cfg_dict

    if not (release / "checkpoint.json").is_file():
        raise EdgeMerError(f"{release}: no release checkpoint there (train it first, see docs/EXPORT.md)")
    encoders = load_encoders(release)
    if "audio" not in encoders:
        raise EdgeMerError(f"{release}: the checkpoint has no audio encoder (it has: {', '.join(encoders)})")
    encoder = encoders["audio"].eval()
    audio_cfg = section_from_dict("audio", read_meta(release)["config"]["audio"], f"{release}: config.audio")
    probe = LinearProbe.from_npz(release / "probe_audio.npz")
    prior = None
    if read_meta(release)["config"].get("train", {}).get("speaker_norm"):
        from training.train import INPUT_PRIOR_FILE, read_input_prior

        prior = read_input_prior(release, "audio")
        if prior is None:
            raise EdgeMerError(f"{release}: pretrained with train.speaker_norm but {INPUT_PRIOR_FILE} has no audio prior")
    return encoder, encoder.name, encoder_cfg_dict(encoder), audio_cfg, probe, prior


def standardise_per_actor(clips: Sequence[Clip], logmels: list[np.ndarray]) -> list[np.ndarray]:
    """Each actor's log-mels standardised per bin by all frames of that actor's clips: what the
    runtime's per-user input statistics converge to (for an encoder pretrained that way)."""
    from training.datasets import ClipStore, normalise_per_speaker

    store = normalise_per_speaker(ClipStore(logmels={str(i): lm for i, lm in enumerate(logmels)}),
                                  {str(i): str(c.actor) for i, c in enumerate(clips)})
    return [store.logmels[str(i)] for i in range(len(logmels))]


def random_audio(cfg: Config) -> tuple[torch.nn.Module, str, dict]:
    from training.encoders import build_encoder, encoder_cfg_dict

    torch.manual_seed(cfg.train.seed)
    enc = build_encoder(cfg.encoder.audio, {"n_mels": cfg.audio.n_mels, "hidden": 64, "bottleneck": 32,
                                            "blocks": 2, "repeats": 1, "feature_dim": 64}).eval()
    return enc, enc.name, encoder_cfg_dict(enc)


def precision_rows(files: dict[str, Path], example: dict[str, np.ndarray], ua: dict[str, float]) -> list[dict]:
    """One row per precision: file size, median single-thread CPU latency, UA."""
    rows = []
    for precision, path in files.items():
        rows.append({"precision": precision, "size_mb": round(path.stat().st_size / 1e6, 2),
                     "latency_ms": round(latency_ms(path, example), 2), "ua": round(ua[precision], 2)})
    return rows


def evaluate_audio(bundle_root: Path, variants: dict, clips: list[Clip], logmels: list[np.ndarray],
                   shipped: LinearProbe, frames: int) -> tuple[list[dict], dict]:
    """UA on the held-out actors per precision: a probe fitted on fp32 features of the other
    actors reads each precision's features (and the shipped probe's UA on the same actors). When
    the shipped head is per-speaker (it carries a per-user prior), both probes read features
    standardised by each actor's own clips, as the runtime's per-user statistics converge to."""
    from training.probe import standardise_per_group

    train = [i for i, c in enumerate(clips) if c.actor not in EVAL_ACTORS]
    test = [i for i, c in enumerate(clips) if c.actor in EVAL_ACTORS]
    y = [c.label for c in clips]
    actors = np.array([c.actor for c in clips])
    files = {p: bundle_root / e["file"] for p, e in variants.items()}
    log.info("audio features of %d clips per precision (%s)", len(clips), ", ".join(files))
    feats = {p: encode_clips(f, logmels) for p, f in files.items()}
    if shipped.user_mean is not None:
        feats = {p: standardise_per_group(f, actors).astype(np.float32) for p, f in feats.items()}
    fold_probe = fit_probe(feats["fp32"][train], [y[i] for i in train], 0.1)
    ua = {p: unweighted_accuracy([y[i] for i in test], predict(fold_probe, f[test])) for p, f in feats.items()}
    shipped_ua = {p: unweighted_accuracy([y[i] for i in test], predict(shipped, f[test])) for p, f in feats.items()}
    example = {"logmel": windows(logmels, frames, 1)}
    rows = precision_rows(files, example, ua)
    for row in rows:
        row["ua_shipped_probe"] = round(shipped_ua[row["precision"]], 2)
    return rows, {"train_clips": len(train), "test_clips": len(test)}


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


def _table(rows: list[dict], extra: str | None = None) -> str:
    head = "| precision | size (MB) | latency (ms, 1 CPU thread) | UA (%) |" + (f" {extra} |" if extra else "")
    sep = "|---|---|---|---|" + ("---|" if extra else "")
    lines = [head, sep]
    for r in rows:
        lines.append(f"| {r['precision']} | {r['size_mb']} | {r['latency_ms']} | {r['ua']} |"
                     + (f" {r.get('ua_shipped_probe', '')} |" if extra else ""))
    return "\n".join(lines)


def model_card(manifest: dict, report: dict, command: str) -> str:
    prov = manifest["provenance"]
    audio = report["audio"]
    text = report["text"]
    lic = "\n".join(f"- {k}: {v}" for k, v in LICENCES.items())
    per_user = "input_norm" in manifest["heads"]["audio"]
    head_kind = ("linear probe fitted on **per-speaker standardised** features (each actor's features minus their "
                 "mean, over their std); the runtime standardises by the person's running statistics "
                 "(`runtime.user_norm`)" if per_user else "linear probe (standardise → linear → softmax)")
    per_user_note = ("\n\nThe audio head is per-speaker: both probes above read features standardised by each actor's own "
                     "clips (the statistics the runtime's per-user normalisation converges to after a few minutes of "
                     "speech; `python scripts/ravdess_user_norm_eval.py` scores the online version, window by window, "
                     "against a population head: docs/RESULTS.md)." if per_user else "")
    return f"""# Model card: {manifest['name']}

Multimodal emotion recognition bundle for edge-mer: **{', '.join(manifest['modalities'])}** branches,
8 RAVDESS labels ({', '.join(manifest['labels'])}). Face and landmark encoders are **not** included:
the real face data reachable here (7 RAVDESS videos of one actor) is far too little to train them.

## What is inside

| part | model | data | precision shipped (default) |
|---|---|---|---|
| audio encoder | {manifest['encoders']['audio']['name']} ({manifest['encoders']['audio']['feature_dim']}-d), pretrained **without labels** | {audio['source']} | {', '.join(manifest['encoders']['audio']['variants'])} ({manifest['encoders']['audio']['default_precision']}) |
| audio head | {head_kind} | RAVDESS labels | fp32 |
| text encoder | all-MiniLM-L6-v2, frozen, mean-pooled (384-d) | none (general sentence encoder, not emotion-trained) | int8 dynamic |
| text head | logistic regression, class-balanced, C={text['info']['C']} (MELD dev) | MELD train transcripts ({text['info']['train']}) | fp32 |
| face detector | MTCNN P/R/O-Net (facenet-pytorch weights) | as published | fp32 |

Fusion: the runtime uses the head of exactly the modalities present; for a subset with no head of
its own (audio+text) it averages the per-modality heads' log-probabilities.

Text labels: MELD's joy, sadness, anger, fear, disgust, surprise, neutral map to happy, sad, angry,
fearful, disgust, surprised, neutral. MELD has no "calm": the text head gives calm the same logit
as neutral, so it never prefers calm over neutral, and the two share neutral's probability.

## Protocol and figures

Audio: the precision table reads the encoder's features on RAVDESS actors {EVAL_ACTORS[0]}–{EVAL_ACTORS[-1]} (fold 5) with a
probe fitted on fp32 features of actors 01–16 ({audio['info']['train_clips']} train / {audio['info']['test_clips']} test clips, whole-clip
features). INT8 calibration used only actors 01–16. {audio['note']}

{_table(audio['rows'], 'UA, shipped probe')}

The last column reads the same fold-5 features with the shipped head, which the release run fitted
on all 20 actors' labels (17–20 included): it checks that the head survives quantisation, and is
optimistic as an accuracy. The encoder itself was pretrained label-free on the audio of all 20
actors. Speaker-independent figures of the method (5 folds, nothing of the test actors seen in
pretraining or probing) are in docs/RESULTS.md.{per_user_note}

Text: UA on MELD test ({text['info']['test']} utterances, 7 MELD classes), head fitted on fp32 features.

{_table(text['rows'])}

Latency: median of 30 single-thread ONNX Runtime CPU runs on this build machine (one 2 s window /
one utterance), after 5 warm-up runs; fp16 has no fast CPU kernels and is meant for GPUs.

## Reproduce

```
{command}
```

Built from commit `{prov.get('commit')}`. Parity checks of this export: {json.dumps(prov.get('export_checks', {}))}

## Licences

{lic}

The bundle as a whole is derived from RAVDESS and may be used for **non-commercial** purposes only,
with attribution, and shared under the same licence (CC BY-NC-SA 4.0).

## Limits

Acted speech from 20 North-American actors; MELD is scripted TV dialogue. Expect lower accuracy on
spontaneous speech, other accents and languages. Do not use to make decisions about people.
"""


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Rebuild the default model bundle from the real data and the "
                                     "release audio checkpoint (see docs/EXPORT.md).")
    parser.add_argument("--out", default=str(DEFAULT_BUNDLE), help="bundle directory to (re)write (default: %(default)s)")
    parser.add_argument("--release", default=str(REPO_ROOT / "runs" / "release_audio_au"),
                        help="release audio checkpoint directory with probe_audio.npz (default: %(default)s)")
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data"),
                        help="folder holding ravdess/ and meld/ (default: %(default)s)")
    parser.add_argument("--random-audio", action="store_true",
                        help="use a randomly initialised audio encoder and a probe fitted here (tests, dry runs)")
    parser.add_argument("--clips-per-actor", type=int, default=0, help="subsample RAVDESS clips per actor (0 = all 60)")
    parser.add_argument("--meld-limit", type=int, default=0, help="subsample MELD train utterances (0 = all)")
    parser.add_argument("--calibration-clips", type=int, default=None,
                        help="log-mel windows for static INT8 calibration (default: export.calibration_clips)")
    add_config_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our progress at INFO; third-party loggers (the ONNX Runtime quantiser logs every tensor at
    # INFO on the root logger) only from -v on.
    logging.basicConfig(level=logging.WARNING if args.verbose == 0 else logging.DEBUG,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for name in ("export", PROG):
        logging.getLogger(name).setLevel(logging.INFO if args.verbose == 0 else logging.DEBUG)
    torch.set_num_threads(1)
    try:
        cfg = load_config(args.config, args.overrides)
        data = Path(args.data)
        if args.random_audio:
            encoder, enc_name, enc_cfg = random_audio(cfg)
            audio_cfg, shipped, source, prior = cfg.audio, None, "none (randomly initialised: test build)", None
        else:
            encoder, enc_name, enc_cfg, audio_cfg, shipped, prior = load_release(Path(args.release))
            source = (f"RAVDESS speech (actors 01–20, {Path(args.release).name}), audio↔face-action-unit pairs"
                      + (", each actor's log-mels and AUs standardised by that actor's own clips" if prior is not None else ""))
        cfg = dataclasses.replace(cfg, audio=audio_cfg)
        frames = int(round(cfg.window.window_s * audio_cfg.sample_rate_hz / audio_cfg.hop_length)) + 1
        clips = ravdess_clips(data, args.clips_per_actor)
        logmels = clip_logmels(clips, audio_cfg)
        if prior is not None:
            logmels = standardise_per_actor(clips, logmels)
        calib_lm = [lm for lm, c in zip(logmels, clips) if c.actor in CALIB_ACTORS]
        calib = windows(calib_lm, frames, args.calibration_clips or cfg.export.calibration_clips)
        if shipped is None:
            with tempfile.TemporaryDirectory() as tmp:
                from export.onnx_export import export_encoder

                export_encoder(encoder, Path(tmp) / "a.onnx", cfg.export)
                feats = encode_clips(Path(tmp) / "a.onnx", logmels)
            shipped = fit_probe(feats, [c.label for c in clips], 0.1)
        shipped = remap_classes(shipped, LABELS, {})
        audio_src = EncoderSource(
            modality=Modality.AUDIO, name=enc_name, module=encoder, feature_dim=int(encoder.feature_dim),
            feature_cfg=dataclasses.asdict(audio_cfg), config=enc_cfg, precisions=("fp32", "int8"),
            default_precision="fp32", int8="static",
            parity_inputs={"logmel": torch.from_numpy(windows(logmels[::7], frames, 4))},
            calibration=[{"logmel": w[None]} for w in calib],
            input_norm=prior,
        )
        with tempfile.TemporaryDirectory() as scratch:
            text_src, text_head, text_rows, text_info = text_branch(cfg, data, Path(scratch), args.meld_limit)
            spec = BundleSpec(
                name="edge-mer-default-audio-text", labels=LABELS, encoders=[audio_src, text_src],
                heads={"audio": shipped, "text": text_head}, config=cfg,
                provenance={"data": "RAVDESS speech actors 01–20 (audio); MELD train/dev transcripts (text head)",
                            "protocol": "audio: label-free pairwise-contrastive pretraining, frozen, linear probe; "
                                        "text: frozen MiniLM + logistic regression on MELD train",
                            "license": "CC BY-NC-SA 4.0 (derived from RAVDESS); see MODEL_CARD.md", "licenses": LICENCES},
            )
            # Build and evaluate in a staging directory, then swap it in whole: a failed or
            # interrupted run leaves the previous bundle untouched.
            bundle, _ = build_bundle(Path(scratch) / "bundle", spec)
            finish(bundle, clips, logmels, shipped, frames, calib, text_rows, text_info, source, argv)
            with atomic_dir(args.out, overwrite=True) as tmp:
                shutil.copytree(bundle.root, tmp, dirs_exist_ok=True)
        Bundle.load(args.out)
    except EdgeMerError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{args.out}: default bundle written")
    return 0


def finish(bundle, clips, logmels, shipped, frames, calib, text_rows, text_info, source, argv) -> None:
    """Evaluate precisions, pick the audio default, add calibration inputs, metrics and the card;
    rewrite the staged bundle's manifest (checksummed, validated)."""

    root = bundle.root
    manifest = bundle.manifest
    enc = manifest["encoders"]["audio"]
    rows, info = evaluate_audio(root, enc["variants"], clips, logmels, shipped, frames)
    by = {r["precision"]: r for r in rows}
    # Both must hold: the held-out probe keeps its UA (the features keep their information) and
    # the shipped head keeps its decisions (what the runtime actually outputs).
    drop = by["fp32"]["ua"] - by["int8"]["ua"]
    head_drop = by["fp32"]["ua_shipped_probe"] - by["int8"]["ua_shipped_probe"]
    keeps = drop <= MAX_UA_DROP and head_drop <= MAX_UA_DROP
    enc["default_precision"] = "int8" if keeps else "fp32"
    note = (f"INT8 changes UA by {-drop:+.2f} points with the held-out probe and by {-head_drop:+.2f} with the shipped "
            f"head: {'both within' if keeps else 'not both within'} the {MAX_UA_DROP:g}-point budget, so the default "
            f"precision is {enc['default_precision']} (the other variant ships too).")
    with atomic_open(root / "calibration" / "audio.npz", "wb") as fh:
        np.savez_compressed(fh, logmel=calib[:16].astype(np.float16))
    manifest["calibration"] = {"audio": file_entry(root, "calibration/audio.npz", note="RAVDESS actors 01-16 log-mel windows")}
    report = {"audio": {"rows": rows, "info": info, "note": note, "source": source},
              "text": {"rows": text_rows, "info": text_info}}
    manifest["provenance"]["metrics"] = {
        **{f"audio_ua_fold5_{r['precision']}": r["ua"] for r in rows},
        **{f"audio_ua_fold5_shipped_probe_{r['precision']}": r["ua_shipped_probe"] for r in rows},
        **{f"text_ua_meld_test_{r['precision']}": r["ua"] for r in text_rows},
    }
    command = "python export/make_default_bundle.py " + " ".join(argv if argv is not None else sys.argv[1:])
    atomic_write_text(root / "precision_report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(root / "MODEL_CARD.md", model_card(manifest, report, command.strip()))
    write_manifest(root, manifest)


if __name__ == "__main__":
    sys.exit(main())
