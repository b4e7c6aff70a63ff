"""12-lead ECGs on standard ECG paper, with a model's class probabilities beside them.

:func:`plot_ecg` draws a (12, N) mV signal the way a clinician reads it: 25 mm/s, 10 mm/mV, a
pink grid of 1 mm (light) and 5 mm (dark) squares, a 1 mV calibration pulse at the start of each
row, and either the standard 3x4 layout (I, aVR, V1, V4 / II, aVL, V2, V5 / III, aVF, V3, V6;
2.5 s each) with a full-length lead II rhythm strip, or one row per lead (``layout="12"``).
Given ``probabilities`` it adds a bar chart of them on the right.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from etp.data.records import LEADS  # noqa: E402
from etp.errors import ConfigError  # noqa: E402
from etp.io import atomic_path  # noqa: E402

MM_PER_S = 25.0
MM_PER_MV = 10.0
#: the standard 3x4 arrangement (rows of lead names; each column shows a quarter of the record)
GRID_3X4 = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"
_MINOR, _MAJOR, _TRACE = "#f7c6c6", "#e58b8b", "black"
_ROW_MM = 30.0  # height of one row: +-1.5 mV around its baseline
_CAL_MM = 10.0  # width reserved for the calibration pulse


def _grid(ax: plt.Axes, width: float, height: float) -> None:
    for x in np.arange(0, width + 1e-9, 1.0):
        major = abs(x / 5 - round(x / 5)) < 1e-6
        ax.axvline(x, color=_MAJOR if major else _MINOR, lw=0.6 if major else 0.3, zorder=0)
    for y in np.arange(0, height + 1e-9, 1.0):
        major = abs(y / 5 - round(y / 5)) < 1e-6
        ax.axhline(y, color=_MAJOR if major else _MINOR, lw=0.6 if major else 0.3, zorder=0)


def _trace(ax: plt.Axes, x0: float, y0: float, sig: np.ndarray, fs: float) -> None:
    t = np.arange(len(sig)) / fs
    y = np.clip(sig * MM_PER_MV, -_ROW_MM / 2 - 3, _ROW_MM / 2 + 3)
    ax.plot(x0 + t * MM_PER_S, y0 + y, color=_TRACE, lw=0.7, zorder=2)


def _calibration(ax: plt.Axes, y0: float) -> None:
    xs = [1.0, 3.0, 3.0, 8.0, 8.0, 10.0]
    ys = [0.0, 0.0, MM_PER_MV, MM_PER_MV, 0.0, 0.0]
    ax.plot(xs, [y0 + v for v in ys], color=_TRACE, lw=0.9, zorder=2)


def plot_ecg(
    signal: np.ndarray,
    fs: float,
    path: str | Path,
    leads: Sequence[str] = LEADS,
    probabilities: dict[str, float] | None = None,
    title: str | None = None,
    layout: str = "3x4",
) -> Path:
    """Write a PNG of a 12-lead ECG (``signal`` (12, N) in mV at ``fs`` Hz) on ECG paper."""
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(leads):
        raise ConfigError(f"plot_ecg: expected a ({len(leads)}, N) signal, got {x.shape}")
    if layout not in ("3x4", "12"):
        raise ConfigError(f"plot_ecg: layout '3x4' or '12', got {layout!r}")
    row = {name: i for i, name in enumerate(leads)}
    duration = x.shape[1] / fs
    strip_mm = duration * MM_PER_S
    width = _CAL_MM + strip_mm
    if layout == "3x4":
        rows = [[(name, c) for c, name in enumerate(names)] for names in GRID_3X4]
        n_rows = 4
    else:
        rows = [[(name, None)] for name in leads]
        n_rows = len(leads)
    height = n_rows * _ROW_MM
    ecg_w_in = width / 25.4 * 0.9
    panel_in = 3.2 if probabilities else 0.0
    fig = plt.figure(figsize=(ecg_w_in + panel_in, height / 25.4 * 0.9 + 0.6))
    ax = fig.add_axes((0.01, 0.02, ecg_w_in / (ecg_w_in + panel_in) - 0.01, 0.9))
    _grid(ax, width, height)
    seg = x.shape[1] // 4
    for r, cells in enumerate(rows):
        y0 = height - (r + 0.5) * _ROW_MM
        _calibration(ax, y0)
        for name, col in cells:
            lead = x[row[name]]
            if col is None:
                _trace(ax, _CAL_MM, y0, lead, fs)
                ax.text(_CAL_MM + 1, y0 + 9, name, fontsize=8, zorder=3)
                continue
            x0 = _CAL_MM + col * seg / fs * MM_PER_S
            _trace(ax, x0, y0, lead[col * seg : (col + 1) * seg], fs)
            ax.text(x0 + 1, y0 + 9, name, fontsize=8, zorder=3)
            if col:
                ax.plot([x0, x0], [y0 - 3, y0 + 3], color=_TRACE, lw=0.7, zorder=2)
    if layout == "3x4":
        y0 = 0.5 * _ROW_MM
        _calibration(ax, y0)
        _trace(ax, _CAL_MM, y0, x[row[RHYTHM_LEAD]], fs)
        ax.text(_CAL_MM + 1, y0 + 9, RHYTHM_LEAD, fontsize=8, zorder=3)
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(
        (title + "\n" if title else "")
        + f"25 mm/s, 10 mm/mV, {fs:g} Hz, {duration:.1f} s",
        fontsize=9, loc="left",
    )
    if probabilities:
        left = ecg_w_in / (ecg_w_in + panel_in) + 0.09
        bx = fig.add_axes((left, 0.12, 0.98 - left, 0.7))
        names = list(probabilities)
        vals = np.array([probabilities[n] for n in names])
        colors = ["#c0392b" if i == int(vals.argmax()) else "#7f8c8d" for i in range(len(vals))]
        bx.barh(range(len(names)), vals, color=colors)
        bx.set_yticks(range(len(names)), names, fontsize=8)
        bx.invert_yaxis()
        bx.set_xlim(0, 1)
        for i, v in enumerate(vals):
            bx.text(min(v + 0.02, 0.8), i, f"{v:.2f}", va="center", fontsize=8)
        bx.set_title("zero-shot probability", fontsize=9)
        bx.tick_params(axis="x", labelsize=8)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def plot_prediction_files(
    out_dir: str | Path,
    files: Sequence[str],
    signals: np.ndarray,
    fs: float,
    classes: Sequence[str],
    probs: np.ndarray,
) -> list[Path]:
    """One :func:`plot_ecg` PNG per file in ``out_dir`` (named after the file; numbered when two
    files share a name), with that file's class probabilities."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stems = [Path(f).stem or f"ecg{i}" for i, f in enumerate(files)]
    written = []
    for i, (f, stem) in enumerate(zip(files, stems)):
        name = stem if stems.count(stem) == 1 else f"{i:03d}-{stem}"
        p = {c: float(v) for c, v in zip(classes, probs[i])}
        written.append(plot_ecg(signals[i], fs, out / f"{name}.png", probabilities=p,
                                title=f"{f} (as the model sees it: preprocessed)"))
    return written
