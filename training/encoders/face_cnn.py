"""Face encoder: a small depthwise-separable image CNN applied to each face crop, a temporal conv
over the crops of a window, and the mean over time; sized for an edge device. ``backbone =
"r2plus1d_18"`` swaps in torchvision's R(2+1)D-18 (the paper's; random init here, since its
Kinetics weights would have to be downloaded) for workstations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.encoders.base import Encoder, register_encoder


@dataclass(frozen=True)
class FaceCNNCfg:
    backbone: str = "cnn"  # "cnn" (edge) or "r2plus1d_18" (workstation)
    image_size: int = 64  # crop side in pixels (face.image_size)
    frames: int = 8  # crops per window (face.frames_per_window)
    widths: tuple[int, ...] = (32, 64, 128, 256)  # channels of the stem and of each stride-2 stage
    feature_dim: int = 512  # output features (before the projector)


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


@register_encoder("face_cnn")
class FaceCNN(Encoder):
    """CNN over ``face`` float32 ``[B, T, 3, S, S]`` (RGB in [0, 1]) -> ``[B, feature_dim]``."""

    Cfg = FaceCNNCfg

    def __init__(self, cfg: FaceCNNCfg) -> None:
        super().__init__(cfg)
        if cfg.backbone == "cnn":
            layers = [_conv_bn(3, cfg.widths[0], 3, 2)]
            for c_in, c_out in zip(cfg.widths[:-1], cfg.widths[1:]):
                # Depthwise 3x3 then pointwise 1x1: MobileNet's cheap replacement of a full conv.
                layers += [_conv_bn(c_in, c_in, 3, 2, groups=c_in), _conv_bn(c_in, c_out, 1, 1)]
            self.frame_net: nn.Module = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
            width = cfg.widths[-1]
            self.temporal: nn.Module = nn.Sequential(nn.Conv1d(width, width, 3, padding=1), nn.ReLU(inplace=True))
        elif cfg.backbone == "r2plus1d_18":
            from torchvision.models.video import r2plus1d_18

            net = r2plus1d_18(weights=None)
            width = net.fc.in_features
            net.fc = nn.Identity()
            self.frame_net = net
            self.temporal = nn.Identity()
        else:
            raise ValueError(f"face_cnn: unknown backbone '{cfg.backbone}' (use 'cnn' or 'r2plus1d_18')")
        self.head = nn.Linear(width, cfg.feature_dim)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        b, t = face.shape[0], face.shape[1]
        x = (face - 0.45) / 0.225  # roughly zero-mean, unit-variance RGB
        if self.cfg.backbone == "r2plus1d_18":
            return self.head(self.frame_net(x.permute(0, 2, 1, 3, 4)))
        s = self.cfg.image_size
        per_frame = self.frame_net(x.reshape(-1, 3, s, s)).reshape(b, t, -1).transpose(1, 2)  # [B, C, T]
        y = per_frame + self.temporal(per_frame)
        return self.head(y.mean(dim=2))

    def input_spec(self) -> list[dict]:
        s = self.cfg.image_size
        return [{"name": "face", "shape": ["batch", self.cfg.frames, 3, s, s], "dtype": "float32"}]
