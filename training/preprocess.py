"""One preprocessing pass from media files to the four-stream cache (layout: training/cache.py).

    python -m training.preprocess --dataset ravdess=../shared/data/ravdess/audio_speech \\
        --out cache/ravdess_audio --streams audio

Datasets are ``KIND=PATH``: ``ravdess``, ``crema-d``, ``mosei`` (a folder holding the SDK's .csd
files and, optionally, the raw media) and ``manifest`` (a CSV/JSONL file of one's own recordings).
Per clip: audio -> 16 kHz mono -> torchaudio log-mel; video -> frames at ``face.sample_fps`` ->
MTCNN face crops and dlib 68-point landmarks; text -> the dataset's transcript, else Vosk when
``text.vosk_model`` is set.

The run shows a progress bar, uses a process pool (``--workers``, default: all cores), skips clips
already done (resume), records each failed clip with its stage and reason instead of stopping,
and can be split across machines with ``--shard i/N`` (0-based; e.g. a SLURM array's
``$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`` or a Kubernetes indexed job's
``$JOB_COMPLETION_INDEX/N``) writing into one shared cache directory. A cache built with other
settings is refused rather than mixed.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import logging
import multiprocessing
import os
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edge_mer.cli import add_config_args
from edge_mer.config import AudioCfg, Config, FaceCfg, LandmarksCfg, TextCfg, load_config, save_config
from edge_mer.errors import ConfigError, EdgeMerError, MediaError
from edge_mer.media import iter_video_frames, load_audio, probe
from training import cache as cache_mod
from training.data.base import Clip, DatasetReader

log = logging.getLogger("training.preprocess")

# A clip whose loudest sample is below -80 dBFS holds no speech worth a log-mel (digital silence or
# a muted track); it is reported rather than cached as a flat spectrogram.
SILENCE_PEAK = 10 ** (-80 / 20)
# Frames per MTCNN call: bounds memory for 720p video (16 RGB frames ~ 44 MB) while batching.
FACE_BATCH = 16
DATASET_KINDS = ("ravdess", "crema-d", "mosei", "manifest")
# Per config section, the keys that change what is written to the cache (the manifest's settings).
CACHE_KEYS = {
    # The cache always holds the project's own log-mels (torchaudio); audio.frontend only tells the
    # runtime which front end a bundle's encoder reads, so it is not a cache setting.
    "audio": tuple(f.name for f in dataclasses.fields(AudioCfg) if f.name != "frontend"),
    "face": ("image_size", "margin_px", "min_face_size_px", "thresholds", "scale_factor", "select", "sample_fps"),
    "landmarks": ("detector",),
    "text": ("vosk_model",),
}


class ClipFailure(Exception):
    """A clip that cannot be cached; ``stage`` names the step (decode, audio, face, ...)."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = " ".join(reason.split())


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a worker needs: the config sections that shape the cache, and the streams wanted."""

    audio: AudioCfg
    face: FaceCfg
    landmarks: LandmarksCfg
    text: TextCfg
    streams: tuple[str, ...]

    @classmethod
    def from_config(cls, cfg: Config, streams: tuple[str, ...]) -> "Settings":
        return cls(cfg.audio, cfg.face, cfg.landmarks, cfg.text, streams)

    def manifest_settings(self) -> dict[str, Any]:
        """The config keys the cached arrays depend on, per section. Keys read only later (window
        sizes, jaw dropping, normalisation, the text backbone) are left out, so changing them does
        not invalidate a cache."""
        out = {}
        for name, keys in CACHE_KEYS.items():
            section = dataclasses.asdict(getattr(self, name))
            out[name] = {k: list(section[k]) if isinstance(section[k], tuple) else section[k] for k in keys}
        return out


# --------------------------------------------------------------------------- per-clip work

# Heavy models (and the last decoded long recording), created once per worker process on first use.
_MODELS: dict[str, Any] = {}


def _face_detector(cfg: FaceCfg):
    if "face" not in _MODELS:
        from training.face_detect import FaceDetector

        _MODELS["face"] = FaceDetector(cfg)
    return _MODELS["face"]


def _landmark_predictor():
    if "landmarks" not in _MODELS:
        from edge_mer.face.landmarks import LandmarkPredictor

        _MODELS["landmarks"] = LandmarkPredictor()
    return _MODELS["landmarks"]


def check_vosk_model(model_dir: str) -> None:
    """Fail fast, before any clip, on a path that is not an unpacked Vosk model."""
    if not Path(model_dir, "am").is_dir() or not Path(model_dir, "conf").is_dir():
        raise ConfigError(f"text.vosk_model: {model_dir} is not a Vosk model directory (needs am/ and conf/)")


def transcribe_vosk(wave: np.ndarray, model_dir: str, sample_rate_hz: int) -> str:
    """Transcript of a mono float32 waveform with the Vosk model in ``model_dir`` (never
    ``vosk.Model(lang=...)``, which downloads)."""
    if "vosk" not in _MODELS:
        import vosk

        check_vosk_model(model_dir)
        vosk.SetLogLevel(-1)
        _MODELS["vosk"] = vosk.Model(str(model_dir))
    import vosk

    rec = vosk.KaldiRecognizer(_MODELS["vosk"], sample_rate_hz)
    pcm = (np.clip(wave, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    words = []
    step = sample_rate_hz * 2  # feed 1 s of 16-bit samples at a time, as a stream would
    for i in range(0, len(pcm), step):
        if rec.AcceptWaveform(pcm[i : i + step]):
            words.append(json.loads(rec.Result()).get("text", ""))
    words.append(json.loads(rec.FinalResult()).get("text", ""))
    return " ".join(w for w in words if w).strip()


def _load_audio(path: str, sample_rate_hz: int, segmented: bool) -> np.ndarray:
    # Segments of one long recording (CMU-MOSEI) come in order: keep the last decoded file so a
    # video's 20 segments decode it once, not 20 times.
    key = (path, sample_rate_hz)
    if segmented and _MODELS.get("last_audio", (None,))[0] == key:
        return _MODELS["last_audio"][1]
    wave = load_audio(path, sample_rate_hz)
    if segmented:
        _MODELS["last_audio"] = (key, wave)
    return wave


def _audio(clip: Clip, cfg: AudioCfg) -> np.ndarray:
    segmented = clip.start_s is not None or clip.end_s is not None
    try:
        wave = _load_audio(clip.media["audio"], cfg.sample_rate_hz, segmented)
    except MediaError as exc:
        raise ClipFailure("decode", str(exc)) from None
    if segmented:
        a = int(round((clip.start_s or 0.0) * cfg.sample_rate_hz))
        b = len(wave) if clip.end_s is None else int(round(clip.end_s * cfg.sample_rate_hz))
        wave = wave[a:b]
        if wave.size == 0:
            raise ClipFailure("audio", f"segment {clip.start_s}-{clip.end_s} s lies outside the audio")
    peak = float(np.abs(wave).max())
    if peak < SILENCE_PEAK:
        dbfs = 20 * np.log10(peak) if peak > 0 else float("-inf")
        raise ClipFailure("audio", f"silent audio (peak {dbfs:.0f} dBFS)")
    return wave


def _video(clip: Clip, settings: Settings, want_face: bool, want_landmarks: bool) -> dict[str, np.ndarray]:
    """Face crops and/or landmarks of the frames sampled at ``face.sample_fps``."""
    path = clip.media["video"]
    detector = _face_detector(settings.face)
    detector.reset()
    predictor = _landmark_predictor() if want_landmarks else None
    t0 = clip.start_s or 0.0
    crops, crop_t, marks, mark_t = [], [], [], []
    n_frames = 0

    def flush(batch: list[tuple[float, np.ndarray]]) -> None:
        for (t, rgb), det in zip(batch, detector.detect([f for _, f in batch])):
            if det is None:
                continue
            if want_face:
                crops.append(detector.crop(rgb, det))
                crop_t.append(t - t0)
            if predictor is not None:
                marks.append(predictor.predict(rgb, det.box))
                mark_t.append(t - t0)

    batch: list[tuple[float, np.ndarray]] = []
    try:
        for t, bgr in iter_video_frames(path, fps=settings.face.sample_fps, start_s=clip.start_s):
            if clip.end_s is not None and t >= clip.end_s:
                break
            n_frames += 1
            batch.append((t, np.ascontiguousarray(bgr[:, :, ::-1])))
            if len(batch) == FACE_BATCH:
                flush(batch)
                batch = []
        flush(batch)
    except MediaError as exc:
        raise ClipFailure("decode", str(exc)) from None
    if n_frames == 0:
        raise ClipFailure("decode", f"{path}: no video frames decoded")
    if not crops and not marks:
        raise ClipFailure("face", f"no face found in any of {n_frames} sampled frames")
    out: dict[str, np.ndarray] = {}
    if want_face:
        out["face"] = np.stack(crops).astype(np.uint8)
        out["face_t"] = np.asarray(crop_t, np.float32)
    if predictor is not None:
        out["landmarks"] = np.stack(marks).astype(np.float32)
        out["landmarks_t"] = np.asarray(mark_t, np.float32)
    return out


def _landmarks_from_csv(clip: Clip, settings: Settings) -> dict[str, np.ndarray]:
    from training.data.ravdess import load_landmark_csv

    try:
        t, pts = load_landmark_csv(clip.media["landmarks_csv"])
    except MediaError as exc:
        raise ClipFailure("landmarks", str(exc)) from None
    t0, t1 = clip.start_s or 0.0, clip.end_s if clip.end_s is not None else np.inf
    keep = (t >= t0) & (t < t1)
    # subsample the tracker's every-frame output to the cache's frame rate
    if settings.face.sample_fps and keep.any():
        slot = np.floor((t - t0) * settings.face.sample_fps)
        first = np.r_[True, slot[1:] != slot[:-1]]
        keep &= first
    if not keep.any():
        raise ClipFailure("landmarks", f"{clip.media['landmarks_csv']}: no tracked frames in the clip")
    return {"landmarks": pts[keep], "landmarks_t": (t[keep] - t0).astype(np.float32)}


def process_clip(clip: Clip, settings: Settings) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays and index row of one clip; raises :class:`ClipFailure`."""
    from training.features import log_mel_torch

    wanted = [s for s in settings.streams if s in clip.streams_available()]
    arrays: dict[str, np.ndarray] = {}
    duration = None
    wave = None
    if "audio" in clip.media and ("audio" in wanted or ("text" in wanted and clip.transcript is None and settings.text.vosk_model)):
        wave = _audio(clip, settings.audio)
        duration = len(wave) / settings.audio.sample_rate_hz
        if "audio" in wanted:
            arrays["logmel"] = log_mel_torch(wave, settings.audio)
    want_face, want_marks = "face" in wanted, "landmarks" in wanted
    if want_marks and "landmarks_csv" in clip.media:
        arrays.update(_landmarks_from_csv(clip, settings))
        want_marks = False
    if want_face or want_marks:
        arrays.update(_video(clip, settings, want_face, want_marks))
    text_source = None
    if "text" in wanted:
        if clip.transcript is not None:
            text, text_source = clip.transcript, "dataset"
        elif settings.text.vosk_model and wave is not None:
            text, text_source = transcribe_vosk(wave, settings.text.vosk_model, settings.audio.sample_rate_hz), "vosk"
        else:
            text = None
        if text:
            arrays["text"] = np.array(text)
        else:
            text_source = None
    if not any(k in arrays for keys in cache_mod.STREAM_KEYS.values() for k in keys):
        raise ClipFailure("select", f"none of the streams {', '.join(settings.streams)} can come from this clip's media")
    if duration is None:
        duration = _duration(clip)
    arrays["duration_s"] = np.array(float(duration))
    streams = [s for s, keys in cache_mod.STREAM_KEYS.items() if keys[0] in arrays]
    record = {
        "id": clip.id,
        "dataset": clip.dataset,
        "speaker": clip.speaker,
        "media": dict(clip.media),
        "streams": streams,
        "text_source": text_source,
    }
    if clip.start_s is not None or clip.end_s is not None:
        record["segment_s"] = [clip.start_s, clip.end_s]
    return arrays, record


