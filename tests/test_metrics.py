"""Metrics of the paper's tables (etp.eval.metrics): checked against direct sklearn calls."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

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
