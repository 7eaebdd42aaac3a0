"""How sure the default recipe's voice is, and should be, per speech fraction, on unseen people.

Reads the bundle-level evaluation's one-recording replays (``python -m training.eval.bundle_cv
--encoder whisper --work runs/bundle_cv``: the events under ``runs/bundle_cv/fold*_whisper/events``
and the clip spans in ``results/bundle_cv/whisper/events.json.gz``). For each audio window of the
20 unseen actors it takes the audio head's probabilities and the window's speech fraction
(``reliability.audio``), and prints per fraction bin the accuracy, the mean confidence, and the
NLL-optimal weight of those probabilities in the runtime's log-linear pool (an inverse
temperature). A calibrated head needs no further down-weighting where accuracy and confidence
agree (docs/RUNTIME.md, ``fusion.reliability_weight``).

    .venv/bin/python scripts/audio_weight_by_speech.py
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

BINS = ((0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.01))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="runs/bundle_cv", help="bundle_cv --work folder (fold events)")
    p.add_argument("--results", default="results/bundle_cv/whisper/events.json.gz", help="bundle_cv events.json.gz (clip spans)")
    args = p.parse_args(argv)
    from scipy.optimize import minimize_scalar

    from export.audio_bundle import mean_nll
    from training.eval.recordings import LABELS, LabelledClip, Span
    from training.eval.scoring import window_labels

    frac, y, probs = [], [], []
    for k, fold in enumerate(json.loads(gzip.decompress(Path(args.results).read_bytes())), start=1):
        for actor, d in fold["continuous"].items():
            spans = [Span(LabelledClip(Path(c), int(actor), label, c), t0, t1) for c, label, t0, t1 in d["spans"]]
            path = Path(args.work) / f"fold{k}_whisper" / "events" / f"actor{int(actor):02d}.jsonl"
            events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            for e, label in zip(events, window_labels([(e["t_start"], e["t_end"], None) for e in events], spans)):
                audio = e["per_modality"].get("audio")
                if label is not None and audio:
                    frac.append(e["reliability"]["audio"])
                    y.append(LABELS.index(label))
                    probs.append([audio[name] for name in LABELS])
    f, y, logp = np.array(frac), np.array(y), np.log(np.maximum(np.array(probs), 1e-12))
    print(f"{len(y)} audio windows of unseen actors ({args.work})\n")
    print("| speech fraction | windows | accuracy % | mean confidence % | NLL at weight 1 | NLL-optimal weight |")
    print("|---|---:|---:|---:|---:|---:|")
    for lo, hi in BINS:
        m = (f >= lo) & (f < hi)
        best = minimize_scalar(lambda w: mean_nll(w * logp[m], y[m]), bounds=(0.05, 5.0), method="bounded")
        print(f"| {lo:.1f}-{min(hi, 1.0):.1f} | {m.sum()} | {100 * np.mean(logp[m].argmax(1) == y[m]):.1f} | "
              f"{100 * np.exp(logp[m].max(1)).mean():.1f} | {mean_nll(logp[m], y[m]):.3f} | {best.x:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