def _duration(clip: Clip) -> float:
    if clip.start_s is not None and clip.end_s is not None:
        return clip.end_s - clip.start_s
    path = clip.media.get("video") or clip.media.get("audio")
    info = probe(path)
    if info.duration_s is None:
        raise ClipFailure("decode", f"{path}: unknown duration")
    return info.duration_s - (clip.start_s or 0.0)


def run_clip(clip: Clip, settings: Settings, root: str) -> tuple[str, str, str]:
    """Process and write one clip; returns ``(id, "done"|"failed", reason)``. Never raises for
    a bad clip: the failure is recorded in the cache instead."""
    t = time.perf_counter()
    try:
        arrays, record = process_clip(clip, settings)
        cache_mod.write_clip(root, clip.id, arrays, record)
    except ClipFailure as exc:
        stage, reason = exc.stage, exc.reason
    except EdgeMerError as exc:
        stage, reason = "error", str(exc)
    except Exception as exc:  # an unforeseen bug must not stop a 10-hour run: record it, go on
        log.warning("clip %s crashed; recorded as a failure", clip.id, exc_info=True)
        stage, reason = "internal", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    else:
        stale = cache_mod.failure_path(root, clip.id)
        if stale.exists():
            stale.unlink()
        log.debug("%s done in %.2f s", clip.id, time.perf_counter() - t)
        return clip.id, "done", ""
    cache_mod.write_json(cache_mod.failure_path(root, clip.id), {"id": clip.id, "stage": stage, "reason": reason})
    return clip.id, "failed", f"{stage}: {reason}"


