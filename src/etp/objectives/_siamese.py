"""What BYOL and SimSiam share: two augmented views of each ECG, an online branch (the model's
encoder + the objective's own projector and predictor MLPs with BatchNorm) and a negative-free
loss between its predictions and the other branch's projections (not an objective itself)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from etp.errors import ConfigError
from etp.objectives.base import Batch, Objective


def check_dims(options: Any, *names: str) -> None:
    """ConfigError naming ``objective.NAME`` for a layer width below 1."""
    for name in names:
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"objective.{name} must be a positive integer, got {value!r}")


def bn_mlp(in_dim: int, hidden: int, out_dim: int, hidden_bias: bool = True) -> nn.Sequential:
    """Linear-BatchNorm-ReLU-Linear: BYOL's projector and predictor (Sec. 3.3), SimSiam's
    predictor (``hidden_bias=False``: the BatchNorm after the hidden layer cancels a bias)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden, bias=hidden_bias),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, out_dim),
    )


class SiameseObjective(Objective):
    """Two views from ``train.augment`` per ECG; the projector (an objective part, built by the
    subclass in :meth:`setup`) replaces the model's ``ecg_head``, which stays untrained.

    The loss never reads ``ecg_head`` or the CLIP temperature, and under DDP every trained
    parameter must be used, so both are frozen at their seeded initialisation; the encoder is
    what the linear probe reads (``kind="features"``), as in both papers, where the projector and
    predictor are dropped after pretraining.
    """

    trains_ecg_head = False

    def __init__(self, model: nn.Module, options: Any, ctx: Any) -> None:
        super().__init__(model, options, ctx)
        self.augment = self.build_augmentation()

    @classmethod
    def augments(cls, options: Any) -> bool:
        return True

    @classmethod
    def check_batch_size(cls, batch_size: int) -> None:
        if batch_size < 2:
            raise ConfigError(
                f"train.batch_size={batch_size}: {cls.name}'s projector and predictor normalise "
                "with batch statistics (BatchNorm), which needs at least 2 samples per batch"
            )

    def inputs(self, batch: Batch) -> Tensor:
        """``(2, B, leads, L)``: two independently augmented views of each record."""
        if self.training and batch.size < 2:
            raise ConfigError(
                f"{self.name}: {batch.size} sample per process and batch; BatchNorm in the "
                "projector and predictor needs at least 2 — raise train.batch_size or run fewer "
                "processes"
            )
        v1 = self.augment(batch.x, batch.generator)
        v2 = self.augment(batch.x, batch.generator)
        return torch.stack([v1, v2])

    def views(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        v = self.ctx.to_device(inputs)
        return v[0], v[1]


__all__ = ["SiameseObjective", "bn_mlp", "check_dims"]
