"""Encoders registered by name: ``build_encoder("audio_tcn", {"hidden": 256})``.

Each encoder module defines its own frozen config dataclass and registers its ``nn.Module`` class
with :func:`register_encoder`. Every encoder maps named input tensors to pre-projector features
``[B, feature_dim]`` (what the probes read) and describes its inputs with ``input_spec()`` and
``example_inputs(batch)`` so the export code needs no per-encoder knowledge.

>>> sorted(list_encoders())[:2]
['audio_tcn', 'face_cnn']
>>> enc = build_encoder("mlp", {"in_dim": 35, "feature_dim": 64})
>>> enc(**enc.example_inputs(2)).shape
torch.Size([2, 64])
"""

from __future__ import annotations

from training.encoders.base import (Encoder, build_encoder, cfg_from_dict, encoder_cfg_dict, encoder_class, list_encoders,
                                    register_encoder)

# Importing the modules registers their encoders (the text encoder imports transformers lazily).
from training.encoders import audio_tcn, face_cnn, face_fer, landmarks_stgcn, logmel_stats, mlp, text_minilm, whisper_trunk  # noqa: E402,F401
from training.encoders.projector import Projector  # noqa: E402

__all__ = ["Encoder", "Projector", "build_encoder", "cfg_from_dict", "encoder_cfg_dict", "encoder_class", "list_encoders",
           "register_encoder"]
