"""Checkpoints: a directory with ``model.safetensors`` (every encoder and projector),
``checkpoint.json`` (what to rebuild them from, plus the run's config and progress) and
``trainer_state.pt`` (optimizer, scheduler, scaler and RNG states, for an exact resume).

Each file is written atomically and ``checkpoint.json`` last, so a directory whose
``checkpoint.json`` exists is complete.

>>> encoders = load_encoders("runs/release_audio_au")     # doctest: +SKIP
>>> encoders["audio"](logmel=torch.randn(1, 128, 300)).shape  # doctest: +SKIP
torch.Size([1, 512])
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from edge_mer.errors import EdgeMerError
from edge_mer.io import atomic_dir, atomic_write_bytes, atomic_write_text
from training.encoders import Encoder, build_encoder

log = logging.getLogger(__name__)

FORMAT = 1
MODEL_FILE = "model.safetensors"
META_FILE = "checkpoint.json"
STATE_FILE = "trainer_state.pt"


class CheckpointError(EdgeMerError):
    """A checkpoint directory is missing, incomplete or of an unknown format."""


def git_commit() -> str | None:
    """The repository's HEAD commit, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def save_checkpoint(ckpt_dir: str | Path, model: nn.Module, meta: dict[str, Any], trainer_state: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s state dict, ``trainer_state`` and ``meta`` into ``ckpt_dir``.

    ``checkpoint.json`` is written last and records the sha256 of the other files, so a reader
    can tell a complete checkpoint from one whose writer was killed half-way through."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    blobs = {MODEL_FILE: st_save(tensors)}
    if trainer_state is not None:
        buf = io.BytesIO()
        torch.save(trainer_state, buf)
        blobs[STATE_FILE] = buf.getvalue()
    for name, data in blobs.items():
        atomic_write_bytes(ckpt_dir / name, data)
    files = {name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()}
    meta = {k: v for k, v in meta.items() if k != "files"}
    atomic_write_text(ckpt_dir / META_FILE, json.dumps({"format": FORMAT, **meta, "files": files}, indent=2, sort_keys=True) + "\n")
    return ckpt_dir


def save_slot(slot_dir: str | Path, model: nn.Module, meta: dict[str, Any], trainer_state: dict[str, Any] | None = None) -> Path:
    """Like :func:`save_checkpoint`, but the whole directory is built aside and swapped in, so a
    kill at any moment leaves either the previous checkpoint or the new one (see :func:`resume_dir`)."""
    slot_dir = Path(slot_dir)
    with atomic_dir(slot_dir, overwrite=True) as tmp:
        save_checkpoint(tmp, model, meta, trainer_state)
    return slot_dir


def resume_dir(slot_dir: str | Path) -> Path | None:
    """The complete checkpoint to resume from: ``slot_dir``, or the previous one that a killed
    :func:`save_slot` left as ``.<name>.old``; None when there is neither."""
    slot_dir = Path(slot_dir)
    for cand in (slot_dir, slot_dir.with_name(f".{slot_dir.name}.old")):
        if (cand / META_FILE).is_file():
            return cand
    return None


def _verified_bytes(ckpt_dir: Path, name: str) -> bytes:
    data = (ckpt_dir / name).read_bytes()
    meta_path = ckpt_dir / META_FILE
    if meta_path.is_file():
        try:
            expected = json.loads(meta_path.read_text(encoding="utf-8")).get("files", {}).get(name)
        except json.JSONDecodeError:
            expected = None
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise CheckpointError(f"{ckpt_dir / name}: does not match the checksum in {META_FILE} "
                                  "(its writer was interrupted; resume training or use the 'last' checkpoint)")
    return data


def read_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir}: not a checkpoint (no {META_FILE})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc.msg})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format')!r}, this code reads {FORMAT}")
    return meta


def read_tensors(ckpt_dir: str | Path) -> dict[str, torch.Tensor]:
    path = Path(ckpt_dir) / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir}: missing {MODEL_FILE}")
    return st_load(_verified_bytes(Path(ckpt_dir), MODEL_FILE))


def read_trainer_state(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir}: missing {STATE_FILE} (cannot resume)")
    # Our own file holding RNG states (numpy arrays, Python tuples): not weights-only material.
    return torch.load(io.BytesIO(_verified_bytes(Path(ckpt_dir), STATE_FILE)), map_location="cpu", weights_only=False)


def build_encoders_from_meta(meta: dict[str, Any]) -> dict[str, Encoder]:
    return {key: build_encoder(spec["name"], spec["cfg"]) for key, spec in meta["encoders"].items()}


def load_encoders(ckpt_dir: str | Path) -> dict[str, nn.Module]:
    """The checkpoint's pre-projector encoders, ``{encoder key: module}`` in eval mode (keys are
    stream names such as ``audio`` or ``au``)."""
    meta = read_meta(ckpt_dir)
    tensors = read_tensors(ckpt_dir)
    encoders = build_encoders_from_meta(meta)
    for key, enc in encoders.items():
        prefix = f"encoders.{key}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        missing, unexpected = enc.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{ckpt_dir}: encoder '{key}' does not match its weights "
                                  f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        enc.eval()
    return encoders
