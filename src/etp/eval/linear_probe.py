"""Linear evaluation (paper Table 1): a linear classifier on frozen ECG features.

Protocol, with every choice made on the validation split only:

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
   With ``inits > 1`` this is repeated from several seeded initialisations and minibatch orders
   (each choosing its own weight decay and epoch on validation) and the probe is the mean of
   their weights and biases: still one linear classifier, with less of the run-to-run spread
   that early stopping on a small validation fold brings (``benchmarks/dev_validation.py probe``).
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
from sklearn.preprocessing import StandardScaler
from torch import nn

from etp.eval.metrics import classification_metrics

log = logging.getLogger(__name__)


#: validation criteria of the probe: cross-entropy (lower is better) or macro AUC
SELECT_BY = ("loss", "auc")


@dataclass
class ProbeConfig:
    """Hyper-parameters of the linear probe (the grid is searched on validation only)."""

    lr: float = 1e-3
    batch_size: int = 32
    max_epochs: int = 100
    patience: int = 10
    weight_decays: tuple[float, ...] = (0.0, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)
    label_fraction: float = 1.0
    seed: int = 0
    device: str = "cpu"
    select_by: str = "loss"
    #: independently initialised probes whose weights are averaged (1: the paper's single probe)
    inits: int = 1

    def __post_init__(self) -> None:
        if self.select_by not in SELECT_BY:
            raise ValueError(
                f"probe select_by must be one of {SELECT_BY}, got {self.select_by!r}"
            )
        if int(self.inits) < 1:
            raise ValueError(f"probe inits must be >= 1, got {self.inits}")


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
    #: per initialisation (``inits > 1``): its chosen weight decay and epoch; the fields above
    #: then hold their medians
    weight_decays: list[float] = field(default_factory=list)
    best_epochs: list[int] = field(default_factory=list)
    #: with :func:`select_readout`: the chosen feature readout and each candidate's validation
    #: score (minus the cross-entropy, or the macro AUC, as ``select_by``)
    readout: str | None = None
    readout_scores: dict[str, float] = field(default_factory=dict)


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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no per-record arrays)."""
        sel = self.selection
        return {
            "config": asdict(self.config),
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
                "history": sel.history,
            },
            "val": self.val_metrics,
            "test": self.test_metrics,
        }


