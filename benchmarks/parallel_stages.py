"""Side by side in one run: the pipeline's steady RTF with the visual stages on their own thread
(``runtime.parallel_stages = true``, the default) and one after the other (``false``).

Each condition replays the clip through ``edge-mer run --fast --stats`` in a child process
(:func:`edge_mer.bench.replay`, the same measurement as ``edge-mer bench``), alternating the two
conditions ``--repeats`` times so drifts in the machine's load hit both alike; the table gives
each replay's steady RTF, the medians and their ratio. The events themselves are the same either
way (``tests/test_face_branch.py`` checks it).

    python benchmarks/parallel_stages.py --json benchmarks/results/parallel_stages.json \\
        --markdown benchmarks/results/parallel_stages.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_mer.bench import ClipInputs, machine, replay, write_report
from edge_mer.bundle import Bundle

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=str(REPO / "models" / "default"))
    p.add_argument("--clip", default=str(REPO / "samples" / "crema-d_1001_DFA_six_emotions.mp4"))
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--json")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    bundle = Bundle.load(args.bundle)
    clip = ClipInputs(Path(args.clip), 16000, want_frames=False)
    load_before = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, list[float]] = {"parallel": [], "sequential": []}
    for _ in range(args.repeats):
        for name, flag in (("parallel", "true"), ("sequential", "false")):
            r = replay(str(bundle.root), clip, bundle.window().window_s, None, ["--set", f"runtime.parallel_stages={flag}"])
            runs[name].append(r["steady_rtf"])
    med = {k: statistics.median(v) for k, v in runs.items()}
    table = (f"# Visual stages on their own thread vs one after the other\n\n"
             f"Command: `python benchmarks/parallel_stages.py --repeats {args.repeats}`; bundle {bundle.name}, clip "
             f"{Path(args.clip).name}; {machine()['cores']} cores, load average before {load_before}.\n\n"
             "| runtime.parallel_stages | steady RTF per replay | median |\n|---|---|---:|\n"
             + "".join(f"| {'true' if k == 'parallel' else 'false'} | {', '.join(f'{x:.3f}' for x in v)} | {med[k]:.3f} |\n"
                       for k, v in runs.items())
             + f"\nRatio of medians (sequential / parallel): {med['sequential'] / med['parallel']:.2f}\n")
    result = {"machine": machine(), "bundle": bundle.name, "clip": args.clip, "steady_rtf": runs, "median": med,
              "ratio": round(med["sequential"] / med["parallel"], 3), "loadavg_before": load_before,
              "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    write_report(result, table, args.json, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