def _worker_init() -> None:
    # Each worker gets one core's worth of threads: N workers on N cores, no oversubscription.
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


# --------------------------------------------------------------------------- the run


def make_reader(spec: str) -> DatasetReader:
    """``KIND=PATH`` -> a dataset reader."""
    kind, sep, path = spec.partition("=")
    if not sep or not path:
        raise ConfigError(f"--dataset {spec}: expected KIND=PATH with KIND one of {', '.join(DATASET_KINDS)}")
    if kind == "ravdess":
        from training.data.ravdess import RavdessReader

        return RavdessReader(path)
    if kind == "crema-d":
        from training.data.crema_d import CremaDReader

        return CremaDReader(path)
    if kind == "mosei":
        from training.data.mosei import MoseiReader

        return MoseiReader(path)
    if kind == "manifest":
        from training.data.manifest import ManifestReader

        return ManifestReader(path)
    raise ConfigError(f"--dataset {spec}: unknown dataset kind '{kind}' (known: {', '.join(DATASET_KINDS)})")


def parse_shard(text: str) -> tuple[int, int]:
    """``"3/8"`` -> ``(3, 8)``, 0-based."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text}: expected i/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard {text}: need 0 <= i < N")
    return i, n


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name, dist in (("edge-mer", "edge-mer"), ("torch", "torch"), ("torchaudio", "torchaudio"),
                       ("facenet-pytorch", "facenet-pytorch"), ("dlib", "dlib-bin"), ("av", "av")):
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _diff(old: Any, new: Any, prefix: str = "") -> str | None:
    """First differing key between two JSON-like settings, as ``key: old -> new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            d = _diff(old.get(key), new.get(key), f"{prefix}{key}.")
            if d:
                return d
        return None
    return None if old == new else f"{prefix.rstrip('.')}: {old!r} -> {new!r}"


