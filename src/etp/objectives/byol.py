"""BYOL (Grill et al., NeurIPS 2020): predict an EMA target network's projection of another view."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from etp.config import config_field
from etp.errors import ConfigError
from etp.objectives import register
from etp.objectives._siamese import SiameseObjective, bn_mlp, check_dims


@dataclass
class BYOLOptions:
    projector_hidden: int = config_field(4096, "projector MLP hidden width (the paper: 4096)")
    projector_dim: int = config_field(
        256, "projection width, the space the loss compares in (the paper: 256)"
    )
    predictor_hidden: int = config_field(4096, "predictor MLP hidden width (the paper: 4096)")
    tau_base: float = config_field(
        0.996,
        "target EMA decay at the first step; it rises to 1 at the last step on a cosine "
        "(the paper: 0.996)",
    )


def target_tau(k: int, total_steps: int, tau_base: float) -> float:
    """The target decay at update ``k`` (0-based) of ``total_steps`` (Sec. 3.2):
    ``1 - (1 - tau_base) (cos(pi k / K) + 1) / 2``: ``tau_base`` at ``k = 0``, 1 at ``k = K``."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    k = min(max(k, 0), total_steps)
    return 1.0 - (1.0 - tau_base) * (math.cos(math.pi * k / total_steps) + 1.0) / 2.0


def regression_loss(q: Tensor, z: Tensor) -> Tensor:
    """Per sample, the squared distance of the L2-normalised prediction ``q`` and target
    projection ``z`` (Eq. 2), i.e. ``2 - 2 cos(q, z)``; no gradient reaches ``z``."""
    return (F.normalize(q, dim=-1) - F.normalize(z.detach(), dim=-1)).square().sum(dim=-1)


def byol_loss(q1: Tensor, q2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """The symmetrised loss (Sec. 3.2): view 1's prediction against view 2's target projection
    plus the swapped pair, averaged over the batch (so in ``[0, 8]``)."""
    return (regression_loss(q1, z2) + regression_loss(q2, z1)).mean()


@register
class BYOLObjective(SiameseObjective):
    """Online: the model's encoder, a projector and a predictor (objective parts; the model's
    ``ecg_head`` is not used, see :class:`~etp.objectives._siamese.SiameseObjective`). Target: a
    copy of encoder + projector that the optimiser never sees (``requires_grad`` off), moved
    towards the online weights after every step with the cosine decay schedule; its BatchNorm
    statistics come from its own forward passes, as in the paper's implementation."""

    name = "byol"
    Options = BYOLOptions

    @classmethod
    def check_options(cls, options: BYOLOptions) -> None:
        check_dims(options, "projector_hidden", "projector_dim", "predictor_hidden")
        if not 0.0 <= options.tau_base <= 1.0:
            raise ConfigError(f"objective.tau_base must be in [0, 1], got {options.tau_base}")

    def setup(self) -> None:
        o, device = self.options, self.ctx.device
        enc_dim = self.model.feature_dim
        self.projector = bn_mlp(enc_dim, o.projector_hidden, o.projector_dim).to(device)
        self.predictor = bn_mlp(o.projector_dim, o.predictor_hidden, o.projector_dim).to(device)
        # the target starts as a copy of the online network (the channels-last fast path of a
        # deep-copied encoder runs on the copy's own weights)
        self.target_encoder = copy.deepcopy(self.model.encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def _pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.model.encoder, self.target_encoder), (self.projector, self.target_projector)]

    def forward(
        self, inputs: Tensor, model: nn.Module | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        v1, v2 = self.views(inputs)
        net = self.net(model)
        with self.ctx.autocast():
            # each view on its own: BatchNorm statistics per view, as in the paper's code
            q1 = self.predictor(self.projector(net.features(v1)))
            q2 = self.predictor(self.projector(net.features(v2)))
            with torch.no_grad():
                z1 = self.target_projector(self.target_encoder(v1))
                z2 = self.target_projector(self.target_encoder(v2))
        return byol_loss(q1.float(), q2.float(), z1.float(), z2.float()), {}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """``target <- tau target + (1 - tau) online`` with tau of update ``step - 1``."""
        tau = self.tau(step, total_steps)
        for online, target in self._pairs():
            for p_online, p_target in zip(online.parameters(), target.parameters(), strict=True):
                p_target.lerp_(p_online.detach(), 1.0 - tau)

    def tau(self, step: int, total_steps: int) -> float:
        """The decay :meth:`after_step` uses after optimiser step ``step`` (from 1)."""
        return target_tau(step - 1, total_steps, self.options.tau_base)


__all__ = ["BYOLObjective", "BYOLOptions", "byol_loss", "regression_loss", "target_tau"]
