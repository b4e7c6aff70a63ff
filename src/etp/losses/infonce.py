"""InfoNCE over future latent steps (CPC, van den Oord et al. 2018, Eq. 4), the loss of CPC and
of TS-TCC's temporal contrasting, with global negatives under torchrun.

A prediction ``pred[b, s]`` (the context of ECG b, mapped by the step's W_k) is scored against
the latents of every ECG of the (global) batch at the step it predicts, ``latents[n, steps[s]]``,
by a plain dot product (the paper's log-bilinear ``z^T W_k c``: no normalisation, no
temperature); the positive is ECG b's own latent, the negatives are the other ECGs' latents at
that step. The loss is the cross-entropy of the positive, averaged over ECGs and over the
predicted steps (optionally weighted per step).

Under DDP the latents are gathered with their gradient; each process scores its own
predictions against all gathered latents and its share is scaled as in :mod:`etp.losses.clip`,
so that DDP's mean all-reduce gives every parameter the single-process gradient over the global
batch; the returned value is the global loss on every process. ``steps`` may differ between
processes (TS-TCC draws its time step per process), the number of steps may not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from etp.errors import TrainingError
from etp.losses.clip import at_least_fp32, fp32_region, report_global
from etp.train.distributed import gather_with_grad, gathered_sizes, rank, world_size

__all__ = ["info_nce"]


def _check(pred: torch.Tensor, latents: torch.Tensor, steps: torch.Tensor) -> None:
    if pred.dim() != 3 or latents.dim() != 3:
        raise TrainingError(
            f"info_nce: predictions (B, S, D) and latents (B, T, D) expected, got "
            f"{tuple(pred.shape)} and {tuple(latents.shape)}"
        )
    if pred.shape[0] != latents.shape[0] or pred.shape[2] != latents.shape[2]:
        raise TrainingError(
            f"info_nce: predictions {tuple(pred.shape)} and latents {tuple(latents.shape)} "
            "disagree in batch size or width"
        )
    if steps.dim() != 1 or steps.shape[0] != pred.shape[1] or steps.dtype != torch.long:
        raise TrainingError(
            f"info_nce: steps must be a (S,) long tensor with S={pred.shape[1]}, got "
            f"{steps.dtype} {tuple(steps.shape)}"
        )
    if steps.numel() and not (0 <= int(steps.min()) and int(steps.max()) < latents.shape[1]):
        raise TrainingError(
            f"info_nce: steps must lie in [0, {latents.shape[1]}), got "
            f"{int(steps.min())}..{int(steps.max())}"
        )


def info_nce(
    pred: torch.Tensor,
    latents: torch.Tensor,
    steps: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE of ``pred`` (B, S, D) against ``latents`` (B, T, D): ``pred[:, s]`` predicts
    ``latents[:, steps[s]]`` and is contrasted with the other ECGs' latents at that step.

    ``weights`` (S,): the weight of each predicted step in the mean over steps (default equal);
    computed in float32 (float64 stays float64). TrainingError for mismatched shapes or a global
    batch of fewer than 2 ECGs.
    """
    _check(pred, latents, steps)
    device = pred.device
    with fp32_region(device):
        pred, latents = at_least_fp32(pred), at_least_fp32(latents)
        local_n, n_steps = int(pred.shape[0]), int(pred.shape[1])
        sizes = gathered_sizes(local_n, device)
        n = sum(sizes)
        if n < 2:
            raise TrainingError(
                f"info_nce: contrastive loss is undefined for a batch of {n} "
                "(need at least 2 ECGs in the global batch)"
            )
        if weights is None:
            w = torch.full((n_steps,), 1.0 / max(n_steps, 1), dtype=pred.dtype, device=device)
        else:
            w = weights.to(device=device, dtype=pred.dtype)
            w = w / w.sum()
        candidates = gather_with_grad(latents, sizes)[:, steps.to(device)]  # (N, S, D)
        logits = torch.einsum("bsd,nsd->bsn", pred, candidates)  # (B, S, N)
        offset = sum(sizes[: rank()])
        target = torch.arange(offset, offset + local_n, device=device)
        ce = F.cross_entropy(
            logits.reshape(local_n * n_steps, n),
            target.repeat_interleave(n_steps),
            reduction="none",
        ).view(local_n, n_steps)
        summed = (ce * w).sum()  # sum over own ECGs of the step-weighted mean
        share = summed * (world_size() / float(n))
        return report_global(share)