def prepare_cache(root: Path, settings: Settings, datasets: list[str], sources: list[str] | None = None) -> dict:
    """Create the cache's manifest, or check that an existing one has the same settings.
    ``sources`` (``KIND=absolute path`` of each ``--dataset``) are recorded so that a later
    ``--merge-only`` can re-read the datasets' labels."""
    wanted = {"settings": settings.manifest_settings(), "streams": list(settings.streams)}
    manifest = cache_mod.read_manifest(root)
    if manifest is not None:
        # compare only the keys this code writes: a manifest may hold more (an older edge-mer wrote
        # whole sections), which must not count as a change
        stored = {name: {k: manifest["settings"].get(name, {}).get(k) for k in keys} for name, keys in CACHE_KEYS.items()}
        diff = _diff({"settings": stored, "streams": manifest.get("streams")}, wanted)
        if diff:
            raise cache_mod.CacheError(
                f"{root}: cache was built with other settings ({diff}); use a new --out directory "
                "or delete this one to rebuild")
        manifest["datasets"] = sorted(set(manifest.get("datasets", [])) | set(datasets))
    else:
        manifest = {"format": cache_mod.FORMAT, **wanted, "versions": _versions(), "datasets": sorted(datasets),
                    "counts": {"done": 0, "failed": 0, "per_stream": {s: 0 for s in cache_mod.STREAMS}}}
    if sources:
        manifest["sources"] = sorted(set(manifest.get("sources", [])) | set(sources))
    cache_mod.write_json(root / cache_mod.MANIFEST, manifest)
    return manifest


