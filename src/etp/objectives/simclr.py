"""SimCLR (Chen et al., ICML 2020): NT-Xent between two augmented views of each ECG (Eq. 6-8)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from etp.config import config_field
from etp.errors import ConfigError
from etp.losses.simclr import NTXentLoss
from etp.objectives import register
from etp.objectives.base import Batch, Objective


@dataclass
class SimCLROptions:
    temperature: float = config_field(0.07, "NT-Xent temperature (the paper: 0.07)")


@register
class SimCLRObjective(Objective):
    """Two views of each ECG from ``train.augment``; the ECG projection head is the projector;
    no text side, fixed temperature."""

    name = "simclr"
    Options = SimCLROptions

    def __init__(self, model: nn.Module, options: SimCLROptions, ctx: Any) -> None:
        super().__init__(model, options, ctx)
        self.loss_fn = NTXentLoss(temperature=options.temperature)
        self.augment = self.build_augmentation()

    @classmethod
    def check_options(cls, options: SimCLROptions) -> None:
        if not options.temperature > 0:
            raise ConfigError(f"objective.temperature must be > 0, got {options.temperature}")

    @classmethod
    def augments(cls, options: SimCLROptions) -> bool:
        return True

    def inputs(self, batch: Batch) -> Tensor:
        v1 = self.augment(batch.x, batch.generator)
        v2 = self.augment(batch.x, batch.generator)
        return torch.cat([v1, v2])

    def forward(self, inputs: Tensor, model: nn.Module | None = None) -> tuple[Tensor, dict[str, float]]:
        views = self.ctx.to_device(inputs)
        with self.ctx.autocast():
            z = self.net(model).embed_ecg(views)
        z1, z2 = z.float().chunk(2)
        return self.loss_fn(z1, z2), {}

    def temperature(self) -> float:
        return float(self.options.temperature)
