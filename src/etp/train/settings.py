"""Checks of a pretraining config before any data is read: every bad setting is a ConfigError
naming its key."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from etp import objectives
from etp.config import PretrainConfig
from etp.errors import ConfigError
from etp.objectives.base import Objective

log = logging.getLogger(__name__)


def validate_config(cfg: PretrainConfig, world_size: int = 1) -> tuple[type[Objective], Any]:
    """Reject settings the loop cannot run with, naming the key; returns the objective class
    and its options."""
    t = cfg.train
    objective = objectives.get(t.method)
    options = objective.parse_options(cfg.objective)
    if not cfg.data.cache:
        raise ConfigError("data.cache is not set: give the prepared cache directory (`etp prepare`)")
    objective.check_batch_size(t.batch_size)
    if t.batch_size < 1:
        raise ConfigError(f"train.batch_size must be >= 1, got {t.batch_size}")
    if t.batch_size % world_size:
        raise ConfigError(
            f"train.batch_size={t.batch_size} is not divisible by the {world_size} processes"
        )
    if t.epochs < 1:
        raise ConfigError(f"train.epochs must be >= 1, got {t.epochs}")
    if not (t.lr > 0 and math.isfinite(t.lr)):
        raise ConfigError(f"train.lr must be a positive finite number, got {t.lr}")
    if t.weight_decay < 0:
        raise ConfigError(f"train.weight_decay must be >= 0, got {t.weight_decay}")
    if t.num_workers < 0:
        raise ConfigError(f"train.num_workers must be >= 0, got {t.num_workers}")
    if t.checkpoint_every_steps < 0:
        raise ConfigError(f"train.checkpoint_every_steps must be >= 0, got {t.checkpoint_every_steps}")
    if t.log_every_steps < 1:
        raise ConfigError(f"train.log_every_steps must be >= 1, got {t.log_every_steps}")
    if t.warmup_epochs < 0:
        raise ConfigError(f"train.warmup_epochs must be >= 0, got {t.warmup_epochs}")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    if not 0.0 < t.crop_min_frac <= 1.0:
        raise ConfigError(f"train.crop_min_frac must be in (0, 1], got {t.crop_min_frac}")
    if objective.augments(options):
        from etp.data.augment import build_augmentation

        try:
            build_augmentation(list(t.augment))  # unknown names fail before any data is read
        except ConfigError as exc:
            raise ConfigError(f"train.augment: {exc}") from None
    return objective, options


def warn_emulated_bf16(device: torch.device, precision: str) -> None:
    """Log a warning when bf16 autocast would run on a CPU without bf16 instructions."""
    if device.type == "cpu" and precision == "bf16" and not cpu_has_bf16():
        log.warning(
            "this CPU has no bf16 instructions (AVX-512 BF16 / AMX): bf16 autocast is "
            "emulated and can be many times slower than fp32; set train.precision=fp32"
        )


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (else bf16 autocast is emulated)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the query: assume it does
        return True


__all__ = ["cpu_has_bf16", "validate_config", "warn_emulated_bf16"]
