"""Training-side audio features with torchaudio, the reference that the runtime's numpy log-mel
(edge_mer.features.logmel) reproduces."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torchaudio

from edge_mer.config import AudioCfg
from edge_mer.features.logmel import mel_filterbank


@lru_cache(maxsize=4)
def mel_transform(cfg: AudioCfg) -> torchaudio.transforms.MelSpectrogram:
    t = torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate_hz,
        n_fft=cfg.n_fft,
        win_length=cfg.win_length,
        hop_length=cfg.hop_length,
        f_min=cfg.f_min_hz,
        f_max=cfg.f_max_hz,
        n_mels=cfg.n_mels,
        power=cfg.power,
        center=True,
        pad_mode="reflect",
        norm=None,
        mel_scale="htk",
    )
    # torchaudio builds its HTK filterbank in float32, which puts ~1e-5 absolute error on the
    # filter edges; load the same filters computed in float64 (edge_mer's) so training and the
    # runtime share one filterbank exactly and differ only by float32 arithmetic.
    with torch.no_grad():
        fb = mel_filterbank(cfg.sample_rate_hz, cfg.n_fft, cfg.n_mels, cfg.f_min_hz, cfg.f_max_hz)
        t.mel_scale.fb.copy_(torch.tensor(np.array(fb), dtype=torch.float32))
    return t


def log_mel_torch(wave: np.ndarray | torch.Tensor, cfg: AudioCfg, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """``log(mel power + offset)`` as float32 ``[n_mels, frames]``."""
    x = torch.as_tensor(np.asarray(wave), dtype=dtype).reshape(-1)
    with torch.no_grad():
        mel = mel_transform(cfg).to(dtype)(x)
        return torch.log(mel + cfg.log_offset).to(torch.float32).numpy()
