"""ETP: ECG-report contrastive pretraining, the symmetric CLIP loss of the paper (Eq. 3-5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from etp.config import config_field
from etp.losses.clip import ClipLoss
from etp.objectives import register
from etp.objectives.base import Batch, Objective


@dataclass
class ETPOptions:
    augment: bool = config_field(
        False,
        "apply train.augment to the ECG side (beyond the paper, which pairs each report with its "
        "ECG as recorded)",
    )


@register
class ETPObjective(Objective):
    """Each ECG against its report's frozen text-model embedding, through the two projection
    heads; temperature learned (init ``model.init_temperature``)."""

    name = "etp"
    Options = ETPOptions
    text_head = True
    needs_reports = True
    learns_temperature = True

    def __init__(self, model: nn.Module, options: ETPOptions, ctx: Any) -> None:
        super().__init__(model, options, ctx)
        self.loss_fn = ClipLoss()
        self.augment = self.build_augmentation() if options.augment else None

    @classmethod
    def augments(cls, options: ETPOptions) -> bool:
        return bool(options.augment)

    def inputs(self, batch: Batch) -> tuple[Tensor, Tensor]:
        assert batch.text is not None, "the loop gives ETP's batches their report embeddings"
        x = batch.x if self.augment is None else self.augment(batch.x, batch.generator)
        return x, batch.text

    def forward(
        self, inputs: tuple[Tensor, Tensor], model: nn.Module | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        net = self.net(model)
        x, text = (self.ctx.to_device(t) for t in inputs)
        with self.ctx.autocast():
            ecg_z, text_z, scale = net.embed_ecg(x), net.embed_text(text), net.scale()
        return self.loss_fn(ecg_z.float(), text_z.float(), scale.float()), {}

    @torch.no_grad()
    def temperature(self) -> float:
        return float(1.0 / self.model.scale().detach().float().cpu())
