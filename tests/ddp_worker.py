"""One process of the 2-process gloo DDP equivalence test (tests/test_distributed.py).

Launched twice by the test with the environment torchrun would set (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT); ``python tests/ddp_worker.py OUT_DIR`` writes ``OUT_DIR/rank<r>.pt``
with each scenario's loss value and the parameters' gradients after DDP's all-reduce. The test
imports the builders below to compute the single-process reference on the same global batch.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

# (scenario name, per-rank batch sizes); the global batch is always the first sum(sizes) rows
SPLITS = {"even": (4, 4), "uneven": (3, 5)}
GLOBAL_N = 8


class ClipToy(nn.Module):
    """Linear ECG and text projections plus a learnable log logit scale (like ETPModel)."""

    def __init__(self) -> None:
        super().__init__()
        self.ecg = nn.Linear(24, 8)
        self.text = nn.Linear(10, 8)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, x: torch.Tensor, t: torch.Tensor):
        e = F.normalize(self.ecg(x), dim=1)
        u = F.normalize(self.text(t), dim=1)
        return e, u, self.log_scale.exp()


class SimclrToy(nn.Module):
    """A small 2-layer projection applied to both views."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(24, 16), nn.Tanh(), nn.Linear(16, 8))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        return self.net(x1), self.net(x2)


def make_clip() -> ClipToy:
    torch.manual_seed(0)
    return ClipToy()


def make_simclr() -> SimclrToy:
    torch.manual_seed(0)
    return SimclrToy()


def global_batch() -> dict[str, torch.Tensor]:
    """The fixed random global batch shared by the reference and the two processes."""
    g = torch.Generator().manual_seed(1)
    return {
        "x": torch.randn(GLOBAL_N, 24, generator=g),
        "t": torch.randn(GLOBAL_N, 10, generator=g),
        "x2": torch.randn(GLOBAL_N, 24, generator=g),
    }


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _naive_gather(x: torch.Tensor) -> torch.Tensor:
    """all_gather without grad, own slot replaced by the local tensor (open_clip's default)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def main(out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from etp.errors import TrainingError
    from etp.losses.clip import ClipLoss
    from etp.losses.simclr import NTXentLoss
    from etp.train import distributed as d

    torch.set_num_threads(1)
    info = d.init_distributed("cpu", timeout_s=60)
    r = info.rank
    result: dict[str, object] = {
        "info": (
            info.rank,
            info.world_size,
            info.local_rank,
            str(info.device),
            info.is_distributed,
        ),
        "helpers": (d.rank(), d.world_size(), d.is_main(), d.is_distributed()),
    }
    batch = global_batch()
    for split, sizes in SPLITS.items():
        lo, hi = sum(sizes[:r]), sum(sizes[: r + 1])
        # ETP / CLIP loss through a DDP-wrapped model
        model = DDP(make_clip())
        e, u, s = model(batch["x"][lo:hi], batch["t"][lo:hi])
        loss = ClipLoss()(e, u, s)
        loss.backward()
        result[f"clip_{split}"] = (loss.item(), grads(model.module))
        # NT-Xent
        model = DDP(make_simclr())
        z1, z2 = model(batch["x"][lo:hi], batch["x2"][lo:hi])
        loss = NTXentLoss(0.07)(z1, z2)
        loss.backward()
        result[f"simclr_{split}"] = (loss.item(), grads(model.module))

    # gather_with_grad: values in rank order, gradient = sum over processes of the upstream grads
    x = torch.full((r + 1, 3), float(r), requires_grad=True)
    y = d.gather_with_grad(x)
    (y * torch.arange(1, y.shape[0] + 1, dtype=y.dtype)[:, None]).sum().backward()
    result["gather"] = (y.detach().clone(), x.grad.clone())
    result["mean"] = d.all_reduce_mean(torch.tensor(float(r))).item()

    # the open_clip default (no-grad gather, own slot replaced, full global loss on every rank):
    # feature gradients come out 1/world_size of the single-process ones after DDP averaging
    model = DDP(make_clip())
    e, u, s = model(batch["x"][4 * r : 4 * r + 4], batch["t"][4 * r : 4 * r + 4])
    ae, au = _naive_gather(e), _naive_gather(u)
    logits = s * ae @ au.T
    labels = torch.arange(GLOBAL_N)
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    loss.backward()
    result["naive_clip"] = (loss.item(), grads(model.module))

    # a global batch of 1 (one pair on rank 0, none on rank 1): both processes raise, no hang
    errors = []
    for loss_fn, args in (
        (ClipLoss(), (torch.zeros(1 - r, 8), torch.zeros(1 - r, 8), 10.0)),
        (NTXentLoss(), (torch.ones(1 - r, 8), torch.ones(1 - r, 8))),
    ):
        try:
            loss_fn(*args)
            errors.append("no error")
        except TrainingError as exc:
            errors.append(str(exc))
    result["batch_of_one"] = errors

    torch.save(result, Path(out_dir) / f"rank{r}.pt")
    d.cleanup(sync=True)  # both ranks enter the teardown together
    d.cleanup(sync=True)  # safe twice
    result_after = (d.rank(), d.world_size(), d.is_distributed())
    torch.save(result_after, Path(out_dir) / f"after{r}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
