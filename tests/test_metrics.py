"""Metrics of the paper's tables (etp.eval.metrics): checked against direct sklearn calls."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from etp.eval.metrics import (
    aggregate_seeds,
    bootstrap_ci,
    classification_metrics,
    flatten_metrics,
    mean_std,
    zero_shot_metrics,
)

PTBXL = ["NORM", "MI", "STTC", "CD", "HYP"]
# class frequencies of PTB-XL's single-label training records (folds 1-8)
FREQ = np.array([7254, 2048, 1907, 1353, 416], dtype=float)


def _data(n: int = 400, seed: int = 0, signal: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(len(PTBXL), size=n, p=FREQ / FREQ.sum())
    logits = rng.normal(size=(n, len(PTBXL)))
    logits[np.arange(n), y] += signal
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


def test_classification_metrics_match_sklearn() -> None:
    y, p = _data()
    m = classification_metrics(y, p, PTBXL)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["f1"] == pytest.approx(f1_score(y, p.argmax(1), average="macro"))
    assert m["acc"] == pytest.approx(np.mean(y == p.argmax(1)))
    assert m["per_class"]["MI"]["auc"] == pytest.approx(roc_auc_score(y == 1, p[:, 1]))
    assert m["per_class"]["NORM"]["n"] == int((y == 0).sum())
    assert m["absent"] == [] and m["n"] == 400


def test_absent_class_is_skipped_and_recorded(caplog: pytest.LogCaptureFixture) -> None:
    y, p = _data()
    keep = y != 4  # no HYP record, as in PTB-XL fold 10 of the subset
    with caplog.at_level("WARNING"):
        m = classification_metrics(y[keep], p[keep], PTBXL)
    assert m["absent"] == ["HYP"]
    assert "HYP" in caplog.text
    assert math.isnan(m["per_class"]["HYP"]["auc"])
    present = [roc_auc_score(y[keep] == c, p[keep][:, c]) for c in range(4)]
    assert m["auc"] == pytest.approx(np.mean(present))
    assert m["f1"] == pytest.approx(
        f1_score(y[keep], p[keep].argmax(1), labels=[0, 1, 2, 3], average="macro")
    )
    z = zero_shot_metrics(y[keep], p[keep], PTBXL)
    assert z["absent"] == ["HYP"]
    assert set(z["average"]) == {"auc", "acc", "f1"}
    assert math.isnan(z["per_class"]["HYP"]["acc"]) and z["per_class"]["HYP"]["n"] == 0


def test_zero_shot_metrics_by_hand() -> None:
    classes = ["A", "B", "C"]
    y = np.array([0, 0, 1, 2, 2, 2])
    probs = np.array(
        [
            [0.7, 0.2, 0.1],  # pred A (right)
            [0.2, 0.5, 0.3],  # pred B (wrong)
            [0.1, 0.8, 0.1],  # pred B (right)
            [0.6, 0.1, 0.3],  # pred A (wrong)
            [0.1, 0.1, 0.8],  # pred C (right)
            [0.2, 0.2, 0.6],
        ]  # pred C (right)
    )
    m = zero_shot_metrics(y, probs, classes)
    # class A: truth [1,1,0,0,0,0], predicted [1,0,0,1,0,0] -> acc 4/6, F1 = 2*1/(2*1+1+1)
    assert m["per_class"]["A"]["acc"] == pytest.approx(4 / 6)
    assert m["per_class"]["A"]["f1"] == pytest.approx(0.5)
    # class B: truth [0,0,1,0,0,0], predicted [0,1,1,0,0,0] -> acc 5/6, F1 2/3
    assert m["per_class"]["B"]["acc"] == pytest.approx(5 / 6)
    assert m["per_class"]["B"]["f1"] == pytest.approx(2 / 3)
    # class C: truth [0,0,0,1,1,1], predicted [0,0,0,0,1,1] -> acc 5/6, F1 0.8
    assert m["per_class"]["C"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["C"]["auc"] == pytest.approx(roc_auc_score(y == 2, probs[:, 2]))
    assert m["average"]["acc"] == pytest.approx(np.mean([4 / 6, 5 / 6, 5 / 6]))
    assert m["average"]["f1"] == pytest.approx(np.mean([0.5, 2 / 3, 0.8]))
    assert m["accuracy"] == pytest.approx(4 / 6)


def test_bad_shapes_raise() -> None:
    y, p = _data(50)
    with pytest.raises(ValueError, match="columns"):
        classification_metrics(y, p[:, :3], PTBXL)
    with pytest.raises(ValueError, match="do not match"):
        zero_shot_metrics(y[:10], p, PTBXL)
    with pytest.raises(ValueError, match="class indices"):
        classification_metrics(np.full(50, 7), p, PTBXL)


def test_bootstrap_ci_scalar_and_dict() -> None:
    y, p = _data(300, seed=1)
    point = roc_auc_score(y == 0, p[:, 0])
    lo, hi = bootstrap_ci(lambda a, b: roc_auc_score(a == 0, b[:, 0]), y, p, n_boot=200, seed=3)
    assert lo < point < hi and hi - lo < 0.3
    again = bootstrap_ci(lambda a, b: roc_auc_score(a == 0, b[:, 0]), y, p, n_boot=200, seed=3)
    assert again == (lo, hi)  # seeded
    cis = bootstrap_ci(lambda a, b: zero_shot_metrics(a, b, PTBXL), y, p, n_boot=50, seed=0)
    assert {"average.auc", "average.f1", "per_class.HYP.auc"} <= set(cis)
    full = zero_shot_metrics(y, p, PTBXL)
    assert cis["average.auc"][0] <= full["average"]["auc"] <= cis["average.auc"][1]
    with pytest.raises(ValueError, match="same number"):
        bootstrap_ci(lambda a, b: 0.0, y, p[:10])


def test_mean_std_and_seed_aggregation() -> None:
    assert mean_std([0.8, 0.9, 1.0]) == pytest.approx((0.9, 0.1))
    assert mean_std([0.7]) == (0.7, 0.0)
    m, s = mean_std([float("nan")])
    assert math.isnan(m) and math.isnan(s)
    runs = [
        {"auc": 0.8, "per_class": {"A": {"auc": 0.6}}, "absent": []},
        {"auc": 0.9, "per_class": {"A": {"auc": 0.7}}, "absent": ["B"]},
    ]
    agg = aggregate_seeds(runs)
    assert agg["auc"]["mean"] == pytest.approx(0.85)
    assert agg["per_class.A.auc"]["std"] == pytest.approx(np.std([0.6, 0.7], ddof=1))
    assert "absent" not in agg
    assert flatten_metrics({"a": {"b": 1, "c": "x"}, "d": True}) == {"a.b": 1.0}


# --- the numpy metrics against a direct scikit-learn reference ---------------------------------


def _sk_present(y: np.ndarray, n_classes: int) -> list[int]:
    return [c for c in range(n_classes) if 0 < np.sum(y == c) < y.size]


def _sk_classification(y: np.ndarray, p: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """classification_metrics written with sklearn calls (the reference)."""
    present = _sk_present(y, len(classes))
    pred = p.argmax(axis=1)
    f1s = f1_score(y, pred, labels=list(range(len(classes))), average=None, zero_division=0)
    per_class = {
        name: {
            "auc": float(roc_auc_score(y == c, p[:, c])) if c in present else math.nan,
            "f1": float(f1s[c]) if c in present else math.nan,
            "n": int(np.sum(y == c)),
        }
        for c, name in enumerate(classes)
    }
    return {
        "auc": float(np.mean([per_class[classes[c]]["auc"] for c in present]))
        if present
        else math.nan,
        "f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0))
        if present
        else math.nan,
        "acc": float(accuracy_score(y, pred)),
        "per_class": per_class,
        "absent": [name for c, name in enumerate(classes) if c not in present],
        "n": int(y.size),
    }


def _sk_zero_shot(y: np.ndarray, p: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """zero_shot_metrics written with sklearn calls (the reference)."""
    present = _sk_present(y, len(classes))
    pred = p.argmax(axis=1)
    per_class = {}
    for c, name in enumerate(classes):
        truth, hit, ok = y == c, pred == c, c in present
        per_class[name] = {
            "auc": float(roc_auc_score(truth, p[:, c])) if ok else math.nan,
            "acc": float(accuracy_score(truth, hit)) if ok else math.nan,
            "f1": float(f1_score(truth, hit, zero_division=0)) if ok else math.nan,
            "n": int(truth.sum()),
        }
    return {
        "per_class": per_class,
        "average": {
            m: float(np.mean([per_class[classes[c]][m] for c in present]))
            if present
            else math.nan
            for m in ("auc", "acc", "f1")
        },
        "accuracy": float(accuracy_score(y, pred)) if y.size else math.nan,
        "absent": [name for c, name in enumerate(classes) if c not in present],
        "n": int(y.size),
    }


def _assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["absent"] == want["absent"] and got["n"] == want["n"]
    g, w = flatten_metrics(got), flatten_metrics(want)
    assert list(g) == list(w)
    for key, value in w.items():
        if math.isnan(value):
            assert math.isnan(g[key]), key
        else:
            assert g[key] == pytest.approx(value, rel=0, abs=1e-12), key


def _case(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random labels and scores of one edge-case kind (5 classes)."""
    rng = np.random.default_rng(seed)
    n = {"tiny": int(rng.integers(1, 5)), "single": int(rng.integers(1, 30))}.get(
        kind, int(rng.integers(20, 300))
    )
    y = rng.choice(5, size=n, p=FREQ / FREQ.sum())
    p = rng.dirichlet(np.ones(5), size=n)
    p[np.arange(n), y] += rng.uniform(0, 0.5, size=n)
    if kind == "ties":  # few distinct scores: ties within a class and in the arg-max
        p = rng.integers(0, 4, size=(n, 5)) / 3.0
    elif kind == "absent":  # one or two classes without records
        y = rng.choice([0, 2, 3] if seed % 2 else [0, 1, 2, 3], size=n)
    elif kind == "never_predicted":  # a class that is never the arg-max (F1 = 0)
        p[:, int(rng.integers(5))] = -1.0
    elif kind == "single":
        y = np.full(n, int(rng.integers(5)))
    elif kind == "tiny":
        p = np.round(p, 1)
    return y, p


