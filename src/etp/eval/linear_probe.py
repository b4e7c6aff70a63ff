"""Linear evaluation (paper Table 1): a linear classifier on frozen ECG features.

Protocol, with every choice made on the validation split (or by cross-validation inside the
training split) and never on the test split:

1. Features of the frozen encoder are extracted once (:mod:`etp.eval.features`).
2. They are standardised with the statistics of the training split's features (no labels used).
3. A label fraction (1 %, 10 %, 100 %) of the training split is drawn, stratified and seeded.
4. For each weight decay of a small grid, a randomly initialised ``nn.Linear`` is trained with
   Adam, batch size 32 (the paper's) and cross-entropy; after every epoch the validation
   cross-entropy (``select_by="loss"``, the default) or macro AUC (``"auc"``) is computed and
   training stops after ``patience`` epochs without improvement. The epoch and the weight decay
   with the best validation score are kept (:meth:`LinearProbe.select`). The cross-entropy is the
   steadier criterion on small validation folds: a handful of records of a rare class move the
   macro AUC in steps, and picking the best of ~100 epochs x 8 decays by it overfits the fold
   (in development runs, folds 1-9 only, choosing by cross-entropy raised the test AUC in 8 of 8
   model sets, by 0.4 to 3.6 points: ``benchmarks/dev_rotations.py``).
   With ``solver="lbfgs"`` there are no epochs: for each weight decay the L2-penalised
   cross-entropy is minimised to convergence by full-batch L-BFGS (a multinomial logistic
   regression), and with ``cv_folds=k`` the decay is chosen by stratified k-fold
   cross-validation over the training records instead of on the validation split, whose ~80
   records (one PTB-XL fold here) make a noisy judge of eight decays. This is the shipped
   protocol (:class:`ProbeConfig`'s defaults, those of ``configs/benchmark-ptbxl.yaml``).
5. Only then is the test split scored — once (:meth:`LinearProbe.evaluate_test` refuses a second
   call). Nothing is tuned on test: no epoch choice, no decision thresholds.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from torch import nn

from etp.config import config_field
from etp.errors import ConfigError
from etp.eval.metrics import classification_metrics

log = logging.getLogger(__name__)


#: validation criteria of the probe: cross-entropy (lower is better) or macro AUC
SELECT_BY = ("loss", "auc")
#: how the probe is fitted: minibatch Adam with early stopping on validation (the paper's), or
#: full-batch L-BFGS to the optimum of the L2-penalised cross-entropy (no epochs to choose)
SOLVERS = ("adam", "lbfgs")


_f = config_field


@dataclass
class ProbeConfig:
    """Linear-probe settings: the ``probe:`` section of ``etp benchmark`` and ``etp evaluate``
    configs. The defaults are the shipped protocol (``configs/benchmark-ptbxl.yaml``); every
    choice is made on the validation split or by cross-validation over the training split."""

    lr: float = _f(1e-3, "Adam learning rate of the linear classifier (adam)")
    batch_size: int = _f(32, "minibatch size (adam; paper: 32)")
    max_epochs: int = _f(100, "maximum epochs; early stopping on the validation criterion (adam)")
    patience: int = _f(10, "epochs without validation improvement before stopping (adam)")
    weight_decays: list[float] = _f(
        [0.0, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0], "weight-decay (L2) grid searched"
    )
    label_fractions: list[float] = _f(
        [0.01, 0.1, 1.0], "fractions of the training labels (one probe per fraction)"
    )
    select_by: str = _f(
        "loss", "criterion for epoch, weight decay and readout: 'loss' (cross-entropy) or 'auc'"
    )
    solver: str = _f(
        "lbfgs",
        "'lbfgs' (full-batch L-BFGS to the optimum of the L2-penalised cross-entropy: a logistic "
        "regression) or 'adam' (minibatch Adam, epoch chosen on validation: the paper's)",
    )
    cv_folds: int = _f(
        5,
        "k >= 2 (lbfgs): weight decay and readout by stratified k-fold cross-validation over the "
        "training split; 0: chosen on the validation split",
    )
    max_iter: int = _f(500, "most L-BFGS iterations per weight decay (lbfgs)")
    pooling: list[str] = _f(
        ["avg", "avg+max"],
        "readouts of the frozen encoder the probe may read, chosen per fit like the weight "
        "decay: 'avg' (the 512-d pretrained output), 'avg+max' (average and maximum over time, "
        "1024-d)",
    )

    def __post_init__(self) -> None:
        """The checks of every probe setting (a ConfigError naming the ``probe.`` key)."""
        from etp.models.resnet1d import check_poolings

        if self.select_by not in SELECT_BY:
            raise ConfigError(
                f"probe.select_by must be one of {SELECT_BY}, got {self.select_by!r}"
            )
        if self.solver not in SOLVERS:
            raise ConfigError(f"probe.solver must be one of {SOLVERS}, got {self.solver!r}")
        if int(self.cv_folds) == 1 or int(self.cv_folds) < 0:
            raise ConfigError(
                f"probe.cv_folds must be 0 (validation) or >= 2, got {self.cv_folds}"
            )
        if int(self.cv_folds) and self.solver != "lbfgs":
            raise ConfigError(
                "probe.cv_folds needs solver lbfgs: an Adam probe chooses its epoch on the "
                "validation split (set probe.cv_folds=0)"
            )
        for key in ("max_iter", "max_epochs", "patience", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"probe.{key} must be >= 1, got {getattr(self, key)}")
        if not self.weight_decays or any(float(d) < 0 for d in self.weight_decays):
            raise ConfigError(
                f"probe.weight_decays: expected a non-empty list of decays >= 0, got "
                f"{self.weight_decays}"
            )
        if not self.label_fractions:
            raise ConfigError("probe.label_fractions: give at least one fraction, e.g. [1.0]")
        for frac in self.label_fractions:
            if not 0 < float(frac) <= 1:
                raise ConfigError(f"probe.label_fractions: {frac} is not in (0, 1]")
        self.pooling = list(check_poolings(list(self.pooling), "probe.pooling"))

    @property
    def cross_validated(self) -> bool:
        """Whether the decay and readout are chosen by cross-validation over training."""
        return self.solver == "lbfgs" and bool(self.cv_folds)


def stratified_fraction(
    y: np.ndarray, fraction: float, seed: int = 0, n_classes: int | None = None
) -> np.ndarray:
    """Sorted indices of a stratified, seeded ``fraction`` of ``y`` (at least one per class).

    Each class keeps ``round(fraction * count)`` records, but at least one while it has any, so a
    1 % draw of a rare class is not empty.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    y = np.asarray(y).astype(np.int64).ravel()
    if fraction >= 1.0:
        return np.arange(y.size)
    rng = np.random.default_rng(seed)
    n_classes = int(n_classes if n_classes is not None else (y.max() + 1 if y.size else 0))
    keep: list[np.ndarray] = []
    for c in range(n_classes):
        members = np.flatnonzero(y == c)
        if members.size == 0:
            continue
        k = min(members.size, max(1, int(round(fraction * members.size))))
        keep.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


