"""Assemble a model bundle (see :mod:`edge_mer.bundle`) from PyTorch encoders and numpy probes.

:func:`build_bundle` exports every encoder to fp32 ONNX and checks it against PyTorch on real
inputs, writes the requested reduced-precision variants (static QDQ INT8 calibrated on real
inputs, or dynamic INT8; FP16), writes the heads, optionally the MTCNN detectors, the Silero VAD
(copied from the silero-vad package) and the text tokenizer, and finally the manifest. Everything
is written into a temporary directory that replaces the target only when complete
(:func:`edge_mer.io.atomic_dir`), and the result is loaded back with
:meth:`edge_mer.bundle.Bundle.load` (checksums verified).

>>> bundle, report = build_bundle("models/default", spec)   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from edge_mer import __version__
from edge_mer.bundle import SCHEMA_VERSION, Bundle, file_entry, subset_key, write_manifest
from edge_mer.config import Config, save_config
from edge_mer.errors import BundleError
from edge_mer.io import atomic_dir, atomic_open
from edge_mer.modality import Modality
from export.heads import LinearProbe, write_head
from export.onnx_export import export_encoder, io_entries, l2_normalise, run_onnx
from export.quantize import convert_fp16, quantize_dynamic_int8, quantize_static_int8

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class EncoderSource:
    """One encoder to ship: the module, how it was trained, and what to check it with.

    ``module`` follows the training/encoders interface (``forward(**inputs) -> [B, D]``,
    ``input_spec()``, ``example_inputs(batch)``). ``parity_inputs`` are real inputs (e.g. log-mels
    of real clips) for the fp32 check; ``calibration`` the input batches for static INT8 (from
    training clips only). ``int8`` is ``"static"`` or ``"dynamic"``."""

    modality: Modality
    name: str
    module: torch.nn.Module
    feature_dim: int
    feature_cfg: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    precisions: tuple[str, ...] = ("fp32", "int8")
    default_precision: str = "fp32"
    int8: str = "static"
    parity_inputs: Mapping[str, torch.Tensor] | None = None
    calibration: Sequence[Mapping[str, np.ndarray]] = ()
    tokenizer: Path | None = None
    # (mean, std) per input channel when the encoder was pretrained on per-speaker standardised
    # inputs (train.speaker_norm): the population prior of the runtime's per-user input
    # normalisation; parity_inputs and calibration are then standardised inputs too.
    input_norm: tuple[np.ndarray, np.ndarray] | None = None

    def __post_init__(self) -> None:
        self.modality = Modality(self.modality)
        unknown = set(self.precisions) - {"fp32", "fp16", "int8"}
        if unknown or not self.precisions:
            raise ValueError(f"{self.modality}: precisions must be among fp32, fp16, int8 (got {self.precisions})")
        if self.default_precision not in self.precisions:
            raise ValueError(f"{self.modality}: default precision {self.default_precision} is not shipped ({self.precisions})")
        if self.int8 not in ("static", "dynamic"):
            raise ValueError(f"{self.modality}: int8 must be 'static' or 'dynamic', got '{self.int8}'")
        if "int8" in self.precisions and self.int8 == "static" and not self.calibration:
            raise ValueError(f"{self.modality}: static INT8 needs calibration inputs from real training clips")


@dataclass
class BundleSpec:
    """Everything a bundle holds besides the encoders' weights."""

    name: str
    labels: Sequence[str]
    encoders: Sequence[EncoderSource]
    heads: Mapping[str, LinearProbe]
    config: Config
    provenance: dict[str, Any]
    include_mtcnn: bool = True
    include_vad: bool = True  # Silero VAD (speech detection), copied from the silero-vad package


