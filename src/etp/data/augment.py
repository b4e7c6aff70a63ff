"""ECG augmentations for the SimCLR baseline (and optionally the ECG side of ETP).

Every augmentation takes a float batch ``x`` of shape (B, leads, L) and an optional
``torch.Generator`` and returns a new tensor of the same shape, dtype and device (the input is
never modified). Random draws come only from the generator (on the generator's device, then moved),
so a seeded generator reproduces the result exactly. Amplitudes of the additive augmentations
(noise, baseline wander) are relative to each sample's standard deviation, so they behave the same
on mV and on z-scored signals.

``build_augmentation(names, fs)`` composes them in the given order; :data:`AUGMENTATIONS` maps
each accepted name (including the short config aliases ``crop``, ``scale``, ``noise``) to its
function.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from functools import partial

import torch

from etp.errors import ConfigError, DataError

__all__ = [
    "AUGMENTATIONS",
    "Augmentation",
    "amplitude_scale",
    "baseline_wander",
    "build_augmentation",
    "crop_resize",
    "gaussian_noise",
    "lead_mask",
    "sign_flip",
]


def _check(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{what}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise DataError(
            f"{what}: expected a (batch, leads, length) tensor, got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise DataError(f"{what}: expected a floating tensor, got {x.dtype}")


def _rand(
    shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """Uniform [0, 1) float32 draws from ``generator`` (on its device), moved to ``like``'s."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=device).to(like.device)


def _randn(
    shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=device).to(like.device)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _sample_std(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1) standard deviation of each sample over leads and time (float32/64)."""
    xf = x.to(_work_dtype(x))
    if xf.numel() == 0 or xf.shape[1] * xf.shape[2] < 2:
        return torch.zeros(xf.shape[0], 1, 1, dtype=xf.dtype, device=xf.device)
    # two-pass (x - mean)^2: same result as Tensor.std, several times faster on the CPU
    flat = xf.reshape(xf.shape[0], -1)
    centred = flat - flat.mean(dim=1, keepdim=True)
    var = centred.square().sum(dim=1) / (flat.shape[1] - 1)
    return var.sqrt()[:, None, None]


#: default range of crop_resize's segment, as a fraction of the record
CROP_MIN_FRAC = 0.5
CROP_MAX_FRAC = 1.0


def crop_resize(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    min_frac: float = CROP_MIN_FRAC,
    max_frac: float = CROP_MAX_FRAC,
) -> torch.Tensor:
    """Random segment per sample, ``min_frac``-``max_frac`` of the length, stretched back to L.

    The segment (all leads alike) is resampled to L points by linear interpolation with the end
    points kept (as ``F.interpolate(..., mode="linear", align_corners=True)``).
    """
    _check(x, "crop_resize")
    if not 0 < min_frac <= max_frac <= 1:
        raise ConfigError(
            f"crop_resize: need 0 < min_frac <= max_frac <= 1, got {min_frac}, {max_frac}"
        )
    b, c, length = x.shape
    if length < 2 or b == 0:
        return x.clone()
    frac = min_frac + (max_frac - min_frac) * _rand((b,), generator, x)
    seg = torch.clamp(torch.round(frac * length), 2, length).to(torch.int64)  # (B,)
    start = torch.floor(_rand((b,), generator, x) * (length - seg + 1).to(torch.float32))
    start = torch.minimum(start.to(torch.int64), length - seg)
    dtype = _work_dtype(x)
    # source position of output sample i: start + i * (seg - 1) / (L - 1)  (align_corners=True);
    # exact integers when seg == L, so a full-length "crop" is the identity
    step = (seg - 1).to(dtype) / (length - 1)
    i = torch.arange(length, dtype=dtype, device=x.device)
    pos = start.to(dtype)[:, None] + i[None, :] * step[:, None]  # (B, L)
    lo = torch.clamp(pos.floor().to(torch.int64), 0, length - 1)
    hi = torch.clamp(lo + 1, max=length - 1)
    w = (pos - lo.to(dtype))[:, None, :]  # (B, 1, L)
    xf = x.to(dtype)
    left = torch.gather(xf, 2, lo[:, None, :].expand(b, c, length))
    right = torch.gather(xf, 2, hi[:, None, :].expand(b, c, length))
    return torch.lerp(left, right, w).to(x.dtype)


def sign_flip(
    x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5
) -> torch.Tensor:
    """Multiply each sample (all leads) by -1 with probability ``p``."""
    _check(x, "sign_flip")
    if not 0 <= p <= 1:
        raise ConfigError(f"sign_flip: p must be in [0, 1], got {p}")
    flip = _rand((x.shape[0],), generator, x) < p
    sign = torch.where(flip, -1.0, 1.0).to(x.dtype)[:, None, None]
    return x * sign


def gaussian_noise(
    x: torch.Tensor, generator: torch.Generator | None = None, std: float = 0.1
) -> torch.Tensor:
    """Add white Gaussian noise of ``std`` times each sample's own standard deviation."""
    _check(x, "gaussian_noise")
    if std < 0:
        raise ConfigError(f"gaussian_noise: std must be >= 0, got {std}")
    sigma = std * _sample_std(x)
    noise = _randn(tuple(x.shape), generator, x).to(sigma.dtype) * sigma
    return (x.to(sigma.dtype) + noise).to(x.dtype)