@dataclass
class ProbeSelection:
    """What :meth:`LinearProbe.select` chose, from train and validation data only."""

    weight_decay: float
    best_epoch: int
    val_auc: float
    val_metrics: dict[str, Any]
    n_train: int
    train_indices: np.ndarray
    #: "wd=..." -> validation score per epoch (minus the cross-entropy, or the macro AUC)
    history: dict[str, list[float]] = field(default_factory=dict)
    select_by: str = "loss"
    val_loss: float = math.nan
    #: the chosen weight decay and epoch as one-element lists (the results' layout)
    weight_decays: list[float] = field(default_factory=list)
    best_epochs: list[int] = field(default_factory=list)
    #: with :func:`select_readout`: the chosen feature readout and each candidate's validation
    #: score (minus the cross-entropy, or the macro AUC, as ``select_by``)
    readout: str | None = None
    readout_scores: dict[str, float] = field(default_factory=dict)
    #: where the weight decay was chosen: ``"val"`` or ``"cv"`` (k-fold over the training split)
    selected_on: str = "val"
    #: with ``selected_on="cv"``: the chosen decay's cross-validated criterion (cross-entropy
    #: and macro AUC of the pooled out-of-fold predictions)
    cv_loss: float = math.nan
    cv_auc: float = math.nan


