"""The modality-pairwise contrastive loss of Franceschini et al. (ICPR 2022).

For every pair of streams (a, b), symmetric InfoNCE between the two streams' embeddings of the
same clips in the batch: the positive of clip i in a is clip i in b, the negatives are the other
clips' b embeddings, and the same the other way round (as CLIP does it). The total is the mean
over the pairs that have at least two clips with both streams present; per-pair values are
returned for logging. No label enters: the targets are the clips' own positions.
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


class PairwiseInfoNCE(nn.Module):
    """``forward(embeddings, present=None) -> {"loss": mean, "loss/audio-au": ..., ...}``.

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
        for a, b in self.active_pairs(list(embeddings)):
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
        else:
            # No pair with two clips: a zero that still joins the graph, so DDP ranks stay in step.
            out["loss"] = sum(z.sum() for z in embeddings.values()) * 0.0
        return out
