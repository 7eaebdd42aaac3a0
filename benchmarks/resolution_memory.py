"""Peak RSS and steady RTF against video resolution: a 4K 60 fps recording vs a 480p one of the
same length, through ``edge-mer run --fast`` (the shipped bundle: face branch, audio, VAD).

Both clips are made here from the bundled sample (looped to ``--seconds``, scaled with FFmpeg,
H.264 ultrafast + AAC) so nothing large is committed. Each is replayed with the default frame
limit (``runtime.max_frame_side_px`` = 640: frames scaled down as soon as they are decoded) and,
for the 4K clip, also without it (``0``), the way the runtime read frames before the limit. Peak
RSS is the child's own (``wait4``), as in ``edge-mer bench``.

    python benchmarks/resolution_memory.py --json benchmarks/results/resolution_memory.json \\
        --markdown benchmarks/results/resolution_memory.md
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_mer.bench import ClipInputs, machine, replay, write_report
from edge_mer.bundle import Bundle

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "crema-d_1001_DFA_six_emotions.mp4"


def make_clip(out: Path, seconds: float, width: int, height: int, fps: int) -> Path:
    loops = int(seconds // 12) + 1
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-stream_loop", str(loops), "-i", str(SAMPLE), "-t", str(seconds),
                    "-vf", f"scale={width}:{height},fps={fps}", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "35",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k", str(out)], check=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=str(REPO / "models" / "default"))
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--json")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    bundle = Bundle.load(args.bundle)
    load_before = [round(x, 2) for x in os.getloadavg()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clips = {"480p (854x480, 30 fps)": make_clip(Path(tmp) / "480p.mp4", args.seconds, 854, 480, 30),
                 "4K (3840x2160, 60 fps)": make_clip(Path(tmp) / "4k.mp4", args.seconds, 3840, 2160, 60)}
        runs = [("480p (854x480, 30 fps)", 640), ("4K (3840x2160, 60 fps)", 640), ("4K (3840x2160, 60 fps)", 0)]
        for name, limit in runs:
            clip = ClipInputs(clips[name], 16000, want_frames=False)
            r = replay(str(bundle.root), clip, bundle.window().window_s, None,
                       ["--set", f"runtime.max_frame_side_px={limit}"])
            fd = r["stages"].get("face_detect", {})
            rows.append({"clip": name, "max_frame_side_px": limit, "events": r["events"], "peak_rss_mb": r["peak_rss_mb"],
                         "steady_rtf": r["steady_rtf"], "face_detect_p50_ms": fd.get("p50_ms"), "wall_s": r["wall_s"]})
    base = rows[0]["peak_rss_mb"]
    lines = ["| clip | runtime.max_frame_side_px | events | peak RSS MB | vs 480p | steady RTF | face detection p50 ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['clip']} | {r['max_frame_side_px']} | {r['events']} | {r['peak_rss_mb']:.0f} | "
              f"{r['peak_rss_mb'] - base:+.0f} | {r['steady_rtf']:.3f} | {r['face_detect_p50_ms']} |" for r in rows]
    table = (f"# Peak RSS against video resolution ({args.seconds:g} s clips, `edge-mer run --fast`)\n\n"
             f"Command: `python benchmarks/resolution_memory.py --seconds {args.seconds:g}`; bundle {bundle.name}; "
             f"{machine()['cores']} cores, load average before {load_before}.\n\n" + "\n".join(lines) + "\n")
    write_report({"machine": machine(), "bundle": bundle.name, "seconds": args.seconds, "rows": rows,
                  "loadavg_before": load_before}, table, args.json, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
