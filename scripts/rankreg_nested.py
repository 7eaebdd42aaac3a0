"""Nested choice of the rank-regulariser weight, one per outer fold, and the assembled nested arm.

    python scripts/rankreg_nested.py --selection results/protocol_rankreg/nested/selection \
        --arm 1=results/protocol_rankreg/per_run.json --arm 0=results/protocol_seeds_all/per_run.json \
        --arm 4=results/protocol_rankreg/nested/outer_w4/per_run.json \
        --out results/protocol_rankreg/nested

For every outer fold k the weight (loss.var_weight = loss.cov_weight) is chosen on that fold's 16
training actors only: ``<selection>/k{k}_w{W}/per_run.json`` is a protocol run on those actors with two
inner speaker-independent folds of 8 actors, seed 0. Criterion: the mean over the inner folds of the
c_pair audio UA with per-speaker standardised features (``c_pair_audio_spk``); ties go to the smaller
weight. The nested arm then takes, per outer fold, the (fold, seed) ``c_pair_*`` metrics of the run made
with the chosen weight (``--arm W=per_run.json``; the outer fold's records must be there) and the
fold's floors from the weight-0 arm. Writes ``<out>/selection.{json,md}`` and ``<out>/per_run.json``
(pair the latter with ``scripts/paired_vs_protocol.py``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

CRITERION = "c_pair_audio_spk"
FLOOR = "floor_logmel_stats_spk"


def ranges(actors: list[int]) -> str:
    """``[1, 2, 3, 4, 9, 10]`` -> ``"01-04,09-10"``."""
    out, start = [], None
    for i, a in enumerate(sorted(actors)):
        if start is None:
            start = a
        if i + 1 == len(actors) or sorted(actors)[i + 1] != a + 1:
            out.append(f"{start:02d}" if start == a else f"{start:02d}-{a:02d}")
            start = None
    return ",".join(out)


def inner_scores(path: Path) -> tuple[list[float], list[float]]:
    """(criterion per inner fold, floor per inner fold; empty when the run has no floors)."""
    recs = json.loads(path.read_text())
    crit = {r["fold"]: r["metrics"][CRITERION]["ua"] for r in recs if r.get("seed") is not None}
    floor = {r["fold"]: r["metrics"][FLOOR]["ua"] for r in recs if r.get("seed") is None and FLOOR in r["metrics"]}
    return [crit[f] for f in sorted(crit)], [floor[f] for f in sorted(floor)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--selection", type=Path, required=True)
    ap.add_argument("--arm", action="append", required=True, help="W=per_run.json (repeatable)")
    ap.add_argument("--weights", default="0,1,4")
    ap.add_argument("--folds", default="1,2,3,4,5")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    folds = [int(f) for f in args.folds.split(",")]
    arms: dict[float, list[Path]] = {}
    for a in args.arm:
        w, p = a.split("=", 1)
        arms.setdefault(float(w), []).append(Path(p))

    table, lines = {}, [f"| outer fold (test actors) | inner folds (8 + 8 training actors) | "
                        + " | ".join(f"w {w:g}: {CRITERION} per inner fold; mean" for w in weights)
                        + f" | floor {FLOOR}; mean | chosen |", "|---" * (4 + len(weights)) + "|"]
    for k in folds:
        row: dict = {"test_actors": list(range(4 * k - 3, 4 * k + 1)), "weights": {}}
        for w in weights:
            p = args.selection / f"k{k}_w{w:g}" / "per_run.json"
            if not p.exists():
                continue
            crit, floor = inner_scores(p)
            row["weights"][f"{w:g}"] = {"inner": crit, "mean": float(np.mean(crit))}
            if floor:
                row["floor"] = {"inner": floor, "mean": float(np.mean(floor))}
            rec = json.loads(p.read_text())
            row["inner_test_actors"] = [r["test_actors"] for r in rec if r.get("seed") is not None]
        if len(row["weights"]) < len(weights):
            row["chosen"] = None  # incomplete selection
        else:
            best = max(v["mean"] for v in row["weights"].values())
            # ties (to 1e-9 UA points) go to the smaller weight
            row["chosen"] = min(float(w) for w, v in row["weights"].items() if v["mean"] >= best - 1e-9)
        table[k] = row
        cells = []
        for w in weights:
            v = row["weights"].get(f"{w:g}")
            if v is None:
                cells.append("—")
                continue
            mean = f"**{v['mean']:.2f}**" if row["chosen"] == w else f"{v['mean']:.2f}"
            cells.append(" / ".join(f"{x:.1f}" for x in v["inner"]) + f"; {mean}")
        fl = row.get("floor")
        inner = "; ".join(ranges(t) for t in row.get("inner_test_actors", []))
        lines.append(f"| {k} ({4 * k - 3:02d}-{4 * k:02d}) | {inner} | " + " | ".join(cells) + " | "
                     + ("—" if fl is None else " / ".join(f"{x:.1f}" for x in fl["inner"]) + f"; {fl['mean']:.2f}")
                     + f" | {'incomplete' if row['chosen'] is None else format(row['chosen'], 'g')} |")

    records = []
    for k in folds:
        w = table[k]["chosen"]
        if w is None:
            continue
        floors_added = False
        for wf in dict.fromkeys((0.0, w)):
            for p in arms.get(wf, []):
                for r in json.loads(p.read_text()):
                    if r["fold"] != k:
                        continue
                    if r.get("seed") is None:
                        if wf == 0.0 and not floors_added:
                            records.append({**r, "metrics": {m: v for m, v in r["metrics"].items() if m.startswith("floor_")}})
                            floors_added = True
                    elif wf == w:
                        records.append({**r, "nested_weight": w,
                                        "metrics": {m: v for m, v in r["metrics"].items() if m.startswith("c_pair_")
                                                    and not m.startswith("c_pair_release")},
                                        "source": str(p)})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "per_run.json").write_text(json.dumps(records, indent=2) + "\n")
    (args.out / "selection.json").write_text(json.dumps({"criterion": CRITERION, "weights": weights,
                                                          "folds": table}, indent=2) + "\n")
    n = {k: sum(1 for r in records if r["fold"] == k and r.get("seed") is not None) for k in folds}
    text = ("\n".join(lines) + "\n\nNested arm, (fold, seed) runs per outer fold: "
            + ", ".join(f"fold {k}: {n[k]} (w {table[k]['chosen']:g})" if table[k]["chosen"] is not None
                        else f"fold {k}: none (selection incomplete)" for k in folds) + "\n")
    (args.out / "selection.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
