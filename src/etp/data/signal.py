"""Signal preprocessing: resample, band-pass, crop/pad to a fixed length, normalise.

:func:`preprocess` is the one function that turns a raw 12-lead ECG (mV, any sampling rate, any
length) into the fixed-shape array a model sees. It runs at ``etp prepare`` time for whole
datasets and again at inference on a user's own files, with the :class:`PreprocessConfig` saved
next to the model, so training and inference never drift apart.

Order of the steps (each one configurable):

1. **resample** to ``fs`` with :func:`scipy.signal.resample_poly` (rational up/down factors, its
   own anti-aliasing FIR filter), e.g. 500 → 100 Hz is up 1, down 5;
2. **band-pass** with a Butterworth filter (second-order sections, zero-phase
   :func:`scipy.signal.sosfiltfilt`) on the whole record, so cropping later cuts no filter edge;
   the upper edge is clamped below the Nyquist frequency of the target rate;
3. **crop** records longer than ``length_s`` (CPSC2018 runs 6–60 s) — the centre or the start;
4. **normalise** per lead on the real (cropped, unpadded) samples: ``none`` keeps mV, ``zscore``;
5. **pad** shorter records with zeros (after the signal or on both sides).

The paper states neither of these settings (it only says PTB-XL is 500 Hz / 10 s and CPSC2018
500 Hz / 6–60 s); :func:`describe` prints the defaults with the reason for each.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import numpy as np
from scipy import signal as sps

from etp.config import config_field
from etp.errors import ConfigError, DataError

N_LEADS = 12
#: accepted target sampling rates (Hz): ECGs are analysed at 50-1000 Hz in practice
FS_BOUNDS = (10.0, 2000.0)
#: longest accepted record length (s): the cache holds every record at this length
MAX_LENGTH_S = 300.0


def _f(default: Any, help: str, paper: str) -> Any:
    """A dataclass field carrying its help text and what the paper says about it."""
    return config_field(default, help, paper=paper)


@dataclass
class PreprocessConfig:
    """How raw ECGs become fixed-size model inputs (saved with every cache and model)."""

    fs: float = _f(
        100.0,
        "target sampling rate in Hz (records are resampled to it)",
        "open (data given at 500 Hz); 100 Hz is the PTB-XL benchmark rate, 10 s = 1000 samples",
    )
    length_s: float = _f(
        10.0,
        "fixed record length in seconds (longer records cropped, shorter zero-padded)",
        "open; PTB-XL records are 10 s, CPSC2018 6-60 s",
    )
    bandpass: list[float] | None = _f(
        [0.5, 40.0],
        "band-pass edges [low, high] in Hz (low 0 = low-pass only); null = no filter",
        "open; 0.5 Hz removes baseline wander, 40 Hz mains/muscle noise",
    )
    filter_order: int = _f(
        3, "Butterworth order of the band-pass (applied forward-backward)", "open"
    )
    normalize: Literal["none", "zscore"] = _f(
        "none",
        "per-lead normalisation: 'none' keeps mV, 'zscore' = zero mean, unit variance per lead",
        "open; 'none' because absolute amplitudes are diagnostic (hypertrophy voltage criteria)",
    )
    crop: Literal["center", "start"] = _f(
        "center",
        "which part of a longer record to keep",
        "open; the centre avoids start-up transients of the recorder",
    )
    pad: Literal["end", "center"] = _f(
        "end", "where zeros go when a record is shorter than length_s", "open"
    )
    min_length_s: float = _f(
        0.0,
        "reject records shorter than this many seconds instead of padding them (0 = pad any)",
        "open",
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the key of any invalid setting."""
        if not (isinstance(self.fs, (int, float)) and math.isfinite(self.fs) and self.fs > 0):
            raise ConfigError(f"preprocess.fs: must be a positive number of Hz, got {self.fs!r}")
        lo, hi = FS_BOUNDS
        if not lo <= self.fs <= hi:
            raise ConfigError(
                f"preprocess.fs (--fs): {self.fs:g} Hz is outside ECG practice; give a target "
                f"rate between {lo:g} and {hi:g} Hz"
            )
        if not (math.isfinite(self.length_s) and self.length_s > 0):
            raise ConfigError(f"preprocess.length_s: must be > 0 seconds, got {self.length_s!r}")
        if self.length_s > MAX_LENGTH_S:
            raise ConfigError(
                f"preprocess.length_s (--length): {self.length_s:g} s is longer than the "
                f"{MAX_LENGTH_S:g} s etp caches per record; give a shorter length"
            )
        if self.n_samples < 1:
            raise ConfigError(
                f"preprocess.length_s: {self.length_s} s at {self.fs} Hz is less than one sample"
            )
        if self.bandpass is not None:
            bp = list(self.bandpass)
            if len(bp) != 2 or not all(isinstance(v, (int, float)) for v in bp):
                raise ConfigError(f"preprocess.bandpass: expected [low, high] in Hz, got {bp!r}")
            low, high = float(bp[0]), float(bp[1])
            if not (0 <= low < high) or not math.isfinite(high):
                raise ConfigError(
                    f"preprocess.bandpass: need 0 <= low < high, got [{low}, {high}]"
                )
            if low >= self.fs / 2:
                raise ConfigError(
                    f"preprocess.bandpass: low edge {low} Hz is not below the Nyquist "
                    f"frequency {self.fs / 2} Hz of preprocess.fs={self.fs}"
                )
            self.bandpass = [low, high]
        if isinstance(self.filter_order, bool) or not isinstance(self.filter_order, int) or not (
            1 <= self.filter_order <= 10
        ):
            raise ConfigError(f"preprocess.filter_order: expected 1..10, got {self.filter_order!r}")
        if self.normalize not in ("none", "zscore"):
            raise ConfigError(f"preprocess.normalize: 'none' or 'zscore', got {self.normalize!r}")
        if self.crop not in ("center", "start"):
            raise ConfigError(f"preprocess.crop: 'center' or 'start', got {self.crop!r}")
        if self.pad not in ("end", "center"):
            raise ConfigError(f"preprocess.pad: 'end' or 'center', got {self.pad!r}")
        if not (math.isfinite(self.min_length_s) and 0 <= self.min_length_s <= self.length_s):
            raise ConfigError(
                f"preprocess.min_length_s: need 0 <= min_length_s <= length_s, "
                f"got {self.min_length_s!r}"
            )

    @property
    def n_samples(self) -> int:
        """Output length L in samples (``round(length_s * fs)``)."""
        return int(round(self.length_s * self.fs))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (stored in caches and model directories)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PreprocessConfig:
        """Build from a dict (e.g. a saved model's ``preprocessing``); unknown keys rejected."""
        from etp.config import from_dict

        return from_dict(cls, data or {}, prefix="preprocess")


