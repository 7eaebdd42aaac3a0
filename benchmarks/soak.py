"""Soak: ``edge-mer run`` replaying a real clip in a loop, at real speed, for a set time; RSS over
time, events, latency and drops; memory growth after warm-up.

The clip is looped with ``ffmpeg -stream_loop`` (stream copy, no re-encoding) into one file as
long as the soak, and replayed at real speed (no ``--fast``): the runtime sees what a camera and
microphone would give it, for as long as asked. The child's RSS is read from ``/proc`` every
``--sample-s`` seconds. Growth = median RSS over the last 10 % of the run against the median
over the 10 % right after warm-up; the verdict is growth < ``--max-growth-pct`` (5 %).

    python benchmarks/soak.py --seconds 1800 --json benchmarks/results/soak_30min.json   # the documented run
    python benchmarks/soak.py --seconds 60 --warmup 15                                   # the CI short form
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from edge_mer.bench import DEFAULT_CLIP, machine, percentiles, write_report
from edge_mer.cli import DEFAULT_BUNDLE
from edge_mer.errors import EdgeMerError, MediaError
from edge_mer.media import probe

log = logging.getLogger("soak")

REPO = Path(__file__).resolve().parent.parent


def looped_clip(clip: Path, seconds: float, out_dir: Path) -> Path:
    """``clip`` repeated (stream copy) until it lasts at least ``seconds``."""
    if shutil.which("ffmpeg") is None:
        raise MediaError("ffmpeg: not found (needed to loop the clip)")
    duration = probe(clip).duration_s or 0.0
    if duration <= 0:
        raise MediaError(f"{clip}: unknown duration")
    loops = max(1, math.ceil(seconds / duration))
    out = out_dir / f"loop{loops}{clip.suffix}"
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-stream_loop", str(loops - 1), "-i", str(clip),
                    "-c", "copy", str(out)], check=True, capture_output=True)
    return out


def rss_mb(pid: int) -> float | None:
    """Resident set size of ``pid`` from /proc (None once it has exited)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _window_median(samples: list[tuple[float, float]], lo: float, hi: float) -> float | None:
    vals = [r for t, r in samples if lo <= t <= hi]
    return float(np.median(vals)) if vals else None


def growth_pct(samples: list[tuple[float, float]], warmup_s: float) -> tuple[float | None, float | None, float | None]:
    """(baseline MB, final MB, growth %): medians right after warm-up and over the last 10 %."""
    if not samples:
        return None, None, None
    end = samples[-1][0]
    span = max(end - warmup_s, 1e-6)
    base = _window_median(samples, warmup_s, warmup_s + 0.1 * span)
    final = _window_median(samples, end - 0.1 * span, end)
    if base is None or final is None:
        return base, final, None
    return round(base, 1), round(final, 1), round(100.0 * (final - base) / base, 2)


