"""How latency and memory grow with window length, hop, number of faces and frame size, and
where the time goes.

- window length and hop: the bundle is copied with another ``window`` in its manifest and the
  clip replayed with ``edge-mer run --fast --stats`` in a child process (as ``edge-mer bench``
  does): steady RTF, peak RSS, per-window feature time. Encoders average over time, so the
  audio encoder accepts any window length;
- faces: one real face still tiled 1, 2, 4 and 8 times into a 1280x720 frame; MTCNN detection
  latency and the faces it finds (the runtime then keeps the largest face only, so the later
  stages do not grow with the count);
- frame size: the clip's frames resized from 320x240 to 3840x2160; MTCNN latency;
- profile: ``cProfile`` over one in-process ``edge-mer run --fast`` of the clip; the functions
  with the most own time.

    python benchmarks/scaling.py --bundle models/default --json benchmarks/results/scaling.json \\
        --markdown benchmarks/results/scaling.md
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import shutil
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from edge_mer.bench import write_report, DEFAULT_CLIP, ClipInputs, machine, replay, time_call
from edge_mer.bundle import Bundle, write_manifest
from edge_mer.cli import DEFAULT_BUNDLE, add_config_args
from edge_mer.config import load_config
from edge_mer.errors import EdgeMerError
from edge_mer.modality import Modality

log = logging.getLogger("scaling")

REPO = Path(__file__).resolve().parent.parent
FACE_STILL = REPO.parent / "shared" / "data" / "ravdess" / "face_stills" / "Actor_01.png"
SIZES = ((320, 240), (640, 480), (1280, 720), (1920, 1080), (3840, 2160))


def with_window(bundle: Bundle, window_s: float, hop_s: float, root: Path) -> Path:
    """A copy of ``bundle`` that cuts ``window_s`` windows every ``hop_s``."""
    out = root / f"w{window_s:g}_h{hop_s:g}"
    shutil.copytree(bundle.root, out)
    manifest = json.loads(json.dumps(bundle.manifest))
    manifest["window"] = {"window_s": window_s, "hop_s": hop_s}
    write_manifest(out, manifest)
    return out


def window_scaling(bundle: Bundle, clip: ClipInputs, windows: list[float], hops: list[float],
                   config_args: list[str]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for window_s, hop_s in [(w, 0.5) for w in windows] + [(2.0, h) for h in hops if h != 0.5]:
            if window_s >= clip.duration_s:
                continue
            path = with_window(bundle, window_s, hop_s, Path(tmp))
            run = replay(str(path), clip, window_s, None, config_args)
            feats = run["stages"].get("features", {})
            rows.append({"window_s": window_s, "hop_s": hop_s, "events": run["events"],
                         "steady_rtf": run["steady_rtf"], "peak_rss_mb": run["peak_rss_mb"],
                         "features_p50_ms": feats.get("p50_ms"), "logmel_p50_ms": run["stages"].get("logmel", {}).get("p50_ms"),
                         "encode_audio_p50_ms": run["stages"].get("encode_audio", {}).get("p50_ms")})
            log.warning("window %s s hop %s s: RTF %.3f", window_s, hop_s, run["steady_rtf"])
    return rows


def _detector(bundle: Bundle, cfg):
    from edge_mer.face.mtcnn import MTCNN

    face_cfg = bundle.feature_cfg(Modality.FACE) if Modality.FACE in bundle.modalities else cfg.face
    return MTCNN.from_bundle(bundle, cfg.runtime, face_cfg)


def face_scaling(bundle: Bundle, cfg, repeats: int) -> list[dict]:
    import cv2

    still = cv2.imread(str(FACE_STILL))
    if still is None:
        log.warning("no face still at %s: face-count scaling skipped", FACE_STILL)
        return []
    detector = _detector(bundle, cfg)
    rows = []
    for n in (1, 2, 4, 8):
        cols = int(np.ceil(np.sqrt(n)))
        rows_n = int(np.ceil(n / cols))
        cell_w, cell_h = 1280 // cols, 720 // rows_n
        frame = np.full((720, 1280, 3), 40, np.uint8)
        scale = min(cell_w / still.shape[1], cell_h / still.shape[0])
        face = cv2.resize(still, (int(still.shape[1] * scale), int(still.shape[0] * scale)))
        for k in range(n):
            y, x = (k // cols) * cell_h, (k % cols) * cell_w
            frame[y : y + face.shape[0], x : x + face.shape[1]] = face
        st = time_call(lambda: detector.detect(frame), repeats, 2)
        rows.append({"faces_in_frame": n, "faces_found": int(len(detector.detect(frame)[0])), **st})
    return rows


def size_scaling(bundle: Bundle, cfg, clip: ClipInputs, repeats: int) -> list[dict]:
    import cv2

    if not clip.frames:
        return []
    detector = _detector(bundle, cfg)
    rows = []
    for w, h in SIZES:
        frame = cv2.resize(clip.frames[len(clip.frames) // 2], (w, h))
        st = time_call(lambda: detector.detect(frame), max(3, repeats // (1 + w // 1000)), 1)
        rows.append({"frame": f"{w}x{h}", "megapixels": round(w * h / 1e6, 2), **st})
    return rows


def profile_run(bundle_dir: str, clip: Path, config_args: list[str], top: int = 15) -> list[dict]:
    """Own-time leaders of one in-process ``edge-mer run --fast``."""
    from edge_mer.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        prof = cProfile.Profile()
        prof.enable()
        rc = main(["run", "--bundle", bundle_dir, "--video", str(clip), "--fast", "--out", str(Path(tmp) / "e.jsonl"),
                   *config_args])
        prof.disable()
    if rc != 0:
        raise EdgeMerError(f"profiled run on {clip} failed (exit {rc})")
    stats = pstats.Stats(prof, stream=io.StringIO())
    total = sum(v[2] for v in stats.stats.values())
    rows = []
    for (file, line, func), (_, ncalls, tottime, cumtime, _) in sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]:
        where = f"{Path(file).parent.name}/{Path(file).name}:{line}" if line else file
        rows.append({"function": f"{func} ({where})", "calls": ncalls, "own_s": round(tottime, 3),
                     "cumulative_s": round(cumtime, 3), "share_of_own_time": round(tottime / total, 3) if total else 0})
    return rows


def to_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['arch']}, {m['cpu']}, {m['cores']} cores, {m['mem_gb']} GB. Bundle {result['bundle']}, clip "
             f"{result['clip']}. Load average before/after: {result['loadavg_before']} / {result['loadavg_after']}.", ""]
    if result["windows"]:
        lines += ["| window s | hop s | events | steady RTF | peak RSS MB | features p50 ms | log-mel p50 ms | audio encoder p50 ms |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in result["windows"]:
            lines.append(f"| {r['window_s']:g} | {r['hop_s']:g} | {r['events']} | {r['steady_rtf']:.3f} | {r['peak_rss_mb']:.0f} | "
                         f"{r['features_p50_ms']} | {r['logmel_p50_ms']} | {r['encode_audio_p50_ms']} |")
        lines.append("")
    if result["faces"]:
        lines += ["| faces in a 1280x720 frame | found | MTCNN p50 ms | p95 ms |", "|---:|---:|---:|---:|"]
        lines += [f"| {r['faces_in_frame']} | {r['faces_found']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} |" for r in result["faces"]]
        lines.append("")
    if result["sizes"]:
        lines += ["| frame | Mpx | MTCNN p50 ms | p95 ms |", "|---|---:|---:|---:|"]
        lines += [f"| {r['frame']} | {r['megapixels']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} |" for r in result["sizes"]]
        lines.append("")
    if result["profile"]:
        lines += ["| profile: own time leaders | calls | own s | cumulative s | share |", "|---|---:|---:|---:|---:|"]
        lines += [f"| `{r['function']}` | {r['calls']} | {r['own_s']} | {r['cumulative_s']} | {100 * r['share_of_own_time']:.0f} % |"
                  for r in result["profile"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/scaling.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    p.add_argument("--clip", default=str(DEFAULT_CLIP))
    p.add_argument("--windows", default="1,2,4,8", help="window lengths in seconds (hop 0.5)")
    p.add_argument("--hops", default="0.25,0.5,1.0", help="hops in seconds (window 2)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--json", dest="json_out")
    p.add_argument("--markdown")
    add_config_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        cfg = load_config(args.config, args.overrides)
        bundle = Bundle.load(args.bundle)
        config_args = [a for path in args.config for a in ("--config", path)]
        config_args += [a for o in args.overrides for a in ("--set", o)]
        has_detector = "mtcnn" in bundle.manifest.get("detectors", {})
        rate = (bundle.feature_cfg(Modality.AUDIO) if Modality.AUDIO in bundle.modalities else cfg.audio).sample_rate_hz
        clip = ClipInputs(Path(args.clip), rate, want_frames=has_detector)
        result = {"machine": machine(), "bundle": bundle.name, "clip": args.clip,
                  "command": "python benchmarks/scaling.py " + " ".join(sys.argv[1:] if argv is None else argv),
                  "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
        result["windows"] = window_scaling(bundle, clip, [float(v) for v in args.windows.split(",")],
                                           [float(v) for v in args.hops.split(",")], config_args)
        result["faces"] = face_scaling(bundle, cfg, args.repeats) if has_detector else []
        result["sizes"] = size_scaling(bundle, cfg, clip, args.repeats) if has_detector else []
        result["profile"] = [] if args.no_profile else profile_run(str(bundle.root), Path(args.clip), config_args)
        result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    except EdgeMerError as exc:
        print(f"scaling: error: {exc}", file=sys.stderr)
        return exc.exit_code
    write_report(result, to_markdown(result), args.json_out, args.markdown, cfg, "scaling_config.toml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