def amplitude_scale(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    low: float = 0.8,
    high: float = 1.2,
    per_lead: bool = False,
) -> torch.Tensor:
    """Multiply each sample (or each lead of each sample) by a factor drawn from U(low, high)."""
    _check(x, "amplitude_scale")
    if not 0 <= low <= high:
        raise ConfigError(f"amplitude_scale: need 0 <= low <= high, got {low}, {high}")
    shape = (x.shape[0], x.shape[1] if per_lead else 1, 1)
    factor = low + (high - low) * _rand(shape, generator, x)
    dtype = _work_dtype(x)
    return (x.to(dtype) * factor.to(dtype)).to(x.dtype)


def baseline_wander(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    fs: float = 100.0,
    amplitude: float = 0.2,
    min_freq: float = 0.05,
    max_freq: float = 0.5,
    n_components: int = 2,
) -> torch.Tensor:
    """Add slow sinusoids (``min_freq``-``max_freq`` Hz at sampling rate ``fs``) to each sample.

    Each of ``n_components`` sinusoids has a random frequency and phase per sample (shared by the
    leads, like respiration) and a random amplitude per lead, up to ``amplitude`` times the
    sample's standard deviation.
    """
    _check(x, "baseline_wander")
    if fs <= 0:
        raise ConfigError(f"baseline_wander: fs must be > 0, got {fs}")
    if not 0 <= min_freq <= max_freq:
        raise ConfigError(
            f"baseline_wander: need 0 <= min_freq <= max_freq, got {min_freq}, {max_freq}"
        )
    if amplitude < 0 or n_components < 1:
        raise ConfigError(
            "baseline_wander: need amplitude >= 0 and n_components >= 1, "
            f"got {amplitude}, {n_components}"
        )
    b, c, length = x.shape
    k = n_components
    freq = min_freq + (max_freq - min_freq) * _rand((b, k, 1), generator, x)
    phase = 2 * math.pi * _rand((b, k, 1), generator, x)
    amp = amplitude * _rand((b, c, k), generator, x)
    dtype = _work_dtype(x)
    t = torch.arange(length, dtype=dtype, device=x.device) / fs  # seconds
    waves = torch.sin(2 * math.pi * freq.to(dtype) * t + phase.to(dtype))  # (B, K, L)
    wander = torch.bmm(amp.to(dtype) * _sample_std(x), waves)  # (B, C, K) @ (B, K, L)
    return (x.to(dtype) + wander).to(x.dtype)


def lead_mask(
    x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.2
) -> torch.Tensor:
    """Zero each lead with probability ``p``, always keeping at least one lead per sample."""
    _check(x, "lead_mask")
    if not 0 <= p <= 1:
        raise ConfigError(f"lead_mask: p must be in [0, 1], got {p}")
    b, c, _ = x.shape
    if b == 0 or c == 0:
        return x.clone()
    drop = _rand((b, c), generator, x) < p
    keep_one = torch.floor(_rand((b,), generator, x) * c).to(torch.int64).clamp(max=c - 1)
    all_dropped = drop.all(dim=1)
    drop[all_dropped, keep_one[all_dropped]] = False
    return x.masked_fill(drop[:, :, None], 0.0)


#: accepted names -> augmentation; short aliases match the config's defaults
AUGMENTATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "crop_resize": crop_resize,
    "crop": crop_resize,
    "sign_flip": sign_flip,
    "gaussian_noise": gaussian_noise,
    "noise": gaussian_noise,
    "amplitude_scale": amplitude_scale,
    "scale": amplitude_scale,
    "baseline_wander": baseline_wander,
    "lead_mask": lead_mask,
}


class Augmentation:
    """A composition of augmentations applied in order: ``aug(x, generator) -> x'``."""

    def __init__(self, names: Sequence[str], steps: Sequence[Callable[..., torch.Tensor]]) -> None:
        self.names = tuple(names)
        self._steps = tuple(steps)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check(x, "augmentation")
        out = x
        for step in self._steps:
            out = step(out, generator)
        return out if self._steps else x.clone()

    def __repr__(self) -> str:
        return f"Augmentation({list(self.names)!r})"


def build_augmentation(
    names: Sequence[str], fs: float = 100.0, crop_min_frac: float = CROP_MIN_FRAC
) -> Augmentation:
    """Compose the named augmentations (in order); ``fs`` (Hz) goes to those that need it and
    ``crop_min_frac`` (the shortest segment) to :func:`crop_resize`.

    ConfigError for an unknown name (listing the valid ones) or a bare string instead of a list.
    An empty list gives the identity.
    """
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
        raise ConfigError(
            f"augmentations must be a list of names, got {names!r}; valid names: "
            + ", ".join(sorted(AUGMENTATIONS))
        )
    if fs <= 0:
        raise ConfigError(f"augmentation sampling rate fs must be > 0, got {fs}")
    steps = []
    for name in names:
        fn = AUGMENTATIONS.get(name) if isinstance(name, str) else None
        if fn is None:
            raise ConfigError(
                f"unknown augmentation {name!r}; valid names: " + ", ".join(sorted(AUGMENTATIONS))
            )
        if fn is crop_resize:
            if not 0 < crop_min_frac <= CROP_MAX_FRAC:
                raise ConfigError(f"crop_min_frac must be in (0, 1], got {crop_min_frac}")
            fn = partial(crop_resize, min_frac=crop_min_frac)
        elif "fs" in inspect.signature(fn).parameters:
            fn = partial(fn, fs=fs)
        steps.append(fn)
    return Augmentation(names, steps)
