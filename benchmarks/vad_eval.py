"""Speech detection per window: speech kept and non-speech rejected, RMS gate alone vs Silero VAD.

The runtime's audio stage leaves a window's audio out when it is silence (RMS below
``SILENCE_RMS_DBFS``) and, with ``runtime.vad``, when the Silero VAD finds too little speech in it
(:mod:`edge_mer.stream.speech`). This script measures both on the runtime's own windows: each
signal is fed to :class:`~edge_mer.stream.windower.Windower` (2 s windows every 0.5 s; at the end
only whole windows inside the signal, a signal shorter than a window giving one shorter window),
and every window goes through the same gates, in stream order, a fresh detector state per signal.

- **Speech**: RAVDESS speech clips (``--clips-per-actor`` per actor, default all 60, all 20
  actors, drawn with a fixed seed; 16 kHz via ``edge_mer.media.load_audio``). The clips begin and
  end with 0.5–1 s of silence, so a window of a clip need not hold speech. A window counts as a
  *speech window* when it overlaps the clip's voiced region by at least ``--min-overlap-s``
  (0.5 s); the voiced region runs from the first to the last 10 ms frame whose energy is within
  35 dB of the clip's loudest frame and above -70 dBFS (an energy criterion that does not depend
  on any VAD). Windows overlapping it by less are left out as ambiguous, windows not overlapping it
  at all reported as "RAVDESS pauses" (non-speech); with 2 s windows on these 3–5 s clips there
  are none of either (every window holds >= 0.5 s of the utterance). The 6 CREMA-D clips of actor
  1002 (another speaker, MP3, 2–3 s clips) are reported the same way.
- **Non-speech** (generated, ``--signals`` signals of ``--seconds`` each per condition): white,
  pink and brown noise at several RMS levels, near-silence (-70 dBFS noise), sine chords and a
  melody with harmonics (music-like), a click train and breath-like noise bursts.

Settings: the RMS gate alone (the runtime without a VAD), Silero VAD at several (frame
threshold, minimum speech fraction) pairs (the default fraction is chosen at ``--threshold``, by
the rule the markdown states), and, when the ``webrtcvad`` module can be imported
(``pip install webrtcvad-wheels``; for comparison only, the runtime does not use it), WebRTC VAD at
aggressiveness modes 2 and 3 with the same minimum fraction rule over its 30 ms frames.

    python benchmarks/vad_eval.py --json benchmarks/results/vad_eval.json \\
        --markdown benchmarks/results/vad_eval.md
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from edge_mer.bench import machine, write_report
from edge_mer.config import RuntimeCfg, WindowCfg
from edge_mer.errors import EdgeMerError
from edge_mer.stream.sources import AudioChunk
from edge_mer.stream.speech import SpeechDetector
from edge_mer.stream.stages import MIN_AUDIO_COVERAGE, SILENCE_RMS_DBFS
from edge_mer.stream.windower import Window, Windower

log = logging.getLogger("vad_eval")

REPO = Path(__file__).resolve().parent.parent
SR = 16000
DEFAULT_SETTINGS = "0.3:0.2,0.5:0.1,0.5:0.15,0.5:0.2,0.5:0.25,0.5:0.3,0.7:0.2"
EMOTIONS = {1: "neutral", 2: "calm", 3: "happy", 4: "sad", 5: "angry", 6: "fearful", 7: "disgust", 8: "surprised"}
WEBRTC_MODES = (2, 3)


# --------------------------------------------------------------------------- signals


def windows_of(x: np.ndarray, window: WindowCfg, chunk_s: float = 0.1) -> list[Window]:
    """The runtime's windows of a signal: fed to the windower in ``chunk_s`` chunks, then flushed."""
    w = Windower(window, SR, has_video=False, has_audio=True)
    step = int(round(chunk_s * SR))
    out = []
    for a in range(0, x.size, step):
        out += w.push(AudioChunk(a / SR, a // step, x[a : a + step].astype(np.float32)))
    return out + w.flush()


def voiced_region(x: np.ndarray, floor_db: float = -70.0, below_peak_db: float = 35.0) -> tuple[float, float] | None:
    """``(start_s, end_s)`` from the first to the last 10 ms frame within ``below_peak_db`` of the
    loudest frame and above ``floor_db`` dBFS (None when no frame is)."""
    n = SR // 100
    frames = x[: x.size // n * n].reshape(-1, n).astype(np.float64)
    db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    on = np.flatnonzero(db > max(floor_db, db.max() - below_peak_db))
    return (on[0] / 100.0, (on[-1] + 1) / 100.0) if on.size else None


def at_dbfs(x: np.ndarray, dbfs: float) -> np.ndarray:
    x = x - x.mean()
    x = x * (10 ** (dbfs / 20) / max(np.sqrt(np.mean(x**2)), 1e-12))
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power spectrum ~ 1 / f^exponent (0 white, 1 pink, 2 brown), flat below 20 Hz."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n, 1 / SR), 20.0)
    return np.fft.irfft(spec / f ** (exponent / 2), n)


def chords(rng: np.random.Generator, n: int) -> np.ndarray:
    """Sustained major/minor triads of pure sines, a new chord every second."""
    t = np.arange(SR) / SR
    out = []
    for _ in range(int(np.ceil(n / SR))):
        root = 110.0 * 2 ** (rng.integers(0, 24) / 12)
        third = 3 if rng.random() < 0.5 else 4
        out.append(sum(np.sin(2 * np.pi * root * 2 ** (k / 12) * t + rng.uniform(0, 2 * np.pi)) for k in (0, third, 7, 12)))
    return np.concatenate(out)[:n]


def melody(rng: np.random.Generator, n: int) -> np.ndarray:
    """Notes of a major scale (0.15–0.5 s, 6 harmonics at 1/k, attack/release envelopes, vibrato)."""
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12, 14, 16])
    out = []
    total = 0
    while total < n:
        dur = int(rng.uniform(0.15, 0.5) * SR)
        t = np.arange(dur) / SR
        f0 = 220.0 * 2 ** (rng.choice(scale) / 12) * (1 + 0.005 * np.sin(2 * np.pi * 5.5 * t))
        phase = 2 * np.pi * np.cumsum(f0) / SR
        note = sum(np.sin(k * phase) / k for k in range(1, 7))
        env = np.minimum(1.0, np.minimum(t / 0.02, (t[-1] - t) / 0.05 + 1e-3))
        out.append(note * env)
        total += dur
    return np.concatenate(out)[:n]


def clicks(rng: np.random.Generator, n: int, rate_hz: float = 4.0) -> np.ndarray:
    """A click train: 2 ms decaying clicks of peak 0.5 at ``rate_hz`` with a little jitter."""
    x = np.zeros(n)
    click = 0.5 * np.exp(-np.arange(int(0.002 * SR)) / (0.0004 * SR)) * np.sign(rng.standard_normal(int(0.002 * SR)))
    t = 0.05
    while t * SR + click.size < n:
        a = int(t * SR)
        x[a : a + click.size] += click
        t += (1 + rng.uniform(-0.1, 0.1)) / rate_hz
    return x


def breaths(rng: np.random.Generator, n: int) -> np.ndarray:
    """Breath-like bursts: pink noise band-limited to 200–4000 Hz, 0.6–1.2 s bursts with smooth
    envelopes every 2–3 s."""
    spec = np.fft.rfft(coloured_noise(rng, n, 1.0))
    f = np.fft.rfftfreq(n, 1 / SR)
    spec[(f < 200) | (f > 4000)] = 0
    noise = np.fft.irfft(spec, n)
    env = np.zeros(n)
    t = rng.uniform(0.2, 1.0)
    while t * SR < n:
        dur = rng.uniform(0.6, 1.2)
        a, m = int(t * SR), int(dur * SR)
        env[a : a + m] = np.sin(np.pi * np.arange(m) / m)[: n - a] ** 2
        t += dur + rng.uniform(1.0, 2.0)
    return noise * env


def nonspeech_conditions() -> list[tuple[str, callable]]:
    """``(name, make(rng, n) -> float32 signal)`` for every generated non-speech condition."""
    conds = []
    for colour, exponent, levels in (("white", 0.0, (-54, -40, -30, -20)), ("pink", 1.0, (-54, -40, -30, -20)),
                                     ("brown", 2.0, (-40, -30, -20))):
        for db in levels:
            conds.append((f"{colour} noise {db} dBFS", lambda rng, n, e=exponent, d=db: at_dbfs(coloured_noise(rng, n, e), d)))
    conds.append(("near-silence (white noise -70 dBFS)", lambda rng, n: at_dbfs(coloured_noise(rng, n, 0.0), -70)))
    for db in (-30, -20):
        conds.append((f"sine chords {db} dBFS", lambda rng, n, d=db: at_dbfs(chords(rng, n), d)))
        conds.append((f"melody with harmonics {db} dBFS", lambda rng, n, d=db: at_dbfs(melody(rng, n), d)))
    conds.append(("click train (4/s, peak 0.5)", lambda rng, n: clicks(rng, n).astype(np.float32)))
    conds.append(("breath-like bursts -30 dBFS", lambda rng, n: at_dbfs(breaths(rng, n), -30)))
    return conds


# --------------------------------------------------------------------------- gates


def rms_gate(w: Window) -> bool:
    """True when the runtime's checks before the VAD let the window's audio through."""
    a = w.audio
    if a is None or w.audio_coverage < MIN_AUDIO_COVERAGE or not np.all(np.isfinite(a)):
        return False
    rms = float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))
    return rms > 0 and 20 * np.log10(rms) >= SILENCE_RMS_DBFS