def git_commit() -> str:
    """HEAD of the repository (with ``+dirty`` when the tree has changes), or ``unknown``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def _reduced_agreement(fp32: Path, other: Path, inputs: Mapping[str, np.ndarray]) -> float:
    """Minimum cosine between fp32 and reduced-precision features on the same inputs."""
    a = l2_normalise(run_onnx(fp32, inputs)["feature"])
    b = l2_normalise(run_onnx(other, inputs)["feature"])
    return float(np.min(np.sum(a * b, axis=1)))


def _export_encoder(src: EncoderSource, root: Path, scratch: Path, cfg: Config) -> tuple[dict, dict]:
    """Write the encoder's variants; returns (manifest entry, check report)."""
    key = src.modality.value
    fp32 = (root if "fp32" in src.precisions else scratch) / "encoders" / f"{key}.fp32.onnx"
    parity = export_encoder(src.module, fp32, cfg.export, inputs=src.parity_inputs)
    report: dict[str, Any] = {"fp32_max_abs_err": parity.max_abs_err}
    check_inputs = {k: v.detach().cpu().numpy() for k, v in
                    (src.parity_inputs or src.module.example_inputs(2)).items()}
    files = {"fp32": fp32}
    if "int8" in src.precisions:
        dst = root / "encoders" / f"{key}.int8.onnx"
        if src.int8 == "static":
            quantize_static_int8(fp32, dst, src.calibration)
        else:
            quantize_dynamic_int8(fp32, dst)
        files["int8"] = dst
    if "fp16" in src.precisions:
        files["fp16"] = convert_fp16(fp32, root / "encoders" / f"{key}.fp16.onnx")
    variants = {}
    for precision in src.precisions:
        path = files[precision]
        if precision != "fp32":
            report[f"{precision}_cosine_min"] = _reduced_agreement(fp32, path, check_inputs)
        report[f"{precision}_bytes"] = path.stat().st_size
        variants[precision] = file_entry(root, path.relative_to(root).as_posix(), precision=precision, **io_entries(path))
    entry = {
        "name": src.name,
        "feature_dim": src.feature_dim,
        "variants": variants,
        "default_precision": src.default_precision,
        "config": src.config,
    }
    if src.int8 == "dynamic" and "int8" in src.precisions:
        entry["int8_mode"] = "dynamic"
    if src.input_norm is not None:
        rel = f"encoders/{key}.user_norm.npz"
        mean, std = (np.asarray(a, np.float32) for a in src.input_norm)
        with atomic_open(root / rel, "wb") as fh:
            np.savez(fh, mean=mean, std=std)
        entry["input_norm"] = file_entry(root, rel, type="per_user")
    if src.tokenizer is not None:
        rel = f"{key}/tokenizer.json"
        (root / key).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src.tokenizer, root / rel)
        entry["tokenizer"] = file_entry(root, rel)
    return entry, report


def _write_heads(spec: BundleSpec, root: Path, dims: dict[str, int]) -> dict:
    heads = {}
    order = [e.modality.value for e in spec.encoders]
    for key, probe in spec.heads.items():
        mods = [m for m in key.split("+")]
        if subset_key(mods) != key or not set(mods) <= set(order):
            raise ValueError(f"head '{key}' is not a subset key of the bundle's modalities {order}")
        expected = sum(dims[m] for m in mods)
        if probe.feature_dim != expected:
            raise ValueError(f"head '{key}' reads {probe.feature_dim} features, the encoders give {expected}")
        if list(probe.classes) != list(spec.labels):
            raise ValueError(f"head '{key}' classes {list(probe.classes)} differ from the bundle labels {list(spec.labels)}")
        rel = f"heads/{key}.onnx"
        write_head(probe, root / rel, name=f"head_{key.replace('+', '_')}")
        heads[key] = file_entry(root, rel, type="softmax_linear", modalities=mods, **io_entries(root / rel))
        if probe.user_mean is not None:
            # Fitted on per-speaker standardised features: the runtime standardises by running
            # per-user statistics that start from these population ones.
            prior = f"heads/{key}.user_norm.npz"
            with atomic_open(root / prior, "wb") as fh:
                np.savez(fh, mean=probe.user_mean.astype(np.float32), std=probe.user_std.astype(np.float32))
            heads[key]["input_norm"] = file_entry(root, prior, type="per_user")
    return heads


