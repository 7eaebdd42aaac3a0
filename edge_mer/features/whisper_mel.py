"""Whisper's log-mel front end in numpy (torch-free), for the Whisper tiny.en audio encoder.

Why its own module: Whisper's encoder was trained on one exact front end, different from the
project's :mod:`edge_mer.features.logmel` (which matches training's torchaudio features): 16 kHz,
``n_fft`` 400 (25 ms) with a periodic Hann window of the same length, hop 160 (10 ms), power
spectrum, 80 mel filters on the Slaney scale with Slaney area normalisation (librosa's
``filters.mel(sr=16000, n_fft=400, n_mels=80)``, i.e. ``htk=False, norm="slaney"``, 0..8 kHz),
``log10(max(mel, 1e-10))``, floored at 8 below the maximum (80 dB of range), then
``(x + 4) / 4``. Framing is ``transformers.WhisperFeatureExtractor``'s: centred frames with
reflect padding of ``n_fft // 2`` on each side, and the last frame dropped, so ``n`` samples give
``n // 160`` frames (2 s -> 200 frames -> 100 encoder frames). The filterbank is computed here
(nothing shipped); ``tests/test_whisper_trunk.py`` checks the whole front end against
``WhisperFeatureExtractor`` on real speech.

The clamp's maximum is the analysed signal's own: Whisper takes it over the whole (30 s, zero
padded) input; :func:`whisper_log_mel` takes it over the waveform it is given, so a 2 s window is
floored relative to its own loudest bin. Zero padding does not change that maximum (silence
only adds bins at the 1e-10 floor), so for a window padded to 30 s the two agree on the
window's frames, except the frames touching the pad (their reflect padding differs).

>>> import numpy as np
>>> whisper_log_mel(np.zeros(32000, np.float32)).shape
(80, 200)
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SAMPLE_RATE_HZ = 16000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
LOG_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0  # in log10 units: bins more than 8 below the maximum are raised to it
FRAMES_PER_S = SAMPLE_RATE_HZ / HOP_LENGTH  # 100 mel frames per second, 50 encoder frames


def _hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
    """Slaney's Auditory Toolbox mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3.0, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    mel = f / f_sp
    above = f >= min_log_hz
    return np.where(above, min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep, mel)


def _mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3.0, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@lru_cache(maxsize=4)
def whisper_mel_filters(sample_rate_hz: int = SAMPLE_RATE_HZ, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters ``[n_mels, n_fft // 2 + 1]`` (float64),
    0 Hz to Nyquist: librosa's ``filters.mel(sr, n_fft, n_mels)`` defaults, which Whisper uses."""
    fft_freqs = np.linspace(0.0, sample_rate_hz / 2.0, n_fft // 2 + 1)
    mel_pts = np.linspace(_hz_to_mel_slaney(0.0), _hz_to_mel_slaney(sample_rate_hz / 2.0), n_mels + 2)
    hz_pts = _mel_to_hz_slaney(mel_pts)
    f_diff = np.diff(hz_pts)
    ramps = hz_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / f_diff[:-1, None]
    upper = ramps[2:] / f_diff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    # Slaney normalisation: every filter has unit area in Hz (2 / bandwidth).
    weights *= (2.0 / (hz_pts[2:] - hz_pts[:-2]))[:, None]
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=2)
def _hann(n: int) -> np.ndarray:
    # Periodic Hann (numpy's hanning is the symmetric one).
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n, dtype=np.float64) / n)
    w.setflags(write=False)
    return w


def whisper_mel_power(wave: np.ndarray) -> np.ndarray:
    """Mel power ``[80, len(wave) // 160]`` (float64) of a 16 kHz mono waveform, Whisper framing."""
    x = np.asarray(wave, dtype=np.float64).reshape(-1)
    pad = N_FFT // 2
    if x.size <= pad:
        # Reflect padding needs more samples than it adds; a near-empty input is silence.
        x = np.pad(x, (0, pad + 1 - x.size))
    x = np.pad(x, pad, mode="reflect")
    n_frames = 1 + (x.size - N_FFT) // HOP_LENGTH
    frames = np.lib.stride_tricks.as_strided(x, shape=(n_frames, N_FFT), strides=(x.strides[0] * HOP_LENGTH, x.strides[0]))
    spec = np.fft.rfft(frames * _hann(N_FFT), axis=1)
    power = spec.real ** 2 + spec.imag ** 2
    mel = whisper_mel_filters() @ power.T
    return mel[:, : max(0, n_frames - 1)][:, : np.asarray(wave).size // HOP_LENGTH]


def whisper_log_mel(wave: np.ndarray) -> np.ndarray:
    """Whisper's normalised log-mel ``[80, len(wave) // 160]`` (float32) of a 16 kHz mono
    waveform, clamped to 8 below the maximum of this waveform's own frames (see the module doc)."""
    mel = whisper_mel_power(wave)
    log_spec = np.log10(np.maximum(mel, LOG_FLOOR))
    if log_spec.size:
        log_spec = np.maximum(log_spec, log_spec.max() - DYNAMIC_RANGE)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def pad_or_trim(wave: np.ndarray, seconds: float = 30.0) -> np.ndarray:
    """``wave`` zero-padded (or cut) to ``seconds`` at 16 kHz: Whisper's fixed 30 s context."""
    n = int(round(seconds * SAMPLE_RATE_HZ))
    x = np.asarray(wave, dtype=np.float32).reshape(-1)[:n]
    return np.pad(x, (0, n - x.size))
