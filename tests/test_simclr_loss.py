"""NTXentLoss (paper Eq. 6-8, symmetric SimCLR form), single process; DDP in test_distributed.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from etp.errors import ConfigError, TrainingError
from etp.losses.simclr import NTXentLoss


def _views(n: int = 6, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def _hand_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """SimCLR's NT-Xent written out: 2N anchors, positive = other view, 2N-2 negatives."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        num = math.exp(float(z[i] @ z[pos]) / tau)
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


def test_matches_hand_computation():
    z1, z2 = _views()
    assert NTXentLoss(0.5)(z1, z2).item() == pytest.approx(_hand_nt_xent(z1, z2, 0.5), rel=1e-5)
    assert NTXentLoss()(z1, z2).item() == pytest.approx(_hand_nt_xent(z1, z2, 0.07), rel=1e-5)


def test_matches_cross_entropy_over_masked_similarity():
    z1, z2 = _views(n=5)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T / 0.07).masked_fill(torch.eye(10, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(5, 10), torch.arange(5)])
    torch.testing.assert_close(NTXentLoss(0.07)(z1, z2), F.cross_entropy(sim, target))


def test_default_temperature_is_the_papers():
    assert NTXentLoss().temperature == 0.07


def test_symmetric_in_the_two_views_and_scale_invariant():
    z1, z2 = _views()
    loss = NTXentLoss()
    torch.testing.assert_close(loss(z1, z2), loss(z2, z1))
    torch.testing.assert_close(loss(3.0 * z1, 0.5 * z2), loss(z1, z2))


def test_identical_orthogonal_views_give_low_loss():
    z = torch.eye(8, 16)
    # positive similarity 1, negatives 0: loss = log(1 + (2N-2) * exp(-1/tau))
    expected = math.log(1 + 14 * math.exp(-1 / 0.07))
    assert NTXentLoss()(z, z.clone()).item() == pytest.approx(expected, abs=1e-7)  # fp32 near 0
    assert expected < 1e-4
    z1, z2 = _views(n=8)
    assert NTXentLoss()(z1, z2).item() > 1.0


def test_temperature_effect():
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(8, 16, generator=g)
    z2 = z1 + 0.3 * torch.randn(8, 16, generator=g)  # aligned views
    losses = [NTXentLoss(t)(z1, z2).item() for t in (1.0, 0.5, 0.2, 0.07)]
    assert losses == sorted(losses, reverse=True)
    # a very high temperature makes all 2N-1 candidates equally likely
    assert NTXentLoss(1e6)(z1, z2).item() == pytest.approx(math.log(15), rel=1e-4)


def test_gradient_finite_and_reaches_both_views():
    z1, z2 = _views()
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    NTXentLoss()(z1, z2).backward()
    for g in (z1.grad, z2.grad):
        assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_fp32_under_bf16_autocast():
    z1, z2 = _views()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = NTXentLoss()(z1.bfloat16(), z2.bfloat16())
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, NTXentLoss()(z1.bfloat16().float(), z2.bfloat16().float()))


def test_batch_of_one_is_a_clear_error():
    z1, z2 = _views(n=1)
    with pytest.raises(TrainingError, match="contrastive loss is undefined for a batch of 1"):
        NTXentLoss()(z1, z2)


@pytest.mark.parametrize("temperature", [0, -0.1, float("nan"), float("inf"), "warm", None])
def test_bad_temperature(temperature):
    with pytest.raises(ConfigError, match="NT-Xent temperature must be"):
        NTXentLoss(temperature)


def test_mismatched_views():
    with pytest.raises(
        TrainingError, match=r"view 1 embeddings \(4, 8\) and view 2 embeddings \(5, 8\)"
    ):
        NTXentLoss()(torch.randn(4, 8), torch.randn(5, 8))
