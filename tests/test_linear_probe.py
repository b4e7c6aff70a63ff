"""Linear probe (etp.eval.linear_probe): selection on validation only, a single test look."""

from __future__ import annotations

import numpy as np
import pytest

from etp.errors import ConfigError
from etp.eval.linear_probe import LinearProbe, ProbeConfig, run_linear_probe, stratified_fraction

CLASSES = ["NORM", "MI", "STTC", "CD", "HYP"]
P = np.array([7254, 2048, 1907, 1353, 416], dtype=float)  # PTB-XL train class frequencies
P /= P.sum()
FAST = dict(max_epochs=15, patience=4, weight_decays=[0.0, 1e-3], solver="adam", cv_folds=0)


def _features(n: int, seed: int, sep: float = 1.0, dim: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Encoder-like features: class means in a random 512-d space, offset and scaled."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(42).normal(size=(len(CLASSES), dim))
    y = rng.choice(len(CLASSES), size=n, p=P)
    x = 3.0 + 5.0 * (rng.normal(size=(n, dim)) + sep * means[y] / np.sqrt(dim) * 4)
    return x.astype(np.float32), y


def test_stratified_fraction() -> None:
    y = np.repeat(np.arange(5), [700, 200, 190, 130, 4])
    idx = stratified_fraction(y, 0.1, seed=0)
    counts = np.bincount(y[idx], minlength=5)
    assert counts.tolist() == [70, 20, 19, 13, 1]  # rare class keeps one
    assert np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, stratified_fraction(y, 0.1, seed=0))
    assert not np.array_equal(idx, stratified_fraction(y, 0.1, seed=1))
    assert np.bincount(y[stratified_fraction(y, 0.01, 0)], minlength=5).tolist() == [7, 2, 2, 1, 1]
    assert stratified_fraction(y, 1.0).size == y.size
    with pytest.raises(ValueError, match="fraction"):
        stratified_fraction(y, 0.0)


def test_probe_learns_separable_features_and_tests_once() -> None:
    xtr, ytr = _features(400, 0)
    xva, yva = _features(150, 1)
    xte, yte = _features(150, 2)
    probe = LinearProbe(CLASSES, ProbeConfig(**FAST), seed=0)
    with pytest.raises(RuntimeError, match="select"):
        probe.evaluate_test(xte, yte)
    sel = probe.select(xtr, ytr, xva, yva)
    assert sel.weight_decay in (0.0, 1e-3)
    assert 1 <= sel.best_epoch <= 15 and sel.n_train == 400
    assert set(sel.history) == {"wd=0", "wd=0.001"}
    # default criterion: validation cross-entropy; history holds minus the loss per epoch
    assert sel.select_by == "loss"
    assert -sel.val_loss == pytest.approx(max(max(c) for c in sel.history.values()))
    assert sel.val_auc == pytest.approx(sel.val_metrics["auc"])
    res = probe.evaluate_test(xte, yte)
    assert res.test_metrics["auc"] > 0.9
    assert res.test_probabilities.shape == (150, 5)
    assert np.allclose(res.test_probabilities.sum(1), 1.0, atol=1e-5)
    assert res.val_metrics is sel.val_metrics
    with pytest.raises(RuntimeError, match="already evaluated"):
        probe.evaluate_test(xte, yte)
    d = res.to_dict()
    assert d["selection"]["weight_decay"] == sel.weight_decay and "test" in d and "val" in d


def test_selection_never_sees_test_and_is_seeded() -> None:
    xtr, ytr = _features(300, 0, sep=0.5)
    xva, yva = _features(120, 1, sep=0.5)
    xte, yte = _features(120, 2, sep=0.5)
    a = run_linear_probe(xtr, ytr, xva, yva, xte, yte, CLASSES, ProbeConfig(**FAST), seed=3)
    rng = np.random.default_rng(0)
    b = run_linear_probe(
        xtr, ytr, xva, yva, xte, rng.permutation(yte), CLASSES, ProbeConfig(**FAST), seed=3
    )
    # a different test split changes nothing that was selected
    assert a.selection.weight_decay == b.selection.weight_decay
    assert a.selection.best_epoch == b.selection.best_epoch
    assert np.allclose(a.test_probabilities, b.test_probabilities)


