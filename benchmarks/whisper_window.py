"""Per-window cost of Whisper tiny.en features: a 2 s window's own frames vs Whisper's 30 s context.

Why: docs/MEASUREMENTS.md's Whisper features cost ~300 ms per 2 s window because each window is
zero-padded to 30 s; the ``whisper_tiny`` encoder (training/encoders/whisper_trunk.py) slices the
positional embeddings to the window's 100 encoder frames instead. This script times, at batch 1
and one thread everywhere (ONNX Runtime intra-op 1, torch 1, CTranslate2 intra_threads 1):

- ``front end``: :func:`edge_mer.features.whisper_mel.whisper_log_mel` of the window, alone
  (200 frames) and zero-padded to 30 s (3000 frames);
- ``ort fp32`` / ``ort int8``: the ONNX export (dynamic time axis; dynamic per-channel INT8 from
  ``export.quantize``) on 200 and on 3000 frames;
- ``torch fp32``: the PyTorch module (eager) on both;
- ``ct2 int8`` / ``ct2 fp32``: CTranslate2 on the package's model, the reference path of
  docs/MEASUREMENTS.md (``encode`` of 3000 frames), and on the 200 frames.

The input is the [0.5, 2.5] s window of a RAVDESS clip when ../shared/data is present (a
generated voiced signal otherwise). p50/p95 of ``--repeats`` calls after 3 warm-up calls (30 s
rows: ``--repeats-30s``). Timings from a shared or throttled CPU are noisy; the JSON records the
machine and the load average at the start.

    .venv/bin/python benchmarks/whisper_window.py            # writes benchmarks/results/whisper_window.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# One BLAS/OpenMP thread: on a small shared CPU, threaded BLAS inside scikit-learn's solver
# (and the mel matmul) oversubscribes the cores and runs an order of magnitude slower.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CLIP = REPO.parent / "shared" / "data" / "ravdess" / "audio_speech" / "Actor_01" / "03-01-05-02-01-01-01.flac"
WINDOW = (0.5, 2.5)


def window_wave(clip: Path = CLIP) -> tuple[np.ndarray, str]:
    """The 2 s window at 16 kHz, and where it came from."""
    lo, hi = (int(s * 16000) for s in WINDOW)
    if clip.is_file():
        import soundfile as sf
        from scipy.signal import resample_poly

        x, sr = sf.read(str(clip), dtype="float32", always_2d=True)
        wave = resample_poly(x.mean(axis=1), 1, sr // 16000).astype(np.float32)
        return wave[lo:hi], f"{clip.name} [{WINDOW[0]}, {WINDOW[1]}] s"
    t = np.arange(hi - lo) / 16000.0
    phase = 2 * np.pi * np.cumsum(140.0 + 30.0 * np.sin(2 * np.pi * 0.7 * t)) / 16000.0
    wave = 0.1 * sum(np.sin(k * phase) / k for k in range(1, 25)) * np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None)
    return wave.astype(np.float32), "generated voiced signal (RAVDESS absent)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=50, help="timed calls per 2 s row")
    p.add_argument("--repeats-30s", type=int, default=5, help="timed calls per 30 s row")
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "whisper_window.json"))
    p.add_argument("--no-ct2", action="store_true", help="skip the CTranslate2 rows")
    args = p.parse_args(argv)

    import torch

    from edge_mer.bench import machine, time_call, write_report
    from edge_mer.config import ExportCfg
    from edge_mer.features.whisper_mel import pad_or_trim, whisper_log_mel
    from export.onnx_export import export_encoder, ort_session
    from export.quantize import quantize_dynamic_int8
    from training.encoders import build_encoder
    from training.pretrained.whisper_ct2 import default_model_dir

    torch.set_num_threads(1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    wave, source = window_wave()
    mels = {"2 s window (200 frames)": whisper_log_mel(wave)[None], "30 s padded (3000 frames)": whisper_log_mel(pad_or_trim(wave))[None]}
    encoder = build_encoder("whisper_tiny", {})
    rows: list[dict] = []

    def add(stage: str, key: str, fn, repeats: int) -> None:
        stats = time_call(fn, repeats, 3)
        rows.append({"stage": stage, "input": key, **stats})
        print(f"  {stage:12s} {key:28s} p50 {stats['p50_ms']:9.2f} ms", file=sys.stderr, flush=True)

    def reps(key: str) -> int:
        return args.repeats if key.startswith("2 s") else args.repeats_30s

    add("front end", "2 s window (200 frames)", lambda: whisper_log_mel(wave), args.repeats)
    add("front end", "30 s padded (3000 frames)", lambda: whisper_log_mel(pad_or_trim(wave)), args.repeats_30s)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "whisper_tiny.fp32.onnx"
        int8 = Path(tmp) / "whisper_tiny.int8.onnx"
        parity = export_encoder(encoder, fp32, ExportCfg(), inputs={"logmel": torch.from_numpy(mels["2 s window (200 frames)"])})
        quantize_dynamic_int8(fp32, int8)
        sizes = {"fp32_bytes": fp32.stat().st_size, "int8_bytes": int8.stat().st_size}
        for name, path in (("ort fp32", fp32), ("ort int8", int8)):
            sess = ort_session(path, threads=1)
            for key, mel in mels.items():
                add(name, key, lambda s=sess, m=mel: s.run(None, {"logmel": m}), reps(key))
    with torch.inference_mode():
        for key, mel in mels.items():
            x = torch.from_numpy(mel)
            add("torch fp32", key, lambda x=x: encoder(logmel=x), reps(key))
    if not args.no_ct2:
        try:
            import ctranslate2
        except ImportError:
            print("ctranslate2 is not installed: no CTranslate2 rows", file=sys.stderr)
        else:
            for compute in ("int8", "float32"):
                model = ctranslate2.models.Whisper(str(default_model_dir()), device="cpu", compute_type=compute, intra_threads=1)
                for key, mel in mels.items():
                    view = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel))
                    add(f"ct2 {compute.replace('float32', 'fp32')}", key, lambda m=model, v=view: m.encode(v), reps(key))

    by = {(r["stage"], r["input"]): r["p50_ms"] for r in rows}
    title = f"Whisper tiny.en encoder, one window at batch 1, 1 thread ({source})"
    if load is not None:
        title += f"; load average {load:.1f} at the start"
    lines = [title, "",
             "| stage | 2 s window alone (200 frames), p50 ms | padded to 30 s (3000 frames), p50 ms | padded / alone |",
             "|---|---|---|---|"]
    for stage in dict.fromkeys(r["stage"] for r in rows):
        a, b = by.get((stage, "2 s window (200 frames)")), by.get((stage, "30 s padded (3000 frames)"))
        lines.append(f"| {stage} | {a:.2f} | {b:.1f} | {b / a:.0f}x |")
    lines.append("")
    result = {
        "what": "per-window latency of Whisper tiny.en features: the window's own frames vs the 30 s context",
        "input": source, "threads": 1, "load_average_1min": load, "machine": machine(),
        "onnx": {"fp32_max_abs_err_normalised": parity.max_abs_err, **sizes},
        "rows": rows,
    }
    write_report(result, "\n".join(lines) + "\n", args.json, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
