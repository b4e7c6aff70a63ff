"""What a pretraining objective is: the one interface the training loop, checkpoints, DDP and the
benchmark talk to.

An objective is a small :class:`torch.nn.Module` that holds the model being trained (an
:class:`~etp.models.etp.ETPModel`) plus any parts of its own (a predictor, a target network, a
context network), declares what it needs from the run, and turns a batch into a loss:

* ``name``: its registry key (``train.method`` in a config);
* ``Options``: a dataclass of its own settings, read from the config's ``objective:`` section
  (unknown keys are an error, like every other config key);
* ``text_head``: the model gets a text projection head (and the run builds the frozen text
  model to know its width and record it with the model);
* ``needs_reports``: batches carry the frozen text model's embedding of each record's report
  (records without a report are left out, with a warning);
* ``trains``: ``False`` for an objective that only saves its initialisation (random init);
* ``trains_ecg_head`` / ``learns_temperature``: whether its loss reads the model's ECG projection
  head / CLIP logit scale; the loop freezes them otherwise (DDP needs every trained parameter
  used) and the model directory records it (an untrained head's embeddings mean nothing);
* :meth:`inputs` prepares a batch on the CPU (augmented views: they draw from the run's
  checkpointed generator), :meth:`forward` computes ``(loss, logs)`` on the device: the loop wraps
  the objective in DistributedDataParallel, so everything that needs gradients runs there;
* ``log_names``: the names of the values :meth:`forward` returns in ``logs`` (floats, e.g. the
  parts of a composite loss); the loop averages them over each log window and writes them as
  extra ``train_log.csv`` columns (and TensorBoard scalars ``train/<name>``);
* :meth:`after_step` updates what is not trained by the optimiser (an EMA target network);
* :meth:`trained_on_crops` says whether test-time crops match what the encoder saw.

The loop never asks for a method's name; adding a method is one module in this package (see
:mod:`etp.objectives` for registration).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from etp.config import TrainConfig, from_dict

Augment = Callable[[Tensor, torch.Generator], Tensor]


@dataclass
class NoOptions:
    """An objective without settings of its own."""


@dataclass
class Batch:
    """What the loop hands an objective: one batch of cached records, on the CPU.

    ``x``: (B, leads, L) float32 signals as cached (not augmented); ``rows``: their cache rows;
    ``text``: (B, text_dim) frozen text-model embeddings of their reports (objectives with
    ``needs_reports``), else None; ``patients``: an integer code per record's patient (-1 where
    the cache gives none; records of one patient share a code), for objectives that use it;
    ``generator``: the run's augmentation generator (saved in checkpoints, so a resumed run
    draws the same views).
    """

    x: Tensor
    rows: Tensor
    generator: torch.Generator
    text: Tensor | None = None
    patients: Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.x.shape[0])


@dataclass
class RunContext:
    """What an objective may use of the run: device, precision, training settings, sampling
    rate and record length (samples) of the cache."""

    device: torch.device
    train: TrainConfig
    fs: float
    bf16: bool = True
    length: int = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """The run's autocast region (bf16 when ``train.precision`` is bf16)."""
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def to_device(self, t: Tensor) -> Tensor:
        return t.to(self.device, non_blocking=True)


class Objective(nn.Module):
    """Base class of every pretraining objective (see the module docstring)."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    text_head: ClassVar[bool] = False
    needs_reports: ClassVar[bool] = False
    trains: ClassVar[bool] = True
    trains_ecg_head: ClassVar[bool] = True
    learns_temperature: ClassVar[bool] = False
    log_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module, options: Any, ctx: RunContext) -> None:
        super().__init__()
        self.model = model
        self.options = options
        self.ctx = ctx
        # what the loss never reads stays as initialised (DDP needs every trained parameter used)
        if not self.learns_temperature and isinstance(getattr(model, "logit_scale", None), nn.Parameter):
            model.logit_scale.requires_grad_(False)
        if not self.trains_ecg_head and getattr(model, "ecg_head", None) is not None:
            model.ecg_head.requires_grad_(False)

    # -- settings ---------------------------------------------------------------------------

    @classmethod
    def parse_options(cls, data: dict[str, Any] | None) -> Any:
        """This objective's ``Options`` from the config's ``objective:`` section (checked)."""
        opts = from_dict(cls.Options, data or {}, prefix="objective")
        cls.check_options(opts)
        return opts

    @classmethod
    def check_options(cls, options: Any) -> None:
        """Raise ConfigError (naming ``objective.KEY``) for settings it cannot run with."""

    @classmethod
    def augments(cls, options: Any) -> bool:
        """Whether training draws augmented views through ``train.augment``."""
        return False

    @classmethod
    def check_batch_size(cls, batch_size: int) -> None:
        """Raise ConfigError when ``train.batch_size`` is too small for this objective."""
        from etp.errors import ConfigError

        if batch_size < 2:
            raise ConfigError(
                f"train.batch_size={batch_size}: a contrastive loss needs at least 2 samples "
                "per batch (the other samples are the negatives)"
            )

    @classmethod
    def options_dict(cls, options: Any) -> dict[str, Any]:
        return dataclasses.asdict(options)

    # -- training ---------------------------------------------------------------------------

    def setup(self) -> None:
        """Build the objective's own parts once the model is on its device (called by the loop
        after :attr:`model` is built and before the optimiser is)."""

    def inputs(self, batch: Batch) -> Any:
        """CPU-side preparation of ``batch`` (augmented views); the result goes to forward."""
        return batch

    def forward(self, inputs: Any, model: nn.Module | None = None) -> tuple[Tensor, dict[str, float]]:
        """``(loss, logs)`` of one prepared batch; ``model`` replaces :attr:`model` (validation of
        the weight average)."""
        raise NotImplementedError

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after each optimiser step (``step`` counts from 1)."""

    def temperature(self) -> float | None:
        """The softmax temperature to log, if the objective has one."""
        return None

    def trained_on_crops(self) -> bool:
        """Whether the encoder was trained on stretched crops (then test-time crop views are the
        model's default, :func:`etp.data.views.model_views`)."""
        from etp.data.views import CROP_NAMES

        return self.augments(self.options) and any(n in CROP_NAMES for n in self.ctx.train.augment)

    def own_state(self) -> dict[str, Tensor]:
        """The state of the objective's own parts (a target network, a predictor): every
        state-dict entry outside ``model.``; checkpointed beside the model."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("model.")}

    # -- helpers for subclasses -------------------------------------------------------------

    def build_augmentation(self) -> Augment:
        """``train.augment`` as one callable ``(x, generator) -> x'`` (etp.data.augment)."""
        from etp.data.augment import build_augmentation

        t = self.ctx.train
        return build_augmentation(list(t.augment), fs=self.ctx.fs, crop_min_frac=t.crop_min_frac)

    def net(self, model: nn.Module | None) -> nn.Module:
        return self.model if model is None else model


__all__ = ["Augment", "Batch", "NoOptions", "Objective", "RunContext"]
