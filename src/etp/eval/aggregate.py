"""Figures from per-record outputs: pooling, seed aggregation, bootstrap CIs, paired differences.

Every figure that ``etp evaluate`` and ``etp benchmark`` report is computed here from the
per-record outputs of :func:`etp.eval.protocol.evaluate_model`: the metric of a task
(:func:`metric_fn`: the linear probe's Table 1 metrics or zero-shot's Tables 2-3 metrics), its
bootstrap 95 % CI over records (:func:`pooled_stats`; one seed is the ``etp evaluate`` case), and
the paired difference of two methods on the same records (:func:`paired_difference`).

Every bootstrap here is stratified by class (:func:`etp.eval.metrics.bootstrap_ci` with
``strata=y``): each resample keeps every class's count of test records, so a macro average is
always over the same classes. A per-class CI is *not estimable* (``None``, rendered ``n/e``) when
the class has fewer than ``min_class_records`` test records (:data:`MIN_CLASS_RECORDS_FOR_CI`):
resampling one or two records says nothing about the class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from etp.eval.metrics import mean_std
from etp.eval.protocol import EvalOutput

#: default of the benchmark's ``min_class_records_for_ci``
MIN_CLASS_RECORDS_FOR_CI = 5


def not_estimable(
    keys: Sequence[str], y: np.ndarray, classes: Sequence[str], min_records: int
) -> set[str]:
    """The flattened per-class keys (``per_class.NAME.*``) of classes with fewer than
    ``min_records`` records in ``y``: their CIs are not estimable."""
    counts = np.bincount(np.asarray(y, dtype=np.int64).ravel(), minlength=len(classes))
    small = [f"per_class.{c}." for c, k in zip(classes, counts) if k < min_records]
    return {k for k in keys if any(k.startswith(p) for p in small)}


def _seed_mean_metric(
    fn: Callable[[np.ndarray, np.ndarray], Mapping[str, Any]], n_seeds: int
) -> Callable[..., dict[str, float]]:
    """metric(y, P_seed1, ..., P_seedK) -> mean over seeds of the flattened metrics."""
    from etp.eval.metrics import flatten_metrics

    def metric(y: np.ndarray, *probs: np.ndarray) -> dict[str, float]:
        flats = [flatten_metrics(fn(y, p)) for p in probs[:n_seeds]]
        keys = flats[0].keys()
        return {k: float(np.nanmean([f.get(k, math.nan) for f in flats])) for k in keys}

    return metric


def metric_fn(
    kind: str, classes: Sequence[str]
) -> Callable[[np.ndarray, np.ndarray], Mapping[str, Any]]:
    """metric(y, probs) of a task: ``"probe"`` (Table 1) or ``"zero_shot"`` (Tables 2-3)."""
    from etp.eval.metrics import classification_metrics, zero_shot_metrics

    base = classification_metrics if kind == "probe" else zero_shot_metrics

    def fn(yy: np.ndarray, pp: np.ndarray) -> Mapping[str, Any]:
        return base(yy, pp, classes, warn=False)

    return fn


def pooled_stats(
    y: np.ndarray,
    probs_per_seed: Sequence[np.ndarray],
    kind: str,
    classes: Sequence[str],
    n_boot: int,
    seed: int = 0,
    min_class_records: int = MIN_CLASS_RECORDS_FOR_CI,
) -> dict[str, Any]:
    """Metrics of pooled predictions: per seed, mean ± std over seeds, bootstrap 95 % CI.

    The CI resamples records within each class (the same resample for every seed) and covers the
    seed-mean metric; a per-class cell of a class with fewer than ``min_class_records`` records
    gets ``"ci": None, "ci_estimable": False``.
    """
    import warnings

    from etp.eval.metrics import aggregate_seeds, bootstrap_ci

    fn = metric_fn(kind, classes)
    per_seed = [fn(y, p) for p in probs_per_seed]
    agg = aggregate_seeds(per_seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ci = (
            bootstrap_ci(
                _seed_mean_metric(fn, len(probs_per_seed)),
                y,
                *probs_per_seed,
                n_boot=n_boot,
                seed=seed,
                strata=y,
            )
            if n_boot > 0
            else {}
        )
    stats = {
        key: {"mean": v["mean"], "std": v["std"], "n": v["n"], "ci": ci.get(key)}
        for key, v in agg.items()
    }
    if n_boot > 0:
        for key in not_estimable(list(stats), y, classes, min_class_records):
            stats[key].update(ci=None, ci_estimable=False)
    return {"per_seed": per_seed, "stats": stats}


def paired_difference(
    y: np.ndarray,
    probs_a: Sequence[np.ndarray],
    probs_b: Sequence[np.ndarray],
    kind: str,
    classes: Sequence[str],
    keys: Sequence[str],
    n_boot: int,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Seed-mean metric of method A minus that of method B, with a paired bootstrap 95 % CI.

    Both methods scored the same records, so each resample draws the same records for both
    (and for every seed): the CI of the difference is far narrower than two separate CIs, whose
    overlap says little about whether A beats B.
    """
    import warnings

    from etp.eval.metrics import bootstrap_ci

    fn = metric_fn(kind, classes)
    na = len(probs_a)
    mean_a, mean_b = _seed_mean_metric(fn, na), _seed_mean_metric(fn, len(probs_b))

    def diff(yy: np.ndarray, *pp: np.ndarray) -> dict[str, float]:
        a, b = mean_a(yy, *pp[:na]), mean_b(yy, *pp[na:])
        return {k: a.get(k, math.nan) - b.get(k, math.nan) for k in keys}

    point = diff(y, *probs_a, *probs_b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ci = (
            bootstrap_ci(diff, y, *probs_a, *probs_b, n_boot=n_boot, seed=seed, strata=y)
            if n_boot > 0
            else {}
        )
    return {k: {"diff": point[k], "ci": ci.get(k)} for k in keys}


def unflatten(stats: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": s}`` -> ``{"a": {"b": s}}`` (stat cells for the report tables)."""
    out: dict[str, Any] = {}
    for key, value in stats.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def bootstrap_stats(
    y: np.ndarray,
    probs: np.ndarray,
    kind: str,
    classes: Sequence[str],
    n_boot: int,
    seed: int = 0,
    min_class_records: int = MIN_CLASS_RECORDS_FOR_CI,
) -> dict[str, Any]:
    """Class-stratified bootstrap 95 % CIs (flattened metric key -> (low, high)) of one set of
    predictions; ``None`` for per-class values of classes with fewer than ``min_class_records``
    records (not estimable)."""
    import warnings

    from etp.eval.metrics import bootstrap_ci

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ci = bootstrap_ci(metric_fn(kind, classes), y, probs, n_boot=n_boot, seed=seed, strata=y)
    for key in not_estimable(list(ci), y, classes, min_class_records):
        ci[key] = None
    return ci


def pool_outputs(
    outputs: Mapping[str, Mapping[int, list[EvalOutput]]],
    classes: list[str],
    n_boot: int,
    min_class_records: int = MIN_CLASS_RECORDS_FOR_CI,
) -> dict[str, Any]:
    """Pool each method's test outputs over its rotations (out-of-fold), then aggregate over
    seeds: figures with bootstrap CIs, the zero-shot variants and the one chosen on validation,
    retrieval, the probes' choices, and ETP's paired differences to each baseline."""
    pooled: dict[str, Any] = {
        "linear_probe": {}, "zero_shot": {}, "retrieval": {}, "selection": {}, "views": {}
    }
    headline: dict[str, dict[str, list[np.ndarray]]] = {}  # method -> probe/zs -> per-seed probs
    for method, per_seed in outputs.items():
        seeds = sorted(per_seed)
        runs = [per_seed[s] for s in seeds]
        y = np.concatenate([r.test_y for r in runs[0]])
        ids = [i for r in runs[0] for i in r.test_ids]
        for other in runs[1:]:  # every seed must have scored the same records in the same order
            assert [i for r in other for i in r.test_ids] == ids
        fracs = list(runs[0][0].probe)
        for frac in fracs:
            probs = [np.concatenate([r.probe[frac] for r in run]) for run in runs]
            pooled["linear_probe"].setdefault(method, {})[str(frac)] = pooled_stats(
                y, probs, "probe", classes, n_boot, min_class_records=min_class_records
            )
            if frac == max(fracs):
                headline.setdefault(method, {})["probe"] = probs
        variants = list(runs[0][0].zs_test)
        zs: dict[str, Any] = {}
        for v in variants:
            probs = [np.concatenate([r.zs_test[v] for r in run]) for run in runs]
            zs[v] = pooled_stats(
                y, probs, "zero_shot", classes, n_boot, min_class_records=min_class_records
            )
            zs[v]["val_auc_mean"] = float(
                np.nanmean([r.zs_val_auc[v] for run in runs for r in run])
            )
        if variants:
            # the variant chosen on each rotation's validation fold, applied to its test fold
            probs = [
                np.concatenate([r.zs_test[r.zs_selected or variants[0]] for r in run])
                for run in runs
            ]
            zs["val-selected"] = pooled_stats(
                y, probs, "zero_shot", classes, n_boot, min_class_records=min_class_records
            )
            headline.setdefault(method, {})["zs"] = probs
            zs["val-selected"]["chosen"] = [
                r.zs_selected for run in runs for r in run
            ]
        if zs:
            pooled["zero_shot"][method] = zs
        if runs[0][0].retrieval is not None:
            flat: dict[str, list[float]] = {}
            for run in runs:
                for r in run:
                    for direction in ("ecg_to_report", "report_to_ecg"):
                        for k, v in (r.retrieval or {}).get(direction, {}).items():
                            flat.setdefault(f"{direction}.{k}", []).append(v)
            pooled["retrieval"][method] = {
                k: dict(zip(("mean", "std"), mean_std(v)), n=len(v)) for k, v in flat.items()
            }
        pooled["views"][method] = sorted({r.views for run in runs for r in run})
        pooled["selection"][method] = {
            str(frac): [r.probe_selection(frac) for run in runs for r in run] for frac in fracs
        }
        pooled.setdefault("n_test", int(y.size))
        pooled.setdefault("y", y)
        pooled.setdefault("ids", ids)
        pooled.setdefault("_probs", {})[method] = {
            "probe": np.mean([np.concatenate([r.probe[fracs[-1]] for r in run]) for run in runs], 0)
            if fracs
            else None,
            "zs": np.mean(
                [np.concatenate([r.zs_test[r.zs_selected or variants[0]] for r in run]) for run in runs],
                0,
            )
            if variants
            else None,
        }
    if "etp" in headline and "y" in pooled:
        pooled["comparisons"] = compare_with_etp(headline, pooled["y"], classes, n_boot)
    return pooled


def compare_with_etp(
    headline: Mapping[str, Mapping[str, list[np.ndarray]]],
    y: np.ndarray,
    classes: list[str],
    n_boot: int,
) -> dict[str, dict[str, Any]]:
    """ETP minus each baseline: probe (full labels) AUC/F1, zero-shot AUC/F1 of the nested choice
    (``val-selected``: the variant chosen on each rotation's own validation fold). "ETP" is the
    method ``etp`` (the tuned recipe); other ETP settings, e.g. ``etp-paper``, are baselines here."""
    out: dict[str, dict[str, Any]] = {}
    etp = headline["etp"]
    for method, probs in headline.items():
        if method == "etp":
            continue
        cmp: dict[str, Any] = {}
        if "probe" in etp and "probe" in probs:
            cmp["linear_probe"] = paired_difference(
                y, etp["probe"], probs["probe"], "probe", classes, ("auc", "f1"), n_boot
            )
        if "zs" in etp and "zs" in probs:
            cmp["zero_shot"] = paired_difference(
                y, etp["zs"], probs["zs"], "zero_shot", classes,
                ("average.auc", "average.f1"), n_boot,
            )
        if cmp:
            out[method] = cmp
    return out
