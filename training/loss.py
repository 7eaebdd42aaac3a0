"""The modality-pairwise contrastive loss of Franceschini et al. (ICPR 2022).

For every pair of streams (a, b), symmetric InfoNCE between the two streams' embeddings of the
same clips in the batch: the positive of clip i in a is clip i in b, the negatives are the other
clips' b embeddings, and the same the other way round (as CLIP does it). The total is the mean
over the pairs that have at least two clips with both streams present; per-pair values are
returned for logging. No label enters: the targets are the clips' own positions.

Optionally (``loss.var_weight`` / ``loss.cov_weight``, both 0 = off by default) a label-free
regulariser against low-rank embeddings is added, computed per stream on the batch's unit
embeddings (VICReg, Bardes et al. ICLR 2022, adapted to unit vectors and small batches):
:func:`variance_term` and :func:`covariance_term`, averaged over the streams of the active pairs.
"""

from __future__ import annotations

import math
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn

from edge_mer.config import LossCfg

# The logit scale 1/T is never allowed above 100 (T below 0.01): beyond that a learned
# temperature makes the softmax one-hot and training unstable (CLIP's clamp).
MAX_LOGIT_SCALE = math.log(100.0)


def parse_pairs(pairs: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """``("audio-au",)`` -> ``[("audio", "au")]``; each pair is unordered and listed once."""
    out: list[tuple[str, str]] = []
    for text in pairs:
        parts = text.split("-")
        if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
            raise ValueError(f"loss.pairs: '{text}' is not 'streamA-streamB' with two different streams")
        pair = (parts[0], parts[1])
        if pair in out or pair[::-1] in out:
            raise ValueError(f"loss.pairs: '{text}' is listed twice")
        out.append(pair)
    return out


def symmetric_info_nce(za: torch.Tensor, zb: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Mean of InfoNCE(a -> b) and InfoNCE(b -> a) for row-aligned unit vectors ``[N, D]``."""
    logits = logit_scale * za @ zb.t()
    target = torch.arange(za.shape[0], device=za.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


# Added to the per-dimension variance before the square root (relative to the isotropic 1/D), so
# the std of a fully collapsed dimension still has a finite gradient.
VAR_EPS = 1e-4


def variance_term(z: torch.Tensor) -> torch.Tensor:
    """VICReg's variance hinge for unit vectors ``[N, D]``: ``mean_d relu(1 - sqrt(D) * std_d)``.

    Unit vectors spread evenly over the sphere have a per-dimension std of about ``1/sqrt(D)``,
    so the target is that (not VICReg's 1, which unit vectors cannot reach). 0 when every
    dimension varies at least that much across the batch; 1 when all N vectors are the same.
    """
    d = z.shape[1]
    std = torch.sqrt(z.var(dim=0) * d + VAR_EPS)
    return F.relu(1.0 - std).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """Squared off-diagonal covariance over squared total variance of ``[N, D]``:
    ``sum_{i != j} C_ij^2 / (sum_i C_ii)^2``.

    VICReg's covariance term divided by the squared trace instead of by D, so it is free of the
    embeddings' scale: about 0 for uncorrelated dimensions (whitened, with N >> D), about 1 for
    vectors that vary along one direction only. A batch of N <= D clips spans at most N - 1
    directions, so there its least value is about ``1/(N-1) - 1/D``; it is computed from the
    N x N Gram matrix (``||C||_F = ||Zc Zc^T||_F / (N-1)``).
    """
    n = z.shape[0]
    zc = z - z.mean(dim=0, keepdim=True)
    gram = zc @ zc.t() / (n - 1)
    diag = (zc * zc).sum(dim=0) / (n - 1)  # C_ii
    total = diag.sum()
    off = (gram * gram).sum() - (diag * diag).sum()
    return off / total.clamp_min(1e-12) ** 2


class PairwiseInfoNCE(nn.Module):
    """``forward(embeddings, present=None) -> {"loss": mean, "loss/audio-au": ..., ...}``.

    With ``cfg.var_weight`` or ``cfg.cov_weight`` above 0 the total also holds
    ``var_weight * mean_s variance_term(z_s) + cov_weight * mean_s covariance_term(z_s)`` over
    the streams of the active pairs (each on its clips present), logged as ``reg/var/<stream>``
    and ``reg/cov/<stream>``; with both 0 (the default) nothing is added or computed.

    ``embeddings``: ``{stream: Tensor[B, D]}`` of L2-normalised embeddings of the same B clips.
    ``present``: optional ``{stream: BoolTensor[B]}``; a clip missing a stream is left out of
    that stream's pairs (a stream absent from ``embeddings`` drops all its pairs). With
    ``cfg.pairs`` empty every pair of the given streams is used, named in the dict's order.

    >>> z = {"audio": F.normalize(torch.randn(4, 8), dim=1), "au": F.normalize(torch.randn(4, 8), dim=1)}
    >>> sorted(PairwiseInfoNCE(LossCfg())(z))
    ['loss', 'loss/audio-au']
    """

    def __init__(self, cfg: LossCfg) -> None:
        super().__init__()
        if cfg.temperature <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {cfg.temperature}")
        for key in ("var_weight", "cov_weight"):
            if getattr(cfg, key) < 0:
                raise ValueError(f"loss.{key} must be >= 0, got {getattr(cfg, key)}")
        self.cfg = cfg
        self.pairs = parse_pairs(cfg.pairs)
        init = torch.tensor(math.log(1.0 / cfg.temperature))
        if cfg.learn_temperature:
            self.log_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_scale", init)

    def logit_scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def active_pairs(self, streams: list[str]) -> list[tuple[str, str]]:
        if self.pairs:
            return [p for p in self.pairs if p[0] in streams and p[1] in streams]
        return list(combinations(streams, 2))

    def forward(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        present = present or {}
        scale = self.logit_scale()
        out: dict[str, torch.Tensor] = {}
        active = self.active_pairs(list(embeddings))
        for a, b in active:
            za, zb = embeddings[a], embeddings[b]
            if za.shape[0] != zb.shape[0]:
                raise ValueError(f"loss: streams {a} and {b} have {za.shape[0]} and {zb.shape[0]} clips")
            both = torch.ones(za.shape[0], dtype=torch.bool, device=za.device)
            for s in (a, b):
                if s in present:
                    both = both & present[s].to(device=za.device, dtype=torch.bool)
            idx = both.nonzero().squeeze(1)
            # One clip alone has no negatives: its "contrastive" loss would be 0 and meaningless.
            if idx.numel() < 2:
                continue
            out[f"loss/{a}-{b}"] = symmetric_info_nce(za[idx], zb[idx], scale)
        if out:
            out["loss"] = torch.stack(list(out.values())).mean()
            reg = self.regulariser(embeddings, present, active)
            if reg:
                out["loss"] = out["loss"] + reg.pop("reg")
                out.update(reg)
        else:
            # No pair with two clips: a zero that still joins the graph, so DDP ranks stay in step.
            out["loss"] = sum(z.sum() for z in embeddings.values()) * 0.0
        return out

    def regulariser(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor], active: list[tuple[str, str]]
    ) -> dict[str, torch.Tensor]:
        """``{"reg": weighted total, "reg/var/<s>": ..., "reg/cov/<s>": ...}``, or ``{}`` when off."""
        wv, wc = self.cfg.var_weight, self.cfg.cov_weight
        if wv == 0 and wc == 0:
            return {}
        streams = list(dict.fromkeys(s for pair in active for s in pair))
        out: dict[str, torch.Tensor] = {}
        var_terms, cov_terms = [], []
        for s in streams:
            z = embeddings[s]
            if s in present:
                z = z[present[s].to(device=z.device, dtype=torch.bool)]
            if z.shape[0] < 2:
                continue
            if wv > 0:
                out[f"reg/var/{s}"] = variance_term(z)
                var_terms.append(out[f"reg/var/{s}"])
            if wc > 0:
                out[f"reg/cov/{s}"] = covariance_term(z)
                cov_terms.append(out[f"reg/cov/{s}"])
        if not var_terms and not cov_terms:
            return {}
        total = 0.0
        if var_terms:
            total = total + wv * torch.stack(var_terms).mean()
        if cov_terms:
            total = total + wc * torch.stack(cov_terms).mean()
        out["reg"] = total
        return out
