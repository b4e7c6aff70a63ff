"""NT-Xent, the SimCLR baseline's loss (paper Eq. 6-8), with global negatives under torchrun.

Two augmented views z1, z2 of N ECGs give 2N embeddings, compared by cosine similarity divided by
the temperature (0.07 in the paper). Every one of the 2N embeddings is an anchor: its positive is
the other view of the same ECG and its negatives are the remaining 2N-2 embeddings; the loss is the
mean cross-entropy over the 2N anchors. This is the standard, symmetric NT-Xent of SimCLR (Chen et
al., 2020). The paper's Eq. 6 writes only one direction (view 1 against view 2); the symmetric
form is what SimCLR, and the implementations the paper compares against, optimise.

Under DDP the process's 2B local anchors are compared against the gathered 2N embeddings, shares
scaled as in :mod:`etp.losses.clip` so that DDP-averaged gradients equal the single-process
gradients over the global batch, and the returned value is the global loss on every process.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from etp.errors import ConfigError, TrainingError
from etp.losses.clip import at_least_fp32, check_pair, fp32_region, report_global
from etp.train.distributed import gather_with_grad, gathered_sizes, rank, world_size

__all__ = ["NTXentLoss"]


class NTXentLoss(nn.Module):
    """Symmetric NT-Xent over the (global) batch of view pairs.

    ``forward(z1, z2)``: (B, D) embeddings of the two views (normalised here, so raw projections
    are fine). Computed and returned in float32 even under autocast (float64 stays float64).
    TrainingError when the global batch has fewer than 2 ECGs or the shapes disagree; ConfigError
    for a temperature that is not > 0.
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        try:
            t = float(temperature)
        except (TypeError, ValueError):
            raise ConfigError(
                f"NT-Xent temperature must be a number, got {temperature!r}"
            ) from None
        if not math.isfinite(t) or t <= 0:
            raise ConfigError(f"NT-Xent temperature must be > 0, got {temperature!r}")
        self.temperature = t

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        check_pair(z1, z2, "NTXentLoss", ("view 1 embeddings", "view 2 embeddings"))
        device = z1.device
        with fp32_region(device):
            z1 = F.normalize(at_least_fp32(z1), dim=1)
            z2 = F.normalize(at_least_fp32(z2), dim=1)
            local_n = int(z1.shape[0])
            sizes = gathered_sizes(local_n, device)
            n = sum(sizes)
            if n < 2:
                raise TrainingError(
                    f"NTXentLoss: contrastive loss is undefined for a batch of {n} "
                    "(need at least 2 ECGs in the global batch)"
                )
            all_z1, all_z2 = gather_with_grad(torch.cat([z1, z2], dim=1), sizes).chunk(2, dim=1)
            candidates = torch.cat([all_z1, all_z2])  # (2N, D): all first views, then all second
            anchors = torch.cat([z1, z2])  # (2B_local, D)
            logits = anchors @ candidates.T / self.temperature  # (2B_local, 2N)
            offset = sum(sizes[: rank()])
            own = torch.arange(offset, offset + local_n, device=device)
            self_cols = torch.cat([own, own + n])  # where each anchor sits among the candidates
            positive_cols = torch.cat([own + n, own])  # the other view of the same ECG
            rows = torch.arange(2 * local_n, device=device)
            logits = logits.index_put(
                (rows, self_cols), torch.tensor(float("-inf"), dtype=logits.dtype, device=device)
            )
            summed = F.cross_entropy(logits, positive_cols, reduction="sum")
            share = summed * (world_size() / (2.0 * n))
            return report_global(share)