class Scorer:
    """Per-window frame probabilities from Silero (and WebRTC flags), computed once per signal;
    every setting is then a rule on them."""

    def __init__(self, detector: SpeechDetector, webrtc) -> None:
        self.detector = detector
        self.webrtc = webrtc
        self.vad_ms: list[float] = []  # steady-state windows (not a signal's first)
        self.first_ms: list[float] = []

    def signal(self, x: np.ndarray, window: WindowCfg) -> list[dict]:
        stream = self.detector.create_stream(SR)
        webrtc = {m: self.webrtc.Vad(m) for m in WEBRTC_MODES} if self.webrtc else {}
        out = []
        for w in windows_of(x, window):
            row = {"t_start_s": w.t_start_s, "t_end_s": w.t_end_s, "rms_pass": rms_gate(w)}
            if row["rms_pass"]:
                start = int(round(w.t_start_s * SR))
                before = stream.frames_processed
                t0 = time.perf_counter()
                stream(w.audio, start)
                ms = (time.perf_counter() - t0) * 1000
                # A whole fresh window (first of a signal, or after a reset) vs a hop of new audio.
                (self.first_ms if stream.frames_processed - before > 2 * window.hop_s * SR / 512 else self.vad_ms).append(ms)
                row["silero"] = stream.probabilities(start, start + w.audio.size)
                if webrtc:
                    pcm = (np.clip(w.audio, -1, 1) * 32767).astype(np.int16)
                    n = int(0.03 * SR)
                    frames = [pcm[a : a + n].tobytes() for a in range(0, pcm.size - n + 1, n)]
                    row["webrtc"] = {m: np.array([v.is_speech(f, SR) for f in frames]) for m, v in webrtc.items()}
            out.append(row)
        return out


