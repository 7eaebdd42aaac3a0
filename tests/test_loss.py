"""The pairwise InfoNCE loss: a hand-computed case, symmetry, missing modalities, pair config."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edge_mer.config import LossCfg
from training.loss import MAX_LOGIT_SCALE, PairwiseInfoNCE, parse_pairs


def test_hand_computed_two_clips():
    # Two clips, 2-D unit embeddings. audio: e1, e2; au: e1, (e1+e2)/sqrt2. T = 0.5 -> scale 2.
    s = 1 / math.sqrt(2)
    za = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    zb = torch.tensor([[1.0, 0.0], [s, s]])
    # similarities a_i . b_j: [[1, s], [0, s]]; logits = 2 * sim
    # a->b rows: clip0 -log(e^2 / (e^2 + e^{2s})), clip1 -log(e^{2s} / (e^0 + e^{2s}))
    a2b = (-math.log(math.exp(2) / (math.exp(2) + math.exp(2 * s))) - math.log(math.exp(2 * s) / (1 + math.exp(2 * s)))) / 2
    # b->a uses the columns: clip0 [1, 0], clip1 [s, s]
    b2a = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.exp(2 * s) / (math.exp(2 * s) + math.exp(2 * s)))) / 2
    expected = (a2b + b2a) / 2
    out = PairwiseInfoNCE(LossCfg(temperature=0.5))({"audio": za, "au": zb})
    assert set(out) == {"loss", "loss/audio-au"}
    assert out["loss/audio-au"].item() == pytest.approx(expected, rel=1e-6)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_symmetric_in_the_two_streams():
    za, zb = _unit(6, 16, 0), _unit(6, 16, 1)
    loss = PairwiseInfoNCE(LossCfg())
    ab = loss({"audio": za, "face": zb})["loss"]
    ba = loss({"face": zb, "audio": za})["loss"]
    assert ab.item() == pytest.approx(ba.item(), rel=1e-6)
    # ...and not a one-directional InfoNCE: that differs from the symmetric mean here.
    one_way = F.cross_entropy(za @ zb.t() / 0.07, torch.arange(6))
    assert abs(one_way.item() - ab.item()) > 1e-3


def test_mean_over_all_pairs_with_per_pair_entries():
    z = {"audio": _unit(5, 8, 0), "face": _unit(5, 8, 1), "text": _unit(5, 8, 2)}
    out = PairwiseInfoNCE(LossCfg())(z)
    pairs = [k for k in out if k != "loss"]
    assert pairs == ["loss/audio-face", "loss/audio-text", "loss/face-text"]
    assert out["loss"].item() == pytest.approx(sum(out[k].item() for k in pairs) / 3, rel=1e-6)


def test_missing_modality_drops_its_pairs():
    z = {"audio": _unit(4, 8, 0), "face": _unit(4, 8, 1), "text": _unit(4, 8, 2)}
    loss = PairwiseInfoNCE(LossCfg())
    only_two = loss({"audio": z["audio"], "text": z["text"]})
    # A stream present in no clip of the batch: its pairs vanish and the mean is over the rest.
    present = {"face": torch.zeros(4, dtype=torch.bool)}
    out = loss(z, present)
    assert set(out) == {"loss", "loss/audio-text"}
    assert out["loss"].item() == pytest.approx(only_two["loss"].item(), rel=1e-6)


def test_clip_missing_a_stream_is_left_out_of_that_pair_only():
    z = {"audio": _unit(5, 8, 0), "face": _unit(5, 8, 1)}
    present = {"face": torch.tensor([True, True, False, True, True])}
    out = PairwiseInfoNCE(LossCfg())(z, present)
    keep = [0, 1, 3, 4]
    sliced = PairwiseInfoNCE(LossCfg())({"audio": z["audio"][keep], "face": z["face"][keep]})
    assert out["loss"].item() == pytest.approx(sliced["loss"].item(), rel=1e-6)


def test_configured_pairs_only():
    z = {"audio": _unit(4, 8, 0), "au": _unit(4, 8, 1), "face": _unit(4, 8, 2)}
    out = PairwiseInfoNCE(LossCfg(pairs=("audio-au",)))(z)
    assert set(out) == {"loss", "loss/audio-au"}


@pytest.mark.parametrize("bad", ["audio", "audio-audio", "audio-au-face", "-au"])
def test_bad_pair_names(bad):
    with pytest.raises(ValueError, match="loss.pairs"):
        parse_pairs((bad,))


def test_no_usable_pair_gives_zero_with_gradient():
    za = _unit(3, 8, 0).requires_grad_()
    out = PairwiseInfoNCE(LossCfg())({"audio": za, "au": _unit(3, 8, 1)}, {"au": torch.tensor([True, False, False])})
    assert set(out) == {"loss"} and out["loss"].item() == 0.0
    out["loss"].backward()
    assert za.grad is not None


def test_learned_temperature_is_clamped():
    loss = PairwiseInfoNCE(LossCfg(temperature=0.001, learn_temperature=True))
    assert isinstance(loss.log_scale, torch.nn.Parameter)
    assert loss.logit_scale().item() == pytest.approx(math.exp(MAX_LOGIT_SCALE))
    out = PairwiseInfoNCE(LossCfg(temperature=0.07))({"audio": _unit(4, 8, 0), "au": _unit(4, 8, 1)})
    assert out["loss"].item() > 0


def test_gradients_reach_both_streams():
    za = torch.randn(6, 8, requires_grad=True)
    zb = torch.randn(6, 8, requires_grad=True)
    PairwiseInfoNCE(LossCfg())({"audio": F.normalize(za, dim=1), "au": F.normalize(zb, dim=1)})["loss"].backward()
    assert za.grad.abs().sum() > 0 and zb.grad.abs().sum() > 0
