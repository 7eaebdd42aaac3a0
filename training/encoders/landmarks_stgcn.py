"""Landmark encoder: the paper's ST-GCN over the 51 non-jaw iBUG landmarks on a fixed face graph.

Input ``landmarks`` float32 ``[B, T, 51, 2]``: jaw (points 0-16) dropped and min-max normalised per
clip by :func:`normalise_landmarks`, a pure-numpy function the runtime mirrors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.encoders.base import Encoder, register_encoder

N_JAW = 17
N_NODES = 68 - N_JAW


def normalise_landmarks(points68: np.ndarray) -> np.ndarray:
    """``[T, 68, 2]`` pixel landmarks of one clip -> ``[T, 51, 2]`` float32 in [0, 1].

    Drops the 17 jaw points (the paper's graph) and min-max normalises x and y separately over all
    frames and points of the clip, so position and size of the face in the frame drop out. A
    clip whose points do not spread along an axis gets 0.5 on that axis.
    """
    pts = np.asarray(points68, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[1:] != (68, 2):
        raise ValueError(f"landmarks must be [frames, 68, 2], got {list(pts.shape)}")
    if not np.isfinite(pts).all():
        raise ValueError("landmarks contain NaN or infinite values")
    pts = pts[:, N_JAW:, :]
    lo = pts.min(axis=(0, 1), keepdims=True)
    span = pts.max(axis=(0, 1), keepdims=True) - lo
    out = np.where(span > 1e-9, (pts - lo) / np.where(span > 1e-9, span, 1.0), 0.5)
    return out.astype(np.float32)


def _face_edges() -> list[tuple[int, int]]:
    """Edges between iBUG point numbers (0-67) along the face's contours."""
    chains = [range(17, 22), range(22, 27), range(27, 31), range(31, 36)]
    cycles = [range(36, 42), range(42, 48), range(48, 60), range(60, 68)]
    edges = [(a, a + 1) for c in chains for a in list(c)[:-1]]
    for c in cycles:
        c = list(c)
        edges += list(zip(c, c[1:] + c[:1]))
    # Links between parts: brows to the nose bridge and eyes, eyes to the bridge, nose tip to
    # nostrils, nose to upper lip, outer to inner mouth corners.
    edges += [(21, 27), (22, 27), (19, 37), (24, 44), (39, 27), (42, 27), (30, 31), (30, 35), (30, 33), (33, 51), (48, 60), (54, 64)]
    return edges


def face_adjacency() -> np.ndarray:
    """Symmetrically normalised adjacency with self loops, ``D^-1/2 (A + I) D^-1/2``, [51, 51]."""
    a = np.eye(N_NODES)
    for i, j in _face_edges():
        a[i - N_JAW, j - N_JAW] = a[j - N_JAW, i - N_JAW] = 1.0
    d = 1.0 / np.sqrt(a.sum(axis=1))
    return (a * d[:, None] * d[None, :]).astype(np.float32)


@dataclass(frozen=True)
class LandmarksSTGCNCfg:
    channels: tuple[int, ...] = (64, 128)  # output channels of each ST-GCN block (the paper: 2 blocks)
    temporal_kernel: int = 9  # temporal conv kernel in frames (odd)
    temporal_stride: int = 1  # frame stride of the second and later blocks
    dropout: float = 0.1  # dropout after each temporal conv
    frames: int = 30  # frames per window the encoder is fed (landmarks.frames_per_window)
    feature_dim: int = 512  # output features (before the projector)


class STGCNBlock(nn.Module):
    """Graph conv over the face graph (learnable edge weights on the fixed adjacency), then a
    temporal conv, with a residual."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, dropout: float, adjacency: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("adjacency", adjacency)
        self.edge_importance = nn.Parameter(torch.ones_like(adjacency))
        self.spatial = nn.Conv2d(c_in, c_out, 1)
        self.temporal = nn.Sequential(
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, (kernel, 1), stride=(stride, 1), padding=((kernel - 1) // 2, 0)),
            nn.BatchNorm2d(c_out),
            nn.Dropout(dropout),
        )
        if c_in == c_out and stride == 1:
            self.residual: nn.Module = nn.Identity()
        else:
            self.residual = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=(stride, 1)), nn.BatchNorm2d(c_out))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, C, T, V]
        y = torch.matmul(self.spatial(x), self.adjacency * self.edge_importance)
        return self.relu(self.temporal(y) + self.residual(x))


@register_encoder("landmarks_stgcn")
class LandmarksSTGCN(Encoder):
    """ST-GCN over ``landmarks`` float32 ``[B, T, 51, 2]`` -> ``[B, feature_dim]``."""

    Cfg = LandmarksSTGCNCfg

    def __init__(self, cfg: LandmarksSTGCNCfg) -> None:
        super().__init__(cfg)
        if cfg.temporal_kernel % 2 != 1:
            raise ValueError(f"landmarks_stgcn: temporal_kernel must be odd, got {cfg.temporal_kernel}")
        adjacency = torch.from_numpy(face_adjacency())
        blocks = []
        c_in = 2
        for i, c_out in enumerate(cfg.channels):
            stride = 1 if i == 0 else cfg.temporal_stride
            blocks.append(STGCNBlock(c_in, c_out, cfg.temporal_kernel, stride, cfg.dropout, adjacency.clone()))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, cfg.feature_dim)

    def forward(self, landmarks: torch.Tensor) -> torch.Tensor:
        # [B, T, V, 2] -> [B, 2, T, V]; centre the [0, 1] coordinates.
        x = landmarks.permute(0, 3, 1, 2) - 0.5
        x = self.blocks(x)
        return self.head(x.mean(dim=(2, 3)))

    def input_spec(self) -> list[dict]:
        return [{"name": "landmarks", "shape": ["batch", "frames", N_NODES, 2], "dtype": "float32"}]

    def example_symbols(self) -> dict[str, int]:
        return {"frames": self.cfg.frames}
