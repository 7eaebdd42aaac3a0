"""The log-mel statistics floor as an encoder: mean and std over time of each log-mel bin.

No parameters, nothing to learn: it is the fixed-feature floor (BRIEF section 4) packaged like any
encoder, so the bundle-level evaluation can build a floor bundle through exactly the same export,
runtime and scoring path as a learned encoder and the two figures are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from training.encoders.base import Encoder, register_encoder


@dataclass(frozen=True)
class LogmelStatsCfg:
    n_mels: int = 128  # input log-mel bins
    feature_dim: int = 256  # 2 * n_mels (mean, then std); checked at construction


@register_encoder("logmel_stats")
class LogmelStats(Encoder):
    """``logmel`` float32 ``[B, n_mels, frames]`` -> ``[B, 2 n_mels]`` (per-bin mean, then std)."""

    Cfg = LogmelStatsCfg

    def __init__(self, cfg: LogmelStatsCfg) -> None:
        if cfg.feature_dim != 2 * cfg.n_mels:
            raise ValueError(f"logmel_stats: feature_dim must be 2 * n_mels = {2 * cfg.n_mels}, got {cfg.feature_dim}")
        super().__init__(cfg)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        mean = logmel.mean(dim=2)
        std = (logmel - mean[:, :, None]).square().mean(dim=2).clamp_min(1e-12).sqrt()
        return torch.cat([mean, std], dim=1)

    def input_spec(self) -> list[dict]:
        return [{"name": "logmel", "shape": ["batch", self.cfg.n_mels, "frames"], "dtype": "float32"}]

    def example_symbols(self) -> dict[str, int]:
        return {"frames": 200}