def test_random_features_give_chance_auc_and_fraction_is_used() -> None:
    rng = np.random.default_rng(0)
    ytr = rng.choice(5, size=300, p=P)
    yva, yte = rng.choice(5, size=150, p=P), rng.choice(5, size=300, p=P)
    x = lambda n: rng.normal(size=(n, 64)).astype(np.float32)  # noqa: E731
    cfg = ProbeConfig(**FAST)
    res = run_linear_probe(x(300), ytr, x(150), yva, x(300), yte, CLASSES, cfg, 0.1, seed=0)
    assert res.selection.n_train == stratified_fraction(ytr, 0.1, 0, 5).size < 40
    assert 0.3 < res.test_metrics["auc"] < 0.7


def test_bad_inputs() -> None:
    x, y = _features(20, 0, dim=8)
    probe = LinearProbe(CLASSES, ProbeConfig(**FAST))
    with pytest.raises(ValueError, match="length"):
        probe.select(x, y[:5], x, y)
    with pytest.raises(ValueError, match="non-empty"):
        probe.select(x[:0], y[:0], x, y)
    with pytest.raises(ValueError, match="class indices"):
        probe.select(x, np.full(20, 9), x, y)


def test_selection_by_auc_and_by_loss() -> None:
    """Both criteria pick (epoch, decay) from their own validation curve; unknown ones fail."""
    xtr, ytr = _features(300, 0, sep=0.4)
    xva, yva = _features(120, 1, sep=0.4)
    by_auc = LinearProbe(CLASSES, ProbeConfig(select_by="auc", **FAST)).select(xtr, ytr, xva, yva)
    assert by_auc.val_auc == pytest.approx(max(max(c) for c in by_auc.history.values()))
    by_loss = LinearProbe(CLASSES, ProbeConfig(**FAST)).select(xtr, ytr, xva, yva)
    # the loss-chosen probe has the lowest validation cross-entropy of all the candidates
    assert by_loss.val_loss <= by_auc.val_loss + 1e-9
    assert by_auc.val_auc >= by_loss.val_auc - 1e-9
    with pytest.raises(ConfigError, match="select_by"):
        ProbeConfig(select_by="f1")


def test_select_readout_keeps_the_readout_best_on_validation() -> None:
    """Two readouts of the same records: the informative one wins on validation alone."""
    from etp.eval.linear_probe import select_readout

    rng = np.random.default_rng(3)
    y_tr, y_va = rng.integers(0, 3, 120), rng.integers(0, 3, 60)

    def informative(y: np.ndarray) -> np.ndarray:
        return np.eye(3)[y] * 3 + rng.normal(size=(len(y), 3))

    noise = {"noise": (rng.normal(size=(120, 3)), rng.normal(size=(60, 3)))}
    signal = {"signal": (informative(y_tr), informative(y_va))}
    cfg = ProbeConfig(max_epochs=30, weight_decays=[0.0], solver="adam", cv_folds=0)
    name, probe = select_readout(["A", "B", "C"], cfg, {**noise, **signal}, y_tr, y_va, seed=1)
    assert name == "signal" and probe.selection is not None
    assert probe.selection.readout == "signal"
    scores = probe.selection.readout_scores
    assert set(scores) == {"noise", "signal"} and scores["signal"] > scores["noise"]
    # one readout: the probe of LinearProbe.select itself
    single, alone = select_readout(["A", "B", "C"], cfg, signal, y_tr, y_va, seed=1)
    plain = LinearProbe(["A", "B", "C"], cfg, seed=1)
    plain.select(*signal["signal"][:1], y_tr, signal["signal"][1], y_va)
    x_te = informative(y_va)
    assert single == "signal" and np.allclose(alone.predict_proba(x_te), plain.predict_proba(x_te))
    assert alone.evaluate_test(x_te, y_va).to_dict()["selection"]["readout"] == "signal"
    with pytest.raises(ValueError, match="at least one readout"):
        select_readout(["A", "B", "C"], cfg, {}, y_tr, y_va)


