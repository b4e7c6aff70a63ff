"""ClipLoss (paper Eq. 3-5), single process; the DDP equivalence lives in test_distributed.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from etp.errors import TrainingError
from etp.losses.clip import ClipLoss


def _pairs(n: int = 8, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ecg = F.normalize(torch.randn(n, d, generator=g), dim=1)
    text = F.normalize(torch.randn(n, d, generator=g), dim=1)
    return ecg, text


def test_matches_hand_computation_with_cross_entropy():
    ecg, text = _pairs()
    scale = 1 / 0.07
    logits = scale * ecg @ text.T
    labels = torch.arange(8)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(ClipLoss()(ecg, text, scale), expected)


def test_matches_equations_3_to_5_written_out():
    ecg, text = _pairs(n=5, d=7, seed=3)
    s = 14.0
    r = ecg @ text.T  # r[i, j] = e_i . t_j
    total = 0.0
    for i in range(5):
        e2t = -math.log(math.exp(s * r[i, i]) / sum(math.exp(s * r[i, j]) for j in range(5)))
        t2e = -math.log(math.exp(s * r[i, i]) / sum(math.exp(s * r[j, i]) for j in range(5)))
        total += e2t + t2e
    assert ClipLoss()(ecg, text, s).item() == pytest.approx(total / (2 * 5), rel=1e-5)


def test_perfect_alignment_gives_low_loss_and_random_about_log_n():
    n = 16
    aligned = torch.eye(n, 32)  # orthonormal embeddings, text identical to ECG
    assert ClipLoss()(aligned, aligned.clone(), 1 / 0.07).item() < 1e-4
    ecg, text = _pairs(n=n, d=32)
    # with a scale near 0 every pair is equally likely: loss = log(N)
    assert ClipLoss()(ecg, text, 1e-6).item() == pytest.approx(math.log(n), rel=1e-4)


def test_symmetric_in_ecg_and_text():
    ecg, text = _pairs()
    loss = ClipLoss()
    torch.testing.assert_close(loss(ecg, text, 10.0), loss(text, ecg, 10.0))


def test_invariant_to_shuffling_pairs_jointly():
    ecg, text = _pairs(seed=5)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ClipLoss()(ecg, text, 10.0), ClipLoss()(ecg[perm], text[perm], 10.0))


def test_higher_scale_lowers_loss_of_aligned_pairs():
    g = torch.Generator().manual_seed(2)
    ecg = F.normalize(torch.randn(8, 16, generator=g), dim=1)
    text = F.normalize(ecg + 0.3 * torch.randn(8, 16, generator=g), dim=1)  # noisy but aligned
    losses = [ClipLoss()(ecg, text, s).item() for s in (1.0, 5.0, 1 / 0.07, 50.0)]
    assert losses == sorted(losses, reverse=True)


def test_gradient_finite_and_reaches_inputs_and_scale():
    ecg, text = _pairs()
    ecg.requires_grad_(True)
    text.requires_grad_(True)
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    ClipLoss()(ecg, text, log_scale.exp()).backward()
    for g in (ecg.grad, text.grad, log_scale.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_fp32_under_bf16_autocast():
    ecg, text = _pairs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ClipLoss()(ecg.bfloat16(), text.bfloat16(), torch.tensor(14.0, dtype=torch.bfloat16))
    assert loss.dtype == torch.float32
    expected = ClipLoss()(ecg.bfloat16().float(), text.bfloat16().float(), 14.0)
    torch.testing.assert_close(loss, expected)


def test_float64_stays_float64():
    ecg, text = _pairs()
    assert ClipLoss()(ecg.double(), text.double(), 10.0).dtype == torch.float64


def test_scale_as_one_element_tensor():
    ecg, text = _pairs()
    torch.testing.assert_close(
        ClipLoss()(ecg, text, torch.tensor([10.0])), ClipLoss()(ecg, text, 10.0)
    )


def test_batch_of_one_is_a_clear_error():
    ecg, text = _pairs(n=1)
    with pytest.raises(TrainingError, match="contrastive loss is undefined for a batch of 1"):
        ClipLoss()(ecg, text, 10.0)
    with pytest.raises(TrainingError, match="batch of 0"):
        ClipLoss()(ecg[:0], text[:0], 10.0)


@pytest.mark.parametrize(
    ("ecg", "text", "scale", "match"),
    [
        (
            torch.randn(4, 8),
            torch.randn(4, 6),
            1.0,
            r"ecg features \(4, 8\) and text features \(4, 6\)",
        ),
        (torch.randn(4, 8), torch.randn(3, 8), 1.0, "must have the same shape"),
        (torch.randn(4, 8, 2), torch.randn(4, 8, 2), 1.0, "2-D"),
        (torch.randn(4, 8), [[0.0] * 8] * 4, 1.0, "text features must be a torch.Tensor"),
        (torch.ones(4, 8, dtype=torch.long), torch.ones(4, 8, dtype=torch.long), 1.0, "floating"),
        (torch.randn(4, 8), torch.randn(4, 8), torch.ones(2), "logit_scale must be a scalar"),
    ],
)
def test_bad_inputs(ecg, text, scale, match):
    with pytest.raises(TrainingError, match=match):
        ClipLoss()(ecg, text, scale)
