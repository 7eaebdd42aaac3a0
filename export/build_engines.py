"""Build TensorRT engines for a model bundle, or an optimised ONNX Runtime bundle without them.

    python export/build_engines.py --bundle models/default --precision fp16
    python export/build_engines.py --bundle models/default --precision int8      # uses the bundle's calibration inputs
    python export/build_engines.py --bundle models/default --backend onnxruntime --out /tmp/ort_bundle

With ``--backend tensorrt`` (the default) TensorRT 10 and a CUDA GPU are checked first; when
either is missing the command says so in one line and exits 4. Each target network (encoders,
heads, MTCNN) is parsed from the bundle's ONNX, built with explicit optimisation profiles (min /
opt / max per symbolic dimension), a shared timing cache and, for INT8, an entropy calibrator fed
with real inputs whose calibration cache is kept beside the engine. Every input and output is
logged. Engines are recorded in the manifest under ``engines`` with the TensorRT version and the
GPU they were built on: an engine is not portable, so rebuild it on each device.

With ``--backend onnxruntime`` no TensorRT is needed: every ONNX file is pre-optimised by ONNX
Runtime (portable "basic" level: constant folding, redundant-node elimination), and missing
INT8/FP16 encoder variants are added, giving a bundle ``edge-mer info`` and ``edge-mer run`` load.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from edge_mer.bundle import Bundle, file_entry, iter_file_entries, refresh_checksums, write_manifest
from edge_mer.cli import DEFAULT_BUNDLE, add_config_args
from edge_mer.config import Config, load_config, save_config
from edge_mer.errors import BundleError, DeviceError, EdgeMerError
from edge_mer.io import atomic_dir, atomic_write_bytes

log = logging.getLogger("build_engines")

PROG = "build_engines"
# Default (min, opt, max) of each symbolic dimension the bundle's networks use. "frames" is the
# log-mel frame count (100 per second: 0.1 s .. 2 s window .. 10 s) for audio and the frame count
# of a face/landmark window otherwise; both share the name, so the widest range is used.
DEFAULT_PROFILES: dict[str, tuple[int, int, int]] = {
    "batch": (1, 1, 8),
    "frames": (8, 201, 1001),
    "tokens": (1, 32, 64),
    "height": (12, 216, 720),
    "width": (12, 384, 1280),
}
# R-/O-Net see every candidate box of a frame at once.
DETECTOR_BATCH = (1, 16, 256)


@dataclass
class Target:
    """One network to build: where it is in the manifest and its ONNX source."""

    name: str  # e.g. "encoders.audio", "heads.audio", "detectors.mtcnn.pnet"
    onnx: Path
    inputs: list[dict]
    outputs: list[dict]


def iter_targets(bundle: Bundle) -> Iterator[Target | tuple[str, str]]:
    """Every network of the bundle; ``(name, reason)`` for one TensorRT cannot read."""
    for key, enc in bundle.manifest["encoders"].items():
        # TensorRT parses fp32/fp16 graphs and QDQ INT8; ORT's dynamic INT8 (MatMulInteger)
        # is not an op TensorRT has.
        readable = [p for p in ("fp32", "fp16") if p in enc["variants"]]
        if not readable and enc.get("int8_mode") != "dynamic" and "int8" in enc["variants"]:
            readable = ["int8"]
        if not readable:
            yield f"encoders.{key}", "only a dynamic-INT8 ONNX file, which TensorRT cannot parse; it stays on ONNX Runtime"
            continue
        entry = enc["variants"][readable[0]]
        yield Target(f"encoders.{key}", bundle.path(entry), entry.get("inputs", []), entry.get("outputs", []))
    for key, head in bundle.manifest["heads"].items():
        yield Target(f"heads.{key}", bundle.path(head), head.get("inputs", []), head.get("outputs", []))
    for net, entry in bundle.manifest.get("detectors", {}).get("mtcnn", {}).items():
        yield Target(f"detectors.mtcnn.{net}", bundle.path(entry), entry.get("inputs", []), entry.get("outputs", []))


def profile_shapes(target: Target, profiles: dict[str, tuple[int, int, int]]) -> dict[str, tuple[tuple, tuple, tuple]]:
    """(min, opt, max) shape per input from the manifest's symbolic shapes."""
    shapes = {}
    for inp in target.inputs:
        lo, opt, hi = [], [], []
        for dim in inp["shape"]:
            if isinstance(dim, int) and dim > 0:
                rng = (dim, dim, dim)
            elif dim == "batch" and target.name.startswith(("detectors.mtcnn.rnet", "detectors.mtcnn.onet")):
                rng = DETECTOR_BATCH
            elif dim in profiles:
                rng = profiles[dim]
            else:
                raise BundleError(f"{target.name}: input '{inp['name']}' has dimension '{dim}' with no profile (pass --profile {dim}=MIN,OPT,MAX)")
            lo.append(rng[0])
            opt.append(rng[1])
            hi.append(rng[2])
        shapes[inp["name"]] = (tuple(lo), tuple(opt), tuple(hi))
    return shapes


