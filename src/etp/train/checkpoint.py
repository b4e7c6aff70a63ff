"""Training checkpoints that resume *exactly*: same weights as a run that was never stopped.

A checkpoint holds everything the next step depends on: model, optimizer and scheduler state,
the position in the data (epoch and batch within it — the batch order is a pure function of
seed and epoch, so the position is enough to replay the same permutation), every random
generator (Python, NumPy, torch CPU/CUDA and the loop's own generators), the resolved config
and a description of the architecture. It is written with :func:`etp.io.atomic_write_bytes`, so a
SIGKILL during the write leaves the previous checkpoint intact.

Checkpoints load with ``torch.load(weights_only=True)``: only tensors and plain Python
containers are stored, never pickled objects.
"""

from __future__ import annotations

import io
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from etp.errors import ConfigError, ModelError
from etp.io import atomic_write_bytes

#: value of the ``format`` key that marks an etp training checkpoint
CHECKPOINT_FORMAT = "etp-train-checkpoint"
#: bumped when the layout changes incompatibly
CHECKPOINT_VERSION = 1

#: config keys that may differ between a checkpoint and the resuming run (they do not change
#: the computation: logging, progress display, worker count, checkpoint interval, device, and
#: the locations of the run and of the cache — a moved cache is recognised by its fingerprint)
RESUME_MUTABLE_KEYS: frozenset[str] = frozenset(
    {
        "data.cache",
        "train.out_dir",
        "train.progress",
        "train.num_workers",
        "train.log_every_steps",
        "train.checkpoint_every_steps",
        "train.device",
    }
)


@dataclass
class TrainPosition:
    """Where training stands: ``batch`` batches of epoch ``epoch`` (0-based) are done.

    At an epoch end the position is stored as ``(epoch + 1, 0)``, validation included.
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_val_loss: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Random state
# ----------------------------------------------------------------------------------------------


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Snapshot of the Python, NumPy, torch (CPU and CUDA) and named generators' states."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [
            str(np_name),
            torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            int(np_pos),
            int(np_has_gauss),
            float(np_gauss),
        ],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Put every random generator back into the state :func:`capture_rng` recorded."""
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state(
        (np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss)
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state.get("generators", {})
    for name, gen in (generators or {}).items():
        if name in saved:
            gen.set_state(saved[name])


# ----------------------------------------------------------------------------------------------
# Save / load
# ----------------------------------------------------------------------------------------------


def save_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    position: TrainPosition,
    config: dict[str, Any],
    arch: dict[str, Any],
    generators: dict[str, torch.Generator] | None = None,
    data: dict[str, Any] | None = None,
    ema: torch.nn.Module | None = None,
    objective: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write a checkpoint atomically to ``path`` (a crash never leaves a torn file).

    ``ema``: the moving average of the weights, when the run keeps one; ``objective``: the
    state of the objective's own parts (a target network, a predictor), when it has any.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "position": asdict(position),
        "rng": capture_rng(generators),
        "config": config,
        "arch": arch,
        "data": data or {},
        "ema": ema.state_dict() if ema is not None else None,
        "objective": dict(objective or {}),
    }
    buf = io.BytesIO()  # serialised in memory, so a full disk is an OSError naming the file
    torch.save(payload, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (on the CPU), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not our file"
        raise ModelError(f"{path}: not a readable etp checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path}: not an etp training checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ModelError(
            f"{path}: checkpoint version {payload.get('version')} is not supported by this etp "
            f"(expects {CHECKPOINT_VERSION})"
        )
    return payload


def position_of(payload: dict[str, Any]) -> TrainPosition:
    """The :class:`TrainPosition` stored in a loaded checkpoint."""
    return TrainPosition(**payload["position"])


# ----------------------------------------------------------------------------------------------
# Compatibility checks
# ----------------------------------------------------------------------------------------------


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(
    saved: dict[str, Any],
    current: dict[str, Any],
    ignore: frozenset[str] = RESUME_MUTABLE_KEYS,
    defaults: dict[str, Any] | None = None,
) -> list[str]:
    """``key: saved -> current`` for every config value that differs (``ignore`` excepted).

    With ``defaults`` (the default config), a key the saved config lacks counts as its default
    value: a setting added to etp after the checkpoint was written defaults to the behaviour
    that existed before it.
    """
    a, b = _flatten(saved), _flatten(current)
    d = _flatten(defaults) if defaults else {}
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in ignore:
            continue
        old = a.get(key, d.get(key, "<missing>"))
        if old != b.get(key, "<missing>"):
            diffs.append(f"{key}: {a.get(key, '<missing>')!r} -> {b.get(key, '<missing>')!r}")
    return diffs


def check_resume_config(
    path: Path,
    saved: dict[str, Any],
    current: dict[str, Any],
    defaults: dict[str, Any] | None = None,
) -> None:
    """ConfigError when the resuming run's config differs from the checkpoint's (settings the
    checkpoint predates count as their ``defaults``)."""
    diffs = config_differences(saved, current, defaults=defaults)
    if diffs:
        shown = "; ".join(diffs[:5]) + (f"; ... ({len(diffs)} in all)" if len(diffs) > 5 else "")
        raise ConfigError(
            f"cannot resume from {path}: it was written with a different config ({shown}); "
            "resume with the same config, or start a new run in another train.out_dir"
        )


def check_arch(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """ModelError when the checkpoint's architecture description differs from the model's."""
    diffs = config_differences(saved, current, ignore=frozenset())
    if diffs:
        raise ModelError(
            f"checkpoint {path} was written for a different architecture ({'; '.join(diffs)})"
        )


def load_model_state(path: Path, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load weights strictly; any missing/unexpected key or shape mismatch is a ModelError."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: {tuple(state[k].shape)} in checkpoint vs {tuple(v.shape)} in model"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s) e.g. {', '.join(unexpected[:3])}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:3]))
        raise ModelError(
            f"checkpoint {path} does not match the model architecture: {', '.join(parts)}"
        )
    model.load_state_dict(state, strict=True)


class PartView:
    """Some state-dict entries of a module (an objective's own parts) as one object
    :func:`load_model_state` loads strictly."""

    def __init__(self, module: torch.nn.Module, own: dict[str, torch.Tensor]) -> None:
        self.module = module
        self.own = own

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.own

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        self.module.load_state_dict({**self.module.state_dict(), **state}, strict=strict)
