"""Torch-free feature extraction for the runtime."""

from edge_mer.features.logmel import log_mel, mel_filterbank

__all__ = ["log_mel", "mel_filterbank"]