def source_spec(spec: str) -> str:
    """``KIND=PATH`` with PATH made absolute, as recorded in the cache manifest's ``sources``."""
    kind, _, path = spec.partition("=")
    return f"{kind}={Path(path).expanduser().resolve()}"


def refresh_labels(root: Path, labels: dict[str, dict], listed: set[str]) -> dict[str, int]:
    """Bring ``labels/<clip_id>.json`` in line with the datasets' current labels, for every clip
    in ``listed`` (the clips the readers list) that is done: write a changed or new label, remove
    the file of a clip that has no label any more. Reads nothing but the per-clip files and
    ``labels``; no media is decoded. The index never holds a label. Returns the counts written
    and removed."""
    written = removed = 0
    for clip_id in sorted(listed):
        if not (cache_mod.clip_record_path(root, clip_id).exists() and cache_mod.clip_npz_path(root, clip_id).exists()):
            continue  # not done: its label is written when (if) it is
        path = cache_mod.label_path(root, clip_id)
        if clip_id in labels:
            record = {"id": clip_id, **labels[clip_id]}
            try:
                current = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
            except (OSError, json.JSONDecodeError):
                current = None
            if current != record:
                cache_mod.write_json(path, record)
                written += 1
        elif path.is_file():
            path.unlink()
            removed += 1
    return {"written": written, "removed": removed}


def read_labels(readers: list[DatasetReader]) -> tuple[dict[str, dict], set[str]]:
    """Every reader's label records and the ids it lists (a scan of the file names or manifest
    rows; no media decoded)."""
    labels: dict[str, dict] = {}
    listed: set[str] = set()
    for reader in readers:
        listed |= {clip.id for clip in reader.clips()}
        labels.update(reader.labels())
    return labels, listed


def merge_only(root: Path, specs: list[str]) -> dict:
    """``--merge-only``: refresh the labels of the done clips from the datasets (``--dataset``,
    else the ``sources`` the cache manifest recorded), then merge."""
    manifest = cache_mod.read_manifest(root)
    if manifest is None:
        raise cache_mod.CacheError(f"{root}: no {cache_mod.MANIFEST} (not a cache directory)")
    readers = []
    for spec in specs or manifest.get("sources", []):
        try:
            readers.append(make_reader(spec))
        except EdgeMerError as exc:
            log.warning("labels of %s not refreshed: %s", spec, exc)
    if readers:
        labels, listed = read_labels(readers)
        changed = refresh_labels(root, labels, listed)
        log.info("labels: %d written, %d removed", changed["written"], changed["removed"])
    return cache_mod.merge(root)


