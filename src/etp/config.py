"""Typed configuration: dataclasses loaded from YAML, every field overridable from the CLI.

A config file is a YAML mapping whose sections mirror the dataclasses below. Unknown keys and
values of the wrong type are rejected with a :class:`~etp.errors.ConfigError` that names the key,
so a typo never silently falls back to a default. Overrides use dotted paths with YAML values,
e.g. ``train.lr=1e-3 train.epochs=2 data.train_folds=[1,2,3]``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from etp.errors import ConfigError

T = TypeVar("T")


def config_field(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with help text (and any further metadata); mutable defaults are copied
    per instance."""
    meta = {"help": help, **metadata}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


_f = config_field


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Which prepared cache to train on and which of its records form each split."""

    cache: str = _f("", "prepared cache directory (output of `etp prepare`)")
    train_split: str = _f("train", "value of the cache's `split` column used for training")
    val_split: str = _f("val", "value of the `split` column used for validation ('' = none)")
    train_folds: list[int] | None = _f(None, "select training records by `fold` instead of split")
    val_folds: list[int] | None = _f(None, "select validation records by `fold` instead of split")
    exclude_folds: list[int] = _f([], "folds never read during pretraining (e.g. the test fold)")
    max_records: int | None = _f(None, "use at most this many training records (debugging)")


@dataclass
class ModelConfig:
    """ECG encoder, projection heads, text model and temperature."""

    encoder: Literal["resnet18_1d"] = _f("resnet18_1d", "ECG encoder architecture")
    in_leads: int = _f(12, "number of input leads")
    embed_dim: int = _f(512, "dimension of the shared ECG-text embedding space")
    head: Literal["linear", "mlp"] = _f("linear", "projection head type (paper: linear)")
    text_model: str = _f(
        "minilm",
        "frozen text model: 'minilm' (packaged all-MiniLM-L6-v2), a Hugging Face name "
        "(e.g. emilyalsentzer/Bio_ClinicalBERT) or a local directory",
    )
    text_pooling: Literal["mean", "cls"] = _f("mean", "pooling of the text model's token states")
    text_max_length: int = _f(128, "maximum report length in tokens (longer is truncated)")
    report_translation: str = _f(
        "none",
        "translate non-English reports (and prompts) to English before encoding: 'none', "
        "'builtin' (etp's German/Swedish ECG glossary) or a glossary YAML file; the glossary is "
        "stored in the model directory",
    )
    init_temperature: float = _f(0.07, "initial softmax temperature (logit scale = 1/T)")
    learn_temperature: bool = _f(True, "learn the temperature (CLIP) or keep it fixed")
    max_logit_scale: float = _f(100.0, "clamp of the learnable logit scale, as in CLIP")


@dataclass
class TrainConfig:
    """Optimisation, precision, checkpoints and logging of a pretraining run."""

    method: str = _f(
        "etp",
        "pretraining objective, by its registry name (`etp pretrain --help-config` lists them "
        "with their `objective.*` settings)",
    )
    epochs: int = _f(50, "number of epochs")
    batch_size: int = _f(128, "global batch size (split over processes under torchrun)")
    lr: float = _f(2e-3, "Adam learning rate")
    weight_decay: float = _f(1e-5, "Adam weight decay")
    scheduler: Literal["none", "cosine"] = _f("none", "learning-rate schedule")
    warmup_epochs: float = _f(0.0, "linear warm-up length in epochs (cosine schedule)")
    precision: Literal["bf16", "fp32"] = _f("bf16", "autocast precision (CPU and GPU)")
    device: str = _f("auto", "'auto', 'cpu', 'cuda' or 'cuda:N'")
    num_workers: int = _f(0, "DataLoader worker processes over the memory-mapped cache")
    seed: int = _f(0, "random seed (model init, shuffling, augmentations)")
    out_dir: str = _f("runs/etp", "run directory: checkpoints, logs, the saved model")
    checkpoint_every_steps: int = _f(0, "also checkpoint every N steps (0 = epoch ends only)")
    log_every_steps: int = _f(10, "CSV log interval in steps")
    augment: list[str] = _f(
        ["crop", "scale", "noise", "baseline_wander", "sign_flip", "lead_mask"],
        "augmentations of the objectives that train on augmented views (SimCLR; ETP with "
        "objective.augment)",
    )
    crop_min_frac: float = _f(
        0.5,
        "crop augmentation: the shortest segment, as a fraction of the record (segments of "
        "crop_min_frac to all of it are stretched back to the record's length)",
    )
    ema_decay: float = _f(
        0.0,
        "keep an exponential moving average of the weights (this decay per step) and save it as "
        "the model; 0 = off (the paper: the last weights)",
    )
    progress: bool = _f(True, "show a progress bar")


@dataclass
class PretrainConfig:
    """A whole pretraining run: `etp pretrain --config FILE [key=value ...]`."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    objective: dict[str, Any] = _f(
        {},
        "settings of the objective named by train.method (checked against its own options; "
        "`etp pretrain --help-config` lists them)",
    )


# --------------------------------------------------------------------------------------------
# Generic machinery
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp`` (light coercion: int -> float), or raise."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            allowed = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{key}: {value!r} is not one of {allowed}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, prefix=key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    where = prefix or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        full = ", ".join(f"{prefix + '.' if prefix else ''}{k}" for k in unknown)
        raise ConfigError(
            f"unknown config key(s): {full} (valid keys of {where}: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{prefix + '.' if prefix else ''}{name}")
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-dict (YAML/JSON-serialisable) view of a config dataclass."""
    return dataclasses.asdict(obj)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into the key path and the YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted ``key=value`` overrides applied."""
    import copy

    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
            node = nxt
        node[path[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` with clear errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of sections")
    return data


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Load dataclass ``cls`` from a YAML file (optional) plus ``key=value`` overrides."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, list(overrides or []))
    try:
        return from_dict(cls, data)
    except ConfigError as exc:  # blame the override that set the key at fault, else the file
        msg = str(exc)
        for text in reversed(overrides or []):
            key = text.split("=", 1)[0].strip()
            if re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", msg):
                raise ConfigError(f"command-line override {text}: {msg}") from None
        raise ConfigError(f"{path or 'overrides'}: {msg}") from None


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(key, help, default) for every field, nested sections flattened — for `--help-config`."""
    rows: list[tuple[str, str, Any]] = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, key + "."))  # type: ignore[arg-type]
            continue
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else f.default_factory()  # type: ignore[misc]
            if f.default_factory is not dataclasses.MISSING
            else None
        )
        rows.append((key, f.metadata.get("help", ""), default))
    return rows


def save_yaml(obj: Any, path: str | Path) -> None:
    """Write a config dataclass as YAML (atomically)."""
    from etp.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(obj), sort_keys=False))


_ = typing  # keep import for forward-reference evaluation in get_type_hints
