"""The audio stage: a window's speech through the audio encoder.

The front end of the bundle's ``features.audio`` (the numpy log-mel that matches training's
torchaudio features, or Whisper's log-mel), for windows above the silence floor in which the
bundle's speech detector (Silero VAD, ``runtime.vad``) finds speech
(:mod:`edge_mer.stream.speech`); per-user input standardisation where the encoder was pretrained
on it. Reliability = the window's speech fraction (1 without a detector).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from edge_mer.config import AudioCfg, Config, RuntimeCfg
from edge_mer.errors import BundleError, ConfigError
from edge_mer.features.logmel import front_end
from edge_mer.modality import Modality
from edge_mer.stream.stages.base import Stage, WindowFeatures, encoder_model
from edge_mer.stream.stats import Stats
from edge_mer.stream.usernorm import RunningNorm, user_norm_from_bundle
from edge_mer.stream.windower import Window

if TYPE_CHECKING:
    from edge_mer.bundle import Bundle
    from edge_mer.stream.speech import SpeechStream

log = logging.getLogger(__name__)

# A window whose audio RMS is below this is silence: the audio modality is left out. Speech near a
# microphone sits around -30 to -15 dBFS RMS; -60 dBFS leaves a wide margin for quiet talkers.
SILENCE_RMS_DBFS = -60.0
# A window with less real audio than this fraction (stream start, dropped chunks) has no audio.
MIN_AUDIO_COVERAGE = 0.5


class AudioStage(Stage):
    """A window's audio -> the audio encoder's feature (or why there is none)."""

    modality = Modality.AUDIO

    def __init__(self, encoder, audio_cfg: AudioCfg, stats: Stats, speech: "SpeechStream | None" = None,
                 vad_min_fraction: float = 0.0, input_norm: RunningNorm | None = None) -> None:
        super().__init__(encoder, stats)
        self.audio_cfg = audio_cfg
        # Speech detection (runtime.vad and the bundle's detectors.vad): this session's detector
        # stream, and the fraction of a window's frames that must be speech for its audio to count.
        self.speech = speech
        self.vad_min_fraction = vad_min_fraction
        # Encoders pretrained on per-speaker standardised inputs: the running per-user statistics
        # of their input (log-mel bins), see edge_mer.stream.usernorm.
        self.input_norm = input_norm

    @classmethod
    def from_bundle(cls, bundle: "Bundle", cfg: Config, stats: Stats, has_audio: bool,
                    absent: dict[str, str]) -> "AudioStage | None":
        if Modality.AUDIO not in bundle.modalities:
            return None
        audio_cfg = bundle.feature_cfg(Modality.AUDIO)
        check_audio_frontend(audio_cfg, f"bundle {bundle.root}: features.audio")
        if not has_audio:
            absent["audio"] = "no audio in the source"
            return None
        encoder = encoder_model(bundle, Modality.AUDIO, cfg.runtime)
        norm = None
        entry = bundle.encoder(Modality.AUDIO).get("input_norm")
        if entry is not None:
            where = f"bundle {bundle.root}: encoders.audio.input_norm"
            norm = user_norm_from_bundle(bundle, entry, audio_cfg.n_mels, where, cfg.runtime)
            log.info("encoder audio: input standardised per user (%s)",
                     "adapting" if cfg.runtime.user_norm else "population statistics")
        return cls(encoder, audio_cfg, stats, _speech_stream(bundle, cfg.runtime, audio_cfg.sample_rate_hz),
                   cfg.runtime.vad_min_speech_fraction, norm)

    def __call__(self, window: Window, out: WindowFeatures) -> None:
        audio = window.audio
        if audio is None or window.audio_coverage < MIN_AUDIO_COVERAGE:
            out.absent["audio"] = "no audio in the window"
            return
        if not np.all(np.isfinite(audio)):
            # A damaged file or driver can hand over NaN/Inf: no prediction beats a made-up one.
            out.absent["audio"] = "non-finite samples (NaN or Inf) in the window"
            return
        rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
        if rms <= 0 or 20 * np.log10(rms) < SILENCE_RMS_DBFS:
            out.absent["audio"] = "silence"
            return
        fraction = 1.0
        if self.speech is not None:
            # Noise, music, breathing: no speech, no emotion read from it (and the per-user input
            # statistics, updated in the log-mel step below, never see it).
            with self.stats.time("vad"):
                fraction = self.speech(audio, int(round(window.t_start_s * self.speech.sample_rate_hz)))
            if fraction < self.vad_min_fraction:
                out.absent["audio"] = "no speech"
                return
        with self.stats.time("logmel"):
            mel = front_end(audio, self.audio_cfg)
            if self.input_norm is not None:
                # The window's frames update the person's per-bin statistics as one window.
                mel = self.input_norm(mel.T).T
        out.features[Modality.AUDIO] = self.encode({"logmel": mel[None]})
        out.reliability[Modality.AUDIO] = round(float(fraction), 3)


def _speech_stream(bundle: "Bundle", runtime: RuntimeCfg, sample_rate_hz: int) -> "SpeechStream | None":
    """The session's speech detector stream, or None (``runtime.vad`` off, or a bundle without
    ``detectors.vad``: then only the silence floor drops windows, logged once)."""
    if not runtime.vad:
        log.info("speech detection off (runtime.vad = false): only silent windows lose their audio")
        return None
    if not 0.0 < runtime.vad_threshold < 1.0:
        raise ConfigError(f"runtime.vad_threshold must be a probability between 0 and 1 (exclusive), got {runtime.vad_threshold}")
    if not 0.0 <= runtime.vad_min_speech_fraction <= 1.0:
        raise ConfigError(f"runtime.vad_min_speech_fraction must be between 0 and 1, got {runtime.vad_min_speech_fraction}")
    entry = bundle.manifest.get("detectors", {}).get("vad")
    if entry is None:
        # Info, not a warning: bundles made before the detector existed are still good bundles.
        log.info("bundle %s has no speech detector (detectors.vad): only silent windows lose their audio, "
                 "noise and music are read as speech", bundle.name)
        return None
    from edge_mer.stream.speech import SpeechDetector

    try:
        stream = SpeechDetector.from_file(bundle.path(entry), runtime).create_stream(sample_rate_hz, runtime.vad_threshold)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; set runtime.vad=false to run without speech detection") from None
    log.info("speech detection: %s (frame threshold %g, speech in >= %g of a window)", entry["file"],
             runtime.vad_threshold, runtime.vad_min_speech_fraction)
    return stream


def check_audio_frontend(cfg: AudioCfg, where: str) -> None:
    """One line naming the problem when the audio front end cannot serve the encoder."""
    if cfg.frontend not in ("logmel", "whisper"):
        raise BundleError(f"{where}: frontend must be 'logmel' or 'whisper', got {cfg.frontend!r}")
    if cfg.frontend == "whisper" and (cfg.sample_rate_hz != 16000 or cfg.n_mels != 80 or cfg.hop_length != 160):
        raise BundleError(f"{where}: the whisper front end is 16 kHz, 80 bins, hop 160; the bundle says "
                          f"{cfg.sample_rate_hz} Hz, {cfg.n_mels} bins, hop {cfg.hop_length}")
