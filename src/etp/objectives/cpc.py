"""CPC (van den Oord et al., 2018): a GRU over the encoder's time steps predicts k future latents."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from etp.config import config_field
from etp.errors import ConfigError, TrainingError
from etp.losses.clip import fp32_region
from etp.losses.infonce import info_nce
from etp.objectives import register
from etp.objectives.base import Batch, Objective


@dataclass
class CPCOptions:
    steps: int = config_field(
        12, "future latent steps predicted from each context, one linear map W_k each (the paper: 12)"
    )
    context_dim: int = config_field(
        256, "width of the autoregressive GRU's hidden state, the context c_t (the paper: 256)"
    )


class CPCHead(nn.Module):
    """The context network g_ar (a one-layer GRU over the latents z_t) and the step predictors
    W_1..W_K: ``forward(z)`` with z (B, T, D) gives the InfoNCE loss over every context position
    t and step k with t + k < T (each step k weighs equally)."""

    def __init__(self, latent_dim: int, context_dim: int, steps: int) -> None:
        super().__init__()
        self.gru = nn.GRU(latent_dim, context_dim, batch_first=True)
        self.predictors = nn.ModuleList(nn.Linear(context_dim, latent_dim) for _ in range(steps))

    @property
    def steps(self) -> int:
        return len(self.predictors)

    def contexts(self, z: Tensor) -> Tensor:
        """c_t for every t: (B, T, D) -> (B, T, context_dim); c_t depends on z_<=t only."""
        return self.gru(z)[0]

    def forward(self, z: Tensor) -> Tensor:
        t_len = int(z.shape[1])
        if t_len <= self.steps:
            raise TrainingError(
                f"CPC: the encoder gives {t_len} time steps, too few to predict "
                f"objective.steps={self.steps} steps ahead; lower objective.steps or use longer "
                "signals"
            )
        c = self.contexts(z)
        preds, targets, weights = [], [], []
        for k, w_k in enumerate(self.predictors, start=1):
            n_ctx = t_len - k  # contexts c_0..c_{T-1-k} predict z_k..z_{T-1}
            preds.append(w_k(c[:, :n_ctx]))
            targets.append(torch.arange(k, t_len, device=z.device))
            weights.append(torch.full((n_ctx,), 1.0 / n_ctx, device=z.device))
        return info_nce(
            torch.cat(preds, dim=1), z, torch.cat(targets), weights=torch.cat(weights)
        )


@register
class CPCObjective(Objective):
    """Latents z_t: the encoder's last feature map (one 512-d step per ~0.32 s at 100 Hz);
    contexts: a GRU over them; each context predicts the next ``steps`` latents, contrasted with
    the other ECGs' latents at the same step. No augmentation; the ECG projection head is not
    trained (the linear probe reads the encoder)."""

    name = "cpc"
    trains_ecg_head = False
    Options = CPCOptions

    @classmethod
    def check_options(cls, options: CPCOptions) -> None:
        for key in ("steps", "context_dim"):
            value = getattr(options, key)
            if value < 1:
                raise ConfigError(f"objective.{key} must be >= 1, got {value}")

    def setup(self) -> None:
        latent_dim = int(self.model.encoder.feature_dim("avg"))
        self.head = CPCHead(latent_dim, self.options.context_dim, self.options.steps).to(
            self.ctx.device
        )

    def inputs(self, batch: Batch) -> Tensor:
        return batch.x

    def forward(self, inputs: Tensor, model: nn.Module | None = None) -> tuple[Tensor, dict[str, float]]:
        x = self.ctx.to_device(inputs)
        with self.ctx.autocast():
            fmap = self.net(model).encoder.feature_map(x)  # (B, D, T)
        with fp32_region(x.device):
            z = fmap.float().transpose(1, 2)  # (B, T, D)
            return self.head(z), {}

    def extra_repr(self) -> str:
        return f"steps={self.options.steps}, context_dim={self.options.context_dim}"


__all__ = ["CPCHead", "CPCObjective", "CPCOptions"]