def test_lbfgs_probe_is_the_penalised_logistic_regression() -> None:
    """The converged L-BFGS probe equals scikit-learn's L2 logistic regression at C = 1/(wd n)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xtr, ytr = _features(300, 0, sep=0.5, dim=64)
    xva, yva = _features(100, 1, sep=0.5, dim=64)
    cfg = ProbeConfig(solver="lbfgs", weight_decays=[0.1], cv_folds=0)
    probe = LinearProbe(CLASSES, cfg, seed=0)
    sel = probe.select(xtr, ytr, xva, yva)
    assert sel.weight_decay == 0.1 and sel.best_epoch == 0 and sel.selected_on == "val"
    assert np.isnan(sel.cv_loss)
    scaler = StandardScaler().fit(xtr.astype(np.float64))
    ref = LogisticRegression(C=1 / (0.1 * len(ytr)), tol=1e-10, max_iter=5000)
    ref.fit(scaler.transform(xtr.astype(np.float64)), ytr)
    expected = ref.predict_proba(scaler.transform(xva.astype(np.float64)))
    assert np.abs(probe.predict_proba(xva) - expected).max() < 1e-3
    # the decay with the best validation cross-entropy is kept, as for the Adam probe
    grid = LinearProbe(CLASSES, ProbeConfig(solver="lbfgs", weight_decays=[3.0, 0.1, 1e-3], cv_folds=0))
    chosen = grid.select(xtr, ytr, xva, yva)
    assert set(chosen.history) == {"wd=3", "wd=0.1", "wd=0.001"}
    best = max(chosen.history, key=lambda k: chosen.history[k][0])
    assert best == f"wd={chosen.weight_decay:g}"
    assert -chosen.val_loss == pytest.approx(chosen.history[best][0])


def test_lbfgs_cross_validation_chooses_the_decay_without_the_validation_labels() -> None:
    xtr, ytr = _features(300, 0, sep=0.5, dim=64)
    xva, yva = _features(100, 1, sep=0.5, dim=64)
    cfg = ProbeConfig(solver="lbfgs", cv_folds=3, weight_decays=[10.0, 0.3, 1e-3])
    a, b = LinearProbe(CLASSES, cfg, seed=0), LinearProbe(CLASSES, cfg, seed=0)
    sel = a.select(xtr, ytr, xva, yva)
    shuffled = np.random.default_rng(0).permutation(yva)  # other validation labels: same choice
    other = b.select(xtr, ytr, xva, shuffled)
    assert sel.selected_on == "cv" and np.isfinite(sel.cv_loss) and 0.5 < sel.cv_auc <= 1
    assert other.weight_decay == sel.weight_decay
    assert np.allclose(a.predict_proba(xva), b.predict_proba(xva))
    assert sel.val_loss != other.val_loss  # validation is still scored, and reported
    # the history holds each decay's cross-validated criterion; the best one is kept
    assert -sel.cv_loss == pytest.approx(max(v[0] for v in sel.history.values()))
    d = a.evaluate_test(xva, yva).to_dict()["selection"]
    assert d["selected_on"] == "cv" and d["cv_loss"] == pytest.approx(sel.cv_loss)


def test_lbfgs_cross_validation_falls_back_to_validation_for_a_single_record_class() -> None:
    xtr, ytr = _features(300, 0, sep=0.5, dim=64)
    xva, yva = _features(100, 1, sep=0.5, dim=64)
    ytr = ytr.copy()
    ytr[ytr == 4] = 0
    ytr[0] = 4  # one HYP record: no 2-fold stratification possible
    cfg = ProbeConfig(solver="lbfgs", cv_folds=5, weight_decays=[1.0, 1e-2])
    sel = LinearProbe(CLASSES, cfg).select(xtr, ytr, xva, yva)
    assert sel.selected_on == "val" and np.isnan(sel.cv_loss)
    # two records of the rarest class: two folds instead of five
    ytr[1] = 4
    assert len(LinearProbe(CLASSES, cfg)._cv_splits(ytr)) == 2


def test_select_readout_compares_cross_validated_probes_by_their_cv_loss() -> None:
    from etp.eval.linear_probe import select_readout

    rng = np.random.default_rng(3)
    y_tr, y_va = rng.integers(0, 3, 120), rng.integers(0, 3, 60)

    def informative(y: np.ndarray) -> np.ndarray:
        return np.eye(3)[y] * 3 + rng.normal(size=(len(y), 3))

    readouts = {
        "noise": (rng.normal(size=(120, 3)), rng.normal(size=(60, 3))),
        "signal": (informative(y_tr), informative(y_va)),
    }
    cfg = ProbeConfig(solver="lbfgs", cv_folds=3, weight_decays=[0.1])
    name, probe = select_readout(["A", "B", "C"], cfg, readouts, y_tr, y_va)
    assert name == "signal" and probe.selection is not None
    assert probe.selection.readout_scores["signal"] == pytest.approx(-probe.selection.cv_loss)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(solver="sgd"), "solver must be one of"),
        (dict(solver="lbfgs", cv_folds=1), "cv_folds must be 0"),
        (dict(solver="adam", cv_folds=3), "cv_folds needs solver lbfgs"),
        (dict(solver="lbfgs", max_iter=0), "max_iter must be >= 1"),
    ],
)
def test_bad_probe_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ProbeConfig(**kwargs)