KINDS = ("plain", "ties", "absent", "never_predicted", "single", "tiny")


@pytest.mark.parametrize("kind", KINDS)
def test_metrics_match_sklearn_on_random_data(kind: str) -> None:
    for seed in range(25):
        y, p = _case(kind, seed)
        got = classification_metrics(y, p, PTBXL, warn=False)
        _assert_same(got, _sk_classification(y, p, PTBXL))
        _assert_same(zero_shot_metrics(y, p, PTBXL, warn=False), _sk_zero_shot(y, p, PTBXL))


def test_auc_ties_by_hand() -> None:
    # positives 0.5, 0.5, 0.9 vs negatives 0.1, 0.5: pairs won 1+1+2 and 0.5+0.5 tied -> 5/6
    y = np.array([1, 1, 1, 0, 0])
    s = np.array([0.5, 0.5, 0.9, 0.1, 0.5])
    p = np.stack([1 - s, s], axis=1)
    m = zero_shot_metrics(y, p, ["neg", "pos"])
    assert m["per_class"]["pos"]["auc"] == pytest.approx(5 / 6, abs=1e-15)
    assert m["per_class"]["pos"]["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-15)
    const = zero_shot_metrics(y, np.full((5, 2), 0.5), ["neg", "pos"])
    assert const["average"]["auc"] == 0.5  # all scores tied


def test_empty_and_degenerate_inputs_behave_as_before(caplog: pytest.LogCaptureFixture) -> None:
    empty_y, empty_p = np.zeros(0, dtype=int), np.zeros((0, 5))
    z = zero_shot_metrics(empty_y, empty_p, PTBXL, warn=False)
    assert z["n"] == 0 and z["absent"] == PTBXL and math.isnan(z["accuracy"])
    with pytest.raises(ValueError):  # as sklearn's f1_score on no records
        classification_metrics(empty_y, empty_p, PTBXL, warn=False)
    y, p = _data(60)
    p[3, 1] = np.nan  # a present class: roc_auc_score refuses it
    with pytest.raises(ValueError, match="NaN"):
        zero_shot_metrics(y, p, PTBXL, warn=False)
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(y, p, PTBXL, warn=False)
    keep = y != 4
    q = p[keep].copy()
    q[:, 1] = 0.1
    q[:, 4] = -np.inf  # absent and never predicted: not scored, so its column is not checked
    got = zero_shot_metrics(y[keep], q, PTBXL, warn=False)
    _assert_same(got, _sk_zero_shot(y[keep], q, PTBXL))
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("error")  # no sklearn-style UndefinedMetricWarning either
        caplog.clear()
        classification_metrics(y[keep], q, PTBXL, warn=False)
        zero_shot_metrics(y[keep], q, PTBXL, warn=False)
        assert caplog.records == []
        zero_shot_metrics(y[keep], q, PTBXL)
        assert [r.levelno for r in caplog.records] == [logging.WARNING] and "HYP" in caplog.text


def _reference_ci(
    fn: Callable[[np.ndarray, np.ndarray], dict[str, Any]],
    y: np.ndarray,
    p: np.ndarray,
    n_boot: int,
    seed: int,
) -> dict[str, tuple[float, float]]:
    """bootstrap_ci as documented, written out with a sklearn-based metric."""
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = rng.integers(0, y.size, size=y.size)
        for key, v in flatten_metrics(fn(y[idx], p[idx])).items():
            samples.setdefault(key, []).append(v)
    out = {}
    for key, values in samples.items():
        arr = np.asarray(values)
        arr = arr[np.isfinite(arr)]
        lo, hi = np.quantile(arr, [0.025, 0.975]) if arr.size else (math.nan, math.nan)
        out[key] = (float(lo), float(hi))
    return out


@pytest.mark.parametrize(
    ("fast", "slow"),
    [(zero_shot_metrics, _sk_zero_shot), (classification_metrics, _sk_classification)],
)
def test_bootstrap_ci_matches_sklearn_reference(
    fast: Callable[..., dict[str, Any]], slow: Callable[..., dict[str, Any]]
) -> None:
    y, p = _data(800, seed=5, signal=1.0)
    p = np.round(p, 2)  # ties, as probabilities saved at low precision give
    got = bootstrap_ci(lambda a, b: fast(a, b, PTBXL, warn=False), y, p, n_boot=200, seed=7)
    want = _reference_ci(lambda a, b: slow(a, b, PTBXL), y, p, n_boot=200, seed=7)
    assert list(got) == list(want)
    for key, (lo, hi) in want.items():
        assert got[key] == pytest.approx((lo, hi), rel=0, abs=1e-12, nan_ok=True), key


def test_stratified_bootstrap_keeps_every_class_count() -> None:
    """Each resample keeps each class's count of records: a macro average never loses a class."""
    from etp.eval.metrics import stratified_resample

    y = np.array([0] * 6 + [1] * 1 + [2] * 3 + [3] * 1 + [4] * 4)  # two single-record classes
    counts = np.bincount(y, minlength=5)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)]
    rng = np.random.default_rng(0)
    for _ in range(200):
        idx = stratified_resample(rng, groups)
        assert np.array_equal(np.bincount(y[idx], minlength=5), counts)
    seen: list[np.ndarray] = []

    def spy(a: np.ndarray) -> float:
        seen.append(np.bincount(a, minlength=5))
        return float(a.mean())

    bootstrap_ci(spy, y, n_boot=100, seed=1, strata=y)
    assert len(seen) == 100 and all(np.array_equal(c, counts) for c in seen)
    # unstratified, some resamples of these 15 records drop a single-record class
    seen.clear()
    bootstrap_ci(spy, y, n_boot=100, seed=1)
    assert any(c[1] == 0 or c[3] == 0 for c in seen)
    with pytest.raises(ValueError, match="strata has 3 labels for 15 records"):
        bootstrap_ci(spy, y, strata=y[:3])


