"""MTCNN's P-, R- and O-Net (facenet-pytorch weights) to ONNX, for the torch-free detector in
:mod:`edge_mer.face.mtcnn`.

facenet-pytorch ships the three networks' weights in its wheel (``facenet_pytorch/data/*.pt``), so
nothing is downloaded. Inputs are RGB images scaled to ``(x - 127.5) / 128``, NCHW float32:

- ``pnet``: ``image`` [batch, 3, height, width] (fully convolutional, any size ≥ 12) →
  ``reg`` [batch, 4, h', w'], ``prob`` [batch, 2, h', w']
- ``rnet``: ``image`` [batch, 3, 24, 24] → ``reg`` [batch, 4], ``prob`` [batch, 2]
- ``onet``: ``image`` [batch, 3, 48, 48] → ``reg`` [batch, 4], ``landmarks`` [batch, 10],
  ``prob`` [batch, 2]

>>> paths = export_mtcnn("out/detectors")     # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from export.onnx_export import ParityReport, check_parity, export_module

log = logging.getLogger(__name__)

# Fixed input sides of the refinement and output networks (the MTCNN paper's crops).
RNET_SIZE = 24
ONET_SIZE = 48

OUTPUTS = {
    "pnet": ("reg", "prob"),
    "rnet": ("reg", "prob"),
    "onet": ("reg", "landmarks", "prob"),
}


def load_torch_nets() -> dict[str, torch.nn.Module]:
    """facenet-pytorch's pretrained P/R/O-Net, in eval mode."""
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

    return {"pnet": PNet().eval(), "rnet": RNet().eval(), "onet": ONet().eval()}


def example_input(name: str, batch: int = 2, height: int = 61, width: int = 83, seed: int = 0) -> torch.Tensor:
    """A normalised random image batch of the right shape for one network."""
    side = {"rnet": RNET_SIZE, "onet": ONET_SIZE}.get(name)
    h, w = (side, side) if side else (height, width)
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, h, w, generator=g) * 255.0 - 127.5) * 0.0078125


def export_mtcnn(
    out_dir: str | os.PathLike,
    opset: int = 17,
    tolerance: float = 1e-4,
    nets: dict[str, torch.nn.Module] | None = None,
) -> dict[str, tuple[Path, ParityReport]]:
    """Write ``mtcnn_pnet.onnx``, ``mtcnn_rnet.onnx``, ``mtcnn_onet.onnx`` into ``out_dir``; each
    is checked against PyTorch on a random image batch (raises ParityError beyond ``tolerance``)."""
    nets = nets or load_torch_nets()
    out_dir = Path(out_dir)
    result = {}
    for name, net in nets.items():
        path = out_dir / f"mtcnn_{name}.onnx"
        x = example_input(name)
        axes = {"image": {0: "batch"}}
        if name == "pnet":
            axes["image"].update({2: "height", 3: "width"})
            out_axes = {0: "batch", 2: "out_height", 3: "out_width"}
        else:
            out_axes = {0: "batch"}
        axes.update({o: out_axes for o in OUTPUTS[name]})
        export_module(net, {"image": x}, path, OUTPUTS[name], axes, opset=opset)
        # A second shape checks that the dynamic axes really are dynamic.
        x2 = example_input(name, batch=3, height=37, width=29, seed=1)
        report = check_parity(net, path, {"image": x2}, OUTPUTS[name], tolerance).check()
        result[name] = (path, report)
    return result
