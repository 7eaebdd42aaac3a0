"""PyTorch eager fp32 vs ONNX Runtime fp32 vs ORT INT8 vs ORT FP16: the same encoders, the same
inputs, one run, as ratios; with the probe's UA next to each when RAVDESS is at hand.

For every encoder of ``training/encoders`` that the runtime can serve:

- ``torch``: the ``nn.Module`` in eager mode, fp32, ``torch.inference_mode``;
- ``ort-fp32``: its ONNX export (``export.onnx_export.export_encoder``, parity-checked);
- ``ort-int8``: static QDQ INT8 calibrated on real inputs (conv nets), dynamic per-channel INT8
  for the MiniLM transformer (``export.quantize``);
- ``ort-fp16``: fp16 weights and compute (on a CPU without fp16 units this is *slower*; it is
  listed because a Jetson's GPU is where it pays).

Latency: p50/p95 wall-clock milliseconds of one call at batch 1, after warm-up, with the same
thread count for both frameworks (``--threads``). ``speedup`` is torch p50 / variant p50;
``cosine`` the mean cosine between the variant's features and torch's on the timed inputs.

UA (audio only): the release audio checkpoint (``--release``) encodes RAVDESS speech clips; a
linear probe is fitted on actors 01–16 and tested on actors 17–20 (the fifth speaker-independent
fold), separately for each backend's features. When the checkpoint was pretrained without an
actor restriction its encoder has heard actors 17–20 (without labels); the JSON says so, and the
figure then compares back-ends, it is not a protocol result.

    python benchmarks/compare_backends.py --json benchmarks/results/compare_backends.json \\
        --markdown benchmarks/results/compare_backends.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from edge_mer.bench import write_report, machine, percentiles
from edge_mer.cli import add_config_args
from edge_mer.config import ExportCfg, load_config
from edge_mer.errors import EdgeMerError

log = logging.getLogger("compare_backends")

REPO = Path(__file__).resolve().parent.parent
ENCODERS = ("audio_tcn", "face_cnn", "landmarks_stgcn", "text_minilm")
EVAL_ACTORS = (17, 18, 19, 20)
SENTENCES = ["I really did not expect to see you here today", "Leave me alone, I have had enough of this",
             "That is the best news I have heard all year", "Why would anyone do something like that"]


def timed(fn: Callable[[], object], inputs: list, repeats: int, warmup: int) -> dict:
    """p50/p95 of ``fn(x)`` over ``inputs`` cycled ``repeats`` times, after ``warmup`` calls."""
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    ms = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(inputs[i % len(inputs)])
        ms.append((time.perf_counter() - t0) * 1000.0)
    return percentiles(ms)


# --------------------------------------------------------------------------- inputs


def ravdess_logmels(data: Path, per_actor: int, audio_cfg) -> tuple[list[np.ndarray], list[str], list[int]]:
    """Whole-clip log-mels of RAVDESS speech with their label and actor (empty when absent)."""
    from edge_mer.features.logmel import log_mel
    from edge_mer.media import load_audio
    from training.eval.recordings import ravdess_speech_clips

    try:
        clips = ravdess_speech_clips(data, per_actor=per_actor)
    except EdgeMerError as exc:
        log.warning("no UA: %s", exc)
        return [], [], []
    logmels = [log_mel(load_audio(c.path, audio_cfg.sample_rate_hz), audio_cfg) for c in clips]
    return logmels, [c.label for c in clips], [c.speaker for c in clips]


def centre_window(logmel: np.ndarray, frames: int) -> np.ndarray:
    start = max(0, (logmel.shape[1] - frames) // 2)
    win = logmel[:, start : start + frames]
    if win.shape[1] < frames:
        win = np.pad(win, ((0, 0), (0, frames - win.shape[1])), constant_values=float(logmel.min()))
    return np.ascontiguousarray(win, np.float32)


def encoder_and_inputs(name: str, args, cfg, logmels: list[np.ndarray]) -> tuple[torch.nn.Module, list[dict], str]:
    """The encoder, a few batch-1 input dicts and where both come from."""
    from training.encoders import build_encoder

    torch.manual_seed(0)
    if name == "audio_tcn":
        release = Path(args.release)
        if (release / "checkpoint.json").is_file():
            from training.checkpoint import load_encoders

            enc, source = load_encoders(release)["audio"], f"release checkpoint {release}"
        else:
            enc, source = build_encoder(name, {"n_mels": cfg.audio.n_mels}), "random init (no release checkpoint)"
        frames = int(round(cfg.window.window_s * cfg.audio.sample_rate_hz / cfg.audio.hop_length)) + 1
        if logmels:
            pick = logmels[:: max(1, len(logmels) // 16)][:16]
            return enc.eval(), [{"logmel": centre_window(m, frames)[None]} for m in pick], source + "; real RAVDESS windows"
        return enc.eval(), [{k: v.numpy() for k, v in enc.example_inputs(1).items()}], source + "; random input"
    if name == "text_minilm":
        from training.encoders.text_minilm import tokenize_texts

        enc = build_encoder(name, {}).eval()
        ids, mask = tokenize_texts(SENTENCES, cfg.text.max_tokens)
        inputs = [{"input_ids": ids[i : i + 1].astype(np.int64), "attention_mask": mask[i : i + 1].astype(np.int64)}
                  for i in range(len(SENTENCES))]
        return enc, inputs, "all-MiniLM-L6-v2 (frozen backbone); 4 real sentences"
    enc = build_encoder(name, {}).eval()
    gen = torch.Generator().manual_seed(1)
    inputs = []
    for _ in range(4):
        ex = enc.example_inputs(1)
        inputs.append({k: (torch.rand(v.shape, generator=gen) if v.is_floating_point() else v).numpy()
                       for k, v in ex.items()})
    return enc, inputs, "random init, random inputs (too few real faces here to train or calibrate one)"


# --------------------------------------------------------------------------- variants


def build_variants(name: str, enc: torch.nn.Module, inputs: list[dict], tmp: Path, opset: int) -> dict[str, Path]:
    from export.onnx_export import export_encoder
    from export.quantize import convert_fp16, quantize_dynamic_int8, quantize_static_int8

    fp32 = tmp / f"{name}.fp32.onnx"
    export_encoder(enc, fp32, ExportCfg(opset=opset), inputs={k: torch.from_numpy(v) for k, v in inputs[0].items()},
                   batch=1)
    out = {"ort-fp32": fp32}
    if name == "text_minilm":
        out["ort-int8"] = quantize_dynamic_int8(fp32, tmp / f"{name}.int8.onnx")
    else:
        out["ort-int8"] = quantize_static_int8(fp32, tmp / f"{name}.int8.onnx", inputs)
    try:
        out["ort-fp16"] = convert_fp16(fp32, tmp / f"{name}.fp16.onnx")
    except Exception as exc:  # the converter raises assorted errors for unsupported graphs
        log.warning("%s: no FP16 variant (%s)", name, exc)
    return out


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12
    return float(np.mean(num / den))


def probe_ua(features: np.ndarray, labels: list[str], actors: list[int]) -> float:
    from export.head_sources import fit_probe, predict
    from training.eval.metrics import unweighted_accuracy

    train = [i for i, a in enumerate(actors) if a not in EVAL_ACTORS]
    test = [i for i, a in enumerate(actors) if a in EVAL_ACTORS]
    probe = fit_probe(features[train], [labels[i] for i in train], 0.1)
    return round(unweighted_accuracy([labels[i] for i in test], predict(probe, features[test])), 2)


def compare(name: str, args, cfg, logmels, labels, actors) -> dict:
    enc, inputs, source = encoder_and_inputs(name, args, cfg, logmels)
    with torch.inference_mode():
        def torch_run(x: dict) -> np.ndarray:
            return enc(**{k: torch.from_numpy(v) for k, v in x.items()}).numpy()

        ref = np.concatenate([torch_run(x) for x in inputs])
        rows = {"torch": {**timed(torch_run, inputs, args.repeats, args.warmup), "speedup": 1.0, "cosine": 1.0}}
        feats = {}
        if name == "audio_tcn" and labels:
            feats["torch"] = np.concatenate([torch_run({"logmel": m[None]}) for m in logmels])
    with tempfile.TemporaryDirectory() as tmp:
        for variant, path in build_variants(name, enc, inputs, Path(tmp), cfg.export.opset).items():
            sess = ort_session(path, args.threads)

            def ort_run(x: dict, sess=sess) -> np.ndarray:
                return sess.run(["feature"], x)[0]

            st = timed(ort_run, inputs, args.repeats, args.warmup)
            st["speedup"] = round(rows["torch"]["p50_ms"] / st["p50_ms"], 2)
            st["cosine"] = round(cosine(np.concatenate([ort_run(x) for x in inputs]), ref), 5)
            st["size_mb"] = round(path.stat().st_size / 1e6, 2)
            rows[variant] = st
            if "torch" in feats:
                feats[variant] = np.concatenate([ort_run({"logmel": m[None]}) for m in logmels])
    for variant, f in feats.items():
        rows[variant]["ua"] = probe_ua(f, labels, actors)
    return {"encoder": name, "source": source, "inputs": {k: list(v.shape) for k, v in inputs[0].items()},
            "variants": rows}


def to_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['arch']}, {m['cpu']}, {m['cores']} cores, {m['mem_gb']} GB; torch {result['torch']}, "
             f"onnxruntime {m['onnxruntime']}; {result['threads']} thread(s) for both frameworks. Load average "
             f"before/after: {result['loadavg_before']} / {result['loadavg_after']}.", "",
             "| encoder | backend | p50 ms | p95 ms | speedup vs torch | cosine vs torch | size MB | UA (fold 5) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for enc in result["encoders"]:
        for variant, st in enc["variants"].items():
            ua = f"{st['ua']:.2f}" if "ua" in st else "–"
            size = f"{st['size_mb']:.2f}" if "size_mb" in st else "–"
            lines.append(f"| {enc['encoder']} | {variant} | {st['p50_ms']:.2f} | {st['p95_ms']:.2f} | "
                         f"{st['speedup']:.2f}× | {st['cosine']:.4f} | {size} | {ua} |")
    lines.append("")
    for enc in result["encoders"]:
        lines.append(f"- {enc['encoder']}: {enc['source']}; inputs {enc['inputs']}")
    if result.get("ua_note"):
        lines.append(f"- UA: {result['ua_note']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/compare_backends.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--encoders", default=",".join(ENCODERS), help="comma-separated (default: %(default)s)")
    p.add_argument("--release", default=str(REPO / "runs" / "release_audio_au"), help="audio checkpoint directory")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder holding ravdess/")
    p.add_argument("--clips-per-actor", type=int, default=0, help="RAVDESS clips per actor for UA (0 = all 60)")
    p.add_argument("--no-ua", action="store_true", help="skip the probe UA (no RAVDESS encoding)")
    p.add_argument("--threads", type=int, default=1, help="threads for torch and ONNX Runtime (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json", dest="json_out", help="write the results as JSON here")
    p.add_argument("--markdown", help="write the table here")
    add_config_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        cfg = load_config(args.config, args.overrides)
        names = [n.strip() for n in args.encoders.split(",") if n.strip()]
        unknown = [n for n in names if n not in ENCODERS]
        if unknown:
            raise EdgeMerError(f"--encoders: unknown {', '.join(unknown)} (known: {', '.join(ENCODERS)})")
        torch.set_num_threads(args.threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
        load_before = [round(x, 2) for x in os.getloadavg()]
        logmels, labels, actors = ([], [], []) if args.no_ua else ravdess_logmels(Path(args.data), args.clips_per_actor, cfg.audio)
        result = {"machine": machine(), "torch": torch.__version__, "threads": args.threads, "repeats": args.repeats,
                  "command": "python benchmarks/compare_backends.py " + " ".join(sys.argv[1:] if argv is None else argv),
                  "loadavg_before": load_before, "encoders": []}
        for name in names:
            log.warning("comparing %s ...", name)
            result["encoders"].append(compare(name, args, cfg, logmels if name == "audio_tcn" else [],
                                              labels if name == "audio_tcn" else [], actors))
        if labels:
            meta = Path(args.release) / "checkpoint.json"
            actors_seen = json.loads(meta.read_text()).get("data", {}).get("actors") if meta.is_file() else None
            result["ua_note"] = (f"probe fitted on actors 01–16, tested on 17–20, {len(labels)} clips; the encoder was "
                                 + ("pretrained (label-free) on all actors, 17–20 included: a back-end comparison, "
                                    "not a protocol figure" if actors_seen is None else f"pretrained on actors {actors_seen}"))
        result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    except EdgeMerError as exc:
        print(f"compare_backends: error: {exc}", file=sys.stderr)
        return exc.exit_code
    write_report(result, to_markdown(result), args.json_out, args.markdown, cfg, "compare_backends_config.toml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