def test_per_class_ci_of_a_small_class_is_not_estimable() -> None:
    from etp.eval.aggregate import bootstrap_stats, pooled_stats
    from etp.eval.report import format_stat, with_ci

    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    y = np.array([0] * 20 + [1] * 20 + [2])  # class c: one test record
    p = rng.dirichlet(np.ones(3), size=y.size)
    out = pooled_stats(y, [p], "probe", classes, n_boot=30)
    st = out["stats"]
    assert st["per_class.c.auc"]["ci"] is None and st["per_class.c.auc"]["ci_estimable"] is False
    assert st["per_class.a.auc"]["ci"] is not None and "ci_estimable" not in st["per_class.a.auc"]
    assert st["auc"]["ci"] is not None  # the macro average keeps its CI
    assert format_stat(st["per_class.c.auc"]).endswith("[n/e]")
    assert "n/e" not in format_stat(st["per_class.a.auc"])
    # the threshold is a setting: with 1 the single record's class gets a CI again
    one = pooled_stats(y, [p], "probe", classes, n_boot=30, min_class_records=1)
    assert one["stats"]["per_class.c.auc"]["ci"] is not None
    # etp evaluate's CIs too
    ci = bootstrap_stats(y, p, "zero_shot", classes, n_boot=30)
    assert ci["per_class.c.auc"] is None and ci["per_class.b.auc"] is not None
    cells = with_ci(zero_shot_metrics(y, p, classes, warn=False), ci)
    assert format_stat(cells["per_class"]["c"]["auc"]).endswith("[n/e]")
