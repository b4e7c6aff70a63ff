"""TS-TCC (Eldele et al., IJCAI 2021): temporal and contextual contrasting of weak and strong views."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from etp.config import config_field
from etp.errors import ConfigError, TrainingError
from etp.losses.clip import fp32_region
from etp.losses.infonce import info_nce
from etp.losses.simclr import NTXentLoss
from etp.objectives import register
from etp.objectives.base import Batch, Objective

# -- the paper's augmentations (Sec. 3.1), on (B, leads, L) batches --------------------------


def jitter(x: Tensor, generator: torch.Generator, ratio: float) -> Tensor:
    """Add white Gaussian noise of ``ratio`` times each sample's standard deviation (over leads
    and time)."""
    sigma = x.flatten(1).std(dim=1).view(-1, 1, 1) if x.shape[1] * x.shape[2] > 1 else 0.0
    noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device)
    return x + ratio * sigma * noise.to(x.dtype)


def scale(x: Tensor, generator: torch.Generator, ratio: float, mean: float = 2.0) -> Tensor:
    """Multiply each lead of each sample by a factor drawn from N(mean, ratio^2) (the paper scales
    the magnitude up: mean 2 in its implementation)."""
    shape = (x.shape[0], x.shape[1], 1)
    factor = mean + ratio * torch.randn(shape, generator=generator, device=generator.device)
    return x * factor.to(device=x.device, dtype=x.dtype)


def permute_segments(x: Tensor, generator: torch.Generator, max_segments: int) -> Tensor:
    """Split each sample's time axis into n contiguous segments (n uniform in 1..max_segments,
    cut points uniform) and put them in a random order, every lead alike."""
    length = int(x.shape[-1])
    out = torch.empty_like(x)
    gen_dev = generator.device
    for b in range(x.shape[0]):
        n = int(torch.randint(1, max_segments + 1, (1,), generator=generator, device=gen_dev))
        n = min(n, length)
        if n == 1:
            out[b] = x[b]
            continue
        cuts = torch.randperm(length - 1, generator=generator, device=gen_dev)[: n - 1] + 1
        bounds = [0, *sorted(int(c) for c in cuts), length]
        order = torch.randperm(n, generator=generator, device=gen_dev).tolist()
        index = torch.cat([torch.arange(bounds[i], bounds[i + 1]) for i in order])
        out[b] = x[b][:, index.to(x.device)]
    return out


# -- the model parts --------------------------------------------------------------------------


@dataclass
class TSTCCOptions:
    timesteps: int = config_field(
        13,
        "future time steps each context predicts (the paper predicts ~40% of the feature length, "
        "its sleep-EDF setting 50 of 127: 13 of the 32 steps of a 10-s, 100-Hz ECG)",
    )
    hidden_dim: int = config_field(64, "transformer width h (the paper's sleep-EDF setting: 64)")
    depth: int = config_field(4, "transformer layers L (the paper: 4)")
    heads: int = config_field(4, "attention heads (the paper: 4)")
    mlp_dim: int = config_field(64, "transformer feed-forward width (the paper's code: 64)")
    dropout: float = config_field(0.1, "transformer dropout (the paper: 0.1)")
    temperature: float = config_field(
        0.2, "contextual contrasting's NT-Xent temperature (the paper: 0.2)"
    )
    lambda_temporal: float = config_field(
        1.0, "weight lambda1 of the temporal contrasting loss (the paper: 1)"
    )
    lambda_contextual: float = config_field(
        0.7, "weight lambda2 of the contextual contrasting loss (the paper: 0.7)"
    )
    jitter_ratio: float = config_field(
        0.1, "standard deviation of the jitter noise of both views, in units of each sample's own "
        "standard deviation (the paper gives it in its raw signals' units)"
    )
    scale_ratio: float = config_field(
        1.5, "standard deviation of the weak view's per-lead scale factor N(2, .) (sleep-EDF: 1.5)"
    )
    max_segments: int = config_field(
        12, "most segments the strong view's permutation cuts a signal into (sleep-EDF: 12)"
    )


class ContextTransformer(nn.Module):
    """The autoregressive model: latents (B, t, D) -> context (B, hidden), the output state of a
    learned token put before the projected latents of a pre-norm transformer (no positions, as
    in the paper's implementation)."""

    def __init__(self, latent_dim: int, o: TSTCCOptions) -> None:
        super().__init__()
        self.embed = nn.Linear(latent_dim, o.hidden_dim)
        self.token = nn.Parameter(torch.randn(1, 1, o.hidden_dim))
        layer = nn.TransformerEncoderLayer(
            o.hidden_dim, o.heads, o.mlp_dim, o.dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, o.depth, enable_nested_tensor=False)

    def forward(self, z: Tensor) -> Tensor:
        h = torch.cat([self.token.expand(z.shape[0], -1, -1), self.embed(z)], dim=1)
        return self.blocks(h)[:, 0]


class TemporalContrast(nn.Module):
    """Temporal contrasting: the context of one view's latents up to step t predicts the OTHER
    view's latents at t+1..t+K (one linear map W_k each; InfoNCE); plus the projection head of
    the contexts for contextual contrasting."""

    def __init__(self, latent_dim: int, o: TSTCCOptions) -> None:
        super().__init__()
        self.context = ContextTransformer(latent_dim, o)
        self.predictors = nn.ModuleList(
            nn.Linear(o.hidden_dim, latent_dim) for _ in range(o.timesteps)
        )
        self.projection = nn.Sequential(
            nn.Linear(o.hidden_dim, latent_dim // 2),
            nn.BatchNorm1d(latent_dim // 2),
            nn.ReLU(inplace=True),
            nn.Linear(latent_dim // 2, latent_dim // 4),
        )

    def forward(self, z_own: Tensor, z_other: Tensor, t: int) -> tuple[Tensor, Tensor]:
        """(loss, context) for latents (B, T, D) of the two views and the last seen step t."""
        c = self.context(z_own[:, : t + 1])
        pred = torch.stack([w(c) for w in self.predictors], dim=1)  # (B, K, D)
        steps = torch.arange(t + 1, t + 1 + len(self.predictors), device=z_own.device)
        return info_nce(pred, z_other, steps), c


@register
class TSTCCObjective(Objective):
    """Weak (jitter + scale) and strong (segment permutation + jitter) views of each ECG; the
    encoder's last feature map gives the latents; loss = lambda1 * (TC weak->strong + TC
    strong->weak) + lambda2 * NT-Xent of the projected contexts. ``train.augment`` is not
    used; the ECG projection head is not trained (the linear probe reads the encoder)."""

    name = "ts-tcc"
    log_names = ("tc_weak_strong", "tc_strong_weak", "cc")
    trains_ecg_head = False
    Options = TSTCCOptions

    def __init__(self, model: nn.Module, options: TSTCCOptions, ctx: Any) -> None:
        super().__init__(model, options, ctx)
        self.contextual_loss = NTXentLoss(temperature=options.temperature)

    @classmethod
    def check_options(cls, o: TSTCCOptions) -> None:
        for key in ("timesteps", "hidden_dim", "depth", "heads", "mlp_dim", "max_segments"):
            if getattr(o, key) < 1:
                raise ConfigError(f"objective.{key} must be >= 1, got {getattr(o, key)}")
        if o.hidden_dim % o.heads:
            raise ConfigError(
                f"objective.hidden_dim={o.hidden_dim} must be a multiple of objective.heads="
                f"{o.heads}"
            )
        if not 0 <= o.dropout < 1:
            raise ConfigError(f"objective.dropout must be in [0, 1), got {o.dropout}")
        if not o.temperature > 0:
            raise ConfigError(f"objective.temperature must be > 0, got {o.temperature}")
        for key in ("lambda_temporal", "lambda_contextual", "jitter_ratio", "scale_ratio"):
            if not getattr(o, key) >= 0:
                raise ConfigError(f"objective.{key} must be >= 0, got {getattr(o, key)}")

    def setup(self) -> None:
        latent_dim = int(self.model.encoder.feature_dim("avg"))
        self.temporal = TemporalContrast(latent_dim, self.options).to(self.ctx.device)

    def views(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The weak (jitter, then scale) and strong (permutation, then jitter) views of ``x``."""
        o = self.options
        weak = scale(jitter(x, generator, o.jitter_ratio), generator, o.scale_ratio)
        strong = jitter(permute_segments(x, generator, o.max_segments), generator, o.jitter_ratio)
        return weak, strong

    def inputs(self, batch: Batch) -> tuple[Tensor, Tensor]:
        weak, strong = self.views(batch.x, batch.generator)
        # where each direction's context ends, as a fraction of the admissible range (the
        # number of time steps is known on the device side only)
        where = torch.rand(2, generator=batch.generator, device=batch.generator.device)
        return torch.cat([weak, strong]), where

    def forward(
        self, inputs: tuple[Tensor, Tensor], model: nn.Module | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        o = self.options
        views, where = inputs
        x = self.ctx.to_device(views)
        with self.ctx.autocast():
            fmap = self.net(model).encoder.feature_map(x)  # (2B, D, T)
        with fp32_region(x.device):
            z = F.normalize(fmap.float(), dim=1).transpose(1, 2)  # (2B, T, D), as the paper's code
            t_len = int(z.shape[1])
            if t_len <= o.timesteps:
                raise TrainingError(
                    f"TS-TCC: the encoder gives {t_len} time steps, too few to predict "
                    f"objective.timesteps={o.timesteps} steps ahead; lower objective.timesteps "
                    "or use longer signals"
                )
            t1, t2 = (min(int(u * (t_len - o.timesteps)), t_len - o.timesteps - 1) for u in where)
            z_weak, z_strong = z.chunk(2)
            tc_ws, c_weak = self.temporal(z_weak, z_strong, t1)
            tc_sw, c_strong = self.temporal(z_strong, z_weak, t2)
            proj = self.temporal.projection
            cc = self.contextual_loss(proj(c_weak), proj(c_strong))
            loss = o.lambda_temporal * (tc_ws + tc_sw) + o.lambda_contextual * cc
        parts = {"tc_weak_strong": tc_ws, "tc_strong_weak": tc_sw, "cc": cc}
        logs = {k: float(v.detach()) for k, v in parts.items()}
        return loss, logs

    def temperature(self) -> float:
        return float(self.options.temperature)


__all__ = ["TSTCCObjective", "TSTCCOptions", "jitter", "permute_segments", "scale"]