def load_calibration(bundle: Bundle, extra: Path | None) -> dict[str, dict[str, np.ndarray]]:
    """Calibration inputs per target from the bundle's ``calibration`` entries and ``--calibration``:
    ``.npz`` files with one array per input, first axis = samples (each sample is a batch of 1)."""
    sources: dict[str, Path] = {f"encoders.{k}": bundle.path(v) for k, v in bundle.manifest.get("calibration", {}).items()}
    out: dict[str, dict[str, np.ndarray]] = {}
    for target, path in sources.items():
        with np.load(path) as z:
            out[target] = {k: z[k] for k in z.files}
    if extra is not None:
        if not extra.is_file():
            raise EdgeMerError(f"{extra}: calibration file not found")
        with np.load(extra) as z:
            for key in z.files:
                target, _, name = key.rpartition(":")
                if not target:
                    raise EdgeMerError(f"{extra}: array '{key}' must be named TARGET:INPUT, e.g. encoders.audio:logmel")
                out.setdefault(target, {})[name] = z[key]
    return out


# --------------------------------------------------------------------------- TensorRT


def _make_calibrator(trt: Any, cudart: Any, data: dict[str, np.ndarray], cache_path: Path):
    """An IInt8EntropyCalibrator2 over real samples, reusing/writing ``cache_path``."""
    from edge_mer.backends.trt_backend import _DeviceBuffer

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.count = min(len(v) for v in data.values())
            self.index = 0
            self.buffers = {k: _DeviceBuffer(cudart) for k in data}

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= self.count:
                return None
            ptrs = []
            for name in names:
                host = np.ascontiguousarray(data[name][self.index: self.index + 1], dtype=np.float32)
                ptr = self.buffers[name].ensure(host.nbytes)
                err, = cudart.cudaMemcpy(ptr, host.ctypes.data, host.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
                if int(err) != 0:
                    raise DeviceError(f"CUDA copy of calibration input '{name}' failed ({err})")
                ptrs.append(ptr)
            self.index += 1
            return ptrs

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write_bytes(cache_path, bytes(cache))

    return Calibrator()


def build_engine(trt: Any, target: Target, precision: str, shapes: dict, workspace_mb: int,
                 timing_cache: Path, calibration: dict[str, np.ndarray] | None, calib_cache: Path) -> bytes:
    """Parse ``target.onnx`` and build a serialized engine."""
    from edge_mer.backends.trt_backend import import_cudart

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(target.onnx.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"{target.onnx}: TensorRT cannot parse it: {errors}")
    for i in range(network.num_inputs):
        t = network.get_input(i)
        log.info("%s input  %s %s %s", target.name, t.name, tuple(t.shape), t.dtype)
    for i in range(network.num_outputs):
        t = network.get_output(i)
        log.info("%s output %s %s %s", target.name, t.name, tuple(t.shape), t.dtype)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
        log.info("%s profile %s min %s opt %s max %s", target.name, name, lo, opt, hi)
    config.add_optimization_profile(profile)
    if precision in ("fp16", "best"):
        if not builder.platform_has_fast_fp16:
            log.warning("%s: this GPU has no fast FP16; the engine will be slow", target.name)
        config.set_flag(trt.BuilderFlag.FP16)
    if precision in ("int8", "best") and calibration:
        if not builder.platform_has_fast_int8:
            log.warning("%s: this GPU has no fast INT8 (e.g. Jetson Nano); FP16 is the better choice", target.name)
        config.set_flag(trt.BuilderFlag.INT8)
        calib_profile = builder.create_optimization_profile()
        for name, arr in calibration.items():
            one = (1, *arr.shape[1:])
            calib_profile.set_shape(name, one, one, one)
        config.set_calibration_profile(calib_profile)
        config.int8_calibrator = _make_calibrator(trt, import_cudart(), calibration, calib_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DeviceError(f"{target.name}: TensorRT failed to build an engine (see the TensorRT log above)")
    atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def build_tensorrt(args: argparse.Namespace, cfg: Config, bundle: Bundle, root: Path, manifest: dict) -> int:
    from edge_mer.backends.trt_backend import import_tensorrt, probe_gpu

    trt = import_tensorrt()
    gpu = probe_gpu()
    log.info("TensorRT %s on %s (compute %s)", gpu.tensorrt_version, gpu.device, gpu.compute_capability)
    profiles = {**DEFAULT_PROFILES, **args.profile}
    calibration = load_calibration(bundle, args.calibration)
    engines_dir = root / "engines"
    engines_dir.mkdir(exist_ok=True)
    timing_cache = Path(args.timing_cache) if args.timing_cache else engines_dir / "timing.cache"
    kept = [e for e in manifest.get("engines", []) if e.get("device") != gpu.device or e.get("precision") != args.precision]
    built = []
    for target in iter_targets(bundle):
        if isinstance(target, tuple):
            log.warning("%s: skipped: %s", *target)
            continue
        if args.targets and not any(target.name.startswith(t) for t in args.targets):
            continue
        precision = args.precision
        calib = calibration.get(target.name)
        if precision == "int8" and not calib:
            # Heads and detectors are tiny or already fast; without real inputs to calibrate on,
            # INT8 would be guesswork, so they get FP16.
            log.warning("%s: no calibration inputs, built as fp16", target.name)
            precision = "fp16"
        stem = f"{target.name}.{precision}"
        engine = build_engine(trt, target, precision, profile_shapes(target, profiles), cfg.export.trt_workspace_mb,
                              timing_cache, calib, engines_dir / f"{stem}.calib")
        atomic_write_bytes(engines_dir / f"{stem}.engine", engine)
        rel = f"engines/{stem}.engine"
        built.append(file_entry(root, rel, target=target.name, precision=precision, tensorrt_version=gpu.tensorrt_version,
                                device=gpu.device, compute_capability=gpu.compute_capability,
                                inputs=target.inputs, outputs=target.outputs))
        log.info("%s: %s engine %.1f MB", target.name, precision, len(engine) / 1e6)
    if not built:
        raise EdgeMerError(f"no engine was built (targets {args.targets or 'all'})")
    manifest["engines"] = kept + built
    return len(built)


# --------------------------------------------------------------------------- ONNX Runtime


def _ort_optimise(src: Path, dst: Path) -> None:
    """Pre-optimise with ONNX Runtime at the portable "basic" level (the extended and layout
    levels bake in hardware-specific kernels)."""
    import onnxruntime as ort

    from export.quantize import _atomic_path, _pin_ir

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    with _atomic_path(dst) as tmp:
        opts.optimized_model_filepath = str(tmp)
        ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
        _pin_ir(tmp)


def build_onnxruntime(args: argparse.Namespace, bundle: Bundle, root: Path, manifest: dict) -> int:
    from export.onnx_export import io_entries
    from export.quantize import convert_fp16, quantize_dynamic_int8, quantize_static_int8

    calibration = load_calibration(bundle, args.calibration)
    touched = 0
    for key, enc in manifest["encoders"].items():
        variants = enc["variants"]
        fp32 = root / variants["fp32"]["file"] if "fp32" in variants else None
        if args.precision in ("int8", "best") and "int8" not in variants and fp32 is not None:
            dst = root / f"encoders/{key}.int8.onnx"
            calib = calibration.get(f"encoders.{key}")
            if calib:
                names = list(calib)
                quantize_static_int8(fp32, dst, [{n: calib[n][i:i + 1] for n in names} for i in range(len(calib[names[0]]))])
            else:
                log.warning("encoders.%s: no calibration inputs, dynamic INT8", key)
                quantize_dynamic_int8(fp32, dst)
                enc["int8_mode"] = "dynamic"
            variants["int8"] = file_entry(root, f"encoders/{key}.int8.onnx", precision="int8", **io_entries(dst))
        if args.precision in ("fp16", "best") and "fp16" not in variants and fp32 is not None:
            dst = convert_fp16(fp32, root / f"encoders/{key}.fp16.onnx")
            variants["fp16"] = file_entry(root, f"encoders/{key}.fp16.onnx", precision="fp16", **io_entries(dst))
    for _, entry in iter_file_entries(manifest):
        path = root / entry["file"]
        if path.suffix == ".onnx":
            _ort_optimise(path, path)
            touched += 1
    refresh_checksums(root, manifest)
    import onnxruntime as ort

    manifest["provenance"]["onnxruntime_optimised"] = {"version": ort.__version__, "level": "basic"}
    return touched


# --------------------------------------------------------------------------- CLI


def _profile_arg(text: str) -> tuple[str, tuple[int, int, int]]:
    try:
        name, values = text.split("=", 1)
        lo, opt, hi = (int(v) for v in values.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': expected NAME=MIN,OPT,MAX, e.g. frames=8,201,1001") from None
    if not 0 < lo <= opt <= hi:
        raise argparse.ArgumentTypeError(f"'{text}': need 0 < MIN <= OPT <= MAX")
    return name.strip(), (lo, opt, hi)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Build TensorRT engines (FP16, INT8 with a calibration cache, or best) for a model bundle and "
        "record them in its manifest; or, with --backend onnxruntime, write an optimised/quantised "
        "ONNX Runtime bundle. Engines only run on the GPU and TensorRT version they were built with.",
        epilog="Exit status: 0 success, 2 bad input, 4 TensorRT or GPU missing. See docs/EXPORT.md for Jetson steps.",
    )
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="model bundle directory (default: %(default)s)")
    parser.add_argument("--out", default=None,
                        help="write the result here (default: replace --bundle in place, atomically)")
    parser.add_argument("--backend", choices=("tensorrt", "onnxruntime"), default="tensorrt",
                        help="tensorrt: build engines (needs TensorRT 10 and a CUDA GPU); onnxruntime: "
                        "optimise the ONNX files and add missing INT8/FP16 variants (default: %(default)s)")
    parser.add_argument("--precision", choices=("fp16", "int8", "best"), default=None,
                        help="engine precision; int8 needs calibration inputs (the bundle's or --calibration), "
                        "best = FP16 + INT8 layers where faster (default: export.trt_precision)")
    parser.add_argument("--targets", nargs="+", default=[], metavar="PREFIX",
                        help="only these networks, by manifest path prefix: encoders.audio, heads, detectors.mtcnn, ... "
                        "(default: all)")
    parser.add_argument("--calibration", type=Path, default=None, metavar="NPZ",
                        help="extra INT8 calibration inputs: arrays named TARGET:INPUT (e.g. encoders.audio:logmel), "
                        "first axis = samples, from training data only")
    parser.add_argument("--timing-cache", default=None, metavar="FILE",
                        help="TensorRT timing cache to reuse and update (default: <bundle>/engines/timing.cache)")
    parser.add_argument("--profile", type=_profile_arg, action="append", default=[], metavar="NAME=MIN,OPT,MAX",
                        help="optimisation profile of a symbolic dimension; repeatable (defaults: "
                        + ", ".join(f"{k}={','.join(map(str, v))}" for k, v in DEFAULT_PROFILES.items()) + ")")
    add_config_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.profile = dict(args.profile)
    # Every I/O tensor and profile is logged at INFO by our logger; third-party loggers (the
    # ONNX Runtime quantiser logs each tensor on the root logger) only with -v.
    logging.basicConfig(level=logging.WARNING if args.verbose == 0 else logging.DEBUG,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for name in ("export", PROG):
        logging.getLogger(name).setLevel(logging.INFO if args.verbose < 2 else logging.DEBUG)
    try:
        cfg = load_config(args.config, args.overrides)
        args.precision = args.precision or cfg.export.trt_precision
        if args.precision not in ("fp16", "int8", "best"):
            raise EdgeMerError(f"export.trt_precision='{args.precision}': use fp16, int8 or best")
        if args.backend == "tensorrt":
            # Check for TensorRT and a GPU before touching anything.
            from edge_mer.backends.trt_backend import probe_gpu

            probe_gpu()
        bundle = Bundle.load(args.bundle)
        out = Path(args.out) if args.out else bundle.root
        with atomic_dir(out, overwrite=True) as root:
            shutil.copytree(bundle.root, root, dirs_exist_ok=True)
            manifest = json.loads(json.dumps(bundle.manifest))
            if args.backend == "tensorrt":
                count = build_tensorrt(args, cfg, bundle, root, manifest)
            else:
                count = build_onnxruntime(args, bundle, root, manifest)
            save_config(cfg, root, "build_engines_config.toml")
            write_manifest(root, manifest)
        Bundle.load(out)
    except EdgeMerError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{out}: {count} {'engines built' if args.backend == 'tensorrt' else 'ONNX files optimised'} ({args.precision})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