def kept(row: dict, setting: str) -> bool:
    """Whether the window's audio is kept under ``setting`` (``rms``, ``silero:T:F``, ``webrtc:M:F``)."""
    if not row["rms_pass"]:
        return False
    kind, *params = setting.split(":")
    if kind == "rms":
        return True
    if kind == "silero":
        thr, minf = float(params[0]), float(params[1])
        p = row["silero"]
        return bool(p.size) and float(np.mean(p >= thr)) >= minf
    mode, minf = int(params[0]), float(params[1])
    flags = row["webrtc"][mode]
    return bool(flags.size) and float(np.mean(flags)) >= minf


# --------------------------------------------------------------------------- data


def ravdess_clips(data: Path, per_actor: int, seed: int) -> list[Path]:
    root = data / "ravdess" / "audio_speech"
    if not root.is_dir():
        raise EdgeMerError(f"{root}: RAVDESS speech not found (pass --data, the folder holding ravdess/)")
    rng = np.random.default_rng(seed)
    out = []
    for actor in range(1, 21):
        files = sorted((root / f"Actor_{actor:02d}").glob("*.flac"))
        if files:
            out += [files[i] for i in sorted(rng.choice(len(files), min(per_actor, len(files)), replace=False))]
    return out


def speech_rows(scorer: Scorer, paths: list[Path], window: WindowCfg, min_overlap_s: float) -> dict[str, list[dict]]:
    """Windows of real speech clips, split into speech / pause / ambiguous by the voiced region."""
    from edge_mer.media import load_audio

    groups: dict[str, list[dict]] = {"speech": [], "pause": [], "ambiguous": []}
    for path in paths:
        x = load_audio(path, SR)
        region = voiced_region(x)
        parts = path.stem.split("-")
        for row in scorer.signal(x, window):
            if len(parts) == 7 and path.suffix == ".flac":  # RAVDESS MM-VV-EE-II-SS-RR-AA
                row["emotion"], row["intensity"] = EMOTIONS.get(int(parts[2]), parts[2]), "strong" if parts[3] == "02" else "normal"
            overlap = 0.0 if region is None else max(0.0, min(row["t_end_s"], region[1]) - max(row["t_start_s"], region[0]))
            key = "speech" if overlap >= min_overlap_s - 1e-9 else ("pause" if overlap == 0 else "ambiguous")
            groups[key].append(row)
    return groups


