"""One process of the 2-process gloo check of etp.losses.infonce (tests/test_objective_cpc.py).

Launched twice with the environment torchrun would set; ``python tests/infonce_ddp_worker.py
OUT_DIR`` writes ``OUT_DIR/rank<r>.pt`` with, per split of the global batch, the loss value and
the gradients after DDP's mean all-reduce. The test imports :func:`make_model`, :func:`global_x`
and :func:`loss_of` to compute the single-process reference on the same global batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

SPLITS = {"even": (4, 4), "uneven": (3, 5)}
STEPS = torch.tensor([1, 3, 4, 4])


class LatentToy(nn.Module):
    """Latents from a linear map of the input, predictions from a linear map of the latents."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(4, 6)
        self.predict = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.tanh(self.encode(x))  # (B, T, 6)
        return self.predict(z[:, :4]), z


def make_model() -> LatentToy:
    torch.manual_seed(0)
    return LatentToy()


def global_x() -> torch.Tensor:
    return torch.randn(8, 5, 4, generator=torch.Generator().manual_seed(1))


def loss_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from etp.losses.infonce import info_nce

    pred, z = model(x)
    return info_nce(pred, z, STEPS, weights=torch.tensor([1.0, 2.0, 3.0, 4.0]))


def main(out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from etp.train import distributed as d

    torch.set_num_threads(1)
    info = d.init_distributed("cpu", timeout_s=60)
    r = info.rank
    result = {}
    for split, sizes in SPLITS.items():
        lo, hi = sum(sizes[:r]), sum(sizes[: r + 1])
        model = DDP(make_model())
        loss = loss_of(model, global_x()[lo:hi])
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.module.named_parameters()}
        result[split] = (loss.item(), grads)
    torch.save(result, Path(out_dir) / f"rank{r}.pt")
    d.cleanup(sync=True)


if __name__ == "__main__":
    main(sys.argv[1])