def _cross_entropy(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    p = probs[np.arange(len(y)), y]
    return float(-np.mean(np.log(np.clip(p, 1e-12, None))))


def _init_seed(seed: int, k: int) -> int:
    """Seed of the probe's ``k``-th initialisation (k >= 1), derived from the probe seed."""
    return int(np.random.SeedSequence([int(seed), int(k)]).generate_state(1)[0])


def _mean_linear(models: Sequence[nn.Linear]) -> nn.Linear:
    """One linear layer whose weight and bias are the means of ``models``' (same shapes)."""
    out = copy.deepcopy(models[0])
    with torch.no_grad():
        out.weight.copy_(torch.stack([m.weight for m in models]).mean(0))
        out.bias.copy_(torch.stack([m.bias for m in models]).mean(0))
    return out


def _val_score(metrics: dict[str, Any]) -> float:
    auc = metrics.get("auc", math.nan)
    return float(auc) if np.isfinite(auc) else float(metrics.get("acc", 0.0))


class LinearProbe:
    """A linear classifier on frozen features: :meth:`select` on train/val, then one test.

    Example::

        probe = LinearProbe(classes, ProbeConfig(label_fraction=0.1, seed=0))
        probe.select(x_train, y_train, x_val, y_val)   # standardise, subsample, grid, early stop
        result = probe.evaluate_test(x_test, y_test)  # the only look at the test split
    """

    def __init__(self, classes: Sequence[str], config: ProbeConfig | None = None) -> None:
        self.classes = list(classes)
        self.config = config or ProbeConfig()
        self.scaler: StandardScaler | None = None
        self.model: nn.Linear | None = None
        self.selection: ProbeSelection | None = None
        self._tested = False

    # -- training -----------------------------------------------------------------------------

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        assert self.scaler is not None
        z = self.scaler.transform(np.asarray(x, dtype=np.float64)).astype(np.float32)
        return torch.from_numpy(z).to(self.config.device)

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
            model = nn.Linear(xt.shape[1], len(self.classes)).to(cfg.device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=wd)
        gen = torch.Generator().manual_seed(seed)
        loss_fn = nn.CrossEntropyLoss()
        best = (-math.inf, 0, copy.deepcopy(model.state_dict()), {})
        curve: list[float] = []
        stale = 0
        for epoch in range(1, cfg.max_epochs + 1):
            model.train()
            order = torch.randperm(xt.shape[0], generator=gen).to(cfg.device)
            for start in range(0, xt.shape[0], cfg.batch_size):
                b = order[start : start + cfg.batch_size]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xt[b]), yt[b])
                loss.backward()
                opt.step()
            pv = self._probs(model, xv)
            metrics = classification_metrics(yv, pv, self.classes, warn=False)
            metrics["loss"] = _cross_entropy(yv, pv)
            score = -metrics["loss"] if cfg.select_by == "loss" else _val_score(metrics)
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
        sub = stratified_fraction(y_train, cfg.label_fraction, cfg.seed, len(self.classes))
        xt = self._tensor(np.asarray(x_train)[sub])
        yt = torch.from_numpy(y_train[sub]).to(cfg.device)
        xv = self._tensor(x_val)
        history: dict[str, list[float]] = {}
        chosen: list[tuple[float, int, nn.Linear, dict[str, Any]]] = []
        for k in range(int(cfg.inits)):
            # init 0 is the single probe of inits=1; the others draw fresh seeds from it
            seed = cfg.seed if k == 0 else _init_seed(cfg.seed, k)
            best: tuple[float, float, int, nn.Linear, dict[str, Any]] | None = None
            for wd in cfg.weight_decays:
                model, epoch, score, metrics, curve = self._fit_one(xt, yt, xv, y_val, wd, seed)
                history[f"wd={wd:g}" + (f",init={k}" if k else "")] = curve
                log.debug(
                    "probe init %d wd=%g: best val score %.4f at epoch %d", k, wd, score, epoch
                )
                if best is None or score > best[0]:
                    best = (score, wd, epoch, model, metrics)
            assert best is not None
            chosen.append(best[1:])
        if len(chosen) == 1:
            wd, epoch, model, metrics = chosen[0]
        else:
            model = _mean_linear([c[2] for c in chosen])
            pv = self._probs(model, xv)
            metrics = classification_metrics(y_val, pv, self.classes, warn=False)
            metrics["loss"] = _cross_entropy(y_val, pv)
            wd = float(np.median([c[0] for c in chosen]))
            epoch = int(round(float(np.median([c[1] for c in chosen]))))
        self.model = model
        self.selection = ProbeSelection(
            weight_decay=float(wd),
            best_epoch=int(epoch),
            val_auc=float(metrics.get("auc", math.nan)),
            val_metrics=metrics,
            n_train=int(sub.size),
            train_indices=sub,
            history=history,
            select_by=cfg.select_by,
            val_loss=float(metrics["loss"]),
            weight_decays=[float(c[0]) for c in chosen],
            best_epochs=[int(c[1]) for c in chosen],
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
) -> ProbeResult:
    """Select on train/val, then evaluate the test split once."""
    probe = LinearProbe(classes, config)
    probe.select(x_train, y_train, x_val, y_val)
    return probe.evaluate_test(x_test, y_test)


def select_readout(
    classes: Sequence[str],
    config: ProbeConfig,
    readouts: Mapping[str, tuple[np.ndarray, np.ndarray]],
    y_train: np.ndarray,
    y_val: np.ndarray,
) -> tuple[str, LinearProbe]:
    """Choose among feature readouts of one encoder (name -> (train, validation) features) on
    validation, like the weight decay: one probe per readout, each selected as usual, and the
    readout whose probe has the best validation criterion (``config.select_by``) wins; ties go to
    the first. Returns its name and its selected probe (test it with its own test features)."""
    if not readouts:
        raise ValueError("select_readout needs at least one readout")
    best: tuple[float, str, LinearProbe] | None = None
    scores: dict[str, float] = {}
    for name, (x_train, x_val) in readouts.items():
        probe = LinearProbe(classes, config)
        sel = probe.select(x_train, y_train, x_val, y_val)
        score = -sel.val_loss if config.select_by == "loss" else _val_score(sel.val_metrics)
        scores[name] = float(score)
        if best is None or score > best[0]:
            best = (score, name, probe)
    assert best is not None
    _, name, probe = best
    assert probe.selection is not None
    probe.selection.readout = name
    probe.selection.readout_scores = scores
    return name, probe