# --------------------------------------------------------------------------- report


def pct(rows: list[dict], setting: str, want_kept: bool) -> float | None:
    if not rows:
        return None
    return round(100.0 * float(np.mean([kept(r, setting) == want_kept for r in rows])), 1)


def label(setting: str) -> str:
    kind, *p = setting.split(":")
    if kind == "rms":
        return "RMS gate only"
    if kind == "silero":
        return f"Silero t={p[0]} f>={p[1]}"
    return f"WebRTC m{p[0]} f>={p[1]}"


def to_markdown(result: dict) -> str:
    settings = result["settings"]
    lines = [
        "## Speech detection per window (`benchmarks/vad_eval.py`)",
        "",
        f"`{result['command']}`",
        "",
        "Windows of 2 s every 0.5 s, cut by the runtime's windower; every setting includes the runtime's "
        f"RMS gate (windows below {SILENCE_RMS_DBFS:g} dBFS are silence). Silero `t` = frame speech-probability "
        "threshold, `f` = minimum fraction of a window's 32 ms frames at or above it (WebRTC: 30 ms frames, "
        "aggressiveness mode `m`, for comparison only). A RAVDESS *speech window* overlaps the clip's voiced "
        f"region (first to last 10 ms frame within 35 dB of the loudest, energy only) by >= {result['min_overlap_s']} s; "
        "*pauses* do not overlap it at all.",
        "",
        "| condition | windows | " + " | ".join(label(s) for s in settings) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in settings) + " |",
    ]
    for row in result["rows"]:
        cells = " | ".join("" if row["pct"][s] is None else f"{row['pct'][s]:.1f}" for s in settings)
        lines.append(f"| {row['condition']} ({row['measure']}) | {row['windows']} | {cells} |")
    for key, name in (("speech_kept", "**RAVDESS speech kept %**"), ("all_speech_kept", "RAVDESS + CREMA-D speech kept %"),
                      ("nonspeech_rejected", "**generated non-speech rejected %**"),
                      ("worst_nonspeech", "worst generated condition rejected %")):
        lines.append(f"| {name} | | " + " | ".join(f"{result['summary'][s][key]:.1f}" for s in settings) + " |")
    lines += [
        "",
        f"Targets: >= 95 % of generated non-speech windows rejected and >= 95 % of RAVDESS speech windows kept. "
        f"Default rule: at the frame threshold {result['threshold']} (Silero's own default), among the minimum "
        "fractions meeting both targets, with >= 95 % rejected in every generated condition too, the one keeping "
        "the most speech windows (RAVDESS and CREMA-D), then rejecting the most non-speech. "
        f"Chosen: `runtime.vad_threshold = {result['chosen']['threshold']}`, "
        f"`runtime.vad_min_speech_fraction = {result['chosen']['min_speech_fraction']}`"
        f" ({'meets the targets' if result['chosen']['meets_targets'] else 'does NOT meet the targets'}).",
        "",
        f"RAVDESS speech windows kept % by emotion and intensity ({result['ravdess_clips']} clips; "
        f"{result['ravdess_ambiguous_windows']} windows with under {result['min_overlap_s']} s of voiced audio left out, "
        f"{result['ravdess_pause_windows']} windows without any):",
        "",
        f"| class | windows | RMS gate only | {label(result['chosen']['setting'])} |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in result["speech_by_class"]:
        lines.append(f"| {row['class']} | {row['windows']} | {row['pct']['rms']:.1f} | {row['pct'][result['chosen']['setting']]:.1f} |")
    lines += [
        "",
        f"Silero VAD cost per window (one thread, {result['machine']['cpu']}, {result['machine']['cores']} cores shared): "
        f"p50 {result['vad_ms']['p50']:.2f} ms, p95 {result['vad_ms']['p95']:.2f} ms for the 0.5 s of new audio a "
        f"window brings (16 frames); a stream's first window (2 s, 62 frames) p50 {result['vad_ms']['first_p50']:.2f} ms.",
        "",
    ]
    if result.get("webrtcvad"):
        lines += [f"WebRTC VAD: `webrtcvad-wheels` {result['webrtcvad']}, installed for this comparison only "
                  "(not a dependency of edge-mer).", ""]
    return "\n".join(lines)


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/vad_eval.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder holding ravdess/ and crema-d/")
    p.add_argument("--vad-model", default=str(REPO / "models" / "default" / "detectors" / "silero_vad.onnx"),
                   help="Silero VAD ONNX file (default: the shipped bundle's)")
    p.add_argument("--clips-per-actor", type=int, default=60, help="RAVDESS clips per actor, all 20 actors (default: all 60)")
    p.add_argument("--min-overlap-s", type=float, default=0.5, help="voiced audio a speech window must hold")
    p.add_argument("--signals", type=int, default=5, help="generated signals per non-speech condition")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each generated signal")
    p.add_argument("--settings", default=DEFAULT_SETTINGS, help="Silero THRESHOLD:MIN_FRACTION pairs (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=RuntimeCfg().vad_threshold,
                   help="frame threshold the default minimum fraction is chosen at (default: runtime.vad_threshold, %(default)s)")
    p.add_argument("--webrtc-min-fraction", type=float, default=0.2, help="minimum speech fraction for WebRTC VAD")
    p.add_argument("--no-webrtc", action="store_true", help="skip WebRTC VAD even when webrtcvad imports")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_out", help="write the results as JSON here")
    p.add_argument("--markdown", help="write the table here")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        window = WindowCfg(window_s=2.0, hop_s=0.5)
        webrtc = None
        if not args.no_webrtc:
            try:
                import webrtcvad as webrtc
            except ImportError:
                log.warning("webrtcvad not importable: WebRTC VAD left out (pip install webrtcvad-wheels)")
        settings = ["rms"] + [f"silero:{s.strip()}" for s in args.settings.split(",") if s.strip()]
        settings += [f"webrtc:{m}:{args.webrtc_min_fraction}" for m in WEBRTC_MODES] if webrtc else []
        scorer = Scorer(SpeechDetector.from_file(args.vad_model, RuntimeCfg()), webrtc)
        data = Path(args.data)

        rows, groups = [], {}
        ravdess_paths = ravdess_clips(data, args.clips_per_actor, args.seed)
        ravdess = speech_rows(scorer, ravdess_paths, window, args.min_overlap_s)
        groups["speech"] = ravdess["speech"]
        rows.append(("RAVDESS speech windows", "kept %", ravdess["speech"], True))
        if ravdess["pause"]:
            rows.append(("RAVDESS pauses", "rejected %", ravdess["pause"], False))
        crema = sorted((data / "crema-d" / "AudioMP3").glob("*.mp3"))
        if crema:
            c = speech_rows(scorer, crema, window, args.min_overlap_s)
            rows.append(("CREMA-D speech windows", "kept %", c["speech"], True))
        rng = np.random.default_rng(args.seed)
        n = int(args.seconds * SR)
        groups["nonspeech"] = []
        per_condition = []
        for name, make in nonspeech_conditions():
            cond = [r for _ in range(args.signals) for r in scorer.signal(make(rng, n), window)]
            per_condition.append(cond)
            groups["nonspeech"] += cond
            rows.append((name, "rejected %", cond, False))
            log.info("%s: %d windows", name, len(cond))

        summary = {}
        for s in settings:
            summary[s] = {"speech_kept": pct(groups["speech"], s, True),
                          "nonspeech_rejected": pct(groups["nonspeech"], s, False),
                          "worst_nonspeech": min(pct(c, s, False) for c in per_condition)}
        all_speech = groups["speech"] + (c["speech"] if crema else [])
        for s in settings:
            summary[s]["all_speech_kept"] = pct(all_speech, s, True)
        # The default minimum fraction: among the Silero settings at the frame threshold --threshold
        # that keep >= 95 % of RAVDESS speech windows and reject >= 95 % of the generated non-speech
        # overall and in every condition, the one that keeps the most speech (RAVDESS and CREMA-D
        # together), then rejects the most non-speech.
        silero = [s for s in settings if s.startswith("silero:") and float(s.split(":")[1]) == args.threshold]
        if not silero:
            raise EdgeMerError(f"--settings has no Silero setting at --threshold {args.threshold}")
        ok = [s for s in silero if summary[s]["speech_kept"] >= 95 and summary[s]["nonspeech_rejected"] >= 95
              and summary[s]["worst_nonspeech"] >= 95]
        best = max(ok or silero, key=lambda s: (s in ok, summary[s]["all_speech_kept"], summary[s]["nonspeech_rejected"],
                                                summary[s]["worst_nonspeech"]))
        by_class = {}
        for r in groups["speech"]:
            by_class.setdefault(f"{r['emotion']} {r['intensity']}", []).append(r)
        breakdown = [{"class": k, "windows": len(v), "pct": {s: pct(v, s, True) for s in ("rms", best)}}
                     for k, v in sorted(by_class.items())]
        _, thr, minf = best.split(":")
        vad_ms = np.asarray(scorer.vad_ms)
        result = {
            "machine": machine(),
            "command": "python benchmarks/vad_eval.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "vad_model": os.path.relpath(args.vad_model, REPO) if Path(args.vad_model).is_absolute() else args.vad_model,
            "window": {"window_s": window.window_s, "hop_s": window.hop_s},
            "min_overlap_s": args.min_overlap_s,
            "ravdess_clips": len(ravdess_paths),
            "ravdess_ambiguous_windows": len(ravdess["ambiguous"]),
            "ravdess_pause_windows": len(ravdess["pause"]),
            "threshold": args.threshold,
            "signals_per_condition": args.signals, "seconds_per_signal": args.seconds,
            "settings": settings,
            "rows": [{"condition": c, "measure": m, "windows": len(r), "pct": {s: pct(r, s, k) for s in settings}}
                     for c, m, r, k in rows],
            "summary": summary,
            "speech_by_class": breakdown,
            "chosen": {"setting": best, "threshold": float(thr), "min_speech_fraction": float(minf),
                       "meets_targets": best in ok},
            "vad_ms": {"p50": float(np.percentile(vad_ms, 50)), "p95": float(np.percentile(vad_ms, 95)),
                       "first_p50": float(np.percentile(scorer.first_ms, 50)), "windows": int(vad_ms.size)},
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "webrtcvad": _version("webrtcvad-wheels") if webrtc else None,
        }
    except EdgeMerError as exc:
        print(f"vad_eval: error: {exc}", file=sys.stderr)
        return exc.exit_code
    write_report(result, to_markdown(result), args.json_out, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
