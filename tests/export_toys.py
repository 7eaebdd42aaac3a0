"""Small torch encoders with the training/encoders interface (``forward(**inputs)``,
``input_spec()``, ``example_inputs(batch)``), one per input layout, for export tests that must not
wait on trained models."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ToyAudio(nn.Module):
    """log-mel [B, n_mels, frames] → two convs over time → mean → [B, dim]."""

    def __init__(self, n_mels: int = 128, dim: int = 16) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.stem = nn.Conv1d(n_mels, 32, kernel_size=3, padding=1)
        self.norm = nn.GroupNorm(1, 32)
        self.conv = nn.Conv1d(32, 32, kernel_size=3, padding=1)
        self.out = nn.Linear(32, dim)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm(self.stem(logmel)))
        h = torch.relu(self.conv(h)) + h
        return self.out(h.mean(dim=2))

    def input_spec(self) -> list[dict]:
        return [{"name": "logmel", "shape": ["batch", self.n_mels, "frames"], "dtype": "float32"}]

    def example_inputs(self, batch: int = 2) -> dict:
        g = torch.Generator().manual_seed(0)
        return {"logmel": torch.randn(batch, self.n_mels, 120, generator=g) * 3.0 - 6.0}


class ToyFace(nn.Module):
    """face crops [B, T, 3, S, S] → per-frame conv → mean over frames and pixels → [B, dim]."""

    def __init__(self, size: int = 32, dim: int = 16) -> None:
        super().__init__()
        self.size = size
        self.conv = nn.Conv2d(3, 8, kernel_size=3, stride=2)
        self.out = nn.Linear(8, dim)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        b, t = face.shape[0], face.shape[1]
        h = torch.relu(self.conv(face.flatten(0, 1)))
        h = h.mean(dim=(2, 3)).reshape(b, t, -1).mean(dim=1)
        return self.out(h)

    def input_spec(self) -> list[dict]:
        return [{"name": "face", "shape": ["batch", "frames", 3, self.size, self.size], "dtype": "float32"}]

    def example_inputs(self, batch: int = 2) -> dict:
        g = torch.Generator().manual_seed(1)
        return {"face": torch.rand(batch, 4, 3, self.size, self.size, generator=g)}


class ToyLandmarks(nn.Module):
    """landmarks [B, T, 51, 2] → per-frame MLP → mean over frames → [B, dim]."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(102, 32), nn.ReLU(), nn.Linear(32, dim))

    def forward(self, landmarks: torch.Tensor) -> torch.Tensor:
        return self.mlp(landmarks.flatten(2)).mean(dim=1)

    def input_spec(self) -> list[dict]:
        return [{"name": "landmarks", "shape": ["batch", "frames", 51, 2], "dtype": "float32"}]

    def example_inputs(self, batch: int = 2) -> dict:
        g = torch.Generator().manual_seed(2)
        return {"landmarks": torch.rand(batch, 10, 51, 2, generator=g)}


def speech_like_logmels(n: int, n_mels: int = 128, frames: int = 201, seed: int = 0) -> np.ndarray:
    """Log-mel-shaped arrays with speech-like structure (a spectral tilt, harmonics that move, and
    silences) for calibration when no real clip is at hand."""
    rng = np.random.default_rng(seed)
    tilt = np.linspace(0.0, -6.0, n_mels)[:, None]
    out = np.empty((n, n_mels, frames), np.float32)
    for i in range(n):
        pitch = rng.uniform(3, 12) + np.cumsum(rng.normal(0, 0.1, frames))
        bins = np.arange(n_mels)[:, None]
        harmonics = sum(np.exp(-0.5 * ((bins - k * pitch[None]) / 1.5) ** 2) for k in range(1, 6))
        voiced = (rng.uniform(size=frames) > 0.3)[None]
        out[i] = -10.0 + tilt + 8.0 * harmonics * voiced + rng.normal(0, 0.5, (n_mels, frames))
    return out
