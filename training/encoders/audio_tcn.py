"""Audio encoder: the paper's Conv-TasNet-style TCN over log-mel frames, sized for a 2-core CPU.

A strided conv stem downsamples the frames, then ``repeats`` x ``blocks`` residual blocks
(1x1 conv -> PReLU -> gLN -> dilated depthwise conv -> PReLU -> gLN -> 1x1 conv), dilations
1, 2, 4, ... per repeat; the mean over time goes through a Linear to ``feature_dim``. Every layer
keeps the time length, so any frame count works (at least ``stride`` frames).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.encoders.base import Encoder, register_encoder


@dataclass(frozen=True)
class AudioTCNCfg:
    n_mels: int = 128  # log-mel bins of the input (audio.n_mels)
    stride: int = 4  # frame downsampling of the stem conv (10 ms frames -> 40 ms)
    bottleneck: int = 128  # residual-stream channels
    hidden: int = 256  # channels inside each block
    kernel: int = 3  # depthwise kernel in frames
    blocks: int = 4  # blocks per repeat (dilations 1, 2, 4, 8)
    repeats: int = 2  # repeats of the dilation stack
    feature_dim: int = 512  # output features (before the projector)
    # "clip": standardise each input over bins and frames (removes level and microphone gain);
    # "raw": take the input as it is (for inputs already standardised per speaker).
    input_norm: str = "clip"
    pool: str = "mean"  # over time: "mean", or "meanstd" (mean and std, concatenated)


class GlobalLayerNorm(nn.Module):
    """gLN of Conv-TasNet: normalise each sample over channels and time, per-channel affine."""

    def __init__(self, channels: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2), keepdim=True)
        var = (x - mean).pow(2).mean(dim=(1, 2), keepdim=True)
        return self.gamma * (x - mean) / torch.sqrt(var + self.eps) + self.beta


class TCNBlock(nn.Module):
    def __init__(self, channels: int, hidden: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(channels, hidden, 1),
            nn.PReLU(),
            GlobalLayerNorm(hidden),
            # "same" padding keeps the frame count for any input length.
            nn.Conv1d(hidden, hidden, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation, groups=hidden),
            nn.PReLU(),
            GlobalLayerNorm(hidden),
            nn.Conv1d(hidden, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


@register_encoder("audio_tcn")
class AudioTCN(Encoder):
    """TCN over ``logmel`` float32 ``[B, n_mels, frames]`` -> ``[B, feature_dim]``."""

    Cfg = AudioTCNCfg

    def __init__(self, cfg: AudioTCNCfg) -> None:
        super().__init__(cfg)
        if cfg.kernel % 2 != 1:
            raise ValueError(f"audio_tcn: kernel must be odd to keep the frame count, got {cfg.kernel}")
        k = 2 * cfg.stride if cfg.stride > 1 else 1
        self.stem = nn.Conv1d(cfg.n_mels, cfg.bottleneck, k, stride=cfg.stride, padding=(k - cfg.stride) // 2)
        self.stem_norm = GlobalLayerNorm(cfg.bottleneck)
        self.blocks = nn.Sequential(
            *[TCNBlock(cfg.bottleneck, cfg.hidden, cfg.kernel, 2**b) for _ in range(cfg.repeats) for b in range(cfg.blocks)]
        )
        if cfg.input_norm not in ("clip", "raw"):
            raise ValueError(f"audio_tcn: input_norm must be 'clip' or 'raw', got {cfg.input_norm!r}")
        if cfg.pool not in ("mean", "meanstd"):
            raise ValueError(f"audio_tcn: pool must be 'mean' or 'meanstd', got {cfg.pool!r}")
        self.head = nn.Linear(cfg.bottleneck * (2 if cfg.pool == "meanstd" else 1), cfg.feature_dim)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        # Standardise each clip over bins and frames: loudness and microphone gain differ
        # between devices, and log-mel levels carry them as an offset.
        if self.cfg.input_norm == "clip":
            mean = logmel.mean(dim=(1, 2), keepdim=True)
            std = (logmel - mean).pow(2).mean(dim=(1, 2), keepdim=True).add(1e-5).sqrt()
            logmel = (logmel - mean) / std
        x = self.blocks(self.stem_norm(self.stem(logmel)))
        pooled = x.mean(dim=2)
        if self.cfg.pool == "meanstd":
            pooled = torch.cat([pooled, (x - pooled[:, :, None]).pow(2).mean(dim=2).add(1e-5).sqrt()], dim=1)
        return self.head(pooled)

    def input_spec(self) -> list[dict]:
        return [{"name": "logmel", "shape": ["batch", self.cfg.n_mels, "frames"], "dtype": "float32"}]

    def example_symbols(self) -> dict[str, int]:
        return {"frames": 200}