def describe() -> str:
    """Markdown table of every preprocessing setting, its default and what the paper says."""
    rows = ["| setting | default | meaning | paper / our choice |", "|---|---|---|---|"]
    for f in dataclasses.fields(PreprocessConfig):
        default = f.default
        if default is dataclasses.MISSING:
            default = f.default_factory()  # type: ignore[misc]
        rows.append(f"| `{f.name}` | `{default}` | {f.metadata['help']} | {f.metadata['paper']} |")
    return "\n".join(rows)


def _resample_factors(fs_in: float, fs_out: float) -> tuple[int, int]:
    """Smallest integers (up, down) with fs_in * up / down == fs_out (to 1e-6 relative)."""
    frac = Fraction(fs_out / fs_in).limit_denominator(10_000)
    if abs(float(frac) * fs_in - fs_out) > 1e-6 * fs_out:
        raise DataError(f"cannot resample {fs_in} Hz to {fs_out} Hz with a rational factor")
    return frac.numerator, frac.denominator


def _sos(cfg: PreprocessConfig) -> np.ndarray | None:
    """Butterworth band-pass (or low-pass) sections for ``cfg`` at its target rate."""
    if cfg.bandpass is None:
        return None
    low, high = cfg.bandpass
    nyq = cfg.fs / 2.0
    high = min(high, 0.95 * nyq)  # clamp the upper edge below Nyquist
    if low > 0 and low >= high:
        raise ConfigError(
            f"preprocess.bandpass: low edge {low} Hz is not below the clamped high edge "
            f"{high:.3g} Hz at fs={cfg.fs}"
        )
    if low > 0:
        return sps.butter(cfg.filter_order, [low, high], btype="bandpass", fs=cfg.fs, output="sos")
    return sps.butter(cfg.filter_order, high, btype="lowpass", fs=cfg.fs, output="sos")


