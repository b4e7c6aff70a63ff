"""Classification metrics of the paper's tables, bootstrap confidence intervals, seed aggregation.

The metrics are computed with plain numpy from per-class counts and ranks, giving the same values
as :mod:`sklearn.metrics` (``roc_auc_score``, ``f1_score`` with ``zero_division=0``,
``accuracy_score``; the tests check this) without sklearn's per-call validation overhead, which
dominated :func:`bootstrap_ci`. This module decides *which* metric is reported and how classes
that cannot be scored are handled:

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


def _split_present(counts: np.ndarray, n: int) -> tuple[list[int], list[int]]:
    """Classes with ``0 < count < n`` (scorable one-vs-rest), and the others."""
    ok = (counts > 0) & (counts < n)
    return np.flatnonzero(ok).tolist(), np.flatnonzero(~ok).tolist()


def _check_finite(p: np.ndarray, present: list[int], classes: Sequence[str]) -> None:
    """Reject NaN or infinite scores of the classes that get an AUC (as ``roc_auc_score`` does)."""
    bad = [c for c in present if not np.isfinite(p[:, c]).all()]
    if bad:
        raise ValueError(
            f"probabilities of class(es) {[classes[c] for c in bad]} contain NaN or infinity"
        )


def _binary_auc(truth: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of ``score`` for the boolean ``truth`` (both values present), ties counted half.

    This is the Mann-Whitney U over average ranks, ``sklearn.metrics.roc_auc_score``'s value: for
    each positive, the negatives scored below it plus half those tied with it.
    """
    neg = np.sort(score[~truth])
    pos = score[truth]
    below_twice = int(np.searchsorted(neg, pos, "left").sum()) + int(
        np.searchsorted(neg, pos, "right").sum()
    )
    return below_twice / (2.0 * pos.size * neg.size)


def _ovr_auc(y: np.ndarray, p: np.ndarray, present: list[int]) -> np.ndarray:
    """(C,) one-vs-rest AUC of every present class, NaN for the others."""
    auc = np.full(p.shape[1], np.nan)
    for c in present:
        auc[c] = _binary_auc(y == c, p[:, c])
    return auc


def _counts(
    y: np.ndarray, pred: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class: (true positives, records of the class, records predicted as the class)."""
    tp = np.bincount(y[y == pred], minlength=n_classes)
    return tp, np.bincount(y, minlength=n_classes), np.bincount(pred, minlength=n_classes)


def _f1(tp: np.ndarray, n_true: np.ndarray, n_pred: np.ndarray) -> np.ndarray:
    """Per-class F1 = 2 TP / (n_true + n_pred); 0 where undefined (``zero_division=0``)."""
    denom = (n_true + n_pred).astype(np.float64)
    out = np.zeros(tp.shape, dtype=np.float64)
    np.divide(2.0 * tp, denom, out=out, where=denom > 0)
    return out


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

    Raises:
        ValueError: on bad shapes or labels, no records, or non-finite scores of a present class.
    """
    y, p = _check(y_true, probs, classes)
    n_true = np.bincount(y, minlength=len(classes))
    present, absent = _split_present(n_true, y.size)
    if absent and warn:
        log.warning("no AUC for class(es) absent from the labels: %s", [classes[c] for c in absent])
    pred = p.argmax(axis=1)
    if not y.size:
        raise ValueError("no records to score")
    _check_finite(p, present, classes)
    tp, _, n_pred = _counts(y, pred, len(classes))
    f1 = _f1(tp, n_true, n_pred)
    auc = _ovr_auc(y, p, present)
    per_class = {
        name: {
            "auc": float(auc[c]),
            "f1": float(f1[c]) if c in present else math.nan,
            "n": int(n_true[c]),
        }
        for c, name in enumerate(classes)
    }
    return {
        "auc": float(np.mean(auc[present])) if present else math.nan,
        "f1": float(np.mean(f1[present])) if present else math.nan,
        "acc": int(tp.sum()) / y.size,
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

    Raises:
        ValueError: on bad shapes or labels, or non-finite scores of a present class.
    """
    y, p = _check(y_true, probs, classes)
    n = y.size
    tp, n_true, n_pred = _counts(y, p.argmax(axis=1), len(classes))
    present, absent = _split_present(n_true, n)
    if absent and warn:
        log.warning(
            "class(es) absent from the labels left out of the average: %s",
            [classes[c] for c in absent],
        )
    _check_finite(p, present, classes)
    # binary decision "pred == c": correct = all records minus false positives and negatives
    values = {
        "auc": _ovr_auc(y, p, present),
        "acc": (n - n_true - n_pred + 2 * tp) / max(n, 1),
        "f1": _f1(tp, n_true, n_pred),
    }
    missing = np.ones(len(classes), dtype=bool)
    missing[present] = False
    for v in values.values():
        v[missing] = np.nan
    per_class = {
        name: {**{m: float(values[m][c]) for m in ZERO_SHOT_METRICS}, "n": int(n_true[c])}
        for c, name in enumerate(classes)
    }
    average = {
        m: float(np.mean(values[m][present])) if present else math.nan for m in ZERO_SHOT_METRICS
    }
    return {
        "per_class": per_class,
        "average": average,
        "accuracy": int(tp.sum()) / n if n else math.nan,
        "absent": [classes[c] for c in absent],
        "n": int(n),
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
    strata: np.ndarray | None = None,
) -> Any:
    """Percentile bootstrap confidence interval of any metric, resampling records.

    ``metric_fn(*resampled_arrays)`` is evaluated on ``n_boot`` resamples (with replacement, the
    same record indices for every array, ``numpy.random.default_rng(seed)``). With ``strata``
    (one label per record, e.g. the class index of single-label records) the resample is
    stratified: records are drawn with replacement within each stratum, so every resample keeps
    each class's count of records and a macro average always runs over the same classes
    (:func:`stratified_resample`). It may return a float
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
    data = [np.asarray(a) for a in arrays]  # once, not per resample
    groups = None
    if strata is not None:
        strata = np.asarray(strata).ravel()
        if strata.shape[0] != n:
            raise ValueError(f"strata has {strata.shape[0]} labels for {n} records")
        groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    scalar = False
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n) if groups is None else stratified_resample(rng, groups)
        value = metric_fn(*(a[idx] for a in data))
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


def stratified_resample(rng: np.random.Generator, groups: Sequence[np.ndarray]) -> np.ndarray:
    """Record indices of one stratified bootstrap resample: each group (the record indices of
    one stratum) is drawn with replacement to its own size, in group order."""
    return np.concatenate([g[rng.integers(0, g.size, size=g.size)] for g in groups])


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