def soak(bundle: str, clip: Path, seconds: float, warmup_s: float, sample_s: float, extra: list[str]) -> dict:
    """Run the soak and return its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        long_clip = looped_clip(clip, seconds, Path(tmp))
        cmd = [sys.executable, "-m", "edge_mer", "run", "--bundle", bundle, "--video", str(long_clip), "--stats", *extra]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        events: list[tuple[float, float]] = []  # (wall s, latency ms)
        bad_lines = []

        def read_events() -> None:
            for line in proc.stdout:
                try:
                    events.append((time.monotonic() - t0, float(json.loads(line)["latency_ms"])))
                except (ValueError, KeyError):
                    bad_lines.append(line[:200])

        reader = threading.Thread(target=read_events, daemon=True)
        reader.start()
        # stderr drained on its own thread, so a chatty child never blocks on a full pipe.
        err_lines: list[str] = []
        drain = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
        drain.start()
        samples: list[tuple[float, float]] = []
        while proc.poll() is None:
            rss = rss_mb(proc.pid)
            if rss is not None:
                samples.append((round(time.monotonic() - t0, 2), round(rss, 1)))
            if time.monotonic() - t0 > seconds + 120:
                proc.terminate()  # far past the clip's end: something hangs
                break
            time.sleep(sample_s)
        proc.wait()
        reader.join(timeout=5)
        drain.join(timeout=5)
        stderr = "".join(err_lines)
    if proc.returncode != 0:
        tail = " | ".join(stderr.strip().splitlines()[-2:])
        raise EdgeMerError(f"soak: 'edge-mer run' exited {proc.returncode}: {tail}")
    drops = {}
    for line in stderr.splitlines():
        if line.startswith("drops:") and "none" not in line:
            drops = {k: int(v) for k, v in (p.strip().rsplit(" ", 1) for p in line[len("drops:"):].split(","))}
    base, final, growth = growth_pct(samples, warmup_s)
    per_minute = []
    for minute in range(int(samples[-1][0] // 60) + 1 if samples else 0):
        lat = [ms for t, ms in events if minute * 60 <= t < (minute + 1) * 60]
        rss = [r for t, r in samples if minute * 60 <= t < (minute + 1) * 60]
        if lat:
            per_minute.append({"minute": minute, "events": len(lat), "latency": percentiles(lat),
                               "rss_max_mb": max(rss) if rss else None})
    return {
        "command": " ".join(cmd[1:]).replace(str(long_clip), f"<{clip.name} looped>"),
        "seconds": seconds, "warmup_s": warmup_s, "wall_s": round(time.monotonic() - t0, 1),
        "events": len(events), "unparsed_lines": len(bad_lines), "drops": drops,
        "latency": percentiles([ms for _, ms in events]) if events else None,
        "rss_baseline_mb": base, "rss_final_mb": final, "rss_peak_mb": max((r for _, r in samples), default=None),
        "growth_pct": growth, "rss_samples": samples, "per_minute": per_minute,
    }


def to_markdown(result: dict) -> str:
    r = result
    lat = r["latency"] or {"p50_ms": float("nan"), "p95_ms": float("nan")}
    lines = [f"Soak: {r['seconds']:.0f} s real-speed replay ({r['wall_s']} s wall), warm-up {r['warmup_s']:.0f} s; "
             f"load average before/after {r['loadavg_before']} / {r['loadavg_after']}.", "",
             "| events | latency p50 ms | p95 ms | drops | RSS after warm-up MB | RSS at end MB | peak MB | growth | verdict |",
             "|---:|---:|---:|---|---:|---:|---:|---:|---|",
             f"| {r['events']} | {lat['p50_ms']:.1f} | {lat['p95_ms']:.1f} | "
             f"{', '.join(f'{k} {v}' for k, v in r['drops'].items()) or 'none'} | {r['rss_baseline_mb']} | "
             f"{r['rss_final_mb']} | {r['rss_peak_mb']} | {r['growth_pct']} % | {r['verdict']} |"]
    if len(r["per_minute"]) > 1:
        lines += ["", "| minute | events | latency p50 ms | p95 ms | RSS max MB |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {m['minute']} | {m['events']} | {m['latency']['p50_ms']:.1f} | {m['latency']['p95_ms']:.1f} | "
                  f"{m['rss_max_mb']} |" for m in r["per_minute"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/soak.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    p.add_argument("--clip", default=str(DEFAULT_CLIP))
    p.add_argument("--seconds", type=float, default=180.0, help="soak length (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=20.0, help="seconds before the RSS baseline (default: %(default)s)")
    p.add_argument("--sample-s", type=float, default=1.0, help="RSS sampling period")
    p.add_argument("--max-growth-pct", type=float, default=5.0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="passed to edge-mer run; repeatable")
    p.add_argument("--config", action="append", default=[], metavar="FILE", help="passed to edge-mer run")
    p.add_argument("--json", dest="json_out")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    extra = [a for path in args.config for a in ("--config", path)] + [a for o in args.overrides for a in ("--set", o)]
    try:
        if args.warmup >= args.seconds:
            raise EdgeMerError(f"--warmup {args.warmup} must be shorter than --seconds {args.seconds}")
        before = [round(x, 2) for x in os.getloadavg()]
        result = soak(args.bundle, Path(args.clip), args.seconds, args.warmup, args.sample_s, extra)
    except EdgeMerError as exc:
        print(f"soak: error: {exc}", file=sys.stderr)
        return exc.exit_code
    result.update(machine=machine(), loadavg_before=before, loadavg_after=[round(x, 2) for x in os.getloadavg()],
                  max_growth_pct=args.max_growth_pct)
    ok = result["growth_pct"] is not None and result["growth_pct"] < args.max_growth_pct and result["events"] > 0
    result["verdict"] = "pass" if ok else "FAIL"
    write_report(result, to_markdown(result), args.json_out, args.markdown)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
