"""Fusion of the modalities a window has, temporal smoothing, and the event a sink receives.

Fusion reads the bundle's heads: the head trained for exactly the modalities present when the
bundle has one (features concatenated in Modality order); otherwise the per-modality heads of the
present modalities, combined by a weighted average of their log-probabilities, renormalised (a
weighted geometric mean of the distributions). A modality's weight is the bundle's
``fusion.weights[m]`` (1 when not given) times the window's reliability of that modality (from
its stage: the share of frames with a usable face, the speech fraction, ...), so a face turned
away for half the window or a mostly silent window counts for less. Where the bundle has a
fitted curve for a modality, ``fusion.reliability_weight[m] = {"intercept": a, "slope": b}``,
the reliability ``r`` counts through it instead, as ``max(0, a + b r)``: the build fits it for the
audio (:func:`export.audio_bundle.fit_reliability_weight`) from how well calibrated the head's
out-of-fold probabilities are at each speech fraction, since a calibrated head's probabilities
already carry much of a half-silent window's doubt. A window with no usable modality yields an
event with ``label`` null.

A head whose manifest entry has ``input_norm`` (``{"type": "per_user", "file": prior npz}``) was
fitted on per-speaker standardised features; its input goes through a
:class:`~edge_mer.stream.usernorm.RunningNorm` first (``runtime.user_norm``).

A new person, from the first window: such a head may also carry a ``population`` head, fitted on
the same features standardised by the population statistics only (what the person's running
statistics are before they have said anything). The two are blended in probability,
``p = w p_user + (1 - w) p_population`` with ``w = n / (n + runtime.population_blend_windows)``
and ``n`` the windows of this person seen so far, so the first seconds of a person are read by a
head made for them and the per-user head takes over as their statistics settle. With
``runtime.user_norm = false`` the population head alone reads the window.

Smoothing is exponential over window ends: ``p <- p + (1 - exp(-dt / tau)) (p_new - p)``, so the
time constant ``runtime.smoothing_tau_s`` means the same whatever the hop; ``tau = 0`` is off. A
window with no prediction (no speech, no face) ends the smoothing: the next utterance starts fresh
instead of inheriting the last one's emotion.

>>> fusion = Fusion.from_bundle(bundle, RuntimeCfg())                 # doctest: +SKIP
>>> pred = fusion.predict({Modality.AUDIO: feature})                  # doctest: +SKIP
>>> pred.label, sum(pred.probs), pred.modalities                      # doctest: +SKIP
('happy', 1.0, ('audio',))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edge_mer.adapt import UserStats, apply_residual, load_residuals
from edge_mer.bundle import subset_key
from edge_mer.config import RuntimeCfg
from edge_mer.modality import Modality
from edge_mer.stream.usernorm import RunningNorm, user_norm_from_bundle

if TYPE_CHECKING:
    from edge_mer.backends.base import Model
    from edge_mer.bundle import Bundle
    from edge_mer.stream.stages import WindowFeatures
    from edge_mer.stream.windower import Window

log = logging.getLogger(__name__)

# Probabilities are clipped before the log so a head's hard zero cannot veto the others.
_LOG_FLOOR = 1e-8


@dataclass
class Prediction:
    """Fused probabilities (in label order) and what produced them."""

    probs: np.ndarray | None  # [n_labels], None when no modality was usable
    modalities: tuple[str, ...]
    per_modality: dict[str, np.ndarray] = field(default_factory=dict)


class Fusion:
    """Runs the bundle's heads on a window's features."""

    def __init__(self, bundle: "Bundle", runtime_cfg: RuntimeCfg) -> None:
        self.bundle = bundle
        self.runtime_cfg = runtime_cfg
        self.labels = bundle.labels
        self._heads: dict[str, "Model"] = {}
        self._norms: dict[str, RunningNorm] = {}
        self._population: dict[str, "Model"] = {}  # per-user heads' population heads (cold start)
        self._warned: set[str] = set()
        weights = (bundle.manifest.get("fusion") or {}).get("weights") or {}
        self.weights = {Modality(m): float(w) for m, w in weights.items()}
        self.curves = reliability_curves(bundle)
        # A user bundle (edge-mer adapt): per head, a residual on the head's log-probabilities
        # read from the head's own input (edge_mer.adapt.apply_residual).
        self.residuals = load_residuals(bundle)
        self.last_inputs: dict[str, np.ndarray] = {}  # per head: the input it read last (standardised features)

    @classmethod
    def from_bundle(cls, bundle: "Bundle", runtime_cfg: RuntimeCfg) -> "Fusion":
        """Load every head now, so a broken one stops the run before it starts."""
        fusion = cls(bundle, runtime_cfg)
        for key in bundle.manifest["heads"]:
            fusion._head(key)
        return fusion

    def _head(self, key: str) -> "Model | None":
        if key not in self._heads:
            entry = self.bundle.manifest["heads"].get(key)
            if entry is None:
                return None
            from edge_mer.stream.stages import load_model

            self._heads[key] = load_model(self.bundle, entry, f"heads.{key}", self.runtime_cfg)
            if "input_norm" in entry:  # its form was checked when the bundle was loaded
                dim = sum(int(self.bundle.encoder(m)["feature_dim"]) for m in entry.get("modalities", key.split("+")))
                self._norms[key] = user_norm_from_bundle(self.bundle, entry["input_norm"], dim,
                                                         f"bundle {self.bundle.root}: heads.{key}.input_norm", self.runtime_cfg)
                residual = self.residuals.get(key)
                if residual is not None and residual.user is not None:  # a user bundle knows its person
                    self._norms[key].start_from(residual.user.mean, residual.user.std, residual.user.windows)
                if "population" in entry:
                    self._population[key] = load_model(self.bundle, entry["population"], f"heads.{key}.population",
                                                       self.runtime_cfg)
        return self._heads[key]

    def start_from(self, stats: dict[str, "UserStats"]) -> None:
        """Start the per-user statistics of these heads from a known person's (``edge-mer adapt``)."""
        for key, st in stats.items():
            self._head(key)
            if key in self._norms:
                self._norms[key].start_from(st.mean, st.std, st.windows)

    def reset_user(self) -> None:
        """Forget what this session learned of the person: every head back to the population's
        statistics, or to the known person's of a user bundle (:meth:`start_from`)."""
        for norm in self._norms.values():
            norm.reset()

    def user_windows(self) -> dict[str, int]:
        """Per head with per-user normalisation: the windows its statistics rest on (prior included)."""
        return {key: norm.windows for key, norm in self._norms.items()}

    def _run(self, key: str, features: dict[Modality, np.ndarray]) -> np.ndarray:
        order = [m for m in Modality if m in features]
        x = np.concatenate([features[m].reshape(1, -1) for m in order], axis=1).astype(np.float32)
        head = self._head(key)
        norm = self._norms.get(key)
        if norm is None:
            self.last_inputs[key] = x[0]
            return self._adapted(key, self._probs(head, x))
        x_user = norm(x)  # updates the person's statistics (when adapting), then standardises
        self.last_inputs[key] = x_user[0]
        population = self._population.get(key)
        if population is None:
            return self._adapted(key, self._probs(head, x_user))
        w = self.user_weight(norm)
        p_pop = self._probs(population, norm.apply_prior(x))
        return self._adapted(key, p_pop if w == 0.0 else w * self._probs(head, x_user) + (1.0 - w) * p_pop)

    def _adapted(self, key: str, probs: np.ndarray) -> np.ndarray:
        residual = self.residuals.get(key)
        if residual is None:
            return probs
        return apply_residual(probs, self.last_inputs[key], residual)

    def user_weight(self, norm: RunningNorm) -> float:
        """Weight of the per-user head: ``n / (n + k)`` for ``n`` windows of this person, ``k =
        runtime.population_blend_windows`` (0 = per-user head only); 0 when not adapting."""
        if not norm.adapt:
            return 0.0
        k = self.runtime_cfg.population_blend_windows
        n = norm.windows - norm.prior_windows
        return 1.0 if k == 0 else n / (n + k)

    def _probs(self, head: "Model", x: np.ndarray) -> np.ndarray:
        probs = head.run({"features": x})["probs"][0].astype(np.float64)
        probs = np.clip(probs, 0.0, None)
        return probs / probs.sum() if probs.sum() > 0 else np.full(len(self.labels), 1.0 / len(self.labels))

    def predict(self, features: dict[Modality, np.ndarray], reliability: dict[Modality, float] | None = None) -> Prediction:
        """Fuse whatever modalities are present (any subset, possibly empty); ``reliability``
        (0..1 per modality, default 1) scales each modality's weight where heads are combined."""
        per: dict[str, np.ndarray] = {}
        for m in features:
            if self._head(m.value) is not None:
                per[m.value] = self._run(m.value, {m: features[m]})
        if not features:
            return Prediction(None, ())
        key = subset_key(features)
        if self._head(key) is not None:
            used = tuple(m.value for m in Modality if m in features)
            probs = per[key] if key in per else self._run(key, features)
            return Prediction(probs, used, per)
        if not per:
            self._warn_once(key, f"the bundle has no head for {key} nor for any of its modalities")
            return Prediction(None, ())
        missing = [m.value for m in features if m.value not in per]
        if missing:
            self._warn_once(key, f"the bundle has no head for {key} nor for {', '.join(missing)} alone: "
                                 f"{', '.join(missing)} left out of the fusion")
        used = tuple(m.value for m in Modality if m.value in per)
        w = np.array([self.weight(Modality(m), reliability) for m in used], np.float64)
        if w.sum() <= 0:
            w = np.ones(len(used))
        logp = np.tensordot(w / w.sum(), np.stack([np.log(np.maximum(per[m], _LOG_FLOOR)) for m in used]), axes=1)
        probs = np.exp(logp - logp.max())
        return Prediction(probs / probs.sum(), used, per)

    def weight(self, m: Modality, reliability: dict[Modality, float] | None = None) -> float:
        """``m``'s weight in a combination of per-modality heads: the bundle's weight times the
        window's reliability (both default 1), the latter through the bundle's fitted curve for
        ``m`` where it has one."""
        r = 1.0 if reliability is None else float(reliability.get(m, 1.0))
        r = min(1.0, max(0.0, r))
        curve = self.curves.get(m)
        return self.weights.get(m, 1.0) * (r if curve is None else max(0.0, curve[0] + curve[1] * r))

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("fusion: %s", message)


