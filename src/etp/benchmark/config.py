"""The benchmark's config: :class:`BenchmarkConfig` (``etp benchmark --config FILE``) and its
checks, run before any work is done."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from etp.benchmark.runs import DEFAULT_METHODS, Rotation, objective_of, pretrain_config
from etp.config import config_field, from_dict
from etp.data.prepare import PrepareConfig
from etp.errors import ConfigError
from etp.eval.linear_probe import ProbeConfig
from etp.eval.zero_shot import PromptOptions

_f = config_field


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
    out_dir: str = _f("runs/benchmark/results", "where results.md/json and plots go")
    work_dir: str = _f("runs/benchmark", "models, features and per-run outputs (reused)")
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    methods: list[str] = _f(
        list(DEFAULT_METHODS),
        "methods to benchmark: registered objectives (etp, simclr, random, byol, simsiam, cpc, "
        "ts-tcc, clocs), or names of your own whose method_pretrain.NAME.train.method (or the "
        "file of method_pretrain.NAME.config) names the objective (e.g. etp-paper: ETP with the "
        "paper's settings; clocs-cmsc: configs/clocs-cmsc-ptbxl.yaml)",
    )
    seeds: list[int] = _f([0], "seeds (pretraining, probe, bootstrap)")
    method_seeds: dict[str, list[int]] = _f(
        {}, "per-method seeds overriding `seeds` (e.g. fewer for a costly baseline)"
    )
    rotate_folds: bool = _f(False, "every fold is the test fold once; pooled out-of-fold")
    rotation_folds: list[int] | None = _f(None, "test folds of the rotation (default: all)")
    dev_folds: list[int] = _f(
        [],
        "folds that development choices (pretraining recipe, probe protocol, prompt variants) "
        "were scored or validated on; results report the pooled figures over all test folds "
        "and over the clean ones (not in dev_folds), and benchmarks/dev_*.py refuse to score "
        "any other fold",
    )
    test_fold: int = _f(10, "test fold without rotation")
    val_fold: int = _f(9, "validation fold without rotation")
    model_choice: str = _f(
        "last", "'last' epoch (fixed schedule, the paper's) or 'best' (lowest validation loss)"
    )
    pretrain: dict[str, Any] = _f({}, "PretrainConfig mapping shared by all methods")
    method_pretrain: dict[str, Any] = _f(
        {},
        "per-method PretrainConfig mappings over the shared one; the key `config: FILE` starts "
        "from a pretraining config file's model/train/objective sections (its data section is "
        "the benchmark's), e.g. `byol: {config: configs/byol-ptbxl.yaml}`",
    )
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    zero_shot: list[PromptOptions] = _f([], "prompt variants compared (first = paper's)")
    zero_shot_default: str = _f(
        "",
        "name of the shipped prompt variant (one fixed choice for every rotation, made on "
        "every rotation's validation fold beforehand), reported in its own table labelled "
        "'fixed; chosen on all rotations' validation folds'; the headline zero-shot figures "
        "and paired differences are the nested ones (variant chosen per rotation on its own "
        "validation fold)",
    )
    prompts: str | None = _f(None, "prompt table YAML (default: the packaged one)")
    retrieval: bool = _f(True, "ECG<->report Recall@K on each test fold")
    transfer: dict[str, TransferTarget] = _f({}, "other datasets evaluated with these models")
    bootstrap: int = _f(
        1000,
        "bootstrap resamples for the 95 % confidence intervals (stratified by class: every "
        "resample keeps each class's count of test records)",
    )
    min_class_records_for_ci: int = _f(
        5,
        "a per-class CI is reported as not estimable (n/e) when the class has fewer test "
        "records than this",
    )
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
            from_dict(PromptOptions, v, prefix=f"zero_shot[{i}]") if isinstance(v, dict) else v
            for i, v in enumerate(cfg.zero_shot)
        ]
        validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return cfg


def check_dev_folds(cfg: BenchmarkConfig, folds: Sequence[int], what: str, where: str) -> None:
    """Refuse a development script's folds that are not declared development folds.

    ``folds`` are the folds the script scores or validates on (``what`` says which, ``where``
    names the config): every one must be in ``cfg.dev_folds``, or a development choice would
    see records that the benchmark's clean figures are scored on.
    """
    clean = sorted({int(f) for f in folds} - set(cfg.dev_folds))
    if clean:
        raise ConfigError(
            f"{what} {clean} not in dev_folds {sorted(cfg.dev_folds)} of {where}: these folds "
            "are clean test folds of the benchmark, which no development choice may score; use "
            "folds of dev_folds (or declare more in the config, which removes them from the clean "
            "figures)"
        )


def validate(cfg: BenchmarkConfig) -> None:
    """Reject settings that cannot run, before any work is done."""
    from etp import objectives

    if not cfg.methods:
        raise ConfigError("methods: empty (name at least one, e.g. [etp, simclr, random])")
    for method in cfg.methods:
        if objective_of(cfg, method) not in objectives.names():
            raise ConfigError(
                f"methods: {method!r} is not a registered objective ({', '.join(objectives.names())}) "
                f"and neither method_pretrain.{method}.train.method nor the file of "
                f"method_pretrain.{method}.config names one"
            )
    if not cfg.seeds:
        raise ConfigError("seeds: at least one seed is needed")
    if cfg.min_class_records_for_ci < 1:
        raise ConfigError(
            f"min_class_records_for_ci: {cfg.min_class_records_for_ci} must be at least 1"
        )
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
    names = [v.label for v in cfg.zero_shot]
    if len(set(names)) != len(names):
        raise ConfigError(f"zero_shot: variant names must be unique, got {names}")
    if cfg.zero_shot_default and cfg.zero_shot_default not in names:
        raise ConfigError(
            f"zero_shot_default: {cfg.zero_shot_default!r} is not a zero_shot variant ({names})"
        )
    # entries for methods not run this time are kept (`methods=[random]` runs a subset), as long
    # as each names an objective, so a misspelt entry is still an error
    defined = set(cfg.methods) | set(objectives.names()) | {
        m for m in cfg.method_pretrain if objective_of(cfg, m) in objectives.names()
    }
    for section in ("method_pretrain", "method_seeds"):
        for method in list(getattr(cfg, section)):
            if method not in defined:
                raise ConfigError(
                    f"{section}.{method}: neither one of the benchmark's methods {cfg.methods} "
                    f"nor a registered objective ({', '.join(objectives.names())}), and it names "
                    "no objective (train.method or config)"
                )
    for method, seeds in cfg.method_seeds.items():
        if not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) for x in seeds):
            raise ConfigError(f"method_seeds.{method}: expected a non-empty list of integers")
    # the pretraining mappings must be valid PretrainConfigs (typos fail now, not hours later)
    from etp.train.settings import validate_config

    for method in cfg.methods:
        pcfg = pretrain_config(
            cfg, method, seed=cfg.seeds[0], rotation=Rotation(1, 2, [3]), out="x", cache="x"
        )
        try:
            validate_config(pcfg)
        except ConfigError as exc:
            raise ConfigError(f"method {method!r}: {exc}") from None

