"""The projection head of every stream: Linear-ReLU-Linear, L2-normalised (the paper's head)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Projector(nn.Module):
    """Maps features ``[B, in_dim]`` to unit-norm embeddings ``[B, out_dim]`` for the loss only;
    the probes read the features before it."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)
