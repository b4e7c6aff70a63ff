"""CLOCS's patient-aware contrastive loss (Kiyasseh, Zhu & Clifton, ICML 2021, Sec. 3), with
global negatives under torchrun.

Each record i of a batch is seen in V >= 2 views (CMSC: two adjacent segments; CMLC: leads);
``v_i^h`` is its embedding in view h. With ``s(u, w) = cos(u, w) / tau`` (tau = 0.1 in the paper)
and, for a view pair (A, B),

    l_ij^{A,B} = -log( exp(s(v_i^A, v_j^B)) / sum_k exp(s(v_i^A, v_k^B)) ),

the loss of the pair is ``E_{(i,j) in P} [ l_ij^{A,B} + l_ij^{B,A} ]``: the expectation runs over
the ordered positive pairs P of the batch, i.e. every (i, j) whose records share a patient (i = j
included: the two views of one record). Records of other patients are the negatives; a record
whose patient is unknown (code -1) is its own patient. The softmax runs over every record of the
other view, as the paper writes it. With more than two views the loss is the mean over the
unordered view pairs (the reference implementation divides by the number of pairs too), so
CMLC's scale does not grow with the number of leads.

Where the reference implementation differs from the paper's equation (it averages the diagonal
and the off-diagonal positives as separate terms and leaves out one direction of the
off-diagonal ones, "technically need to add 1 more term for symmetry"), this follows the
paper's equation: every ordered positive pair counts once, in both directions.

Under DDP each process scores its local anchors against the gathered views of the global batch
(patients matched across processes), with shares scaled so that DDP-averaged gradients equal the
single-process gradients over the global batch; the returned value is the global loss.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from etp.errors import ConfigError, TrainingError
from etp.losses.clip import at_least_fp32, fp32_region, report_global
from etp.train.distributed import gather_with_grad, gathered_sizes, rank, world_size

__all__ = ["PatientContrastiveLoss", "positive_mask"]


def positive_mask(patients: torch.Tensor, others: torch.Tensor | None = None) -> torch.Tensor:
    """``(len(patients), len(others))`` bool: same patient. Codes < 0 (unknown) must already be
    made unique (see :meth:`PatientContrastiveLoss.forward`)."""
    others = patients if others is None else others
    return patients[:, None] == others[None, :]


def _gather_codes(codes: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """Every process's patient codes, concatenated in rank order (no gradient)."""
    if len(sizes) == 1:
        return codes
    import torch.distributed as dist

    longest = max(sizes)
    padded = torch.cat([codes, codes.new_full((longest - codes.shape[0],), -1)])
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


class PatientContrastiveLoss(nn.Module):
    """CLOCS's loss over V views of each record (see the module docstring).

    ``forward(views, patients)``: ``views`` a sequence of V >= 2 (B, D) embeddings (normalised
    here, so raw representations are fine), ``patients`` (B,) integer patient codes (-1 unknown)
    or None (every record its own patient). Computed and returned in float32 even under autocast
    (float64 stays float64). TrainingError for mismatched shapes or a global batch below 2
    records; ConfigError for a temperature that is not > 0.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        try:
            t = float(temperature)
        except (TypeError, ValueError):
            raise ConfigError(f"CLOCS temperature must be a number, got {temperature!r}") from None
        if not math.isfinite(t) or t <= 0:
            raise ConfigError(f"CLOCS temperature must be > 0, got {temperature!r}")
        self.temperature = t

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

    def _check(self, views: Sequence[torch.Tensor], patients: torch.Tensor | None) -> None:
        if len(views) < 2:
            raise TrainingError(f"PatientContrastiveLoss: needs at least 2 views, got {len(views)}")
        first = views[0]
        for h, v in enumerate(views):
            if not isinstance(v, torch.Tensor) or v.dim() != 2 or not v.is_floating_point():
                raise TrainingError(
                    f"PatientContrastiveLoss: view {h} must be a floating (batch, dim) tensor, "
                    f"got {getattr(v, 'shape', type(v).__name__)}"
                )
            if v.shape != first.shape or v.device != first.device:
                raise TrainingError(
                    f"PatientContrastiveLoss: view {h} {tuple(v.shape)} on {v.device} differs "
                    f"from view 0 {tuple(first.shape)} on {first.device}"
                )
        if patients is not None and tuple(patients.shape) != (first.shape[0],):
            raise TrainingError(
                f"PatientContrastiveLoss: patients has shape {tuple(patients.shape)}, expected "
                f"({first.shape[0]},) (one code per record)"
            )

    def forward(
        self, views: Sequence[torch.Tensor], patients: torch.Tensor | None = None
    ) -> torch.Tensor:
        self._check(views, patients)
        device = views[0].device
        with fp32_region(device):
            z = [F.normalize(at_least_fp32(v), dim=1) for v in views]
            local_n = int(z[0].shape[0])
            sizes = gathered_sizes(local_n, device)
            n = sum(sizes)
            if n < 2:
                raise TrainingError(
                    f"PatientContrastiveLoss: contrastive loss is undefined for a batch of {n} "
                    "(need at least 2 records in the global batch)"
                )
            offset = sum(sizes[: rank()])
            codes = (
                torch.full((local_n,), -1, dtype=torch.long, device=device)
                if patients is None
                else patients.to(device=device, dtype=torch.long)
            )
            codes = _gather_codes(codes, sizes)
            # an unknown patient is its own patient: a code no other record has
            unknown = codes < 0
            codes = torch.where(unknown, -1 - torch.arange(n, device=device), codes)
            positives = positive_mask(codes[offset : offset + local_n], codes)  # (b, N)
            n_pos = int(positive_mask(codes).sum())  # |P| over the global batch
            gathered = gather_with_grad(torch.cat(z, dim=1), sizes).split(z[0].shape[1], dim=1)
            summed = z[0].new_zeros(())
            pairs = list(combinations(range(len(z)), 2))
            for a, b in pairs:
                for anchor, other in ((z[a], gathered[b]), (z[b], gathered[a])):
                    log_p = F.log_softmax(anchor @ other.T / self.temperature, dim=1)
                    summed = summed - log_p.masked_select(positives).sum()
            share = summed * (world_size() / (n_pos * len(pairs)))
            return report_global(share)
