"""The ETP / CLIP contrastive loss (paper Eq. 3-5), with global negatives under torchrun.

For a batch of N paired, L2-normalised ECG and report embeddings the logits are
``s * ecg @ text.T`` (s = 1/temperature, the model's logit scale) and the loss is the mean of the
ECG->text and text->ECG cross-entropies whose targets are the diagonal (Eq. 5: 1/(2N) times the
sum of both directions over the batch).

Under DDP each process computes only its own rows: its ECGs against *all* gathered reports and its
reports against *all* gathered ECGs, targets offset by the number of rows on the lower ranks. Its
share is scaled so that the shares of all processes sum to ``world_size`` times the global loss;
with :func:`etp.train.distributed.gather_with_grad` (whose backward sums the gradient over
processes) and DDP's mean all-reduce of parameter gradients, every parameter (including the logit
scale) receives exactly the gradient of one process on the whole global batch. The value returned
is the global loss on every process (one scalar all-reduce), so logging and NaN checks agree.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from etp.errors import TrainingError
from etp.train.distributed import (
    all_reduce_mean,
    gather_with_grad,
    gathered_sizes,
    rank,
    world_size,
)

__all__ = ["ClipLoss", "at_least_fp32", "check_pair", "fp32_region", "report_global"]


def check_pair(a: torch.Tensor, b: torch.Tensor, what: str, names: tuple[str, str]) -> None:
    """Raise TrainingError unless ``a`` and ``b`` are floating (B, D) tensors of the same shape."""
    for t, name in zip((a, b), names, strict=True):
        if not isinstance(t, torch.Tensor):
            raise TrainingError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise TrainingError(
                f"{what}: {name} must be a 2-D (batch, dim) tensor, got shape {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise TrainingError(f"{what}: {name} must be a floating tensor, got {t.dtype}")
    if a.shape != b.shape:
        raise TrainingError(
            f"{what}: {names[0]} {tuple(a.shape)} and {names[1]} {tuple(b.shape)} "
            "must have the same shape"
        )
    if a.device != b.device:
        raise TrainingError(f"{what}: {names[0]} on {a.device} but {names[1]} on {b.device}")


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32, or float64 when it already is (half/bfloat16 are upcast)."""
    return t if t.dtype == torch.float64 else t.float()


def fp32_region(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that switches autocast off so the loss is computed in float32."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type without autocast support
        return contextlib.nullcontext()


def report_global(share: torch.Tensor) -> torch.Tensor:
    """``share`` with its value replaced by the mean over processes; the gradient is unchanged."""
    if world_size() == 1:
        return share
    total = all_reduce_mean(share)
    return share + (total - share.detach())


class ClipLoss(nn.Module):
    """Symmetric ECG<->text InfoNCE over the (global) batch, paper Eq. 3-5.

    ``forward(ecg, text, logit_scale)``: ``ecg`` and ``text`` are (B, D) embeddings, expected
    L2-normalised (the model normalises them; the loss does not); ``logit_scale`` is the
    multiplier 1/temperature (``ETPModel.scale()``), a float or a 0-d/1-element tensor. Computed
    and returned in float32 even under autocast (float64 inputs stay float64). TrainingError when
    the global batch has fewer than 2 pairs or the shapes disagree.
    """

    def forward(
        self,
        ecg: torch.Tensor,
        text: torch.Tensor,
        logit_scale: torch.Tensor | float,
    ) -> torch.Tensor:
        check_pair(ecg, text, "ClipLoss", ("ecg features", "text features"))
        device = ecg.device
        with fp32_region(device):
            scale = torch.as_tensor(logit_scale, device=device)
            if scale.numel() != 1:
                raise TrainingError(
                    f"ClipLoss: logit_scale must be a scalar, got shape {tuple(scale.shape)}"
                )
            ecg, text = at_least_fp32(ecg), at_least_fp32(text)
            scale = scale.reshape(()).to(ecg.dtype)
            local_n = int(ecg.shape[0])
            sizes = gathered_sizes(local_n, device)
            n = sum(sizes)
            if n < 2:
                raise TrainingError(
                    f"ClipLoss: contrastive loss is undefined for a batch of {n} "
                    "(need at least 2 ECG-report pairs in the global batch)"
                )
            # one collective for both sides
            all_ecg, all_text = gather_with_grad(torch.cat([ecg, text], dim=1), sizes).chunk(
                2, dim=1
            )
            offset = sum(sizes[: rank()])
            labels = torch.arange(offset, offset + local_n, device=device)
            logits_e2t = scale * ecg @ all_text.T  # (B_local, N): Eq. 3 rows
            logits_t2e = scale * text @ all_ecg.T  # (B_local, N): Eq. 4 rows
            summed = F.cross_entropy(logits_e2t, labels, reduction="sum") + F.cross_entropy(
                logits_t2e, labels, reduction="sum"
            )
            share = summed * (world_size() / (2.0 * n))  # Eq. 5, scaled for DDP averaging
            return report_global(share)
