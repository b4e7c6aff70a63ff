"""torch.distributed helpers: start-up from torchrun's environment and a gradient-keeping gather.

A run launched by ``torchrun --nproc_per_node N`` gets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` in its environment; :func:`init_distributed` reads them and
starts a process group (gloo on the CPU, nccl on CUDA). Launched any other way it does nothing and
describes a single process, so the same training code runs both ways.

:func:`gather_with_grad` concatenates a tensor from every process for contrastive losses whose
negatives come from the global batch. Its backward sums the incoming gradient over all processes
and returns each process the rows it contributed, so the gradient that reaches a local shard
includes the terms where *other* processes used it (as a negative in their rows). With a loss of
the form used in :mod:`etp.losses` (each process's share scaled so the shares sum to
``world_size`` times the global loss) and DDP's mean all-reduce, every parameter's gradient equals
that of one process on the whole global batch.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from etp.errors import ConfigError

__all__ = [
    "DistInfo",
    "init_distributed",
    "gather_with_grad",
    "gathered_sizes",
    "all_reduce_mean",
    "is_distributed",
    "is_main",
    "rank",
    "world_size",
    "barrier",
    "cleanup",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly single-process) run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_distributed: bool

    @property
    def is_main(self) -> bool:
        """True on the process that logs, checkpoints and saves (rank 0)."""
        return self.rank == 0


def _env_int(name: str, default: int | None = None) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None
    if value < 0:
        raise ConfigError(f"environment variable {name}={raw!r} must be >= 0")
    return value


def _pick_device(device_pref: str, local_rank: int, distributed: bool) -> torch.device:
    pref = (device_pref or "auto").strip().lower()
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cpu":
        return torch.device("cpu")
    if pref == "cuda" or pref.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device_pref!r} requested but CUDA is not available")
        if distributed:
            # one GPU per process: torchrun's LOCAL_RANK picks it (any ':N' is ignored)
            index = local_rank
        elif pref == "cuda":
            index = torch.cuda.current_device()
        else:
            try:
                index = int(pref.split(":", 1)[1])
            except ValueError:
                raise ConfigError(f"device {device_pref!r}: expected 'cuda:N'") from None
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device cuda:{index} requested but only {torch.cuda.device_count()} "
                "CUDA device(s) are visible"
            )
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    raise ConfigError(f"device {device_pref!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'")


def init_distributed(device_pref: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Start the process group from torchrun's environment; a no-op for a single process.

    ``device_pref`` is ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    The backend is nccl on CUDA and gloo on the CPU. Calling it again once the group exists
    returns the same description without re-initialising.
    """
    world = _env_int("WORLD_SIZE", 1)
    assert world is not None
    if world < 1:
        raise ConfigError(f"environment variable WORLD_SIZE={world} must be >= 1")
    rnk = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rnk)
    assert rnk is not None and local is not None
    if world > 1 and rnk >= world:
        raise ConfigError(f"environment variable RANK={rnk} must be < WORLD_SIZE={world}")
    distributed = world > 1

    if dist.is_available() and dist.is_initialized():
        # already started (a second call, or a group the caller made): describe it
        multi = dist.get_world_size() > 1
        device = _pick_device(device_pref, local, multi)
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, device, multi)
    if not distributed:
        return DistInfo(0, 1, 0, _pick_device(device_pref, 0, False), False)

    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ConfigError(
                f"WORLD_SIZE={world} but environment variable {name} is not set; "
                "launch with torchrun (e.g. torchrun --nproc_per_node 2 ...)"
            )
    device = _pick_device(device_pref, local, True)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=rnk,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
        **({"device_id": device} if device.type == "cuda" else {}),
    )
    return DistInfo(rnk, world, local, device, True)


def is_distributed() -> bool:
    """True when a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0, or in a single process."""
    return rank() == 0


def barrier() -> None:
    """Wait for all processes; a no-op without a process group."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup(sync: bool = False) -> None:
    """Destroy the process group if one is running (safe to call more than once).

    ``sync``: first wait for every process (only where all of them reach this call; not on an
    error path, where the others may never arrive). Rank 0 hosts the rendezvous store, and a
    process still tearing down its group after rank 0 has exited can abort ("terminate called
    without an active exception"); entering the teardown together closes that window.
    """
    if dist.is_available() and dist.is_initialized():
        if sync and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over processes, without gradient (for logging); ``x`` itself single-process."""
    if not is_distributed():
        return x.detach()
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / dist.get_world_size()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums the gradient over processes and keeps the own rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: tuple[int, ...], own: int) -> torch.Tensor:  # type: ignore[override]
        ctx.sizes, ctx.own = sizes, own
        longest = max(sizes)
        padded = x.contiguous()
        if x.shape[0] < longest:
            pad = x.new_zeros((longest - x.shape[0], *x.shape[1:]))
            padded = torch.cat([padded, pad], dim=0)
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        # the own slot holds this process's values bit for bit; autograd routes its gradient
        # (plus what the other processes computed for it, via backward) to ``x``
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)], dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.own])
        return total[start : start + ctx.sizes[ctx.own]], None, None


def gathered_sizes(n: int, device: torch.device) -> tuple[int, ...]:
    """Every process's local batch size (``(n,)`` without a process group)."""
    if not is_distributed():
        return (n,)
    mine = torch.tensor([n], dtype=torch.int64, device=device)
    all_sizes = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(all_sizes, mine)
    return tuple(int(s.item()) for s in all_sizes)


def gather_with_grad(x: torch.Tensor, sizes: tuple[int, ...] | None = None) -> torch.Tensor:
    """Concatenate ``x`` (B_r, ...) from all processes in rank order -> (sum B_r, ...).

    Gradients reach the local shard, including those from the other processes' use of it
    (backward all-reduces the gradient). Processes may hold different batch sizes; pass
    ``sizes`` (from :func:`gathered_sizes`) to skip the size exchange. Without a process group
    this returns ``x`` unchanged.
    """
    if not is_distributed():
        return x
    if sizes is None:
        sizes = gathered_sizes(int(x.shape[0]), x.device)
    return _GatherWithGrad.apply(x, tuple(sizes), dist.get_rank())
