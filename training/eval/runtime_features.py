"""The features the runtime computes for each window of a recording, on the training side.

Heads are fitted on exactly what ``edge-mer run`` feeds them (train/serve parity): the same
source (:class:`~edge_mer.stream.sources.FileSource`), windower, stages (speech detection, log-mel,
per-user input statistics, the bundle's ONNX encoder at the precision that will run) as the
runtime, called in order on one thread instead of the runtime's two. tests/test_bundle_cv.py
checks that these features equal the ones ``edge-mer run --emit-features`` emits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edge_mer.modality import Modality


@dataclass
class WindowFeature:
    t_start_s: float
    t_end_s: float
    feature: np.ndarray | None  # the encoder's output, None when the modality was absent
    absent: str | None  # why it was absent
    reliability: float = 1.0  # the stage's reliability of the window (audio: the speech fraction)


def runtime_window_features(bundle_dir: str | os.PathLike, audio_path: str | os.PathLike,
                            modality: Modality = Modality.AUDIO, overrides: Sequence[str] = ()) -> list[WindowFeature]:
    """Per window of ``audio_path`` replayed through ``bundle_dir``'s stages: its ``modality``
    feature or why it has none. ``overrides`` are ``--set`` strings (e.g. ``runtime.precision=fp32``)."""
    from edge_mer.bundle import Bundle
    from edge_mer.config import load_config
    from edge_mer.stream.app import one_blas_thread
    from edge_mer.stream.sources import AudioChunk, FileSource
    from edge_mer.stream.stages import FeatureExtractor
    from edge_mer.stream.stats import Stats
    from edge_mer.stream.windower import Windower

    cfg = load_config((), tuple(overrides))
    bundle = Bundle.load(bundle_dir)
    audio_cfg = bundle.feature_cfg(Modality.AUDIO)
    out: list[WindowFeature] = []
    with one_blas_thread():
        source = FileSource(audio_path, audio_cfg.sample_rate_hz, realtime=False, use_video=False)
        extractor = FeatureExtractor.from_bundle(bundle, cfg, None, Stats(), has_video=False, has_audio=True)
        windower = Windower(bundle.window(), audio_cfg.sample_rate_hz, has_video=False, has_audio=True)

        def take(windows) -> None:
            for window in windows:
                feats = extractor(window)
                f = feats.features.get(modality)
                out.append(WindowFeature(window.t_start_s, window.t_end_s,
                                         None if f is None else np.asarray(f, np.float32).reshape(-1),
                                         feats.absent.get(modality.value), float(feats.reliability.get(modality, 1.0))))

        try:
            for item in source:
                if isinstance(item, AudioChunk):
                    extractor.push_audio(item)
                take(windower.push(item))
            take(windower.flush())
        finally:
            source.close()
            extractor.end_audio()
    return out