def preprocess(
    signal: np.ndarray,
    fs_in: float,
    cfg: PreprocessConfig | None = None,
    record_id: str | None = None,
) -> np.ndarray:
    """Turn a raw ECG (12, N) in mV at ``fs_in`` Hz into a (12, L) float32 model input.

    Raises :class:`DataError` (naming ``record_id`` when given) for a non-positive rate, a
    shape other than (12, N), NaN/inf samples, or a record shorter than ``cfg.min_length_s``
    or too short to filter.
    """
    cfg = cfg or PreprocessConfig()
    what = f"record {record_id}" if record_id else "signal"
    try:
        fs_in = float(fs_in)
    except (TypeError, ValueError):
        raise DataError(f"{what}: sampling rate {fs_in!r} is not a number") from None
    if not (math.isfinite(fs_in) and fs_in > 0):
        raise DataError(f"{what}: sampling rate must be > 0 Hz, got {fs_in}")
    x = np.asarray(signal)
    if x.ndim != 2 or x.shape[0] != N_LEADS:
        raise DataError(f"{what}: expected shape (12, n_samples), got {x.shape}")
    if x.shape[1] < 2:
        raise DataError(f"{what}: has {x.shape[1]} sample(s), too short to use")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{what}: samples have non-numeric dtype {x.dtype}")
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        bad = sorted({int(i) for i in np.nonzero(~np.isfinite(x))[0]})
        raise DataError(f"{what}: NaN/inf samples in lead(s) {bad}")

    duration = x.shape[1] / fs_in
    if cfg.min_length_s > 0 and duration + 1e-9 < cfg.min_length_s:
        raise DataError(
            f"{what}: {duration:.2f} s long, shorter than preprocess.min_length_s="
            f"{cfg.min_length_s} s"
        )

    # 1. resample
    if abs(fs_in - cfg.fs) > 1e-9 * cfg.fs:
        up, down = _resample_factors(fs_in, cfg.fs)
        x = sps.resample_poly(x, up, down, axis=1)

    # 2. band-pass (zero phase, on the whole record)
    sos = _sos(cfg)
    if sos is not None:
        padlen = 3 * (2 * len(sos) + 1)
        if x.shape[1] <= padlen:
            raise DataError(
                f"{what}: {x.shape[1]} samples at {cfg.fs} Hz are too few to band-pass "
                f"(need > {padlen})"
            )
        x = sps.sosfiltfilt(sos, x, axis=1)

    # 3. crop
    target = cfg.n_samples
    n = x.shape[1]
    if n > target:
        start = (n - target) // 2 if cfg.crop == "center" else 0
        x = x[:, start : start + target]
        n = target

    # 4. normalise on the real samples
    if cfg.normalize == "zscore":
        mean = x.mean(axis=1, keepdims=True)
        std = x.std(axis=1, keepdims=True)
        x = np.where(std > 1e-8, (x - mean) / np.maximum(std, 1e-8), 0.0)

    # 5. pad
    out = np.zeros((N_LEADS, target), dtype=np.float32)
    offset = (target - n) // 2 if cfg.pad == "center" else 0
    out[:, offset : offset + n] = x
    return out
