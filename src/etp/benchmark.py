"""One command for the paper's tables: pretrain (or reuse) -> linear probe -> zero-shot -> retrieval.

``etp benchmark --config configs/benchmark-ptbxl.yaml`` runs, for every method (ETP, SimCLR,
random init), every seed and every *rotation*, the whole protocol, then pools and writes
``results.md`` (Tables 1-3 in the paper's layout, mean ± std over seeds and bootstrap 95 % CIs),
``results.json`` and PNG plots.

Honesty is structural here:

* A rotation names one test fold and one validation fold; the pretraining of that rotation gets
  the test fold as ``data.exclude_folds`` (the training loop asserts that no record or patient of
  it is read), and the validation fold is the only data used for model selection (best epoch by
  validation loss, linear-probe epochs and weight decay, the zero-shot prompt variant).
* Test predictions are computed once per rotation, after every choice is made, and are only
  pooled and scored at the end.

With ``rotate_folds: true`` every fold is the test fold once (out-of-fold predictions pooled),
which is what small data needs: PTB-XL ids 1-999 hold ~100 records per fold.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from etp.config import ModelConfig, PretrainConfig, config_field, from_dict, to_dict
from etp.data.prepare import PrepareConfig
from etp.errors import ConfigError, DataError
from etp.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

METHODS = ("etp", "simclr", "random")


_f = config_field


@dataclass
class ZeroShotVariant:
    """One way of building class prompts (compared in the benchmark, chosen on validation)."""

    name: str = _f("en", "label of the variant in tables")
    languages: list[str] = _f(["en"], "prompt languages from the prompt table (en, de, sv)")
    synonyms: bool = _f(False, "use every name of a class, not only the first")
    ensemble: bool = _f(False, "average the table's ensemble templates")
    templates: list[str] | None = _f(None, "English templates overriding the table's")
    via_reports: bool = _f(
        False,
        "class embeddings from the training folds' reports nearest to the prompts "
        "(report prototypes; no label read) instead of the prompts' own",
    )


@dataclass
class ProbeSection:
    """Linear-probe settings (every choice on the validation split)."""

    lr: float = _f(1e-3, "Adam learning rate of the linear classifier")
    batch_size: int = _f(32, "batch size (paper: 32)")
    max_epochs: int = _f(100, "maximum epochs; early stopping on the validation criterion")
    patience: int = _f(10, "epochs without validation improvement before stopping")
    weight_decays: list[float] = _f(
        [0.0, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0], "Adam weight-decay grid searched on validation"
    )
    label_fractions: list[float] = _f([0.01, 0.1, 1.0], "fractions of the training labels")
    select_by: str = _f(
        "loss", "validation criterion for epoch and weight decay: 'loss' (cross-entropy) or 'auc'"
    )
    inits: int = _f(
        1, "independently initialised probes, each selected on validation, weights averaged "
        "(adam only)"
    )
    solver: str = _f(
        "adam",
        "'adam' (minibatch Adam, epoch chosen on validation; the paper's) or 'lbfgs' (full-batch "
        "L-BFGS to the optimum of the L2-penalised cross-entropy: a logistic regression)",
    )
    cv_folds: int = _f(
        0,
        "0: weight decay (and readout) chosen on the validation split; k >= 2 (lbfgs): by "
        "stratified k-fold cross-validation over the training split",
    )
    max_iter: int = _f(500, "most L-BFGS iterations per weight decay (lbfgs)")
    pooling: list[str] = _f(
        ["avg"],
        "readouts of the frozen encoder the probe may read, chosen per fit on validation like the "
        "weight decay: 'avg' (the 512-d pretrained output), 'avg+max' (average and maximum over "
        "time, 1024-d)",
    )


@dataclass
class TransferTarget:
    """A second dataset evaluated with the models pretrained on the main one (e.g. CPSC2018)."""

    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    linear_probe: bool = _f(True, "linear probe on the target's train/val/test split")
    zero_shot: bool = _f(True, "zero-shot on the target's test split")
    model_test_fold: int | None = _f(
        None, "use the models of the rotation with this test fold (default: the last rotation)"
    )


@dataclass
class BenchmarkConfig:
    """`etp benchmark --config FILE [key=value ...]`."""

    name: str = _f("benchmark", "title of the results")
    out_dir: str = _f("benchmarks/results/ptbxl", "where results.md/json and plots go")
    work_dir: str = _f("runs/benchmark", "models, features and per-run outputs (reused)")
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    methods: list[str] = _f(list(METHODS), "methods: etp, simclr, random")
    seeds: list[int] = _f([0], "seeds (pretraining, probe, bootstrap)")
    method_seeds: dict[str, list[int]] = _f(
        {}, "per-method seeds overriding `seeds` (e.g. fewer for a costly baseline)"
    )
    rotate_folds: bool = _f(False, "every fold is the test fold once; pooled out-of-fold")
    rotation_folds: list[int] | None = _f(None, "test folds of the rotation (default: all)")
    test_fold: int = _f(10, "test fold without rotation")
    val_fold: int = _f(9, "validation fold without rotation")
    model_choice: str = _f(
        "last", "'last' epoch (fixed schedule, the paper's) or 'best' (lowest validation loss)"
    )
    pretrain: dict[str, Any] = _f({}, "PretrainConfig mapping shared by all methods")
    method_pretrain: dict[str, Any] = _f({}, "per-method PretrainConfig mappings (override)")
    probe: ProbeSection = field(default_factory=ProbeSection)
    zero_shot: list[ZeroShotVariant] = _f([], "prompt variants compared (first = paper's)")
    zero_shot_default: str = _f(
        "",
        "name of the shipped prompt variant (one fixed choice for every rotation, made on "
        "validation folds beforehand), reported in its own table beside the per-rotation choice",
    )
    prompts: str | None = _f(None, "prompt table YAML (default: the packaged one)")
    retrieval: bool = _f(True, "ECG<->report Recall@K on each test fold")
    transfer: dict[str, TransferTarget] = _f({}, "other datasets evaluated with these models")
    bootstrap: int = _f(1000, "bootstrap resamples for the 95 % confidence intervals")
    precision: str = _f("bf16", "feature extraction precision: bf16 or fp32")
    views: str | int = _f(
        "auto",
        "test-time views of every ECG: 'auto' (each model's own: 3x0.75 for models trained on "
        "crops, else 1), '1' (the record as it is), or N / NxF (N crops of fraction F)",
    )
    plots: bool = _f(True, "write PNG plots")
    embedding_map: str = _f("pca", "2-D map of test ECG embeddings: pca or tsne")


def load_benchmark_config(path: str | None, overrides: Sequence[str] = ()) -> BenchmarkConfig:
    """Read and validate a benchmark config (every nested section checked)."""
    from etp.config import apply_overrides, read_yaml

    data = read_yaml(path) if path else {}
    data = apply_overrides(data, list(overrides))
    where = path or "overrides"
    try:
        cfg = from_dict(BenchmarkConfig, data)
        if isinstance(cfg.transfer, dict):
            cfg.transfer = {
                k: from_dict(TransferTarget, v, prefix=f"transfer.{k}") if isinstance(v, dict) else v
                for k, v in cfg.transfer.items()
            }
        cfg.zero_shot = [
            from_dict(ZeroShotVariant, v, prefix=f"zero_shot[{i}]") if isinstance(v, dict) else v
            for i, v in enumerate(cfg.zero_shot)
        ]
        validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return cfg


def validate(cfg: BenchmarkConfig) -> None:
    """Reject settings that cannot run, before any work is done."""
    unknown = sorted(set(cfg.methods) - set(METHODS))
    if unknown or not cfg.methods:
        raise ConfigError(f"methods: {unknown or 'empty'} (valid: {', '.join(METHODS)})")
    if not cfg.seeds:
        raise ConfigError("seeds: at least one seed is needed")
    if cfg.model_choice not in ("best", "last"):
        raise ConfigError(f"model_choice: {cfg.model_choice!r} is not 'best' or 'last'")
    if cfg.precision not in ("bf16", "fp32"):
        raise ConfigError(f"precision: {cfg.precision!r} is not 'bf16' or 'fp32'")
    cfg.views = str(cfg.views).strip()  # YAML reads `views: 1` as a number
    if cfg.views != "auto":
        from etp.data.views import Views

        Views.parse(cfg.views)
    if not cfg.rotate_folds and cfg.test_fold == cfg.val_fold:
        raise ConfigError("test_fold and val_fold must differ")
    from etp.eval.linear_probe import SELECT_BY
    from etp.models.resnet1d import check_poolings

    if cfg.probe.select_by not in SELECT_BY:
        raise ConfigError(
            f"probe.select_by: {cfg.probe.select_by!r} is not one of {', '.join(SELECT_BY)}"
        )
    if int(cfg.probe.inits) < 1:
        raise ConfigError(f"probe.inits: {cfg.probe.inits} must be >= 1")
    try:
        probe_config(cfg.probe, 1.0, 0)
    except ValueError as exc:
        raise ConfigError(str(exc).replace("probe ", "probe.", 1)) from exc
    check_poolings(cfg.probe.pooling, "probe.pooling")
    for frac in cfg.probe.label_fractions:
        if not 0 < frac <= 1:
            raise ConfigError(f"probe.label_fractions: {frac} is not in (0, 1]")
    names = [v.name for v in cfg.zero_shot]
    if len(set(names)) != len(names):
        raise ConfigError(f"zero_shot: variant names must be unique, got {names}")
    if cfg.zero_shot_default and cfg.zero_shot_default not in names:
        raise ConfigError(
            f"zero_shot_default: {cfg.zero_shot_default!r} is not a zero_shot variant ({names})"
        )
    for section in ("method_pretrain", "method_seeds"):
        for method in list(getattr(cfg, section)):
            if method not in METHODS:
                raise ConfigError(f"{section}.{method}: unknown method (valid: {', '.join(METHODS)})")
    for method, seeds in cfg.method_seeds.items():
        if not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) for x in seeds):
            raise ConfigError(f"method_seeds.{method}: expected a non-empty list of integers")
    # the pretraining mappings must be valid PretrainConfigs (typos fail now, not hours later)
    for method in cfg.methods:
        if method != "random":
            pretrain_config(cfg, method, seed=cfg.seeds[0], rotation=Rotation(1, 2, [3]), out="x")


# ------------------------------------------------------------------------------------------------
# Rotations
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rotation:
    """One run of the protocol: its test fold, validation fold and training folds."""

    test: int
    val: int
    train: list[int]

    @property
    def name(self) -> str:
        return f"test{self.test}"


def rotations(cfg: BenchmarkConfig, folds: Sequence[int]) -> list[Rotation]:
    """The rotations of the benchmark over the folds present in the cache."""
    folds = sorted(int(f) for f in folds if int(f) >= 0)
    if len(folds) < 3:
        raise DataError(f"fold rotation needs at least 3 folds in the cache, found {folds}")
    if cfg.rotate_folds:
        tests = cfg.rotation_folds or folds
        missing = sorted(set(tests) - set(folds))
        if missing:
            raise ConfigError(f"rotation_folds {missing} are not folds of the cache ({folds})")
        out = []
        for t in tests:
            pos = folds.index(t)
            v = folds[pos - 1]  # the previous fold (cyclic) validates
            out.append(Rotation(t, v, [f for f in folds if f not in (t, v)]))
        return out
    for name, f in (("test_fold", cfg.test_fold), ("val_fold", cfg.val_fold)):
        if f not in folds:
            raise ConfigError(f"{name} {f} is not a fold of the cache ({folds})")
    train = [f for f in folds if f not in (cfg.test_fold, cfg.val_fold)]
    return [Rotation(cfg.test_fold, cfg.val_fold, train)]


def seeds_of(cfg: BenchmarkConfig, method: str) -> list[int]:
    """The seeds a method runs with."""
    return list(cfg.method_seeds.get(method) or cfg.seeds)


def pretrain_config(
    cfg: BenchmarkConfig, method: str, seed: int, rotation: Rotation, out: str, cache: str = ""
) -> PretrainConfig:
    """The PretrainConfig of one (method, seed, rotation): shared + per-method + fixed keys."""
    data: dict[str, Any] = json.loads(json.dumps(cfg.pretrain))
    for section, values in (cfg.method_pretrain.get(method) or {}).items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    data.setdefault("data", {}).update(
        cache=cache,
        train_folds=list(rotation.train),
        val_folds=[rotation.val],
        exclude_folds=[rotation.test],
    )
    data.setdefault("train", {}).update(method=method, seed=seed, out_dir=out)
    return from_dict(PretrainConfig, data, prefix="pretrain")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------


def obtain_model(
    cfg: BenchmarkConfig,
    method: str,
    seed: int,
    rotation: Rotation,
    prepared: Any,
    work: Path,
    build: bool = True,
) -> Path:
    """Model directory of (method, seed, rotation): reused when its config matches, else built.

    With ``build=False`` a missing or stale model is an error instead (scripts that only reuse
    the benchmark's saved models, e.g. ``benchmarks/dev_validation.py``).
    """
    run_dir = work / "models" / method / f"seed{seed}" / rotation.name
    marker = run_dir / "benchmark-run.json"

    def refuse() -> None:
        if not build:
            raise DataError(
                f"{run_dir}: no saved {method} model with these settings (seed {seed}, "
                f"test fold {rotation.test}); run `etp benchmark` with this config first"
            )
    if method == "random":
        model_cfg = pretrain_config(
            cfg, "etp", seed, rotation, str(run_dir), cache=str(prepared.path)
        ).model
        key = {"method": method, "seed": seed, "model": asdict(model_cfg)}
        model_dir = run_dir / "model"
        defaults = {**key, "model": asdict(ModelConfig())}
        if _reusable(marker, key, model_dir, defaults):
            return model_dir
        refuse()
        _random_model(model_cfg, seed, prepared, model_dir)
        atomic_write_json(marker, {"key": key, "model": str(model_dir)})
        return model_dir

    pcfg = pretrain_config(cfg, method, seed, rotation, str(run_dir), cache=str(prepared.path))
    key = {
        "pretrain": _model_key(to_dict(pcfg), method),
        "cache": prepared.fingerprint,
        "choice": cfg.model_choice,
    }
    from etp.train.loop import BEST_MODEL_DIR

    chosen = run_dir / (BEST_MODEL_DIR if cfg.model_choice == "best" else "model")
    defaults = {**key, "pretrain": _model_key(to_dict(PretrainConfig()), method)}
    if _reusable(marker, key, chosen, defaults):
        return chosen
    refuse()
    from etp.train.loop import pretrain

    t0 = time.perf_counter()
    last = pretrain(pcfg, resume=_resumable(pcfg, run_dir))
    if not chosen.exists():  # no validation records: the best model is the last one
        chosen = last
    atomic_write_json(
        marker, {"key": key, "model": str(chosen), "seconds": time.perf_counter() - t0}
    )
    return chosen


#: model settings a SimCLR model does not depend on (it has no text side)
_TEXT_ONLY_FIELDS = (
    "text_model",
    "text_pooling",
    "text_max_length",
    "text_normalize",
    "report_translation",
)


#: training settings only the ECG-text loss reads
_ETP_ONLY_TRAIN_FIELDS = ("soft_targets", "soft_target_temperature", "ssl_weight", "freeze_text_head")


def _model_key(pretrain: dict[str, Any], method: str) -> dict[str, Any]:
    """The pretraining settings that decide a model of ``method`` (reuse key).

    A change of the text side (text model, translation, soft targets, ...) must not retrain
    SimCLR models.
    """
    if method != "simclr":
        return pretrain
    model = {k: v for k, v in pretrain["model"].items() if k not in _TEXT_ONLY_FIELDS}
    train = {k: v for k, v in pretrain["train"].items() if k not in _ETP_ONLY_TRAIN_FIELDS}
    return {**pretrain, "model": model, "train": train}


def _resumable(pcfg: PretrainConfig, run_dir: Path) -> bool:
    """True when ``run_dir`` holds an interrupted run of this very config (resume it).

    A checkpoint written with other settings (the benchmark config changed since) is stale: it is
    removed so that the model is trained afresh instead of failing on the config mismatch.
    """
    import shutil

    from etp.train.checkpoint import config_differences, load_checkpoint
    from etp.train.loop import checkpoint_path

    path = checkpoint_path(pcfg.train.out_dir)
    if not path.is_file():
        return False
    try:
        saved = load_checkpoint(path)["config"]
    except Exception as exc:  # unreadable: the loop would fail on it too
        log.warning("%s: unreadable checkpoint (%s); training afresh", path, exc)
        saved = None
    if saved is not None and not config_differences(saved, to_dict(pcfg)):
        return True
    if saved is not None:
        log.warning("%s: written with other settings; training afresh", path)
    shutil.rmtree(path.parent)
    return False


def _reusable(
    marker: Path, key: Mapping[str, Any], model_dir: Path, defaults: Mapping[str, Any]
) -> bool:
    """Whether ``marker`` records a model built with ``key``.

    ``defaults`` is the key of the default settings. A setting added to etp after the model was
    built is absent from its marker and counts as its default: new settings default to the
    behaviour that existed before them, so models survive upgrades that only add options.
    """
    if not marker.is_file() or not (model_dir / "config.json").is_file():
        return False
    try:
        stored = json.loads(marker.read_text()).get("key")
    except (OSError, json.JSONDecodeError):
        return False
    if not isinstance(stored, dict):
        return False
    from etp.train.checkpoint import RESUME_MUTABLE_KEYS, config_differences

    plain = json.loads(json.dumps(defaults, default=str))
    wanted = json.loads(json.dumps(key, default=str))
    # the pretraining settings a resume may change (run directory, cache path, logging, workers,
    # device) do not change the model either: a moved or copied work_dir keeps its models
    ignore = frozenset(f"pretrain.{k}" for k in RESUME_MUTABLE_KEYS)
    return not config_differences(stored, wanted, ignore=ignore, defaults=plain)


def _random_model(model_cfg: ModelConfig, seed: int, prepared: Any, out: Path) -> None:
    """An untrained (random-init) model with a text head, saved like a pretrained one."""
    import torch

    from etp.models.etp import ETPModel, save_model_dir
    from etp.text.encoder import TextEncoder

    encoder = TextEncoder(
        model_cfg.text_model, model_cfg.text_pooling, model_cfg.text_max_length
    )
    torch.manual_seed(seed)
    model = ETPModel(model_cfg, text_dim=encoder.dim, method="random")
    from etp.data.text import translation_glossary

    text_spec = dict(encoder.spec)
    glossary = translation_glossary(model_cfg.report_translation)
    if glossary is not None:
        text_spec["report_glossary"] = glossary
    save_model_dir(
        out,
        model,
        model_cfg,
        preprocessing=prepared.preprocessing,
        text_spec=text_spec,
        extra={"seed": seed, "note": "random initialisation, never trained"},
    )


# ------------------------------------------------------------------------------------------------
# One evaluation
# ------------------------------------------------------------------------------------------------


@dataclass
class EvalOutput:
    """Per-record outputs of one (method, seed, rotation) evaluation on one dataset."""

    test_ids: list[str]
    test_y: np.ndarray
    probe: dict[float, np.ndarray] = field(default_factory=dict)  # fraction -> test probs
    probe_selection: dict[float, dict[str, Any]] = field(default_factory=dict)
    zs_test: dict[str, np.ndarray] = field(default_factory=dict)  # variant -> test probs
    zs_val_auc: dict[str, float] = field(default_factory=dict)  # variant -> val average AUC
    zs_selected: str | None = None
    retrieval: dict[str, Any] | None = None
    test_emb: np.ndarray | None = None
    views: str = "1"


def _cross_validated(section: ProbeSection) -> bool:
    """Whether the probe chooses its decay and readout by cross-validation over training."""
    return section.solver == "lbfgs" and bool(section.cv_folds)


def _probe_line(section: ProbeSection) -> str:
    """The results' one-line description of the probe protocol."""
    grid = f"weight decay (of {len(section.weight_decays)})"
    if section.solver == "lbfgs":
        where = (
            f"by {section.cv_folds}-fold cross-validated {section.select_by} over the training folds"
            if _cross_validated(section)
            else f"by validation {section.select_by}"
        )
        line = f"- linear probe: L-BFGS to convergence (L2-penalised cross-entropy), {grid} {where}"
    else:
        line = (
            f"- linear probe: Adam, batch {section.batch_size}, epoch and {grid} by validation "
            f"{section.select_by}"
        )
    if section.inits > 1:
        line += f"; {section.inits} initialisations, each so selected, weights averaged"
    if len(section.pooling) > 1:
        how = "by the same cross-validation" if _cross_validated(section) else "on validation"
        return line + (
            f"; encoder readout chosen {how} among {', '.join(section.pooling)} "
            "(avg: the 512-d average over time; avg+max: average and maximum, 1024-d)"
        )
    return line + f"; encoder readout {section.pooling[0]}"


def probe_config(section: ProbeSection, fraction: float, seed: int) -> Any:
    """The :class:`~etp.eval.linear_probe.ProbeConfig` of a benchmark's probe section."""
    from etp.eval.linear_probe import ProbeConfig

    return ProbeConfig(
        lr=section.lr,
        batch_size=section.batch_size,
        max_epochs=section.max_epochs,
        patience=section.patience,
        weight_decays=tuple(section.weight_decays),
        label_fraction=fraction,
        seed=seed,
        select_by=section.select_by,
        inits=section.inits,
        solver=section.solver,
        cv_folds=section.cv_folds,
        max_iter=section.max_iter,
    )


def _split_indices(prepared: Any, rotation: Rotation | None) -> dict[str, np.ndarray]:
    """Single-label record indices of train / val / test (by folds, or by the split column)."""
    if rotation is None:
        out = {s: prepared.select(split=s, single_label=True) for s in ("train", "val", "test")}
    else:
        out = {
            "train": prepared.select(folds=rotation.train, single_label=True),
            "val": prepared.select(folds=[rotation.val], single_label=True),
            "test": prepared.select(folds=[rotation.test], single_label=True),
        }
    for split, idx in out.items():
        if idx.size == 0:
            raise DataError(f"{prepared.path}: no single-label record in the {split} split")
    ids = {s: set(prepared.meta["record_id"].astype(str).to_numpy()[i]) for s, i in out.items()}
    assert not ids["test"] & (ids["train"] | ids["val"]), "test records leak into train/val"
    return out


def _pretrain_reports(prepared: Any, rotation: Rotation | None) -> list[str]:
    """The reports pretraining saw: every training-fold (or train-split) record with a report."""
    idx = prepared.select(split="train") if rotation is None else prepared.select(folds=rotation.train)
    return [r for r in prepared.reports(idx) if r.strip()]


def evaluate_model(
    cfg: BenchmarkConfig,
    model_dir: Path,
    prepared: Any,
    rotation: Rotation | None,
    seed: int,
    work: Path,
    do_probe: bool = True,
    do_zero_shot: bool = True,
    do_retrieval: bool = True,
    pretrain_reports: Sequence[str] | None = None,
) -> EvalOutput:
    """Linear probe, zero-shot and retrieval of one model on one dataset's split.

    ``pretrain_reports`` (the reports the model was pretrained on) are the gallery of zero-shot
    variants with ``via_reports``; by default the training split's reports of ``prepared``.
    """
    from etp.eval.features import extract
    from etp.eval.linear_probe import select_readout
    from etp.eval.zero_shot import (
        PromptOptions,
        ReportGallery,
        load_prompt_table,
        zero_shot_classify,
    )
    from etp.models.etp import load_model_dir

    model = load_model_dir(model_dir)
    if cfg.views != "auto":
        from etp.data.views import Views

        model.views = Views.parse(cfg.views)
    split = _split_indices(prepared, rotation)
    y = {s: prepared.label_index(i) for s, i in split.items()}
    classes = list(prepared.classes)
    bf16 = cfg.precision == "bf16"
    feat_dir = work / "features"
    ids = prepared.meta["record_id"].astype(str).to_numpy()
    out = EvalOutput(test_ids=ids[split["test"]].tolist(), test_y=y["test"], views=str(model.views))

    if do_probe:
        feats = {
            pooling: {
                s: extract(
                    model, prepared, i, "features", bf16=bf16, cache_dir=feat_dir, pooling=pooling
                )
                for s, i in split.items()
            }
            for pooling in cfg.probe.pooling
        }
        for frac in cfg.probe.label_fractions:
            # the probe standardises with the whole training split, then draws the fraction;
            # with several readouts, the one whose probe does best on validation is kept
            chosen, probe = select_readout(
                classes,
                probe_config(cfg.probe, frac, seed),
                {k: (f["train"], f["val"]) for k, f in feats.items()},
                y["train"],
                y["val"],
            )
            res = probe.evaluate_test(feats[chosen]["test"], y["test"])  # the one look at test
            out.probe[frac] = res.test_probabilities
            # what was chosen, without the per-epoch validation curves (MBs over a benchmark)
            selection = res.to_dict()["selection"]
            out.probe_selection[frac] = {k: v for k, v in selection.items() if k != "history"}

    if model.has_text and (do_zero_shot or do_retrieval):
        emb = {
            s: extract(model, prepared, split[s], "embedding", bf16=bf16, cache_dir=feat_dir)
            for s in ("val", "test")
        }
        out.test_emb = emb["test"]
        text_cache = work / "text"

        def embed_texts(texts: list[str]) -> np.ndarray:
            return model.embed_texts(texts, cache_dir=text_cache)

        scale = float(model.model.scale().detach())
        if do_zero_shot:
            table = load_prompt_table(cfg.prompts)
            gallery = None
            variants = cfg.zero_shot or [ZeroShotVariant()]
            if any(v.via_reports for v in variants):
                gallery = ReportGallery(
                    texts=list(
                        pretrain_reports
                        if pretrain_reports is not None
                        else _pretrain_reports(prepared, rotation)
                    ),
                    embed_frozen=lambda ts: model.embed_texts_frozen(ts, cache_dir=text_cache),
                )
            for variant in variants:
                opts = PromptOptions(
                    templates=tuple(variant.templates) if variant.templates else None,
                    ensemble=variant.ensemble,
                    synonyms=variant.synonyms,
                    languages=tuple(variant.languages),
                    via_reports=variant.via_reports,
                )
                dataset = prepared.info.get("dataset")
                # one call for both splits: class embeddings (and prototypes) built once
                both = zero_shot_classify(
                    np.concatenate([emb["val"], emb["test"]]),
                    classes, embed_texts, scale, dataset, table, opts, gallery,
                )
                n_val = len(emb["val"])
                val_probs, test_probs = both.probabilities[:n_val], both.probabilities[n_val:]
                out.zs_val_auc[variant.name] = _zs_average_auc(y["val"], val_probs, classes)
                out.zs_test[variant.name] = test_probs
            finite = {k: v for k, v in out.zs_val_auc.items() if math.isfinite(v)}
            out.zs_selected = max(finite, key=finite.get) if finite else None
        if do_retrieval:
            from etp.eval.retrieval import evaluate_retrieval

            # every test ECG with a report (multi-label records too), distinct reports as gallery
            if rotation is None:
                every = prepared.select(split="test")
            else:
                every = prepared.select(folds=[rotation.test])
            # as written: canonical= applies the model's normalisation/translation
            reports = prepared.reports(every)
            if any(r.strip() for r in reports):
                every_emb = extract(
                    model, prepared, every, "embedding", bf16=bf16, cache_dir=feat_dir
                )
                out.retrieval = evaluate_retrieval(
                    every_emb, reports, embed_texts, canonical=model.prepare_texts
                )
    return out


def _zs_average_auc(y: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> float:
    from etp.eval.metrics import zero_shot_metrics

    return float(zero_shot_metrics(y, probs, classes, warn=False)["average"]["auc"])


# ------------------------------------------------------------------------------------------------
# Pooling and aggregation
# ------------------------------------------------------------------------------------------------


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


def _metric_fn(
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
) -> dict[str, Any]:
    """Metrics of pooled predictions: per seed, mean ± std over seeds, bootstrap 95 % CI.

    The CI resamples records (the same resample for every seed) and covers the seed-mean metric.
    """
    import warnings

    from etp.eval.metrics import aggregate_seeds, bootstrap_ci

    fn = _metric_fn(kind, classes)
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
            )
            if n_boot > 0
            else {}
        )
    stats = {
        key: {"mean": v["mean"], "std": v["std"], "n": v["n"], "ci": ci.get(key)}
        for key, v in agg.items()
    }
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

    fn = _metric_fn(kind, classes)
    na = len(probs_a)
    mean_a, mean_b = _seed_mean_metric(fn, na), _seed_mean_metric(fn, len(probs_b))

    def diff(yy: np.ndarray, *pp: np.ndarray) -> dict[str, float]:
        a, b = mean_a(yy, *pp[:na]), mean_b(yy, *pp[na:])
        return {k: a.get(k, math.nan) - b.get(k, math.nan) for k in keys}

    point = diff(y, *probs_a, *probs_b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ci = (
            bootstrap_ci(diff, y, *probs_a, *probs_b, n_boot=n_boot, seed=seed)
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


# ------------------------------------------------------------------------------------------------
# The whole benchmark
# ------------------------------------------------------------------------------------------------


def _prepare(pcfg: PrepareConfig) -> Any:
    from etp.data.cache import load_prepared
    from etp.data.prepare import prepare_dataset

    summary = prepare_dataset(pcfg, progress=False)
    log.info(
        "%s cache %s: %d records (%s)",
        summary.dataset,
        "reused" if summary.reused else "built",
        summary.records,
        summary.out,
    )
    return load_prepared(summary.out), summary


def _records_used(prepared: Any, summary: Any) -> dict[str, Any]:
    meta = prepared.meta
    ids = meta["record_id"].astype(str).tolist()
    single = meta["label"].astype(str) != ""
    return {
        "dataset": prepared.info.get("dataset"),
        "cache": str(prepared.path),
        "fingerprint": prepared.fingerprint,
        "records": len(meta),
        "listed": getattr(summary, "listed", None),
        "missing_from_download": getattr(summary, "missing", None),
        "single_label": int(single.sum()),
        "single_label_per_class": meta.loc[single, "label"].value_counts().to_dict(),
        "first_ids": ids[:3],
        "last_ids": ids[-3:],
        "folds": sorted(int(f) for f in meta["fold"].unique() if int(f) >= 0),
        "fs": prepared.fs,
        "length": prepared.length,
    }


def run_benchmark(cfg: BenchmarkConfig, command: Sequence[str] | None = None) -> dict[str, Any]:
    """Run everything the config asks for; returns the results mapping (also written to disk)."""
    t_start = time.perf_counter()
    work = Path(cfg.work_dir)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prepared, summary = _prepare(cfg.prepare)
    folds = prepared.meta["fold"].astype(int).unique().tolist()
    rots = rotations(cfg, folds)
    classes = list(prepared.classes)
    dataset = str(prepared.info.get("dataset"))
    log.info("rotations: %s", ", ".join(f"test {r.test} / val {r.val}" for r in rots))
    # each transfer target's models: checked before any pretraining starts
    transfer_rots: dict[str, Rotation] = {}
    for tname, target in cfg.transfer.items():
        t_fold = target.model_test_fold if target.model_test_fold is not None else rots[-1].test
        t_rot = next((r for r in rots if r.test == t_fold), None)
        if t_rot is None:
            raise ConfigError(f"transfer.{tname}.model_test_fold {t_fold} is not a rotation")
        transfer_rots[tname] = t_rot

    outputs: dict[str, dict[int, list[EvalOutput]]] = {}
    model_dirs: dict[tuple[str, int, int], Path] = {}
    for method in cfg.methods:
        for seed in seeds_of(cfg, method):
            for rot in rots:
                log.info("[%s seed %d %s] model", method, seed, rot.name)
                model_dir = obtain_model(cfg, method, seed, rot, prepared, work)
                model_dirs[(method, seed, rot.test)] = model_dir
                log.info("[%s seed %d %s] evaluate", method, seed, rot.name)
                res = evaluate_model(cfg, model_dir, prepared, rot, seed, work, True, True, cfg.retrieval)
                outputs.setdefault(method, {}).setdefault(seed, []).append(res)

    results: dict[str, Any] = {
        "name": cfg.name,
        "records_used": {dataset: _records_used(prepared, summary)},
        "rotations": [asdict(r) for r in rots],
        dataset: _pool(cfg, outputs, classes),
        "seconds": {},
    }
    internals = {dataset: {k: results[dataset].pop(k, None) for k in ("y", "ids", "_probs")}}

    for tname, target in cfg.transfer.items():
        t_prepared, t_summary = _prepare(target.prepare)
        t_classes = list(t_prepared.classes)
        t_fold = transfer_rots[tname].test
        t_reports = _pretrain_reports(prepared, transfer_rots[tname])
        t_out: dict[str, dict[int, list[EvalOutput]]] = {}
        for method in cfg.methods:
            for seed in seeds_of(cfg, method):
                key = (method, seed, t_fold)  # every method/seed ran every rotation above
                log.info("[%s seed %d] transfer to %s", method, seed, tname)
                res = evaluate_model(
                    cfg,
                    model_dirs[key],
                    t_prepared,
                    None,
                    seed,
                    work / "transfer" / tname,
                    target.linear_probe,
                    target.zero_shot,
                    False,
                    pretrain_reports=t_reports,
                )
                t_out.setdefault(method, {}).setdefault(seed, []).append(res)
        results["records_used"][tname] = _records_used(t_prepared, t_summary)
        results[tname] = _pool(cfg, t_out, t_classes)
        results[tname]["models_from_test_fold"] = t_fold
        internals[tname] = {k: results[tname].pop(k, None) for k in ("y", "ids", "_probs")}

    results["seconds"]["total"] = time.perf_counter() - t_start
    from etp.eval.report import write_results_json

    payload = write_results_json(
        out_dir / "results.json",
        results,
        command=list(command) if command is not None else sys.argv,
        config=cfg,
        data_fingerprint={k: v["fingerprint"] for k, v in results["records_used"].items()},
        seeds=cfg.seeds,
    )
    markdown = render_markdown(cfg, results, payload["meta"], dataset)
    atomic_write_text(out_dir / "results.md", markdown)
    if cfg.plots:
        _plots(cfg, outputs, results, internals[dataset], classes, dataset, out_dir)
    return results


def _pool(
    cfg: BenchmarkConfig, outputs: Mapping[str, Mapping[int, list[EvalOutput]]], classes: list[str]
) -> dict[str, Any]:
    """Pool the rotations' test outputs per method, then aggregate over seeds."""
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
                y, probs, "probe", classes, cfg.bootstrap
            )
            if frac == max(fracs):
                headline.setdefault(method, {})["probe"] = probs
        variants = list(runs[0][0].zs_test)
        zs: dict[str, Any] = {}
        for v in variants:
            probs = [np.concatenate([r.zs_test[v] for r in run]) for run in runs]
            zs[v] = pooled_stats(y, probs, "zero_shot", classes, cfg.bootstrap)
            zs[v]["val_auc_mean"] = float(
                np.nanmean([r.zs_val_auc[v] for run in runs for r in run])
            )
        if variants:
            # the variant chosen on each rotation's validation fold, applied to its test fold
            probs = [
                np.concatenate([r.zs_test[r.zs_selected or variants[0]] for r in run])
                for run in runs
            ]
            zs["val-selected"] = pooled_stats(y, probs, "zero_shot", classes, cfg.bootstrap)
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
            from etp.eval.metrics import mean_std

            pooled["retrieval"][method] = {
                k: dict(zip(("mean", "std"), mean_std(v)), n=len(v)) for k, v in flat.items()
            }
        pooled["views"][method] = sorted({r.views for run in runs for r in run})
        pooled["selection"][method] = {
            str(frac): [r.probe_selection.get(frac) for run in runs for r in run] for frac in fracs
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
        pooled["comparisons"] = _compare_with_etp(cfg, headline, pooled["y"], classes)
    return pooled


def _compare_with_etp(
    cfg: BenchmarkConfig,
    headline: Mapping[str, Mapping[str, list[np.ndarray]]],
    y: np.ndarray,
    classes: list[str],
) -> dict[str, dict[str, Any]]:
    """ETP minus each baseline: probe (full labels) AUC/F1, zero-shot (val-selected) AUC/F1."""
    out: dict[str, dict[str, Any]] = {}
    etp = headline["etp"]
    for method, probs in headline.items():
        if method == "etp":
            continue
        cmp: dict[str, Any] = {}
        if "probe" in etp and "probe" in probs:
            cmp["linear_probe"] = paired_difference(
                y, etp["probe"], probs["probe"], "probe", classes, ("auc", "f1"), cfg.bootstrap
            )
        if "zs" in etp and "zs" in probs:
            cmp["zero_shot"] = paired_difference(
                y, etp["zs"], probs["zs"], "zero_shot", classes,
                ("average.auc", "average.f1"), cfg.bootstrap,
            )
        if cmp:
            out[method] = cmp
    return out


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


def _stat_cells(stats: Mapping[str, Any]) -> dict[str, Any]:
    return unflatten(stats)


def render_markdown(
    cfg: BenchmarkConfig, results: Mapping[str, Any], meta: Mapping[str, Any], dataset: str
) -> str:
    """results.md: records used, Tables 1-3, label fractions, prompt variants, retrieval."""
    from etp.eval.report import (
        linear_probe_table,
        markdown_table,
        method_label,
        probe_per_class_table,
        retrieval_table,
        zero_shot_table,
    )

    lines = [f"# {cfg.name}", ""]
    lines += [
        f"- command: `{meta.get('command')}`",
        f"- date: {meta.get('date')}; git commit: {meta.get('git_commit')}; etp {meta.get('etp_version')}",
        f"- machine: {meta.get('machine', {}).get('cpu_model', '?')}, "
        f"{meta.get('machine', {}).get('cpu_count', '?')} cores; torch {meta.get('machine', {}).get('torch')}",
        f"- methods and seeds: {', '.join(f'{m} {seeds_of(cfg, m)}' for m in cfg.methods)}; "
        f"bootstrap resamples: {cfg.bootstrap}",
        f"- protocol: {'fold rotation (every fold the test fold once; the previous fold validates; out-of-fold test predictions pooled)' if cfg.rotate_folds else f'test fold {cfg.test_fold}, validation fold {cfg.val_fold}'}; "
        f"pretrained model: {'the last epoch' if cfg.model_choice == 'last' else 'the epoch with the lowest validation loss'}; probe and prompt choices on validation only"
        + (
            " (the probe's decay and readout by cross-validation inside the training folds)"
            if _cross_validated(cfg.probe)
            else ""
        ),
        _probe_line(cfg.probe),
        f"- wall time: {results.get('seconds', {}).get('total', 0) / 60:.1f} min",
        "",
        "## Records used",
        "",
    ]
    views = results.get(dataset, {}).get("views") or {}
    if views:
        lines.insert(
            lines.index("## Records used") - 1,
            "- test-time views: "
            + "; ".join(f"{method_label(m)} {', '.join(v)}" for m, v in views.items())
            + " (NxF: each ECG averaged over N evenly spaced crops of a fraction F of the record, "
            "stretched back to its length as the crop augmentation shows ECGs in training; "
            "1: the record as it is)",
        )
    for name, r in results["records_used"].items():
        lines.append(
            f"- **{name}**: {r['records']} records in the cache ({r['single_label']} single-label: "
            f"{', '.join(f'{k} {v}' for k, v in r['single_label_per_class'].items())}); "
            f"listed by the source: {r['listed']}, without signal files here: "
            f"{r['missing_from_download']}; ids {r['first_ids'][0]}…{r['last_ids'][-1]}; "
            f"folds {r['folds'] or 'none (split column)'}; {r['fs']:g} Hz × {r['length']} samples; "
            f"cache fingerprint `{r['fingerprint'][:12]}`"
        )
    lines += [
        "",
        "Cells: mean ± std over seeds [bootstrap 95 % CI of the seed mean, records resampled], "
        "in percent; the paper's numbers beside ours.",
        "",
    ]
    datasets = [dataset] + list(cfg.transfer)
    full = str(max(cfg.probe.label_fractions)) if cfg.probe.label_fractions else None
    if full is not None:
        table1: dict[str, dict[str, Any]] = {}
        for method in cfg.methods:
            for ds in datasets:
                lp = results.get(ds, {}).get("linear_probe", {}).get(method, {}).get(full)
                if lp is None:
                    continue
                table1.setdefault(method, {})[ds] = _stat_cells(lp["stats"])
        lines += [
            f"## Table 1 — linear probe ({float(full) * 100:g} % of the training labels)",
            "",
            linear_probe_table(table1, datasets=tuple(datasets)),
            "",
        ]
        fracs = [str(f) for f in cfg.probe.label_fractions]
        for ds in datasets:
            lp_all = results.get(ds, {}).get("linear_probe", {})
            per_class = {m: _stat_cells(v[full]["stats"]) for m, v in lp_all.items() if full in v}
            if per_class:
                lines += [
                    f"### Linear probe per class — {ds} ({float(full) * 100:g} % of the labels)",
                    "",
                    probe_per_class_table(per_class),
                    "",
                ]
            if len(fracs) > 1 and lp_all:
                sizes = _fraction_sizes(results.get(ds, {}).get("selection", {}), fracs)
                header = ["Method"] + [f"{float(f) * 100:g} % AUC" for f in fracs] + [
                    f"{float(f) * 100:g} % F1" for f in fracs
                ]
                rows = []
                for method, per_frac in lp_all.items():
                    cells = [
                        _stat_cells(per_frac[f]["stats"]).get(metric) if f in per_frac else None
                        for metric in ("auc", "f1")
                        for f in fracs
                    ]
                    rows.append([method_label(method)] + [_fmt(c) for c in cells])
                lines += [
                    f"### Linear probe by label fraction — {ds}", "", markdown_table(header, rows), ""
                ]
                if sizes:
                    lines += [
                        "Training records per probe fit: "
                        + "; ".join(f"{float(f) * 100:g} %: {sizes[f]}" for f in fracs if f in sizes)
                        + "."
                        + _same_draw_note(sizes, fracs),
                        "",
                    ]
            if len(cfg.probe.pooling) > 1 and lp_all and full is not None:
                counts = _readout_counts(results.get(ds, {}).get("selection", {}), str(full))
                if counts:
                    lines += [
                        "Encoder readout chosen "
                        + (
                            "by cross-validation over the training records"
                            if _cross_validated(cfg.probe)
                            else "on validation"
                        )
                        + f" by the probe fits ({ds}, "
                        f"{float(full) * 100:g} % of the labels): "
                        + "; ".join(
                            f"{method_label(m)} "
                            + ", ".join(f"{k} {n}" for k, n in sorted(c.items()))
                            for m, c in counts.items()
                        )
                        + ".",
                        "",
                    ]
    lines += _comparison_lines(results, datasets)
    for ds, number in ((dataset, 2), *((t, 3) for t in cfg.transfer)):
        zs = results.get(ds, {}).get("zero_shot", {})
        if not zs:
            continue
        for variant, title in _zero_shot_tables(cfg):
            table = {
                method: _stat_cells(v[variant]["stats"]) for method, v in zs.items() if variant in v
            }
            if table:
                lines += [
                    f"## Table {number} — zero-shot, {ds}, {title} (`{variant}`)",
                    "",
                    zero_shot_table(ds, table, classes=None),
                    "",
                ]
        header = ["Method", "Variant", "val avg AUC (mean over rotations)", "test avg AUC", "test avg ACC", "test avg F1"]
        rows = []
        for method, v in zs.items():
            for variant, r in v.items():
                st = _stat_cells(r["stats"]).get("average", {})
                rows.append(
                    [
                        method_label(method),
                        variant,
                        _fmt(r.get("val_auc_mean")) if variant != "val-selected" else "(chosen per rotation)",
                        _fmt(st.get("auc")),
                        _fmt(st.get("acc")),
                        _fmt(st.get("f1")),
                    ]
                )
        lines += [f"### Zero-shot prompt variants — {ds}", "", markdown_table(header, rows), ""]
        for method, v in zs.items():
            chosen = v.get("val-selected", {}).get("chosen")
            if chosen:
                lines.append(f"- {method_label(method)}: variants chosen on validation per rotation/seed: {chosen}")
        lines.append("")
    ret = results.get(dataset, {}).get("retrieval", {})
    if ret:
        table = {m: unflatten(v) for m, v in ret.items()}
        lines += [
            f"## Retrieval — {dataset} test folds (distinct reports as the gallery; mean ± std over rotations and seeds)",
            "",
            retrieval_table(table),
            "",
        ]
    return "\n".join(lines) + "\n"


def _file_part(name: str) -> str:
    """``name`` as part of a file name: runs of other characters than [A-Za-z0-9.+-] -> ``_``."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", name)


def _zero_shot_tables(cfg: BenchmarkConfig) -> list[tuple[str, str]]:
    """(variant, title) of the zero-shot tables: the paper's prompt, the shipped variant, the
    per-rotation validation choice."""
    first = cfg.zero_shot[0].name if cfg.zero_shot else "en"
    out = [(first, "the paper's prompt")]
    if cfg.zero_shot_default and cfg.zero_shot_default != first:
        out.append((cfg.zero_shot_default, "shipped prompt variant, fixed for every rotation"))
    out.append(("val-selected", "prompt variant chosen on each rotation's validation fold"))
    return out


def _fraction_sizes(
    selection: Mapping[str, Mapping[str, list[Any]]], fracs: Sequence[str]
) -> dict[str, str]:
    """Label fraction -> training records per probe fit ("8" or "8-11" over rotations/seeds)."""
    out: dict[str, str] = {}
    for f in fracs:
        n = sorted(
            {
                int(sel["n_train"])
                for per_frac in selection.values()
                for sel in per_frac.get(f, [])
                if isinstance(sel, Mapping) and "n_train" in sel
            }
        )
        if n:
            out[f] = str(n[0]) if n[0] == n[-1] else f"{n[0]}–{n[-1]}"
    return out


def _readout_counts(
    selection: Mapping[str, Mapping[str, list[Any]]], frac: str
) -> dict[str, dict[str, int]]:
    """Method -> {readout: how many probe fits (rotations x seeds) chose it} at ``frac``."""
    out: dict[str, dict[str, int]] = {}
    for method, per_frac in selection.items():
        for sel in per_frac.get(frac, []):
            if isinstance(sel, Mapping) and sel.get("readout"):
                counts = out.setdefault(method, {})
                counts[sel["readout"]] = counts.get(sel["readout"], 0) + 1
    return out


def _same_draw_note(sizes: Mapping[str, str], fracs: Sequence[str]) -> str:
    """A warning when two fractions train on equally many records (every class keeps >= 1)."""
    seen: dict[str, str] = {}
    same = []
    for f in fracs:
        if f in sizes and sizes[f] in seen.values():
            first = next(k for k, v in seen.items() if v == sizes[f])
            same.append(f"{float(first) * 100:g} % and {float(f) * 100:g} %")
        seen[f] = sizes.get(f, "")
    if not same:
        return ""
    return (
        f" {', '.join(same)} draw equally many records here (each class keeps at least one), "
        "so their rows can coincide on this little data."
    )


def _comparison_lines(results: Mapping[str, Any], datasets: Sequence[str]) -> list[str]:
    """The 'ETP against the baselines' table: paired differences with their CIs."""
    from etp.eval.report import markdown_table, method_label

    rows = []
    for ds in datasets:
        for method, cmp in (results.get(ds, {}).get("comparisons") or {}).items():
            for task, label, keys in (
                ("linear_probe", "linear probe", ("auc", "f1")),
                ("zero_shot", "zero-shot (val-selected)", ("average.auc", "average.f1")),
            ):
                if task not in cmp:
                    continue
                cells = []
                for k in keys:
                    d = cmp[task][k]
                    ci = d.get("ci")
                    cells.append(
                        f"{100 * d['diff']:+.1f}"
                        + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "")
                    )
                rows.append([ds, label, f"ETP − {method_label(method)}", *cells])
    if not rows:
        return []
    return [
        "### ETP against the baselines — paired differences",
        "",
        "Seed-mean metric of ETP minus the baseline's, in points, with a paired bootstrap 95 % CI "
        "(the same resampled records for both methods). A CI above zero means ETP is better on "
        "these records beyond resampling noise; two separate CIs may overlap even then.",
        "",
        markdown_table(["Dataset", "Task", "Comparison", "AUC difference", "F1 difference"], rows),
        "",
    ]


def _fmt(value: Any) -> str:
    from etp.eval.report import format_stat

    return format_stat(value)


def _plots(
    cfg: BenchmarkConfig,
    outputs: Mapping[str, Mapping[int, list[EvalOutput]]],
    results: Mapping[str, Any],
    internals: Mapping[str, Any],
    classes: list[str],
    dataset: str,
    out_dir: Path,
) -> None:
    from etp.eval.plots import plot_embedding_map, plot_roc_curves, plot_vs_paper
    from etp.eval.report import PAPER_ZERO_SHOT

    pooled = results[dataset]
    y = internals.get("y")
    for method, probs in (internals.get("_probs") or {}).items():
        if probs.get("zs") is not None:
            plot_roc_curves(
                y, probs["zs"], classes, out_dir / f"roc_zero_shot_{method}.png",
                title=f"{method}: zero-shot ROC, pooled test folds",
            )
        if probs.get("probe") is not None:
            plot_roc_curves(
                y, probs["probe"], classes, out_dir / f"roc_linear_probe_{method}.png",
                title=f"{method}: linear-probe ROC, pooled test folds",
            )
    zs = pooled.get("zero_shot", {}).get("etp", {})
    paper = PAPER_ZERO_SHOT.get(dataset, {})
    for variant, _ in _zero_shot_tables(cfg):
        if variant in zs and paper:
            st = unflatten(zs[variant]["stats"])
            ours = {c: 100 * st["per_class"][c]["auc"]["mean"] for c in classes if c in st["per_class"]}
            ours["Average"] = 100 * st["average"]["auc"]["mean"]
            ref = {c: paper[c]["ETP"]["auc"] for c in paper}
            plot_vs_paper(
                ours, ref, out_dir / f"zero_shot_vs_paper_{_file_part(variant)}.png",
                title=f"{dataset} zero-shot AUC: etp ({variant}) vs. paper",
            )
    etp_runs = outputs.get("etp", {})
    if etp_runs:
        first = etp_runs[min(etp_runs)][-1]
        if first.test_emb is not None:
            plot_embedding_map(
                first.test_emb, first.test_y, classes, out_dir / "embedding_map_etp.png",
                method=cfg.embedding_map,
                title=f"etp: test-fold ECG embeddings ({cfg.embedding_map.upper()})",
            )
