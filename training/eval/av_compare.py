"""Compare ``training.eval.av_clips`` results of several bundles on the same clips: clips right and
the mean probability given to the true label, per modality and clip set, plus a *held-out*
composite whose rows each come from the bundle that did not see that clip's recording.

    python -m training.eval.av_compare --result shipped=results/av_clips/results.json \\
        --result aligned_all=results/face_pairwise/aligned_all/results.json ... \\
        --composite "RAVDESS actor 01=aligned_cremad" --composite "CREMA-D 1001=aligned_ravdess" \\
        --composite "sample=aligned_ravdess" --out results/face_pairwise/compare.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_mer.io import atomic_write_text

SETS = (("13 labelled clips", ("RAVDESS actor 01", "CREMA-D 1001")), ("RAVDESS actor 01 (7)", ("RAVDESS actor 01",)),
        ("CREMA-D 1001 (6)", ("CREMA-D 1001",)), ("bundled sample, 6 segments", ("sample",)))
MODES = ("face", "fused")


def _cell(rows: list[dict], labels: list[str], mode: str) -> str:
    scored = [r for r in rows if r["probs"].get(mode) is not None]
    right = sum(r["pred"][mode] == r["label"] for r in scored)
    p_true = [r["probs"][mode][labels.index(r["label"])] for r in scored]
    p_top = [max(r["probs"][mode]) for r in scored]
    mean = sum(p_true) / len(p_true) if p_true else float("nan")
    top = sum(p_top) / len(p_top) if p_top else float("nan")
    return f"{right} / {len(rows)} (p {mean:.2f}, top {top:.2f})"


def _same(rows: list[dict], ref: list[dict], mode: str) -> str:
    ref_pred = {(r["set"], r["clip"]): r["pred"][mode] for r in ref}
    return f"{sum(r['pred'][mode] == ref_pred.get((r['set'], r['clip'])) for r in rows)} / {len(rows)}"


def table(results: dict[str, dict], composite: dict[str, str] | None) -> str:
    cols = [f"{m}" for m in MODES] + ["face label = first bundle's"]
    lines = ["| bundle | clips | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
    named = dict(results)
    if composite:
        first = next(iter(results.values()))
        rows = []
        for r in first["rows"]:
            src = composite.get(r["set"])
            if src is None:
                raise SystemExit(f"--composite names no bundle for set {r['set']!r}")
            rows.append(next(x for x in named[src]["rows"] if x["set"] == r["set"] and x["clip"] == r["clip"]))
        named["held-out composite"] = {"labels": first["labels"], "rows": rows}
    ref = next(iter(results.values()))["rows"]
    for name, res in named.items():
        for set_name, members in SETS:
            rows = [r for r in res["rows"] if r["set"] in members]
            cells = [_cell(rows, res["labels"], m) for m in MODES] + [_same(rows, ref, "face")]
            lines.append(f"| {name} | {set_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.eval.av_compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--result", action="append", required=True, metavar="NAME=results.json")
    p.add_argument("--composite", action="append", default=[], metavar="SET=NAME",
                   help="for clip set SET (RAVDESS actor 01, CREMA-D 1001, sample) take the rows of result NAME")
    p.add_argument("--out", help="write the table here (markdown) as well as to stdout")
    args = p.parse_args(argv)
    results = {}
    for spec in args.result:
        name, _, path = spec.partition("=")
        results[name] = json.loads(Path(path).read_text())
    composite = dict(c.split("=", 1) for c in args.composite) if args.composite else None
    text = ("Clips right / clips (argmax of the mean window probabilities); p: mean probability of the true "
            "label, top: mean probability of the predicted label (confidence), over the clips.\n\n" + table(results, composite))
    if args.out:
        atomic_write_text(Path(args.out), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