def _iter_shard(readers: list[DatasetReader], shard: tuple[int, int], root: Path,
                seen: set[str] | None = None) -> Iterator[Clip]:
    """This shard's clips; ``seen`` (if given) collects the ids of every clip listed, all shards."""
    i, n = shard
    seen = set() if seen is None else seen
    k = -1
    for reader in readers:
        for clip in reader.clips():
            if clip.id in seen:
                raise ConfigError(f"clip id {clip.id} appears twice (is a dataset given twice?)")
            seen.add(clip.id)
            k += 1
            if k % n == i:
                yield clip
        for failure in reader.failures:
            cache_mod.write_json(cache_mod.failure_path(root, path=failure.path),
                                 {"path": failure.path, "stage": "scan", "reason": failure.reason})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.preprocess", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", action="append", default=[], metavar="KIND=PATH",
                        help=f"a dataset to read; KIND is one of {', '.join(DATASET_KINDS)}; repeatable")
    parser.add_argument("--out", required=True, help="cache directory (created; reused to resume)")
    parser.add_argument("--streams", default=",".join(cache_mod.STREAMS),
                        help="comma-separated streams to cache (default: all four)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: all cores; 1 = in this process)")
    parser.add_argument("--shard", default="0/1", metavar="i/N", help="process only shard i of N (0-based)")
    parser.add_argument("--limit", type=int, default=None, help="stop after this many clips of the shard (a trial run)")
    parser.add_argument("--merge-only", action="store_true", help="only rebuild index/labels/failures from the per-clip files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_args(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    root = Path(args.out)
    if args.merge_only:
        counts = merge_only(root, args.dataset)
        print(json.dumps(counts))
        return 0
    if not args.dataset:
        raise ConfigError("give at least one --dataset KIND=PATH")
    streams = tuple(s.strip() for s in args.streams.split(",") if s.strip())
    unknown = [s for s in streams if s not in cache_mod.STREAMS]
    if unknown or not streams:
        raise ConfigError(f"--streams {args.streams}: unknown stream(s) {', '.join(unknown)} (known: {', '.join(cache_mod.STREAMS)})")
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: must be at least 1")
    shard = parse_shard(args.shard)
    cfg = load_config(args.config, args.overrides)
    settings = Settings.from_config(cfg, streams)
    if settings.landmarks.detector != "dlib" and "landmarks" in streams:
        raise ConfigError(f"landmarks.detector: {settings.landmarks.detector!r} is not available (only 'dlib')")
    if settings.text.vosk_model and "text" in streams:
        check_vosk_model(settings.text.vosk_model)
    readers = [make_reader(spec) for spec in args.dataset]
    prepare_cache(root, settings, sorted({r.name for r in readers}), [source_spec(spec) for spec in args.dataset])
    save_config(cfg, root, name="preprocess_config.toml")

    todo, skipped, untranscribed = [], 0, 0
    listed: set[str] = set()
    # The whole scan runs even with --limit, so that every reader's labels are complete (the
    # label refresh below removes the label of a listed clip that has none).
    for clip in _iter_shard(readers, shard, root, listed):
        if "text" in streams and clip.transcript is None and "audio" in clip.media and not settings.text.vosk_model:
            untranscribed += 1
        if cache_mod.clip_record_path(root, clip.id).exists() and cache_mod.clip_npz_path(root, clip.id).exists():
            skipped += 1  # done in an earlier run: resume
            continue
        if args.limit is None or len(todo) < args.limit:
            todo.append(clip)
    labels: dict[str, dict] = {}
    for reader in readers:
        labels.update(reader.labels())
    log.info("%d clips to do, %d already done (shard %d/%d)", len(todo), skipped, *shard)

    from tqdm import tqdm

    t_start = time.perf_counter()
    done = failed = 0
    bar = tqdm(total=len(todo), unit="clip", disable=args.no_progress, file=sys.stderr, dynamic_ncols=True)

    def finished(clip_id: str, status: str, reason: str) -> None:
        nonlocal done, failed
        if status == "done":
            done += 1
        else:
            failed += 1
            log.info("%s failed: %s", clip_id, reason)
        bar.set_postfix(failed=failed, refresh=False)
        bar.update(1)

    try:
        if args.workers == 1 or len(todo) <= 1:
            for clip in todo:
                finished(*run_clip(clip, settings, str(root)))
        else:
            # spawn, not fork: torch and OpenCV thread pools do not survive a fork safely
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_worker_init) as pool:
                futures = [pool.submit(run_clip, clip, settings, str(root)) for clip in todo]
                for fut in cf.as_completed(futures):
                    finished(*fut.result())
    finally:
        bar.close()
        seconds = time.perf_counter() - t_start
        # Labels of every done clip (new or done earlier) from the datasets as they are now:
        # labels added to or corrected in a manifest after preprocessing need no rebuild.
        label_changes = refresh_labels(root, labels, listed)
        counts = cache_mod.merge(root)
    rate = len(todo) / seconds if seconds > 0 else 0.0
    notes = []
    if untranscribed:
        # Named once for the run, not per clip: text cannot come from these clips.
        notes.append(f"text: {counts['per_stream'].get('text', 0)} of {counts['done']} clips; {untranscribed} of this "
                     "run's clips have no transcript and no text.vosk_model is set (set text.vosk_model to a Vosk "
                     "model directory, or give transcripts)")
    for note in notes:
        log.warning("%s", note)
    summary = {"shard": args.shard, "processed": len(todo), "done": done, "failed": failed, "skipped": skipped,
               "seconds": round(seconds, 2), "clips_per_s": round(rate, 2), "workers": args.workers,
               "labels": label_changes, "cache": counts, "notes": notes}
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return run(args)
    except EdgeMerError as exc:
        print(f"preprocess: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