@dataclass
class ProbeResult:
    """Validation and (single) test evaluation of a selected linear probe."""

    classes: list[str]
    config: ProbeConfig
    selection: ProbeSelection
    val_metrics: dict[str, Any]
    test_metrics: dict[str, Any]
    test_probabilities: np.ndarray
    test_labels: np.ndarray
    label_fraction: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no per-record arrays)."""
        sel = self.selection
        return {
            "config": {
                **asdict(self.config), "label_fraction": self.label_fraction, "seed": self.seed
            },
            "selection": {
                "weight_decay": sel.weight_decay,
                "best_epoch": sel.best_epoch,
                "val_auc": sel.val_auc,
                "val_loss": sel.val_loss,
                "select_by": sel.select_by,
                "weight_decays": sel.weight_decays,
                "best_epochs": sel.best_epochs,
                "n_train": sel.n_train,
                "readout": sel.readout,
                "readout_scores": sel.readout_scores,
                "selected_on": sel.selected_on,
                "cv_loss": sel.cv_loss,
                "cv_auc": sel.cv_auc,
                "history": sel.history,
            },
            "val": self.val_metrics,
            "test": self.test_metrics,
        }


def _cross_entropy(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    p = probs[np.arange(len(y)), y]
    return float(-np.mean(np.log(np.clip(p, 1e-12, None))))


def _lbfgs_path(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decays: Sequence[float], max_iter: int
) -> dict[float, nn.Linear]:
    """Multinomial logistic regressions minimising mean cross-entropy + wd/2 * ||W||^2 (bias not
    penalised, as in scikit-learn) for each weight decay, by full-batch L-BFGS in float64, each
    warm-started from the solution of the next stronger decay."""
    x64 = x.double()
    w = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    out: dict[float, nn.Linear] = {}
    for wd in sorted({float(d) for d in weight_decays}, reverse=True):
        opt = torch.optim.LBFGS(
            [w, b], lr=1.0, max_iter=int(max_iter), history_size=20, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(x64 @ w + b, y) + 0.5 * wd * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        layer = nn.Linear(x.shape[1], n_classes).to(x.device)
        with torch.no_grad():
            layer.weight.copy_(w.detach().T)
            layer.bias.copy_(b.detach())
        out[wd] = layer
    return out


def _val_score(metrics: Mapping[str, Any]) -> float:
    auc = metrics.get("auc", math.nan)
    return float(auc) if np.isfinite(auc) else float(metrics.get("acc", 0.0))


def _criterion(metrics: Mapping[str, Any], select_by: str) -> float:
    """The selection criterion of ``metrics`` (higher is better): minus the cross-entropy
    (``metrics["loss"]``) or the macro AUC, as ``select_by``."""
    return float(-metrics["loss"] if select_by == "loss" else _val_score(metrics))


class LinearProbe:
    """A linear classifier on frozen features: :meth:`select` on train/val, then one test.

    Example::

        probe = LinearProbe(classes, ProbeConfig(), label_fraction=0.1, seed=0)
        probe.select(x_train, y_train, x_val, y_val)   # standardise, subsample, grid, early stop
        result = probe.evaluate_test(x_test, y_test)  # the only look at the test split
    """

    def __init__(
        self,
        classes: Sequence[str],
        config: ProbeConfig | None = None,
        label_fraction: float = 1.0,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        self.classes = list(classes)
        self.config = config or ProbeConfig()
        self.label_fraction = float(label_fraction)
        self.seed = int(seed)
        self.device = str(device)
        self.scaler: StandardScaler | None = None
        self.model: nn.Linear | None = None
        self.selection: ProbeSelection | None = None
        self._tested = False

    # -- training -----------------------------------------------------------------------------

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        assert self.scaler is not None
        z = self.scaler.transform(np.asarray(x, dtype=np.float64)).astype(np.float32)
        return torch.from_numpy(z).to(self.device)

    def _probs(self, model: nn.Linear, x: torch.Tensor) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            return torch.softmax(model(x).float(), dim=1).cpu().numpy()

    def _fit_one(
        self,
        xt: torch.Tensor,
        yt: torch.Tensor,
        xv: torch.Tensor,
        yv: np.ndarray,
        wd: float,
        seed: int,
    ) -> tuple[nn.Linear, int, float, dict[str, Any], list[float]]:
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = nn.Linear(xt.shape[1], len(self.classes)).to(self.device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=wd)
        gen = torch.Generator().manual_seed(seed)
        loss_fn = nn.CrossEntropyLoss()
        best = (-math.inf, 0, copy.deepcopy(model.state_dict()), {})
        curve: list[float] = []
        stale = 0
        for epoch in range(1, cfg.max_epochs + 1):
            model.train()
            order = torch.randperm(xt.shape[0], generator=gen).to(self.device)
            for start in range(0, xt.shape[0], cfg.batch_size):
                b = order[start : start + cfg.batch_size]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xt[b]), yt[b])
                loss.backward()
                opt.step()
            score, metrics = self._scored(yv, self._probs(model, xv))
            curve.append(score)
            if score > best[0]:
                best = (score, epoch, copy.deepcopy(model.state_dict()), metrics)
                stale = 0
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
        model.load_state_dict(best[2])
        return model, best[1], best[0], best[3], curve

    def select(
        self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray
    ) -> ProbeSelection:
        """Fit the probe on (a fraction of) train; choose weight decay and epoch on validation."""
        cfg = self.config
        y_train = np.asarray(y_train).astype(np.int64)
        y_val = np.asarray(y_val).astype(np.int64)
        if len(x_train) != len(y_train) or len(x_val) != len(y_val):
            raise ValueError("features and labels differ in length")
        if len(x_train) == 0 or len(x_val) == 0:
            raise ValueError("the linear probe needs non-empty train and validation splits")
        for name, y in (("train", y_train), ("val", y_val)):
            if y.min() < 0 or y.max() >= len(self.classes):
                raise ValueError(f"{name} labels must be class indices in [0, {len(self.classes)})")
        self.scaler = StandardScaler().fit(np.asarray(x_train, dtype=np.float64))
        sub = stratified_fraction(y_train, self.label_fraction, self.seed, len(self.classes))
        xt = self._tensor(np.asarray(x_train)[sub])
        yt = torch.from_numpy(y_train[sub]).to(self.device)
        xv = self._tensor(x_val)
        if cfg.solver == "lbfgs":
            return self._select_lbfgs(xt, yt, xv, y_val, sub)
        history: dict[str, list[float]] = {}
        best: tuple[float, float, int, nn.Linear, dict[str, Any]] | None = None
        for wd in cfg.weight_decays:
            model, epoch, score, metrics, curve = self._fit_one(xt, yt, xv, y_val, wd, self.seed)
            history[f"wd={wd:g}"] = curve
            log.debug("probe wd=%g: best val score %.4f at epoch %d", wd, score, epoch)
            if best is None or score > best[0]:
                best = (score, wd, epoch, model, metrics)
        assert best is not None
        _, wd, epoch, model, metrics = best
        self.model = model
        self.selection = self._selection(
            wd, epoch, metrics, sub, history, weight_decays=[float(wd)], best_epochs=[int(epoch)]
        )
        return self.selection

    def _selection(
        self,
        wd: float,
        epoch: int,
        metrics: dict[str, Any],
        sub: np.ndarray,
        history: dict[str, list[float]],
        **more: Any,
    ) -> ProbeSelection:
        """The :class:`ProbeSelection` of a chosen decay and epoch with validation ``metrics``."""
        return ProbeSelection(
            weight_decay=float(wd),
            best_epoch=int(epoch),
            val_auc=float(metrics.get("auc", math.nan)),
            val_metrics=metrics,
            n_train=int(sub.size),
            train_indices=sub,
            history=history,
            select_by=self.config.select_by,
            val_loss=float(metrics["loss"]),
            **more,
        )

    def _scored(self, y: np.ndarray, probs: np.ndarray) -> tuple[float, dict[str, Any]]:
        """The selection criterion (higher is better) and the metrics of ``probs``."""
        metrics = classification_metrics(y, probs, self.classes, warn=False)
        metrics["loss"] = _cross_entropy(y, probs)
        return _criterion(metrics, self.config.select_by), metrics

    def _cv_splits(self, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Stratified k-fold splits of the probe's training records; fewer folds when a class has
        fewer than ``cv_folds`` records, none (choose on validation) below two."""
        k = int(self.config.cv_folds)
        counts = np.bincount(y, minlength=len(self.classes))
        k = min(k, int(counts[counts > 0].min())) if k else 0
        if k < 2:
            if self.config.cv_folds:
                log.debug(
                    "probe: a class has a single training record, too few to cross-validate; "
                    "choosing the weight decay on the validation split"
                )
            return []
        skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=self.seed)
        return list(skf.split(np.zeros(len(y)), y))

    def _select_lbfgs(
        self,
        xt: torch.Tensor,
        yt: torch.Tensor,
        xv: torch.Tensor,
        y_val: np.ndarray,
        sub: np.ndarray,
    ) -> ProbeSelection:
        """Converged L2-penalised probes for every weight decay; the decay chosen by
        cross-validation over the training records (``cv_folds``) or on validation."""
        cfg = self.config
        n_classes = len(self.classes)
        y_sub = yt.cpu().numpy()
        splits = self._cv_splits(y_sub)
        history: dict[str, list[float]] = {}
        cv: dict[float, tuple[float, dict[str, Any]]] = {}
        if splits:
            oof = {float(d): np.zeros((len(y_sub), n_classes)) for d in cfg.weight_decays}
            for fit_idx, held_idx in splits:
                fi = torch.from_numpy(fit_idx).to(self.device)
                path = _lbfgs_path(xt[fi], yt[fi], n_classes, cfg.weight_decays, cfg.max_iter)
                hi = torch.from_numpy(held_idx).to(self.device)
                for wd, layer in path.items():
                    oof[wd][held_idx] = self._probs(layer, xt[hi])
            cv = {wd: self._scored(y_sub, p) for wd, p in oof.items()}
        path = _lbfgs_path(xt, yt, n_classes, cfg.weight_decays, cfg.max_iter)
        val = {wd: self._scored(y_val, self._probs(layer, xv)) for wd, layer in path.items()}
        scores = cv or val
        best_wd: float | None = None
        for d in cfg.weight_decays:  # ties go to the first decay of the grid
            wd = float(d)
            history[f"wd={wd:g}"] = [scores[wd][0]]
            if best_wd is None or scores[wd][0] > scores[best_wd][0]:
                best_wd = wd
        assert best_wd is not None
        self.model = path[best_wd]
        metrics = val[best_wd][1]
        self.selection = self._selection(
            best_wd, 0, metrics, sub, history,
            weight_decays=[best_wd],
            best_epochs=[0],
            selected_on="cv" if splits else "val",
            cv_loss=float(cv[best_wd][1]["loss"]) if splits else math.nan,
            cv_auc=float(cv[best_wd][1].get("auc", math.nan)) if splits else math.nan,
        )
        return self.selection

    # -- inference ----------------------------------------------------------------------------

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (n, C) of the selected probe."""
        if self.model is None:
            raise RuntimeError("call select() before predicting")
        return self._probs(self.model, self._tensor(x))

    def evaluate_test(self, x_test: np.ndarray, y_test: np.ndarray) -> ProbeResult:
        """Score the test split with the selected probe — allowed exactly once."""
        if self.selection is None or self.model is None:
            raise RuntimeError("call select() on train/val before evaluate_test()")
        if self._tested:
            raise RuntimeError("the test split was already evaluated; select again for a new run")
        self._tested = True
        y = np.asarray(y_test).astype(np.int64)
        probs = self.predict_proba(x_test)
        return ProbeResult(
            classes=self.classes,
            config=self.config,
            selection=self.selection,
            val_metrics=self.selection.val_metrics,
            test_metrics=classification_metrics(y, probs, self.classes),
            test_probabilities=probs,
            test_labels=y,
            label_fraction=self.label_fraction,
            seed=self.seed,
        )


def run_linear_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    classes: Sequence[str],
    config: ProbeConfig | None = None,
    label_fraction: float = 1.0,
    seed: int = 0,
) -> ProbeResult:
    """Select on train/val, then evaluate the test split once."""
    probe = LinearProbe(classes, config, label_fraction, seed)
    probe.select(x_train, y_train, x_val, y_val)
    return probe.evaluate_test(x_test, y_test)


def select_readout(
    classes: Sequence[str],
    config: ProbeConfig,
    readouts: Mapping[str, tuple[np.ndarray, np.ndarray]],
    y_train: np.ndarray,
    y_val: np.ndarray,
    label_fraction: float = 1.0,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[str, LinearProbe]:
    """Choose among feature readouts of one encoder (name -> (train, validation) features) on
    validation, like the weight decay: one probe per readout, each selected as usual, and the
    readout whose probe has the best validation criterion (``config.select_by``) wins; ties go to
    the first. A probe whose decay was cross-validated (``cv_folds``) is compared by its
    cross-validated criterion instead, on the training records that chose the decay. Returns its
    name and its selected probe (test it with its own test features)."""
    if not readouts:
        raise ValueError("select_readout needs at least one readout")
    best: tuple[float, str, LinearProbe] | None = None
    scores: dict[str, float] = {}
    for name, (x_train, x_val) in readouts.items():
        probe = LinearProbe(classes, config, label_fraction, seed, device)
        sel = probe.select(x_train, y_train, x_val, y_val)
        # a cross-validated decay is compared on the same records and criterion that chose it
        cv = {"loss": sel.cv_loss, "auc": sel.cv_auc}
        score = _criterion(cv if sel.selected_on == "cv" else sel.val_metrics, config.select_by)
        scores[name] = score
        if best is None or score > best[0]:
            best = (score, name, probe)
    assert best is not None
    _, name, probe = best
    assert probe.selection is not None
    probe.selection.readout = name
    probe.selection.readout_scores = scores
    return name, probe
