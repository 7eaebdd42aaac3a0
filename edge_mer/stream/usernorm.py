"""Per-user feature normalisation: running statistics of one person's features, started from the
population's.

Emotion features differ more between people than between one person's emotions (a voice's timbre,
a face's resting expression). A head fitted on features standardised *per speaker* (each training
speaker's features minus that speaker's mean, over that speaker's std; label-free) reads a person's
deviation from their own baseline, which carries over to people it never saw far better than the
raw features do (docs/RESULTS.md: +6 to +20 UA points on RAVDESS, speaker-independent folds).

At run time the person's baseline is unknown at first, so :class:`RunningNorm` keeps an
exponentially weighted mean and variance per feature, seeded with the population statistics as
``prior_windows`` pseudo-windows: the first windows are standardised mostly by the population, and
the person's own statistics take over as windows arrive. The weight of a new window never drops
below ``1 / memory_windows``, so the statistics follow a change of person within a few minutes.

>>> norm = RunningNorm(np.zeros(2), np.ones(2), prior_windows=4, memory_windows=100)
>>> [round(float(v), 3) for v in norm(np.array([[2.0, 0.0]]))[0]]  # mean 0.4, std 1.2 now
[1.333, 0.0]
>>> norm.windows
5
"""

from __future__ import annotations

import numpy as np

from edge_mer.errors import BundleError, EdgeMerError

_EPS = 1e-6


class RunningNorm:
    """Standardise feature rows by a running per-user mean and std (see the module doc).

    ``adapt=False`` keeps the population statistics (the prior) for good: the head then reads
    population-standardised features, the fallback when one device serves many people at once.
    """

    def __init__(self, prior_mean: np.ndarray, prior_std: np.ndarray, prior_windows: int, memory_windows: int,
                 adapt: bool = True) -> None:
        prior_mean = np.asarray(prior_mean, dtype=np.float64).reshape(-1)
        prior_std = np.asarray(prior_std, dtype=np.float64).reshape(-1)
        if prior_mean.shape != prior_std.shape:
            raise ValueError(f"user norm: prior mean has {prior_mean.size} features, prior std {prior_std.size}")
        if not (np.all(np.isfinite(prior_mean)) and np.all(np.isfinite(prior_std)) and np.all(prior_std > 0)):
            raise ValueError("user norm: the prior statistics must be finite, with positive std")
        if prior_windows < 1:
            raise EdgeMerError(f"runtime.user_norm_prior_windows must be at least 1, got {prior_windows}")
        if memory_windows < prior_windows:
            raise EdgeMerError(f"runtime.user_norm_memory_windows must be >= runtime.user_norm_prior_windows "
                               f"({prior_windows}), got {memory_windows}")
        self.prior_mean, self.prior_var = prior_mean, prior_std**2
        self.prior_windows, self.memory_windows, self.adapt = int(prior_windows), int(memory_windows), adapt
        self.known: tuple[np.ndarray, np.ndarray, int] | None = None  # this person's statistics, when known (start_from)
        self.reset()

    @property
    def dim(self) -> int:
        return int(self.prior_mean.size)

    def reset(self) -> None:
        """Back to the start of a session: the population statistics, or this person's own when
        they are known (:meth:`start_from`, a user bundle of ``edge-mer adapt``)."""
        if self.known is None:
            self.mean = self.prior_mean.copy()
            self.var = self.prior_var.copy()
            self.windows = self.prior_windows  # effective count, the prior's pseudo-windows included
        else:
            # As if the person's windows had followed the prior's pseudo-windows: their mixture.
            mean, var, windows = self.known
            a = self.prior_windows / (self.prior_windows + windows)
            d = mean - self.prior_mean
            self.mean = self.prior_mean + (1.0 - a) * d
            self.var = a * self.prior_var + (1.0 - a) * var + a * (1.0 - a) * d * d
            self.windows = min(self.prior_windows + windows, self.memory_windows)

    def start_from(self, mean: np.ndarray, std: np.ndarray, windows: int) -> None:
        """Start every session from this person's statistics (``windows`` windows of them) mixed
        with the population's prior pseudo-windows, i.e. where the running statistics would stand
        after those windows: the per-user head reads them from the first window and the blend with the
        population head (:meth:`edge_mer.stream.fusion.Fusion.user_weight`) counts those windows as
        already seen. :meth:`apply_prior` keeps standardising by the population statistics."""
        mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        std = np.asarray(std, dtype=np.float64).reshape(-1)
        if mean.shape != self.prior_mean.shape or std.shape != self.prior_mean.shape:
            raise ValueError(f"user norm: the person's statistics have {mean.size}/{std.size} features, the head reads {self.dim}")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)) or windows < 1:
            raise ValueError("user norm: the person's statistics must be finite, with positive std and at least one window")
        self.known = (mean, std**2, int(windows))
        self.reset()

    def update(self, x: np.ndarray) -> None:
        """Fold one window into the running statistics: ``x`` is its feature row [D] or [1, D], or
        several rows [n, D] of one window (e.g. its log-mel frames), which count as one window
        with their mean and variance."""
        rows = np.asarray(x, dtype=np.float64).reshape(-1, self.dim)
        if len(rows) == 0 or not np.all(np.isfinite(rows)):
            return  # a broken window must not poison the person's baseline
        self.windows = min(self.windows + 1, self.memory_windows)
        w = 1.0 / self.windows
        d = rows.mean(axis=0) - self.mean
        # Weighted mixture of the old statistics (1 - w) and the window's (w), about the new mean.
        self.mean = self.mean + w * d
        self.var = (1.0 - w) * (self.var + w * d * d) + w * rows.var(axis=0)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``(x - mean) / std`` with the current statistics, float32."""
        return ((np.asarray(x, dtype=np.float64) - self.mean) / np.sqrt(self.var + _EPS)).astype(np.float32)

    def apply_prior(self, x: np.ndarray) -> np.ndarray:
        """``x`` standardised by the population statistics alone (whatever this person's are)."""
        return ((np.asarray(x, dtype=np.float64) - self.prior_mean) / np.sqrt(self.prior_var + _EPS)).astype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Update with ``x`` (when adapting), then standardise it."""
        if self.adapt:
            self.update(x)
        return self.apply(x)


def user_norm_from_bundle(bundle, entry: dict, expected_dim: int, where: str, runtime) -> RunningNorm:
    """The RunningNorm of a bundle's ``input_norm`` entry (prior file checked), with the run's
    ``runtime.user_norm*`` settings."""
    mean, std = load_user_norm_prior(bundle.path(entry), expected_dim, where)
    return RunningNorm(mean, std, runtime.user_norm_prior_windows, runtime.user_norm_memory_windows, adapt=runtime.user_norm)


def load_user_norm_prior(path, expected_dim: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` of a bundle's per-user normalisation prior file (``mean`` and ``std``,
    [D] each). Raises a one-line BundleError naming ``where`` when the file is unusable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "mean" not in z.files or "std" not in z.files:
                raise BundleError(f"{where}: {path} lacks 'mean' or 'std'")
            mean, std = z["mean"].astype(np.float64), z["std"].astype(np.float64)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{where}: cannot read {path}: {' '.join(str(exc).split())}") from None
    if mean.shape != (expected_dim,) or std.shape != (expected_dim,):
        raise BundleError(f"{where}: prior statistics have shape {mean.shape}/{std.shape}, the head reads {expected_dim} features")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise BundleError(f"{where}: prior statistics must be finite, with positive std")
    return mean, std
