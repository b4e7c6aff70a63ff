"""CLOCS (Kiyasseh, Zhu & Clifton, ICML 2021): patient-aware contrast of segments or leads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from etp.config import config_field
from etp.data.records import LEADS
from etp.errors import ConfigError, DataError
from etp.losses.clocs import PatientContrastiveLoss
from etp.objectives import register
from etp.objectives.base import Batch, Objective



@dataclass
class ClocsOptions:
    variant: Literal["cmsc", "cmlc"] = config_field(
        "cmsc",
        "'cmsc': the two views are the record's adjacent, non-overlapping halves in time (all "
        "leads); 'cmlc': one view per lead in objective.leads (the whole record, every other "
        "lead zeroed)",
    )
    temperature: float = config_field(0.1, "softmax temperature of the loss (the paper: 0.1)")
    leads: list[str] = config_field(
        list(LEADS),
        "CMLC: the leads that are views (>= 2, by name); the authors' 4-lead setting is "
        "[II, V2, aVL, aVR]",
    )


def segment_views(x: Tensor) -> list[Tensor]:
    """CMSC's views: ``(B, leads, L)`` -> the first and second half in time, ``(B, leads, L//2)``
    each, adjacent and non-overlapping (an odd last sample is left out)."""
    half = x.shape[-1] // 2
    return [x[..., :half], x[..., half : 2 * half]]


def lead_views(x: Tensor, leads: list[int]) -> list[Tensor]:
    """CMLC's views: for each lead index, ``x`` with every other lead zeroed (same shape), so the
    12-lead encoder sees the lead in its own input channel."""
    views = []
    for i in leads:
        v = torch.zeros_like(x)
        v[:, i] = x[:, i]
        views.append(v)
    return views


def lead_indices(names: list[str], what: str = "objective.leads") -> list[int]:
    """Positions of ``names`` in etp's lead order (case-insensitive; ConfigError if unknown or
    repeated, or fewer than 2)."""
    from etp.data.leads import canonical_lead_name

    out: list[int] = []
    for name in names:
        canon = canonical_lead_name(str(name))
        if canon is None:
            raise ConfigError(f"{what}: {name!r} is not one of the 12 leads {list(LEADS)}")
        if LEADS.index(canon) in out:
            raise ConfigError(f"{what}: lead {canon} is listed twice")
        out.append(LEADS.index(canon))
    if len(out) < 2:
        raise ConfigError(f"{what}: CMLC contrasts leads and needs at least 2, got {list(names)}")
    return out


@register
class ClocsObjective(Objective):
    """Views cut from each record (no augmentation), each view through the model as its own
    batch; the ECG projection head's output is the representation the loss compares; records of
    one patient (``Batch.patients``) are positives, other patients' records negatives."""

    name = "clocs"
    Options = ClocsOptions

    def __init__(self, model: nn.Module, options: ClocsOptions, ctx: Any) -> None:
        super().__init__(model, options, ctx)
        self.loss_fn = PatientContrastiveLoss(temperature=options.temperature)
        self.lead_index = lead_indices(options.leads) if options.variant == "cmlc" else []

    @classmethod
    def check_options(cls, options: ClocsOptions) -> None:
        if not options.temperature > 0:
            raise ConfigError(f"objective.temperature must be > 0, got {options.temperature}")
        if options.variant == "cmlc":
            lead_indices(options.leads)

    def setup(self) -> None:
        in_leads = int(self.model.cfg.in_leads)
        if self.lead_index and max(self.lead_index) >= in_leads:
            raise ConfigError(
                f"objective.leads: lead index {max(self.lead_index)} is beyond the model's "
                f"model.in_leads={in_leads}"
            )

    def inputs(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        if self.options.variant == "cmsc" and batch.x.shape[-1] < 2:
            raise DataError(
                f"CLOCS CMSC splits each record in two halves; records of {batch.x.shape[-1]} "
                "sample(s) are too short"
            )
        return batch.x, batch.patients

    def views(self, x: Tensor) -> list[Tensor]:
        """The variant's views of a batch ``(B, leads, L)``."""
        if self.options.variant == "cmsc":
            return segment_views(x)
        return lead_views(x, self.lead_index)

    def forward(
        self, inputs: tuple[Tensor, Tensor | None], model: nn.Module | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        x, patients = inputs
        net = self.net(model)
        z = []
        # the views are cut on the device (one transfer per batch, not one per lead); each is its
        # own encoder batch, as in the authors' code (batch-norm statistics per view)
        for v in self.views(self.ctx.to_device(x)):
            with self.ctx.autocast():
                z.append(net.embed_ecg(v).float())
        if patients is not None:
            patients = self.ctx.to_device(patients)
        return self.loss_fn(z, patients), {}

    def temperature(self) -> float:
        return float(self.options.temperature)


__all__ = ["ClocsObjective", "ClocsOptions", "lead_indices", "lead_views", "segment_views"]