def _write_detectors(root: Path, cfg: Config) -> dict:
    from export.mtcnn_export import export_mtcnn

    nets = export_mtcnn(root / "detectors", opset=cfg.export.opset, tolerance=cfg.export.fp32_tolerance)
    return {"mtcnn": {name: file_entry(root, path.relative_to(root).as_posix(), precision="fp32", **io_entries(path))
                      for name, (path, _) in nets.items()}}


VAD_FILE = "detectors/silero_vad.onnx"
VAD_LICENCE = ("Silero VAD (speech detection)", "MIT")


def silero_vad_file() -> Path:
    """Silero VAD's ONNX model (8 and 16 kHz) inside the installed silero-vad package (found
    without importing the package, which imports torch)."""
    import importlib.util

    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise BundleError("the bundle's speech detector comes from the silero-vad package, which is not installed: "
                          "pip install silero-vad")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise BundleError(f"{path}: missing from the installed silero-vad package; reinstall it (pip install --force-reinstall silero-vad)")
    return path


def write_vad(root: Path) -> dict:
    """Copy Silero VAD into ``root/detectors/silero_vad.onnx``; its file entry."""
    import importlib.metadata

    src = silero_vad_file()
    (root / "detectors").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, root / VAD_FILE)
    io = io_entries(root / VAD_FILE)
    for value in io["inputs"] + io["outputs"]:  # dims ONNX leaves unnamed read as 0: say "dynamic"
        value["shape"] = [d if d else "dynamic" for d in value["shape"]]
    try:
        version = importlib.metadata.version("silero-vad")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return file_entry(root, VAD_FILE, type="silero_vad", precision="fp32", sample_rates_hz=[16000, 8000],
                      source=f"silero-vad {version} (PyPI; MIT, Silero Team)", **io)


def build_bundle(out_dir: str | os.PathLike, spec: BundleSpec, overwrite: bool = False) -> tuple[Bundle, dict]:
    """Write the bundle atomically into ``out_dir`` and return it (loaded back) with the checks
    made on the way (parity errors, INT8/FP16 cosine, sizes)."""
    out_dir = Path(out_dir)
    report: dict[str, Any] = {}
    with atomic_dir(out_dir, overwrite=overwrite) as root, tempfile.TemporaryDirectory() as scratch:
        encoders, dims = {}, {}
        for src in spec.encoders:
            encoders[src.modality.value], report[src.modality.value] = _export_encoder(src, root, Path(scratch), spec.config)
            dims[src.modality.value] = src.feature_dim
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": spec.name,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "edge_mer_version": __version__,
            "modalities": [e.modality.value for e in spec.encoders],
            "labels": list(spec.labels),
            "window": dataclasses.asdict(spec.config.window),
            "features": {e.modality.value: dict(e.feature_cfg) for e in spec.encoders},
            "encoders": encoders,
            "heads": _write_heads(spec, root, dims),
            "provenance": {"commit": git_commit(), **spec.provenance, "export_checks": report},
        }
        detectors = _write_detectors(root, spec.config) if spec.include_mtcnn else {}
        if spec.include_vad:
            detectors["vad"] = write_vad(root)
            prov = manifest["provenance"]
            prov["licenses"] = {**prov.get("licenses", {}), VAD_LICENCE[0]: VAD_LICENCE[1]}
        if detectors:
            manifest["detectors"] = detectors
        save_config(spec.config, root, "export_config.toml")
        write_manifest(root, manifest)
    bundle = Bundle.load(out_dir)
    log.info("bundle %s written (%s)", out_dir, ", ".join(bundle.manifest["modalities"]))
    return bundle, report
