"""SimSiam (Chen & He, CVPR 2021): predict the stop-gradient projection of another view."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from etp.config import config_field
from etp.objectives import register
from etp.objectives._siamese import SiameseObjective, bn_mlp, check_dims


@dataclass
class SimSiamOptions:
    projector_dim: int = config_field(
        2048, "projection MLP width, hidden layers and output (the paper: 2048)"
    )
    predictor_hidden: int = config_field(
        512, "prediction MLP bottleneck width (the paper: 512, a quarter of projector_dim)"
    )


def projection_mlp(in_dim: int, dim: int) -> nn.Sequential:
    """The paper's 3-layer projection MLP (Sec. 4): BatchNorm after every layer, the output's
    without ReLU (and without affine parameters, as in the paper's code); no biases (each is
    cancelled by the BatchNorm after it)."""
    return nn.Sequential(
        nn.Linear(in_dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
        nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
        nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim, affine=False),
    )


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """``D(p, stopgrad(z))`` (Eq. 1 with Eq. 3's stop-gradient): minus the cosine similarity,
    averaged over the batch; no gradient reaches ``z``."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def simsiam_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """The symmetrised loss (Eq. 4): ``D(p1, z2) / 2 + D(p2, z1) / 2``, in ``[-1, 1]``."""
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


@register
class SimSiamObjective(SiameseObjective):
    """The model's encoder + a projection MLP (f) and a bottleneck prediction MLP (h), both
    objective parts (the model's ``ecg_head`` is not used, see
    :class:`~etp.objectives._siamese.SiameseObjective`); one network for both views, no target
    copy: the stop-gradient alone keeps the projections from collapsing."""

    name = "simsiam"
    Options = SimSiamOptions

    @classmethod
    def check_options(cls, options: SimSiamOptions) -> None:
        check_dims(options, "projector_dim", "predictor_hidden")

    def setup(self) -> None:
        o, device = self.options, self.ctx.device
        self.projector = projection_mlp(self.model.feature_dim, o.projector_dim).to(device)
        self.predictor = bn_mlp(
            o.projector_dim, o.predictor_hidden, o.projector_dim, hidden_bias=False
        ).to(device)

    def forward(
        self, inputs: Tensor, model: nn.Module | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        v1, v2 = self.views(inputs)
        net = self.net(model)
        with self.ctx.autocast():
            # each view on its own: BatchNorm statistics per view, as in the paper's code
            z1 = self.projector(net.features(v1))
            z2 = self.projector(net.features(v2))
            p1, p2 = self.predictor(z1), self.predictor(z2)
        return simsiam_loss(p1.float(), p2.float(), z1.float(), z2.float()), {}


__all__ = [
    "SimSiamObjective", "SimSiamOptions", "negative_cosine", "projection_mlp", "simsiam_loss",
]