def reliability_curves(bundle: "Bundle") -> dict[Modality, tuple[float, float]]:
    """``{modality: (intercept, slope)}`` of the bundle's ``fusion.reliability_weight``; a
    malformed entry stops the run with one line naming it."""
    from edge_mer.errors import BundleError

    curves = {}
    for m, entry in ((bundle.manifest.get("fusion") or {}).get("reliability_weight") or {}).items():
        where = f"bundle {bundle.root}: fusion.reliability_weight.{m}"
        try:
            modality = Modality(m)
            a, b = float(entry["intercept"]), float(entry["slope"])
        except (ValueError, KeyError, TypeError):
            raise BundleError(f"{where}: expected a modality and {{\"intercept\": number, \"slope\": number}}, "
                              f"got {entry!r}") from None
        if not (np.isfinite(a) and np.isfinite(b)):
            raise BundleError(f"{where}: intercept and slope must be finite numbers, got {a}, {b}")
        curves[modality] = (a, b)
    return curves


class Smoother:
    """Per-session exponential smoothing of the fused probabilities over window end times."""

    def __init__(self, tau_s: float) -> None:
        if tau_s < 0:
            raise ValueError(f"runtime.smoothing_tau_s must be >= 0, got {tau_s}")
        self.tau_s = tau_s
        self._state: np.ndarray | None = None
        self._t: float | None = None

    def reset(self) -> None:
        """A gap in the predictions (no speech, no face): the next window starts afresh."""
        self._state, self._t = None, None

    def update(self, t_s: float, probs: np.ndarray) -> np.ndarray:
        if self._state is None or self.tau_s == 0 or self._t is None:
            self._state = probs.copy()
        else:
            alpha = 1.0 - np.exp(-max(0.0, t_s - self._t) / self.tau_s)
            self._state = self._state + alpha * (probs - self._state)
            self._state /= self._state.sum()
        self._t = t_s
        return self._state.copy()


