"""Per-user normalisation as the runtime does it, scored on RAVDESS actors no head was fitted on.

    python scripts/ravdess_user_norm_eval.py --bundle models/default --out results/ravdess/user_norm

For each speaker-independent fold (test actors 4k-3..4k): every clip is cut into the runtime's
windows (2 s, hop 0.5 s, silent windows skipped), log-mel'd and encoded by the bundle's audio
encoder in ONNX Runtime (the runtime's code: edge_mer.features.logmel, the bundle's ONNX file). Two
linear heads are fitted on the 16 other actors' windows: one on the features as they are
("population"), one on each actor's features standardised by that actor's own windows ("per
speaker", label-free; its prior is those actors' average statistics). Each test actor's clips are
then streamed in a random order, window after window, the way ``edge-mer run`` would see one
person: the per-speaker head reads windows standardised by :class:`edge_mer.stream.usernorm.RunningNorm`
(online, starting from the prior), by the prior alone (``runtime.user_norm = false``) and, as a
ceiling, by the actor's statistics over all their windows (offline). A clip's prediction is the
arg-max of its windows' mean probabilities; UA is over the 4 test actors' clips, mean over folds.
The encoder was pretrained without labels on all 20 actors' audio (as the shipped one was).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_mer.bundle import Bundle  # noqa: E402
from edge_mer.config import RuntimeCfg  # noqa: E402
from edge_mer.features.logmel import log_mel  # noqa: E402
from edge_mer.io import atomic_write_text  # noqa: E402
from edge_mer.media import load_audio  # noqa: E402
from edge_mer.modality import Modality  # noqa: E402
from edge_mer.stream.stages import SILENCE_RMS_DBFS, load_model  # noqa: E402
from edge_mer.stream.usernorm import RunningNorm  # noqa: E402
from training.probe import fit_linear_probe, speaker_prior, standardise_per_group  # noqa: E402

EMOTIONS = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]


def balanced_accuracy(y_true: list[str], y_pred: list[str]) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return 100.0 * float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


def window_logmels(bundle: Bundle, data: Path) -> list[dict]:
    """Per clip: actor, label and the log-mels of its runtime windows (silent ones skipped)."""
    cfg = bundle.feature_cfg(Modality.AUDIO)
    win = bundle.window()
    n, hop = int(round(win.window_s * cfg.sample_rate_hz)), int(round(win.hop_s * cfg.sample_rate_hz))
    clips = []
    for path in sorted((data / "ravdess" / "audio_speech").glob("Actor_*/*.flac")):
        parts = path.stem.split("-")
        wave = load_audio(path, cfg.sample_rate_hz)
        if len(wave) < n:
            wave = np.pad(wave, (0, n - len(wave)))
        mels = []
        for start in range(0, len(wave) - n + 1, hop):
            w = wave[start:start + n]
            rms = float(np.sqrt(np.mean(np.square(w, dtype=np.float64))))
            if rms <= 0 or 20 * np.log10(rms) < SILENCE_RMS_DBFS:
                continue
            mels.append(log_mel(w, cfg))
        if mels:
            clips.append({"actor": int(parts[6]), "label": EMOTIONS[int(parts[2]) - 1], "mels": mels})
    return clips


def window_features(bundle: Bundle, precision: str, data: Path, prior_windows: int, memory_windows: int,
                    seed: int) -> tuple[list[dict], bool]:
    """Per clip: actor, label and the encoder features of its runtime windows. For an encoder
    with per-user input normalisation, ``feats`` are read with the actor's statistics over all
    their windows (offline), ``feats_online`` with the runtime's RunningNorm over the actor's
    clips streamed in the order of :func:`stream_order`, ``feats_prior`` with the prior alone."""
    from edge_mer.stream.usernorm import load_user_norm_prior

    _, entry = bundle.encoder_variant(Modality.AUDIO, precision)
    encoder = load_model(bundle, entry, "encoders.audio", RuntimeCfg(threads=1))
    enc_entry = bundle.encoder(Modality.AUDIO)
    clips = window_logmels(bundle, data)

    def encode(mels):
        return np.stack([encoder.run({"logmel": m[None].astype(np.float32)})["feature"][0] for m in mels])

    if "input_norm" not in enc_entry:
        for c in clips:
            c["feats"] = encode(c.pop("mels"))
        return clips, False
    n_mels = bundle.feature_cfg(Modality.AUDIO).n_mels
    mean, std = load_user_norm_prior(bundle.path(enc_entry["input_norm"]), n_mels, "input_norm")
    for actor in sorted({c["actor"] for c in clips}):
        mine = [c for c in clips if c["actor"] == actor]
        frames = np.concatenate([m for c in mine for m in c["mels"]], axis=1)
        own_mean, own_std = frames.mean(axis=1, keepdims=True), np.maximum(frames.std(axis=1, keepdims=True), 1e-3)
        online = RunningNorm(mean, std, prior_windows, memory_windows)
        fixed = RunningNorm(mean, std, prior_windows, memory_windows, adapt=False)
        for k in stream_order(actor, len(mine), seed):
            c = mine[k]
            c["feats_online"] = encode([online(m.T).T for m in c["mels"]])
        for c in mine:
            c["feats"] = encode([(m - own_mean) / own_std for m in c["mels"]])
            c["feats_prior"] = encode([fixed(m.T).T for m in c["mels"]])
            del c["mels"]
    return clips, True


def stream_order(actor: int, n: int, seed: int) -> np.ndarray:
    """The order an actor's clips are streamed in (the same for input and feature statistics)."""
    return np.random.default_rng([seed, actor]).permutation(n)


