"""ResNet18-1D: the paper's ECG encoder (ResNet18 with 1-D convolutions).

Stem: conv1d k=7 s=2 p=3 (leads -> 64) + BN + ReLU + max-pool k=3 s=2; four stages of two
basic blocks (k=3) with 64/128/256/512 channels, stride 2 (and a 1x1 downsample) at stages 2-4;
global average pooling -> 512-d. Works for any input length >= 1.

Readouts of the final feature map (``pooling``): ``"avg"`` -- the global average, the 512-d output
the model is pretrained with; ``"avg+max"`` -- the average and the maximum over time
concatenated (1024-d, "concat pooling"), a readout for linear probes of the frozen encoder: the
maximum keeps where a short deflection (a Q wave, an ST segment) peaks, which the average
dilutes over ten seconds.

Size and cost (12 leads, one 12 x 1000 record, i.e. 10 s at 100 Hz): 3,848,832 parameters;
forward 175 M multiply-accumulates = 0.350 GFLOP, forward + backward 1.046 GFLOP
(measured with ``torch.utils.flop_counter.FlopCounterMode``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from etp.errors import ConfigError, DataError

#: channel width of the four stages
STAGE_CHANNELS = (64, 128, 256, 512)
#: readouts of the final feature map: name -> multiple of its channel count
POOLINGS = {"avg": 1, "avg+max": 2}


def check_pooling(pooling: str) -> str:
    """``pooling`` if it names a readout of :data:`POOLINGS`, else a ConfigError naming them."""
    if pooling not in POOLINGS:
        raise ConfigError(f"unknown feature pooling {pooling!r} (choose one of {list(POOLINGS)})")
    return pooling


def check_poolings(values: list[str] | tuple[str, ...], where: str) -> tuple[str, ...]:
    """``values`` as a tuple if they are distinct readouts of :data:`POOLINGS` (at least one),
    else a ConfigError that starts with ``where`` (the config key or CLI flag)."""
    if not values or len(set(values)) != len(values) or any(v not in POOLINGS for v in values):
        raise ConfigError(f"{where}: {values!r} must list distinct readouts of {list(POOLINGS)}")
    return tuple(values)


def global_pool(fmap: Tensor, pooling: str = "avg") -> Tensor:
    """Pool a feature map ``(B, C, *time)`` over time: ``(B, C)`` or, for ``"avg+max"``, ``(B, 2C)``."""
    flat = torch.flatten(fmap, 2)
    avg = flat.mean(-1)
    if check_pooling(pooling) == "avg":
        return avg
    return torch.cat([avg, flat.amax(-1)], dim=1)


class BasicBlock1d(nn.Module):
    """Two k=3 convolutions with BN and an identity (or 1x1-conv) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(out_ch)
        self.conv2 = nn.Conv1d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv1d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm1d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet1d18(nn.Module):
    """ResNet18-1D ECG encoder: (B, leads, L) -> (B, 512)."""

    out_dim: int = STAGE_CHANNELS[-1]

    def __init__(self, in_leads: int = 12, zero_init_residual: bool = False) -> None:
        super().__init__()
        if in_leads < 1:
            raise ValueError(f"in_leads must be >= 1, got {in_leads}")
        self.in_leads = in_leads
        self.conv1 = nn.Conv1d(in_leads, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm1d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool1d(3, stride=2, padding=1)
        stages = []
        in_ch = 64
        for i, ch in enumerate(STAGE_CHANNELS):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock1d(in_ch, ch, stride), BasicBlock1d(ch, ch)))
            in_ch = ch
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool1d(1)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """He initialisation as in torchvision's ResNet."""
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock1d):
                    nn.init.zeros_(m.bn2.weight)

    def feature_dim(self, pooling: str = "avg") -> int:
        """Width of the features of readout ``pooling`` (512 or 1024)."""
        return self.out_dim * POOLINGS[check_pooling(pooling)]

    def feature_map(self, x: Tensor) -> Tensor:
        """The last stage's output before pooling: ``(B, leads, L) -> (B, 512, T)``, T = L/32
        (rounded up): one 512-d latent per ~0.32 s at 100 Hz, the time steps of CPC and TS-TCC."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor, pooling: str = "avg") -> Tensor:
        """``(B, leads, L) -> (B, 512)`` (``pooling="avg"``) or ``(B, 1024)`` (``"avg+max"``)."""
        if x.dim() != 3 or x.shape[1] != self.in_leads or x.shape[-1] < 1:
            raise DataError(
                f"ECG encoder expects a batch of shape (B, {self.in_leads}, L), "
                f"got {tuple(x.shape)}"
            )
        x = self.feature_map(x)
        if pooling == "avg":
            return torch.flatten(self.pool(x), 1)
        return global_pool(x, pooling)