def make_event(window: "Window", feats: "WindowFeatures", pred: Prediction, smoothed: np.ndarray | None,
               labels: list[str], emit_text: bool, emit_features: bool = False) -> dict:
    """The event a sink receives (``latency_ms`` is filled in by the caller at emission).
    ``probs`` are smoothed over time, ``probs_raw`` the window's own fused probabilities;
    ``emit_features`` adds each modality's encoder feature (``features``, lists of floats)."""
    def as_dict(p: np.ndarray) -> dict[str, float]:
        return {label: round(float(v), 6) for label, v in zip(labels, p)}

    event = {
        "window": window.index,
        "t_start": round(window.t_start_s, 3),
        "t_end": round(window.t_end_s, 3),
        "label": labels[int(np.argmax(smoothed))] if smoothed is not None else None,
        "probs": as_dict(smoothed) if smoothed is not None else {},
        "probs_raw": as_dict(pred.probs) if pred.probs is not None else {},
        "modalities": list(pred.modalities),
        "per_modality": {m: as_dict(p) for m, p in pred.per_modality.items()},
        "absent": dict(sorted(feats.absent.items())),
        "reliability": {m.value: round(float(r), 3) for m, r in feats.reliability.items() if m.value in pred.modalities},
        "reliability_parts": {m.value: dict(p) for m, p in feats.reliability_parts.items() if m.value in pred.modalities},
        "faces": int(feats.faces),
        "latency_ms": None,
    }
    if emit_text:
        event["text"] = feats.text
    if emit_features:
        event["features"] = {m.value: [float(v) for v in f.reshape(-1)] for m, f in feats.features.items()}
    return event
