"""Paired comparison of a new protocol run's (c) rows with the rows of an earlier protocol run.

    python scripts/paired_vs_protocol.py results/protocol_rankreg/per_run.json \
        results/protocol_seeds_all/per_run.json --out results/protocol_rankreg/paired
    python scripts/paired_vs_protocol.py results/protocol_stats_mlp/per_run.json \
        results/protocol_seeds_all/per_run.json --arm c_pair_stats_mlp --out results/protocol_stats_mlp/paired

Pairs are (fold, seed): the new run's ``c_pair_*`` metric against the reference run's
``c_pair_*`` and ``a_random_*`` of the same (fold, seed), and against the reference's
deterministic floors of that fold (paired with every seed). UA points, differences arm -
reference; sign and Wilcoxon tests (training.eval.metrics.paired_comparison) over the (fold, seed)
pairs and over the folds with each fold's seeds averaged first. Writes ``<out>.json`` and
``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from training.eval.metrics import paired_comparison

# (label, arm metric of the new run, reference metric of the old run)
ROWS = [
    ("new (c) audio − old (c) audio, features per speaker", "c_pair_audio_spk", "c_pair_audio_spk"),
    ("new (c) audio − (a) random init, features per speaker", "c_pair_audio_spk", "a_random_audio_spk"),
    ("new (c) audio − log-mel stats floor, features per speaker", "c_pair_audio_spk", "floor_logmel_stats_spk"),
    ("new (c) audio − old (c) audio", "c_pair_audio", "c_pair_audio"),
    ("new (c) audio − (a) random init", "c_pair_audio", "a_random_audio"),
    ("new (c) audio − log-mel stats floor", "c_pair_audio", "floor_logmel_stats"),
    ("new (c) audio + AU − stats + AU floor", "c_pair_audio+au", "floor_logmel_stats+au"),
    ("new (c) audio + AU − stats + AU floor, features per speaker", "c_pair_audio+au_spk", "floor_logmel_stats+au_spk"),
]


def ua_table(path: Path) -> tuple[dict[tuple[int, int], dict[str, float]], dict[int, dict[str, float]]]:
    """``({(fold, seed): {metric: UA}}, {fold: {floor metric: UA}})`` of a per_run.json."""
    seeded: dict[tuple[int, int], dict[str, float]] = defaultdict(dict)
    floors: dict[int, dict[str, float]] = defaultdict(dict)
    for rec in json.loads(path.read_text()):
        target = floors[rec["fold"]] if rec.get("seed") is None else seeded[(rec["fold"], rec["seed"])]
        target.update({k: v["ua"] for k, v in rec["metrics"].items()})
    return seeded, floors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("new", type=Path)
    ap.add_argument("reference", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--arm", default="c_pair_audio",
                    help="the new run's arm rows, in place of c_pair_audio (e.g. c_pair_stats_mlp: the pairwise MLP "
                         "over the log-mel statistics); the reference rows stay as named")
    args = ap.parse_args()
    new, _ = ua_table(args.new)
    ref, ref_floors = ua_table(args.reference)
    out: dict[str, dict] = {}
    lines = ["| arm − reference, UA points | (fold, seed) pairs: mean ± std, wins/losses/ties, sign p, Wilcoxon p | over folds: diffs, mean, Wilcoxon p |",
             "|---|---|---|"]
    for label, arm_key, ref_key in ROWS:
        if args.arm != "c_pair_audio":
            if ref_key.startswith("a_random_audio"):
                continue  # another architecture's random init: the new run's own table pairs its arm with its own
            arm_key = arm_key.replace("c_pair_audio", args.arm)
            label = label.replace("new (c) audio", f"new {args.arm}")
        keys, arm, rv = [], [], []
        for (fold, seed), m in sorted(new.items()):
            if arm_key not in m:
                continue
            r = ref_floors[fold].get(ref_key) if ref_key.startswith("floor_") else ref.get((fold, seed), {}).get(ref_key)
            if r is None:
                continue
            keys.append(f"fold{fold}/seed{seed}")
            arm.append(m[arm_key])
            rv.append(r)
        if not keys:
            continue
        pairs = paired_comparison(arm, rv, keys)
        by_fold: dict[int, list[float]] = defaultdict(list)
        for k, a, r in zip(keys, arm, rv):
            by_fold[int(k.split("/")[0][4:])].append(a - r)
        fold_diffs = [float(np.mean(by_fold[f])) for f in sorted(by_fold)]
        folds = paired_comparison(fold_diffs, [0.0] * len(fold_diffs), [f"fold{f}" for f in sorted(by_fold)])
        out[label] = {"arm": arm_key, "reference": ref_key, "pairs": pairs, "folds": folds,
                      "arm_mean": float(np.mean(arm)), "arm_std": float(np.std(arm)), "reference_mean": float(np.mean(rv))}
        s, w = pairs["sign"], pairs["wilcoxon"]
        lines.append(
            f"| {label} | {pairs['mean_diff']:+.1f} ± {pairs['std_diff']:.1f}, {s['wins']}/{s['losses']}/{s['ties']}, "
            f"p {s['p_two_sided']:.2g}, p {w['p_two_sided']:.2g} (n {pairs['n']}) | "
            f"{', '.join(f'{d:+.1f}' for d in fold_diffs)}; {np.mean(fold_diffs):+.1f}, p {folds['wilcoxon']['p_two_sided']:.2g} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    levels = [f"- {v['arm']}: {v['arm_mean']:.1f} ± {v['arm_std']:.1f} (reference {v['reference']}: {v['reference_mean']:.1f})"
              for v in out.values()]
    text = "\n".join(lines) + "\n\nLevels (UA %, mean ± std over the pairs):\n" + "\n".join(dict.fromkeys(levels)) + "\n"
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
