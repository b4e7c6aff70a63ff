"""Classification metrics of the paper's tables, bootstrap confidence intervals, seed aggregation.

Everything is computed with :mod:`sklearn.metrics`; this module only decides *which* metric is
reported and how classes that cannot be scored are handled:

* Linear probe (Table 1): macro one-vs-rest AUC over the class probabilities, macro F1 and
  accuracy of the arg-max prediction (single-label), plus per-class values.
* Zero-shot (Tables 2 and 3): per class, one-vs-rest AUC from the class probabilities and the
  accuracy and F1 of the binary decision "predicted == this class"; the table's "Average" row is
  the unweighted mean over classes.

A class with no positive record in ``y_true`` has no defined AUC (and its F1 is meaningless); such
classes are left out of every average and listed under ``"absent"`` so a report can say so.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

log = logging.getLogger(__name__)

#: metric names of a zero-shot table row (paper Tables 2 and 3)
ZERO_SHOT_METRICS: tuple[str, ...] = ("auc", "acc", "f1")


def _check(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"probabilities of shape {p.shape} do not match {y.shape[0]} labels")
    if p.shape[1] != len(classes):
        raise ValueError(f"probabilities have {p.shape[1]} columns for {len(classes)} classes")
    if y.size and (y.min() < 0 or y.max() >= len(classes)):
        raise ValueError(
            f"labels must be class indices in [0, {len(classes)}), got {y.min()}..{y.max()}"
        )
    return y, p


def present_classes(y_true: np.ndarray, n_classes: int) -> tuple[list[int], list[int]]:
    """(indices of classes with at least one positive and one negative record, the others)."""
    y = np.asarray(y_true).ravel()
    present, absent = [], []
    for c in range(n_classes):
        pos = int(np.sum(y == c))
        (present if 0 < pos < y.size else absent).append(c)
    return present, absent


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], warn: bool = True
) -> dict[str, Any]:
    """Linear-probe metrics of single-label predictions (paper Table 1).

    Args:
        y_true: (n,) class indices.
        probs: (n, C) class probabilities (or any scores monotone per class).
        classes: the C class names.
        warn: log a warning naming classes absent from ``y_true``.

    Returns:
        ``{"auc": macro one-vs-rest AUC, "f1": macro F1 of the arg-max, "acc": accuracy,
        "per_class": {name: {"auc", "f1", "n"}}, "absent": [names without positives], "n": n}``.
        Averages run over the classes present in ``y_true`` only.
    """
    y, p = _check(y_true, probs, classes)
    present, absent = present_classes(y, len(classes))
    if absent and warn:
        log.warning("no AUC for class(es) absent from the labels: %s", [classes[c] for c in absent])
    pred = p.argmax(axis=1)
    per_class: dict[str, dict[str, float]] = {}
    f1s = f1_score(y, pred, labels=list(range(len(classes))), average=None, zero_division=0)
    for c, name in enumerate(classes):
        auc = float(roc_auc_score(y == c, p[:, c])) if c in present else math.nan
        per_class[name] = {
            "auc": auc,
            "f1": float(f1s[c]) if c in present else math.nan,
            "n": int(np.sum(y == c)),
        }
    return {
        "auc": float(np.mean([per_class[classes[c]]["auc"] for c in present]))
        if present
        else math.nan,
        "f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0))
        if present
        else math.nan,
        "acc": float(accuracy_score(y, pred)) if y.size else math.nan,
        "per_class": per_class,
        "absent": [classes[c] for c in absent],
        "n": int(y.size),
    }


def zero_shot_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], warn: bool = True
) -> dict[str, Any]:
    """Zero-shot metrics exactly as the paper's Tables 2 and 3.

    Per class c (one-vs-rest): AUC of ``probs[:, c]`` against ``y == c``; accuracy and F1 of the
    binary decision ``argmax(probs) == c`` against ``y == c``. ``"average"`` is the unweighted mean
    over the classes present in ``y_true`` (the table's "Average" row); a class without
    positives gets NaN for all three (its row would only count true negatives).

    Returns:
        ``{"per_class": {name: {"auc", "acc", "f1", "n"}}, "average": {"auc", "acc", "f1"},
        "accuracy": multi-class accuracy, "absent": [...], "n": n}``.
    """
    y, p = _check(y_true, probs, classes)
    present, absent = present_classes(y, len(classes))
    if absent and warn:
        log.warning(
            "class(es) absent from the labels left out of the average: %s",
            [classes[c] for c in absent],
        )
    pred = p.argmax(axis=1)
    per_class: dict[str, dict[str, float]] = {}
    for c, name in enumerate(classes):
        truth, hit = y == c, pred == c
        ok = c in present
        per_class[name] = {
            "auc": float(roc_auc_score(truth, p[:, c])) if ok else math.nan,
            "acc": float(accuracy_score(truth, hit)) if ok else math.nan,
            "f1": float(f1_score(truth, hit, zero_division=0)) if ok else math.nan,
            "n": int(truth.sum()),
        }
    average = {
        m: float(np.mean([per_class[classes[c]][m] for c in present])) if present else math.nan
        for m in ZERO_SHOT_METRICS
    }
    return {
        "per_class": per_class,
        "average": average,
        "accuracy": float(accuracy_score(y, pred)) if y.size else math.nan,
        "absent": [classes[c] for c in absent],
        "n": int(y.size),
    }


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"a": {"b": 1.0}}`` -> ``{"a.b": 1.0}`` (numbers only; lists and strings dropped)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, name + "."))
        elif isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(
            value, bool
        ):
            out[name] = float(value)
    return out


def bootstrap_ci(
    metric_fn: Callable[..., Any],
    *arrays: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Any:
    """Percentile bootstrap confidence interval of any metric, resampling records.

    ``metric_fn(*resampled_arrays)`` is evaluated on ``n_boot`` resamples (with replacement, the
    same record indices for every array, ``numpy.random.default_rng(seed)``). It may return a float
    or a (nested) mapping of floats, e.g. :func:`zero_shot_metrics`; resamples where a value is NaN
    (e.g. a class drawn without positives) are ignored for that value.

    Returns:
        ``(low, high)`` for a float metric, else a flat mapping ``{"a.b": (low, high)}`` keyed as
        :func:`flatten_metrics` names the metric's values.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array to resample")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("all arrays must have the same number of records")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    scalar = False
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        value = metric_fn(*(np.asarray(a)[idx] for a in arrays))
        if isinstance(value, Mapping):
            flat = flatten_metrics(value)
        else:
            scalar, flat = True, {"": float(value)}
        for key, v in flat.items():
            samples.setdefault(key, []).append(v)
    alpha = (1.0 - level) / 2.0
    out: dict[str, tuple[float, float]] = {}
    for key, values in samples.items():
        arr = np.asarray(values, dtype=np.float64)
        arr = arr[np.isfinite(arr)]
        if arr.size == 0:
            out[key] = (math.nan, math.nan)
        else:
            lo, hi = np.quantile(arr, [alpha, 1.0 - alpha])
            out[key] = (float(lo), float(hi))
    return out[""] if scalar else out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value), NaNs ignored."""
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def aggregate_seeds(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean ± std over seeds of every numeric value of a list of metric dicts.

    Returns ``{"a.b": {"mean": m, "std": s, "n": k}}`` keyed as :func:`flatten_metrics` does.
    """
    flats = [flatten_metrics(r) for r in runs]
    keys: list[str] = []
    for f in flats:
        keys.extend(k for k in f if k not in keys)
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        values = [f[key] for f in flats if key in f]
        m, s = mean_std(values)
        out[key] = {"mean": m, "std": s, "n": len(values)}
    return out
