"""The Whisper tiny.en encoder's INT8 features on this CPU and on an emulated CPU without VNNI.

Why: ONNX Runtime's U8S8 kernels on x86 CPUs with AVX2 and without VNNI (AMD EPYC Rome/Milan)
add two uint8 x int8 products into an int16 with saturation, so INT8 weights in 8 bits give
other features there than on CPUs with VNNI or on ARM (docs/QUANTIZATION.md). This script exports
the encoder (fp32), quantises it three ways (dynamic INT8, as the bundles do):

- ``int8, 8-bit weights``: ``export.quantize.quantize_dynamic_int8(..., reduce_range=False)``,
  the bundles before 2026-12-06;
- ``int8, 7-bit weights``: ``quantize_dynamic_int8`` as it is now (``reduce_range``);
- ``uint8 weights (U8U8)``: ONNX Runtime's ``quantize_dynamic`` with uint8 weights;

runs each on one real 2 s window (benchmarks/whisper_window.py's) here and under
``qemu-x86_64 -cpu EPYC-Rome``, and prints the relative L2 distance of the 768 features to fp32
on each CPU and between the CPUs, with the single-thread latency here (p50 of ``--repeats``).

    .venv/bin/python benchmarks/int8_cpus.py      # writes benchmarks/results/int8_cpus.json
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

REPO = Path(__file__).resolve().parent.parent
EMULATED_CPU = "EPYC-Rome"
_RUN = """
import sys, numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
np.save(sys.argv[3], s.run(None, {"logmel": np.load(sys.argv[2])})[0])
"""


def run_onnx(model: Path, x_file: Path, out: Path, qemu: str | None = None) -> np.ndarray:
    """The model's output in a fresh process, here or on the emulated CPU."""
    cmd = ([qemu, "-cpu", EMULATED_CPU] if qemu else []) + [sys.executable, "-c", _RUN, str(model), str(x_file), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"int8_cpus: running {model.name}{' under qemu' if qemu else ''} failed: {proc.stderr.strip()[-500:]}")
    return np.load(out)[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=40, help="timed calls per variant here")
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "int8_cpus.json"))
    args = p.parse_args(argv)
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        print("int8_cpus: qemu-x86_64 is not installed (Debian package qemu-user)", file=sys.stderr)
        return 2

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from benchmarks.whisper_window import window_wave
    from edge_mer.bench import machine, time_call, write_report
    from edge_mer.config import ExportCfg
    from edge_mer.features.whisper_mel import whisper_log_mel
    from export.onnx_export import export_encoder, ort_session
    from export.quantize import quantize_dynamic_int8
    from training.encoders import build_encoder

    torch.set_num_threads(1)
    wave, source = window_wave()
    mel = whisper_log_mel(wave)[None].astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "x.npy", mel)
        variants = {"fp32": tmp / "fp32.onnx", "int8, 8-bit weights": tmp / "int8_8bit.onnx",
                    "int8, 7-bit weights": tmp / "int8_7bit.onnx", "uint8 weights (U8U8)": tmp / "u8u8.onnx"}
        export_encoder(build_encoder("whisper_tiny", {}), variants["fp32"], ExportCfg(), inputs={"logmel": torch.from_numpy(mel)})
        quantize_dynamic_int8(variants["fp32"], variants["int8, 8-bit weights"], reduce_range=False)
        quantize_dynamic_int8(variants["fp32"], variants["int8, 7-bit weights"])
        quantize_dynamic(str(variants["fp32"]), str(variants["uint8 weights (U8U8)"]), per_channel=True,
                         weight_type=QuantType.QUInt8)
        feats = {name: (run_onnx(path, tmp / "x.npy", tmp / "here.npy"), run_onnx(path, tmp / "x.npy", tmp / "emu.npy", qemu))
                 for name, path in variants.items()}
        ref_here, ref_emu = feats["fp32"]

        def rel(a: np.ndarray, b: np.ndarray) -> float:
            return float(np.linalg.norm(a - b) / np.linalg.norm(b))

        for name, path in variants.items():
            here, emu = feats[name]
            sess = ort_session(path, threads=1)
            rows.append({"weights": name, "vs_fp32_here": rel(here, ref_here), "vs_fp32_emulated": rel(emu, ref_emu),
                         "here_vs_emulated": rel(here, emu),
                         "latency_here": time_call(lambda s=sess: s.run(None, {"logmel": mel}), args.repeats, 3)})
    m = machine()
    lines = [f"Whisper tiny.en encoder, one 2 s window ({source}); relative L2 distance of the 768 features. "
             f"Here: {m.get('cpu')}; emulated: qemu-x86_64 -cpu {EMULATED_CPU} (AVX2, no VNNI).", "",
             "| weights | vs fp32, here | vs fp32, emulated | here vs emulated | p50 ms here, 1 thread |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['weights']} | {100 * r['vs_fp32_here']:.1f} % | {100 * r['vs_fp32_emulated']:.1f} % | "
                     f"{100 * r['here_vs_emulated']:.4f} % | {r['latency_here']['p50_ms']:.1f} |")
    result = {"what": "INT8 features of the Whisper encoder on this CPU and an emulated AVX2 CPU", "input": source,
              "emulated_cpu": EMULATED_CPU, "machine": m, "rows": rows}
    write_report(result, "\n".join(lines) + "\n", args.json, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
