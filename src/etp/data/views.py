"""Test-time views: an ECG seen as a few stretched crops, like the crops a model trained on.

A model pretrained with the ``crop`` augmentation (SimCLR, and ETP with ``objective.augment``)
only ever saw segments of 50-100 % of a record stretched back to the full length (75 % on
average), never the record as it is. At inference such a model embeds a record as the average
over ``n`` evenly spaced crops of that average fraction, each stretched back to the full length
as :func:`etp.data.augment.crop_resize` does (linear interpolation, end points kept); why, with
figures: docs/experiments.md.

:class:`Views` is the setting (``n`` crops of ``crop`` of the length); :func:`model_views` the
default for a model, read from the training settings in its directory; :func:`pooled` applies a
model function to all views of a batch and averages them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from etp.data.augment import CROP_MAX_FRAC, CROP_MIN_FRAC
from etp.errors import ConfigError


def trained_crop(min_frac: float = CROP_MIN_FRAC) -> float:
    """The crop fraction a model trained on crops of ``min_frac``-1 of the record saw on average:
    the middle of that range."""
    return (min_frac + CROP_MAX_FRAC) / 2


#: the crop fraction a ``crop``-trained model saw on average with crop_resize's default range
TRAINED_CROP = trained_crop()
#: views of a crop-trained model: as many as keep CPU inference above 500 ECGs/s
TRAINED_VIEWS = 3
#: augmentation names that crop (and stretch back) the record
CROP_NAMES = ("crop", "crop_resize")


@dataclass(frozen=True)
class Views:
    """``n`` evenly spaced crops, each ``crop`` of the record, stretched back to its length.

    ``Views()`` (one view of 100 %) is the record as it is. One crop shorter than the record is
    the centred crop.
    """

    n: int = 1
    crop: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise ConfigError(f"views: the number of views must be an integer >= 1, got {self.n!r}")
        if not 0 < self.crop <= 1:
            raise ConfigError(f"views: the crop fraction must be in (0, 1], got {self.crop!r}")
        if self.n > 1 and self.crop == 1:
            raise ConfigError(
                f"views: {self.n} views of the whole record would all be the same; give a crop "
                "fraction below 1 (e.g. 3x0.75)"
            )

    @property
    def identity(self) -> bool:
        """Whether this is the record as it is (no cropping, one forward pass)."""
        return self.n == 1 and self.crop == 1

    def __str__(self) -> str:
        return "1" if self.identity else f"{self.n}x{self.crop:g}"

    @classmethod
    def parse(cls, text: str | int) -> Views:
        """``"1"`` (the record as it is), ``"3x0.75"`` (3 crops of 75 %), or ``"3"`` (3 crops of
        :data:`TRAINED_CROP`)."""
        s = str(text).strip().lower()
        m = re.fullmatch(r"(\d+)(?:\s*x\s*([0-9]*\.?[0-9]+))?", s)
        if not m:
            raise ConfigError(f"views: expected N or NxF (e.g. 1, 3 or 3x0.75), got {text!r}")
        n = int(m.group(1))
        if m.group(2) is not None:
            return cls(n, float(m.group(2)))
        return cls(n, 1.0 if n == 1 else TRAINED_CROP)

    def segments(self, length: int) -> list[tuple[int, int]]:
        """(start, length) of each crop of a record of ``length`` samples."""
        seg = min(length, max(2, round(self.crop * length)))
        room = length - seg
        if self.n == 1:
            return [(room // 2, seg)]
        return [(round(i * room / (self.n - 1)), seg) for i in range(self.n)]

    def crops(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """``(B, C, L)`` -> each view ``(B, C, L)`` in turn (``x`` itself for :attr:`identity`)."""
        if self.identity:
            yield x
            return
        length = x.shape[-1]
        if length < 2:
            raise ConfigError(f"views: records of {length} sample(s) cannot be cropped")
        for start, seg in self.segments(length):
            # the crop augmentation's stretch: linear, end points kept (align_corners=True)
            yield F.interpolate(
                x[:, :, start : start + seg].float(), size=length, mode="linear", align_corners=True
            ).to(x.dtype)


def model_views(extra: Mapping[str, Any] | None) -> Views:
    """The default views of a model, from the ``extra`` of its directory.

    :data:`TRAINED_VIEWS` crops of :func:`trained_crop` of the training's ``crop_min_frac``
    (:data:`TRAINED_CROP` by default) when its objective trained on crops
    (``extra["objective"]["trained_on_crops"]``); else the record as it is (the paper's ETP,
    random init, unknown settings). Directories written before objectives recorded this say it
    through their training settings (SimCLR, or ETP with ``etp_augment``, with ``crop`` among
    the augmentations).
    """
    if not extra:
        return Views()
    train = extra.get("train") or {}
    objective = extra.get("objective")
    if isinstance(objective, Mapping) and "trained_on_crops" in objective:
        crops = bool(objective["trained_on_crops"])
    else:  # written before objectives recorded it
        augments = train.get("method") == "simclr" or bool(train.get("etp_augment"))
        augments = augments or float(train.get("ssl_weight") or 0) > 0
        crops = augments and any(n in CROP_NAMES for n in (train.get("augment") or ()))
    if crops:
        low = float(train.get("crop_min_frac") or CROP_MIN_FRAC)
        return Views(TRAINED_VIEWS, trained_crop(low))
    return Views()


def pooled(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, views: Views, normalise: bool
) -> torch.Tensor:
    """``fn`` over every view of ``x``, averaged per record (re-normalised if ``normalise``).

    One forward pass per view: on CPU, batches of the usual size run faster per record than one
    batch of all views (``benchmarks/inference_speed.py``).
    """
    if views.identity:
        return fn(x)
    total: torch.Tensor | None = None
    for crop in views.crops(x):
        out = fn(crop).float()
        total = out if total is None else total + out
    assert total is not None
    mean = total / views.n
    return F.normalize(mean, dim=-1) if normalise else mean


__all__ = ["CROP_NAMES", "TRAINED_CROP", "TRAINED_VIEWS", "Views", "model_views", "pooled", "trained_crop"]
