"""Feature-vector encoder: a small MLP over pre-extracted per-clip features (RAVDESS action units,
CMU-MOSI text/audio/video vectors).

The input standardisation (``input_mean``, ``input_std``) is part of the module's buffers, set
from the training clips only with :meth:`FeatureMLP.set_input_stats`, so checkpoints and exported
models carry the exact statistics they were trained with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.encoders.base import Encoder, register_encoder


@dataclass(frozen=True)
class FeatureMLPCfg:
    in_dim: int = 35  # input features (35 RAVDESS action units; MOSI: 100 text, 73 audio, 100 video)
    hidden: int = 256  # hidden width
    layers: int = 2  # hidden layers (Linear-LayerNorm-ReLU-Dropout each)
    dropout: float = 0.1  # dropout after each hidden layer (training only)
    feature_dim: int = 512  # output features (before the projector)


@register_encoder("mlp")
class FeatureMLP(Encoder):
    """MLP over ``x`` float32 ``[B, in_dim]`` -> ``[B, feature_dim]``."""

    Cfg = FeatureMLPCfg

    def __init__(self, cfg: FeatureMLPCfg) -> None:
        super().__init__(cfg)
        self.register_buffer("input_mean", torch.zeros(cfg.in_dim))
        self.register_buffer("input_std", torch.ones(cfg.in_dim))
        layers: list[nn.Module] = []
        width = cfg.in_dim
        for _ in range(cfg.layers):
            layers += [nn.Linear(width, cfg.hidden), nn.LayerNorm(cfg.hidden), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout)]
            width = cfg.hidden
        layers.append(nn.Linear(width, cfg.feature_dim))
        self.net = nn.Sequential(*layers)

    def set_input_stats(self, train_x: np.ndarray) -> None:
        """Standardise inputs with the mean and std of ``train_x`` (training clips only)."""
        x = np.asarray(train_x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.cfg.in_dim:
            raise ValueError(f"mlp: expected training features [N, {self.cfg.in_dim}], got {x.shape}")
        std = x.std(axis=0)
        # Constant columns (e.g. an AU never detected in the fold) would divide by zero.
        std[std < 1e-6] = 1.0
        self.input_mean.copy_(torch.as_tensor(x.mean(axis=0), dtype=torch.float32))
        self.input_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.input_mean) / self.input_std)

    def input_spec(self) -> list[dict]:
        return [{"name": "x", "shape": ["batch", self.cfg.in_dim], "dtype": "float32"}]