def run_fold(clips: list[dict], fold: int, prior_windows: int, memory_windows: int, seed: int, input_norm: bool) -> dict:
    test_actors = set(range(4 * fold - 3, 4 * fold + 1))
    train = [c for c in clips if c["actor"] not in test_actors]
    test = [c for c in clips if c["actor"] in test_actors]
    x = np.concatenate([c["feats"] for c in train])
    y = np.concatenate([[c["label"]] * len(c["feats"]) for c in train])
    g = np.concatenate([[c["actor"]] * len(c["feats"]) for c in train])
    population = fit_linear_probe(x, y, groups=g)
    per_speaker = fit_linear_probe(standardise_per_group(x, g), y, groups=g)
    prior_mean, prior_std = speaker_prior(x, g)
    preds: dict[str, list[str]] = {k: [] for k in ("population", "prior_only", "online", "offline")}
    truth: list[str] = []
    online_by_position: dict[str, list[tuple[int, bool]]] = {}
    if input_norm:
        preds.update({"input_online": [], "input_prior_only": [], "input_online+online": []})
    for actor in sorted(test_actors):
        mine = [c for c in test if c["actor"] == actor]
        order = stream_order(actor, len(mine), seed)
        every = np.concatenate([c["feats"] for c in mine])
        own_mean, own_std = every.mean(axis=0), every.std(axis=0)
        online = RunningNorm(prior_mean, prior_std, prior_windows, memory_windows)
        fixed = RunningNorm(prior_mean, prior_std, prior_windows, memory_windows, adapt=False)
        both = RunningNorm(prior_mean, prior_std, prior_windows, memory_windows)
        for pos, k in enumerate(order):
            c = mine[k]
            truth.append(c["label"])
            windows = {
                "population": population.predict_proba(c["feats"]),
                "prior_only": per_speaker.predict_proba(np.concatenate([fixed(f[None]) for f in c["feats"]])),
                "online": per_speaker.predict_proba(np.concatenate([online(f[None]) for f in c["feats"]])),
                "offline": per_speaker.predict_proba((c["feats"] - own_mean) / np.maximum(own_std, 1e-8)),
            }
            if input_norm:
                # the encoder's input standardised online / by the prior alone; then the population
                # head, or the per-speaker head behind a second, feature-level running norm
                windows["input_online"] = population.predict_proba(c["feats_online"])
                windows["input_prior_only"] = population.predict_proba(c["feats_prior"])
                windows["input_online+online"] = per_speaker.predict_proba(np.concatenate([both(f[None]) for f in c["feats_online"]]))
            for name, p in windows.items():
                preds[name].append(str(population.classes[int(p.mean(axis=0).argmax())]))
            for name in windows:
                if "online" in name:
                    online_by_position.setdefault(name, []).append((pos, preds[name][-1] == c["label"]))
    ua = {name: round(balanced_accuracy(truth, p), 2) for name, p in preds.items()}
    # accuracy of the online head by how many of the person's clips came before (warm-up)
    bins = {"clips 1-5": (0, 5), "clips 6-15": (5, 15), "clips 16-60": (15, 10**6)}
    warmup = {name: {b: round(100.0 * float(np.mean([ok for pos, ok in track if lo <= pos < hi])), 1)
                     for b, (lo, hi) in bins.items()} for name, track in online_by_position.items()}
    return {"fold": fold, "test_actors": sorted(test_actors), "n_test_clips": len(truth), "ua": ua, "online_accuracy_by_position": warmup}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default="models/default")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--data", default="../shared/data", help="folder holding ravdess/audio_speech")
    p.add_argument("--folds", default="1,2,3,4,5")
    p.add_argument("--prior-windows", type=int, default=RuntimeCfg.user_norm_prior_windows)
    p.add_argument("--memory-windows", type=int, default=RuntimeCfg.user_norm_memory_windows)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--features", help="an .npz to keep the window features in (read when it exists)")
    p.add_argument("--out", default="results/ravdess/user_norm")
    args = p.parse_args(argv)
    t0 = time.time()
    bundle = Bundle.load(args.bundle)
    keys = ("feats", "feats_online", "feats_prior")
    cache = Path(args.features) if args.features else None
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            bounds = np.cumsum(z["counts"])[:-1]
            parts = {k: np.split(z[k], bounds) for k in keys if k in z.files}
            clips = [{"actor": int(a), "label": str(lab), **{k: parts[k][i] for k in parts}}
                     for i, (a, lab) in enumerate(zip(z["actors"], z["labels"]))]
        input_norm = "feats_online" in parts
    else:
        clips, input_norm = window_features(bundle, args.precision, Path(args.data), args.prior_windows,
                                            args.memory_windows, args.seed)
        if cache is not None:
            np.savez(cache, counts=[len(c["feats"]) for c in clips], actors=[c["actor"] for c in clips],
                     labels=[c["label"] for c in clips], **{k: np.concatenate([c[k] for c in clips]) for k in keys if k in clips[0]})
    per_fold = [run_fold(clips, int(f), args.prior_windows, args.memory_windows, args.seed, input_norm)
                for f in args.folds.split(",")]
    names = list(per_fold[0]["ua"])
    summary = {n: {"mean": round(float(np.mean([f["ua"][n] for f in per_fold])), 2),
                   "std": round(float(np.std([f["ua"][n] for f in per_fold])), 2)} for n in names}
    warm = {name: {b: round(float(np.mean([f["online_accuracy_by_position"][name][b] for f in per_fold])), 1)
                   for b in track} for name, track in per_fold[0]["online_accuracy_by_position"].items()}
    result = {"bundle": str(args.bundle), "precision": args.precision, "encoder_sha256": bundle.encoder_variant(Modality.AUDIO, args.precision)[1]["sha256"],
              "prior_windows": args.prior_windows, "memory_windows": args.memory_windows, "seed": args.seed,
              "n_clips": len(clips), "n_windows": int(sum(len(c["feats"]) for c in clips)),
              "ua_mean_std": summary, "online_accuracy_by_position": warm, "per_fold": per_fold,
              "seconds": round(time.time() - t0)}
    labels = {"population": "head on features as they are (population)",
              "prior_only": "per-speaker head, population prior only (runtime.user_norm = false)",
              "online": "per-speaker head, online per-user statistics (runtime.user_norm = true)",
              "offline": "per-speaker head, the actor's statistics over all their windows (ceiling)",
              "input_online": "encoder input standardised online per user, population head (runtime.user_norm = true)",
              "input_prior_only": "encoder input standardised by the population prior only (runtime.user_norm = false)",
              "input_online+online": "encoder input and features standardised online per user, per-speaker head"}
    lines = [f"RAVDESS audio, {len(per_fold)} speaker-independent folds, clip UA % from runtime windows "
             f"({args.precision} encoder of {args.bundle}; prior {args.prior_windows} windows, memory {args.memory_windows})", "",
             "| head input | UA % |", "|---|---|"]
    lines += [f"| {labels[n]} | {summary[n]['mean']:.1f} ± {summary[n]['std']:.1f} |" for n in names]
    lines += ["", "Online conditions, accuracy (WA %) by the clip's position in the person's stream:", ""]
    lines += [f"- {labels[n]}: " + ", ".join(f"{b}: {v}" for b, v in track.items()) for n, track in warm.items()]
    lines.append("")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "results.md", "\n".join(lines))
    print("\n".join(lines))
    print(f"({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
