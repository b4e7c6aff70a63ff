"""The benchmark's runs: fold rotations, the pretraining config of each (method, seed,
rotation), and its model, reused when its config is unchanged, else built (pretrained, or a
random initialisation)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etp.config import PretrainConfig, from_dict, read_yaml, to_dict
from etp.errors import ConfigError, DataError
from etp.io import atomic_write_json

if TYPE_CHECKING:
    from etp.benchmark.config import BenchmarkConfig

log = logging.getLogger(__name__)

#: the methods of a benchmark run by default
DEFAULT_METHODS = ("etp", "simclr", "random")


def method_settings(cfg: BenchmarkConfig, method: str) -> dict[str, Any]:
    """The per-method PretrainConfig mapping of ``method``: the pretraining config file named by
    ``method_pretrain.METHOD.config`` (e.g. ``configs/byol-ptbxl.yaml``: its model, train and
    objective sections, so a baseline's own hyperparameters are written once; its data section
    is not used, the benchmark sets the cache and folds), with the other keys of
    ``method_pretrain.METHOD`` over it."""
    own = json.loads(json.dumps(cfg.method_pretrain.get(method) or {}))
    path = own.pop("config", None)
    data: dict[str, Any] = {}
    if path is not None:
        if not isinstance(path, str) or not path:
            raise ConfigError(f"method_pretrain.{method}.config: expected a YAML file path")
        data = {k: v for k, v in read_yaml(path).items() if k != "data"}
    for section, values in own.items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section].update(values)
        else:
            data[section] = values
    return data


def objective_of(cfg: BenchmarkConfig, method: str) -> str:
    """The objective (``train.method``) a benchmark method trains with: the method's settings'
    ``train.method`` when given (e.g. ``etp-paper`` trains ``etp`` with other settings;
    ``clocs-cmsc`` names the file that says ``clocs``), else the method's own name."""
    train = method_settings(cfg, method).get("train") or {}
    return str(train.get("method", method))


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
    """The PretrainConfig of one (method, seed, rotation): shared + per-method
    (:func:`method_settings`) + fixed keys."""
    data: dict[str, Any] = json.loads(json.dumps(cfg.pretrain))
    for section, values in method_settings(cfg, method).items():
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
    data.setdefault("train", {}).update(method=objective_of(cfg, method), seed=seed, out_dir=out)
    return from_dict(PretrainConfig, data, prefix="pretrain")


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
    from etp import objectives

    pcfg = pretrain_config(cfg, method, seed, rotation, str(run_dir), cache=str(prepared.path))
    objective = objectives.get(pcfg.train.method)
    key = {
        "pretrain": _model_key(to_dict(pcfg), objective),
        "cache": prepared.fingerprint,
        "choice": cfg.model_choice,
    }
    from etp.train.loop import BEST_MODEL_DIR

    chosen = run_dir / (BEST_MODEL_DIR if cfg.model_choice == "best" else "model")
    defaults = {**key, "pretrain": _model_key(to_dict(PretrainConfig()), objective)}
    if _reusable(marker, key, chosen, defaults):
        return chosen
    refuse()
    from etp.train.loop import pretrain

    t0 = time.perf_counter()
    resume = _resumable(pcfg, run_dir)
    # the run directory is the benchmark's own: a stale model there (other settings) is rebuilt
    last = pretrain(pcfg, resume=resume, overwrite=not resume)
    if not chosen.exists():  # no validation records: the best model is the last one
        chosen = last
    atomic_write_json(
        marker, {"key": key, "model": str(chosen), "seconds": time.perf_counter() - t0}
    )
    return chosen


#: model settings a model without a text side does not depend on
_TEXT_ONLY_FIELDS = ("text_model", "text_pooling", "text_max_length", "report_translation")


def _model_key(pretrain: dict[str, Any], objective: Any) -> dict[str, Any]:
    """The pretraining settings that decide a model of ``objective`` (its reuse key).

    A change of the text side must not retrain models without one (SimCLR, BYOL, ...); a
    change of the training settings must not rebuild a model that is never trained (random
    init: its model settings and seed decide it).
    """
    model = dict(pretrain["model"])
    if not objective.text_head:
        model = {k: v for k, v in model.items() if k not in _TEXT_ONLY_FIELDS}
    if not objective.trains:
        train = pretrain["train"]
        return {"model": model, "train": {"method": train["method"], "seed": train["seed"]}}
    return {**pretrain, "model": model}


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
