"""Log-mel spectrogram in numpy, matching training's torchaudio MelSpectrogram.

torchaudio's defaults that matter here: centre padding with reflection, a periodic Hann window of
``win_length`` zero-padded to ``n_fft`` in the middle, an HTK mel scale with no filter-area
normalisation, and power 2. :func:`log_mel` reproduces all of them (tests/test_logmel.py checks
the two against each other on real speech).

>>> from edge_mer.config import AudioCfg
>>> import numpy as np
>>> log_mel(np.zeros(16000, np.float32), AudioCfg()).shape
(128, 101)
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from edge_mer.config import AudioCfg


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate_hz: int, n_fft: int, n_mels: int, f_min_hz: float, f_max_hz: float) -> np.ndarray:
    """HTK triangular filters, shape ``[n_freqs, n_mels]`` (torchaudio's ``melscale_fbanks``)."""
    n_freqs = n_fft // 2 + 1
    all_freqs = np.linspace(0.0, sample_rate_hz / 2.0, n_freqs)
    m_pts = np.linspace(_hz_to_mel(f_min_hz), _hz_to_mel(f_max_hz), n_mels + 2)
    f_pts = _mel_to_hz(m_pts)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up))
    fb.setflags(write=False)
    return fb


@lru_cache(maxsize=8)
def _window(win_length: int, n_fft: int) -> np.ndarray:
    # Periodic Hann (torch.hann_window(periodic=True)), centred inside n_fft.
    n = np.arange(win_length, dtype=np.float64)
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)
    left = (n_fft - win_length) // 2
    out = np.zeros(n_fft, dtype=np.float64)
    out[left : left + win_length] = w
    out.setflags(write=False)
    return out


def mel_power(wave: np.ndarray, cfg: AudioCfg) -> np.ndarray:
    """Mel power spectrogram ``[n_mels, frames]`` (float64) of a mono waveform."""
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    pad = cfg.n_fft // 2
    if wave.size <= pad:
        # reflect padding needs more samples than the pad; zero-pad very short inputs first
        wave = np.pad(wave, (0, pad + 1 - wave.size))
    padded = np.pad(wave, (pad, pad), mode="reflect")
    n_frames = 1 + (padded.size - cfg.n_fft) // cfg.hop_length
    frames = np.lib.stride_tricks.as_strided(
        padded,
        shape=(n_frames, cfg.n_fft),
        strides=(padded.strides[0] * cfg.hop_length, padded.strides[0]),
        writeable=False,
    )
    spec = np.abs(np.fft.rfft(frames * _window(cfg.win_length, cfg.n_fft), axis=1))
    if cfg.power != 1.0:
        spec = spec**cfg.power
    fb = mel_filterbank(cfg.sample_rate_hz, cfg.n_fft, cfg.n_mels, cfg.f_min_hz, cfg.f_max_hz)
    return (spec @ fb).T


def log_mel(wave: np.ndarray, cfg: AudioCfg) -> np.ndarray:
    """``log(mel power + cfg.log_offset)``, float32 ``[n_mels, frames]``; frames =
    ``1 + len(wave) // hop_length``."""
    return np.log(mel_power(wave, cfg) + cfg.log_offset).astype(np.float32)


def front_end(wave: np.ndarray, cfg: AudioCfg) -> np.ndarray:
    """The audio encoder's input for ``wave`` by the bundle's ``audio.frontend``: this project's
    log-mel (:func:`log_mel`) or Whisper's (:func:`edge_mer.features.whisper_mel.whisper_log_mel`)."""
    if cfg.frontend == "whisper":
        from edge_mer.features.whisper_mel import whisper_log_mel

        return whisper_log_mel(wave)
    return log_mel(wave, cfg)
