"""The label-free rank regulariser of the pairwise loss (loss.var_weight / loss.cov_weight)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edge_mer.config import ConfigError, LossCfg, load_config
from training.loss import PairwiseInfoNCE, covariance_term, variance_term


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _isotropic(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=_gen(seed)), dim=1)


def _rank(n: int, d: int, k: int, seed: int) -> torch.Tensor:
    """n unit vectors that vary along k random directions of R^d only."""
    g = _gen(seed)
    return F.normalize(torch.randn(n, k, generator=g) @ torch.randn(k, d, generator=g), dim=1)


def test_terms_near_zero_for_whitened_embeddings():
    # Many clips, few dimensions: the sample covariance is close to (1/D) I.
    z = _isotropic(20000, 16, 0)
    assert variance_term(z).item() < 0.01
    assert covariance_term(z).item() < 0.01


def test_terms_large_for_collapsed_embeddings():
    # All clips on one point: every dimension has std 0 -> variance term ~1.
    one = F.normalize(torch.randn(1, 64, generator=_gen(1)), dim=1).repeat(32, 1)
    assert variance_term(one).item() == pytest.approx(1.0, abs=0.02)
    # Clips that vary along one direction only: covariance term ~1.
    line = _rank(256, 64, 1, 2)
    assert covariance_term(line).item() > 0.9
    assert covariance_term(_isotropic(256, 64, 3)).item() < 0.3


def test_covariance_term_falls_with_rank_and_is_scale_free():
    values = [covariance_term(_rank(512, 128, k, 4)).item() for k in (1, 4, 16, 64)]
    assert values == sorted(values, reverse=True)
    z = _rank(512, 128, 8, 5)
    assert covariance_term(3.0 * z).item() == pytest.approx(covariance_term(z).item(), rel=1e-5)


def test_covariance_term_equals_direct_formula():
    z = torch.randn(10, 6, generator=_gen(6), dtype=torch.float64)
    c = torch.cov(z.t())
    off = (c**2).sum() - (c.diagonal() ** 2).sum()
    assert covariance_term(z).item() == pytest.approx((off / c.trace() ** 2).item(), rel=1e-10)


def test_off_by_default_gives_exactly_the_old_loss():
    assert LossCfg().var_weight == 0.0 and LossCfg().cov_weight == 0.0
    z = {"audio": _isotropic(8, 16, 7), "au": _isotropic(8, 16, 8)}
    old = PairwiseInfoNCE(LossCfg())(z)
    explicit = PairwiseInfoNCE(LossCfg(var_weight=0.0, cov_weight=0.0))(z)
    assert set(old) == {"loss", "loss/audio-au"}
    assert torch.equal(old["loss"], old["loss/audio-au"])
    assert torch.equal(explicit["loss"], old["loss"])


def test_weights_add_the_terms_per_stream():
    z = {"audio": _rank(32, 16, 2, 9), "au": _isotropic(32, 16, 10)}
    base = PairwiseInfoNCE(LossCfg())(z)["loss"]
    out = PairwiseInfoNCE(LossCfg(var_weight=2.0, cov_weight=3.0))(z)
    assert set(out) == {"loss", "loss/audio-au", "reg/var/audio", "reg/var/au", "reg/cov/audio", "reg/cov/au"}
    assert out["reg/cov/audio"].item() == pytest.approx(covariance_term(z["audio"]).item())
    assert out["reg/cov/audio"] > out["reg/cov/au"]  # the low-rank stream is penalised more
    expected = base + 2.0 * (out["reg/var/audio"] + out["reg/var/au"]) / 2 + 3.0 * (out["reg/cov/audio"] + out["reg/cov/au"]) / 2
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_regulariser_uses_only_present_clips():
    za, zb = _isotropic(6, 8, 11), _isotropic(6, 8, 12)
    present = {"au": torch.tensor([True, True, True, True, False, False])}
    out = PairwiseInfoNCE(LossCfg(cov_weight=1.0))({"audio": za, "au": zb}, present)
    assert out["reg/cov/au"].item() == pytest.approx(covariance_term(zb[:4]).item())
    assert out["reg/cov/audio"].item() == pytest.approx(covariance_term(za).item())


def test_gradient_flows_and_raises_rank():
    torch.manual_seed(0)
    raw = (_rank(64, 32, 2, 13) + 0.01 * torch.randn(64, 32)).requires_grad_(True)
    opt = torch.optim.SGD([raw], lr=0.5)
    loss_fn = PairwiseInfoNCE(LossCfg(var_weight=1.0, cov_weight=1.0))
    first = None
    for _ in range(200):
        z = F.normalize(raw, dim=1)
        out = loss_fn({"audio": z, "au": z.detach().clone()})
        reg = out["reg/var/audio"] + out["reg/cov/audio"]
        if first is None:
            first = reg.item()
        opt.zero_grad()
        out["loss"].backward()
        assert raw.grad is not None and torch.isfinite(raw.grad).all()
        opt.step()
    assert reg.item() < 0.5 * first


def test_fully_collapsed_batch_has_finite_gradient():
    raw = torch.ones(8, 4).requires_grad_(True)
    out = PairwiseInfoNCE(LossCfg(var_weight=1.0, cov_weight=1.0))({"audio": F.normalize(raw, dim=1), "au": _isotropic(8, 4, 14)})
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and torch.isfinite(raw.grad).all()


def test_config_keys_validated(tmp_path):
    cfg = load_config([], ["loss.var_weight=0.5", "loss.cov_weight=2"])
    assert (cfg.loss.var_weight, cfg.loss.cov_weight) == (0.5, 2.0)
    with pytest.raises(ConfigError, match="loss.cov_weight"):
        load_config([], ["loss.cov_weight=-1"])
    with pytest.raises(ConfigError, match="unknown key 'loss.var_weigth'"):
        load_config([], ["loss.var_weigth=1"])
    with pytest.raises(ValueError, match="var_weight"):
        PairwiseInfoNCE(LossCfg(var_weight=-0.1))
