"""Selection table of the rank-regulariser weight (training actors 05-20 only):
python results/protocol_rankreg/selection/summarise.py > results/protocol_rankreg/selection/selection.md"""
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
print("| loss.var_weight = loss.cov_weight | metric | inner folds 05-08 / 09-12 / 13-16 / 17-20 | mean | floor (same folds) | floor mean |")
print("|---|---|---|---|---|---|")
for w in ["0", "1", "4", "16"]:
    d = json.loads((HERE / f"w{w}" / "per_run.json").read_text())
    floors = {r["fold"]: r["metrics"] for r in d if r.get("seed") is None}
    seeded = {r["fold"]: r["metrics"] for r in d if r.get("seed") is not None}
    for key, fl in [("c_pair_audio_spk", "floor_logmel_stats_spk"), ("c_pair_audio", "floor_logmel_stats"),
                    ("c_pair_audio+au_spk", "floor_logmel_stats+au_spk")]:
        v = [seeded[f][key]["ua"] for f in sorted(seeded)]
        fv = [floors[f][fl]["ua"] for f in sorted(seeded)]
        print(f"| {w} | {key} | {' / '.join(f'{x:.1f}' for x in v)} | {np.mean(v):.1f} | {' / '.join(f'{x:.1f}' for x in fv)} | {np.mean(fv):.1f} |")
