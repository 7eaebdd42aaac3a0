"""What every stage shares: the per-window result, the model loader, the stage interface."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edge_mer.config import RuntimeCfg
from edge_mer.errors import ConfigError
from edge_mer.modality import Modality
from edge_mer.stream.stats import Stats

if TYPE_CHECKING:
    from edge_mer.backends.base import Model
    from edge_mer.bundle import Bundle
    from edge_mer.stream.sources import AudioChunk
    from edge_mer.stream.windower import Window

log = logging.getLogger(__name__)


@dataclass
class WindowFeatures:
    """A window's features per modality, and what the sinks may show about it."""

    features: dict[Modality, np.ndarray] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)  # modality -> why it is missing
    reliability: dict[Modality, float] = field(default_factory=dict)  # 0..1 per present modality (fusion weight)
    reliability_parts: dict[Modality, dict[str, float]] = field(default_factory=dict)  # what a reliability is the product of
    faces: int = 0
    box: np.ndarray | None = None  # last face box of the window (for --display)
    landmarks: np.ndarray | None = None  # last landmarks of the window (for --display)
    text: str = ""


class Stage:
    """One modality's work on a window: built from the bundle (``from_bundle`` of each subclass,
    which says why the modality is off when it cannot run here), then called with each window to
    add its features (or its absent reason) to the window's :class:`WindowFeatures`. Stages that
    follow the audio as it arrives (speech-to-text) also get every chunk."""

    modality: Modality

    def __init__(self, encoder: "Model", stats: Stats) -> None:
        self.encoder = encoder
        self.stats = stats

    def __call__(self, window: "Window", out: WindowFeatures) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        with self.stats.time(f"encode_{self.modality.value}"):
            return self.encoder.run(feeds)["feature"].astype(np.float32)

    def start(self) -> None:
        """Start background work before the source runs (default: none)."""

    def push_audio(self, chunk: "AudioChunk") -> None:
        """Every audio chunk of the source, on the reader thread (default: ignored)."""

    def end_audio(self) -> None:
        """The source has no more audio (default: nothing to do)."""

    def close(self) -> None:
        """End any background work (joined, so no native call is left running at exit)."""

    def drops(self) -> dict[str, int]:
        return {}


def encoder_model(bundle: "Bundle", m: Modality, runtime_cfg: RuntimeCfg) -> "Model":
    """The bundle's encoder for ``m`` at ``runtime.precision`` (logged once)."""
    precision, entry = bundle.encoder_variant(m, runtime_cfg.precision)
    model = load_model(bundle, entry, f"encoders.{m.value}", runtime_cfg)
    log.info("encoder %s: %s (%s)", m.value, entry["file"], precision)
    return model


def load_model(bundle: "Bundle", entry: dict, target: str, runtime_cfg: RuntimeCfg) -> "Model":
    """The model for a bundle file entry: the TensorRT engine built for this device for ``target``
    (``encoders.audio``, ``heads.audio+text``) when ``runtime.backend == "tensorrt"`` and the
    bundle has one, else ONNX Runtime with ``runtime.providers``."""
    from edge_mer.backends.onnx_backend import OnnxModel

    if runtime_cfg.backend == "tensorrt":
        engine = _engine_for(bundle, target, runtime_cfg.precision)
        if engine is not None:
            from edge_mer.backends.trt_backend import TrtModel

            log.info("%s: TensorRT engine %s", target, engine["file"])
            return TrtModel.from_file(bundle.path(engine), runtime_cfg)
        log.info("%s: no TensorRT engine for this device in the bundle; using ONNX Runtime", target)
    elif runtime_cfg.backend != "onnxruntime":
        raise ConfigError(f"runtime.backend must be 'onnxruntime' or 'tensorrt', got {runtime_cfg.backend!r}")
    return OnnxModel.from_file(bundle.path(entry), runtime_cfg)


def _engine_for(bundle: "Bundle", target: str, precision: str) -> dict | None:
    """The bundle's engine for ``target`` built on this GPU with this TensorRT (engines are not
    portable), preferring ``precision`` when several were built."""
    from edge_mer.backends.trt_backend import probe_gpu

    gpu = probe_gpu()
    usable = [
        e for e in bundle.engines()
        if e.get("target") == target and e.get("device") == gpu.device
        and str(e.get("tensorrt_version")) == gpu.tensorrt_version
    ]
    preferred = [e for e in usable if e.get("precision") == precision]
    return (preferred or usable or [None])[0]
