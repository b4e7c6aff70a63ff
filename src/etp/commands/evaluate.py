"""``etp evaluate``: zero-shot, linear probe and retrieval of a trained model on a prepared cache.

Settings come from a YAML config plus ``key=value`` overrides (:class:`EvaluateConfig`, the same
interface as ``etp pretrain``); the defaults are the shipped protocol, that of
``configs/benchmark-ptbxl.yaml`` (its ``probe:`` section and its shipped prompt variant), and the
evaluation is :func:`etp.eval.protocol.evaluate_model`, the one ``etp benchmark`` runs, so a model
gets the same figures from both. Prints the paper's table layouts (zero-shot: Tables 2/3, linear
probe: Table 1) with the paper's numbers beside ours and bootstrap 95 % confidence intervals, or
JSON with ``--json``; ``--out DIR`` also writes ``results.json``, ``results.md`` and (with
``--plots``) PNG figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from etp.config import config_field, describe, load_config, to_dict
from etp.errors import ConfigError, DataError, ModelError
from etp.eval.linear_probe import ProbeConfig
from etp.eval.protocol import SHIPPED_PROMPTS, TASKS, EvalOutput
from etp.eval.zero_shot import PromptOptions

log = logging.getLogger(__name__)

EPILOG = (
    "examples:\n"
    "  etp evaluate --model runs/etp/model --cache runs/cache/ptbxl\n"
    "  etp evaluate --model runs/etp/model --cache runs/cache/ptbxl --zero-shot \\\n"
    "      'zero_shot=[{name: en+de, languages: [en, de]}]'\n"
    "  etp evaluate --model runs/etp/model --cache runs/cache/ptbxl --linear-probe \\\n"
    "      probe.label_fractions=[0.01,0.1,1] --out runs/eval --plots\n"
    "  etp evaluate --config my-eval.yaml bootstrap=0      # settings from a file\n"
    "  etp evaluate --help-config                           # every config key\n"
    "\n"
    "With none of --zero-shot/--linear-probe/--retrieval (and no `tasks`) every task the model\n"
    "supports runs. The defaults are the shipped protocol (configs/benchmark-ptbxl.yaml): the\n"
    "converged L-BFGS probe, its weight decay and readout by 5-fold cross-validation over the\n"
    "training split, and the prompt variant 'en synonyms via reports' (the training split's\n"
    "reports stand in for the prompts). The test split is looked at once. KEY=VALUE overrides\n"
    "go after the flags."
)

_f = config_field


@dataclass
class EvaluateConfig:
    """``etp evaluate [--config FILE] [key=value ...]``."""

    model: str = _f("", "trained model directory (also --model)")
    cache: str = _f("", "prepared cache directory, `etp prepare`'s output (also --cache)")
    split: str = _f("test", "split reported on (the cache's `split` column)")
    train_split: str = _f(
        "train", "split the probe trains on; its reports: the `via_reports` gallery"
    )
    val_split: str = _f("val", "split the probe (adam, or cv_folds 0) and the prompt choice use")
    tasks: list[str] = _f(
        [], "any of linear_probe, zero_shot, retrieval; empty: every task the model supports"
    )
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    zero_shot: list[PromptOptions] = _f(
        [SHIPPED_PROMPTS], "prompt variants (default: the shipped one, en synonyms via reports)"
    )
    prompts: str | None = _f(None, "prompt table YAML (default: the packaged one)")
    reports: str = _f(
        "train",
        "gallery of `via_reports` prompt variants: 'train' (the training split's reports) or a "
        "file (one report per line, or a CSV/TSV with a 'report' column)",
    )
    bootstrap: int = _f(1000, "bootstrap resamples for the 95 % CIs (0 = none)")
    seed: int = _f(0, "seed of the probe (label draw, initialisation, CV folds) and the bootstrap")
    precision: str = _f("bf16", "feature extraction precision: bf16 or fp32")
    views: str = _f(
        "auto",
        "test-time views of every ECG: 'auto' (the model's own: 3x0.75 for models trained on "
        "crops, else 1), '1' (the record as it is), or N / NxF (N crops of fraction F)",
    )
    batch_size: int = _f(256, "records per forward pass")
    device: str = _f("cpu", "cpu, cuda or auto")
    features_cache: str | None = _f(None, "keep extracted features here for reuse")
    out: str | None = _f(None, "write results.json and results.md here (also --out)")
    plots: bool = _f(False, "with out: also write PNG plots (also --plots)")

    def __post_init__(self) -> None:
        """The checks of the evaluation settings (probe and prompts check their own)."""
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ConfigError(f"tasks: {unknown} (valid: {', '.join(TASKS)})")
        if self.bootstrap < 0 or self.batch_size < 1:
            raise ConfigError("bootstrap must be >= 0 and batch_size >= 1")
        if self.precision not in ("bf16", "fp32"):
            raise ConfigError(f"precision: {self.precision!r} is not 'bf16' or 'fp32'")
        self.views = str(self.views).strip()  # YAML reads `views: 1` as a number
        if self.views != "auto":
            from etp.data.views import Views

            Views.parse(self.views)  # a ConfigError naming `views`
        names = [v.label for v in self.zero_shot]
        if len(set(names)) != len(names):
            raise ConfigError(f"zero_shot: variant names must be unique, got {names}")
        if self.plots and not self.out:
            raise ConfigError("plots needs out (--out DIR)")


def load_evaluate_config(path: str | None, overrides: list[str]) -> EvaluateConfig:
    """An :class:`EvaluateConfig` from a YAML file (optional) and ``key=value`` overrides."""
    return load_config(EvaluateConfig, path, overrides)


def preprocessing_mismatch(loaded: Any, prepared: Any) -> list[str]:
    """Preprocessing settings on which the model and the cache disagree."""
    a, b = dict(loaded.preprocessing or {}), dict(prepared.preprocessing or {})
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def results_of(
    out: EvalOutput, loaded: Any, prepared: Any, n_test_records: int, bootstrap: int, seed: int
) -> dict[str, Any]:
    """The JSON-ready results of one evaluation: figures (with bootstrap CIs), choices, data."""
    from etp.eval.aggregate import bootstrap_stats
    from etp.eval.features import model_fingerprint
    from etp.eval.metrics import zero_shot_metrics

    classes = list(prepared.classes)
    y = out.test_y
    results: dict[str, Any] = {
        "model": {
            "path": str(getattr(loaded, "path", "")),
            "method": loaded.method,
            "fingerprint": model_fingerprint(loaded),
            "views": out.views,
        },
        "data": {
            "cache": str(prepared.path),
            "dataset": str(prepared.info.get("dataset", "")),
            "fingerprint": prepared.fingerprint,
            "classes": classes,
            "n_test_records": int(n_test_records),
            "n_test_single_label": int(y.size),
            "test_counts": {c: int((y == i).sum()) for i, c in enumerate(classes)},
        },
    }
    mismatch = preprocessing_mismatch(loaded, prepared)
    if mismatch:
        log.warning(
            "model and cache were preprocessed differently (%s): results may suffer",
            ", ".join(mismatch),
        )
        results["preprocessing_mismatch"] = mismatch
    if out.zs_test:
        results["zero_shot"] = {}
    for name, probs in out.zs_test.items():
        entry: dict[str, Any] = {"metrics": zero_shot_metrics(y, probs, classes)}
        entry.update(out.zs_details[name])
        if name in out.zs_val_auc:
            entry["val_auc"] = out.zs_val_auc[name]
        if bootstrap > 0:
            entry["ci"] = bootstrap_stats(y, probs, "zero_shot", classes, bootstrap, seed)
        results["zero_shot"][name] = entry
    if out.probe:
        results["linear_probe"] = {}
    for frac, probs in out.probe.items():
        entry = dict(out.probe_results[frac])
        if bootstrap > 0:
            entry["ci"] = bootstrap_stats(y, probs, "probe", classes, bootstrap, seed)
        results["linear_probe"][f"{100 * frac:g}%"] = entry
    if out.retrieval is not None:
        results["retrieval"] = out.retrieval
    return results


def arrays_of(out: EvalOutput) -> dict[str, np.ndarray]:
    """The per-record arrays the plots read."""
    arrays: dict[str, np.ndarray] = {"y_test": out.test_y, "test_indices": out.test_indices}
    if out.test_emb is not None:
        arrays["test_embedding"] = out.test_emb
    if out.test_features is not None:
        arrays["test_features"] = out.test_features
    for name, probs in out.zs_test.items():
        arrays[f"zero_shot_probs:{name}"] = probs
    for frac, probs in out.probe.items():
        arrays[f"probe_probs:{100 * frac:g}%"] = probs
    return arrays


# ------------------------------------------------------------------------------------------
# presentation
# ------------------------------------------------------------------------------------------


def results_markdown(results: Mapping[str, Any], method: str | None = None) -> str:
    """The tables of one evaluation, in the paper's layouts, as markdown."""
    from etp.eval.report import (
        DATASET_LABELS,
        linear_probe_table,
        per_class_table,
        retrieval_table,
        with_ci,
        zero_shot_table,
    )

    data = results["data"]
    ds = data["dataset"]
    method = method or results["model"]["method"]
    paper = ds in DATASET_LABELS
    out = [
        f"# etp evaluate: {results['model']['path']} ({method}) on {data['cache']} ({ds})",
        "",
        f"Test records: {data['n_test_records']}, single-label (classified): "
        f"{data['n_test_single_label']} — "
        + ", ".join(f"{c} {n}" for c, n in data["test_counts"].items())
        + ". Cells: percent, [bootstrap 95 % CI over test records]. Test-time views: "
        + f"{results['model'].get('views', '1')} (NxF: N crops of F of the record, averaged).",
    ]
    if results.get("preprocessing_mismatch"):
        out += [
            "",
            f"**Warning:** model and cache preprocessing differ in "
            f"{', '.join(results['preprocessing_mismatch'])}.",
        ]
    table_no = {"ptbxl": "Table 2", "cpsc2018": "Table 3"}.get(ds)
    for name, zs in results.get("zero_shot", {}).items():
        m = with_ci(zs["metrics"], zs.get("ci"))
        out += [
            "",
            f"## Zero-shot — prompts: {name}" + (f" (paper {table_no} layout)" if table_no else ""),
            "",
        ]
        out.append(zero_shot_table(ds, {method: m}, classes=data["classes"], paper=paper))
        absent = zs["metrics"].get("absent")
        if absent:
            out += [
                "",
                f"Classes without test records (left out of the average): {', '.join(absent)}.",
            ]
    for frac, lp in results.get("linear_probe", {}).items():
        m = with_ci(lp["test"], lp.get("ci"))
        sel = lp["selection"]
        cv = sel.get("selected_on") == "cv"
        criterion = sel.get("select_by", "auc")
        if cv:  # the value of the criterion that chose the decay, cross-validated
            value = (
                f"{sel.get('cv_loss', math.nan):.3f}"
                if criterion == "loss"
                else f"{100 * sel.get('cv_auc', math.nan):.1f}"
            )
            how = (
                f"Selected by cross-validation over the training records: weight decay "
                f"{sel['weight_decay']:g} (by cross-validated {_CRITERION[criterion]} {value}; "
                "converged L-BFGS probe)"
            )
        else:  # epochs count from 1; 0 marks the converged L-BFGS probe, which has none
            fit = f"epoch {sel['best_epoch']}" if sel["best_epoch"] else "converged L-BFGS probe"
            how = (
                f"Selected on validation: weight decay {sel['weight_decay']:g}, {fit} "
                f"(by validation {_CRITERION[criterion]})"
            )
        out += ["", f"## Linear probe — {frac} of the training labels (paper Table 1 layout)", ""]
        out.append(linear_probe_table({method: {ds: m}}, datasets=(ds,), paper=paper))
        out += [
            "",
            f"{how}, val AUC {100 * sel['val_auc']:.1f}, val cross-entropy "
            f"{sel.get('val_loss', math.nan):.3f}; "
            f"{sel['n_train']} training "
            f"records; accuracy {100 * lp['test']['acc']:.1f}."
            + (
                f" Encoder readout {sel['readout']} (chosen "
                f"{'by the same cross-validation' if cv else 'on validation'} "
                f"among {', '.join(sel['readout_scores'])})."
                if len(sel.get("readout_scores") or {}) > 1
                else ""
            ),
            "",
        ]
        out.append(per_class_table(m, columns=("auc", "f1")))
    if "retrieval" in results:
        r = results["retrieval"]
        out += ["", f"## Retrieval — {r['n_ecgs']} ECGs, {r['n_reports']} distinct reports", ""]
        out.append(retrieval_table({method: r}))
    return "\n".join(out) + "\n"


def write_plots(
    out_dir: Path, results: Mapping[str, Any], arrays: Mapping[str, np.ndarray], method: str
) -> list[Path]:
    """ROC curves, ours-vs-paper bars and the embedding map of one evaluation."""
    from etp.eval.plots import plot_embedding_map, plot_roc_curves, plot_vs_paper
    from etp.eval.report import PAPER_ZERO_SHOT, method_label

    classes = results["data"]["classes"]
    ds = results["data"]["dataset"]
    y = arrays["y_test"]
    files = []
    for key, probs in arrays.items():
        kind, _, name = key.partition(":")
        if kind not in ("zero_shot_probs", "probe_probs"):
            continue
        slug = "".join(ch if ch.isalnum() else "-" for ch in name).strip("-")
        label = "zero-shot" if kind == "zero_shot_probs" else "linear probe"
        stem = "roc-zero-shot" if kind == "zero_shot_probs" else "roc-linear-probe"
        files.append(
            plot_roc_curves(
                y,
                probs,
                classes,
                out_dir / f"{stem}-{slug}.png",
                title=f"{method_label(method)} {label} ({name})",
            )
        )
    paper = PAPER_ZERO_SHOT.get(ds)
    for name, zs in results.get("zero_shot", {}).items():
        if not paper:
            break
        ours = {
            c: 100 * v["auc"]
            for c, v in zs["metrics"]["per_class"].items()
            if np.isfinite(v["auc"])
        }
        ours["Average"] = 100 * zs["metrics"]["average"]["auc"]
        ref = {c: r["ETP"]["auc"] for c, r in paper.items()}
        slug = "".join(ch if ch.isalnum() else "-" for ch in name).strip("-")
        files.append(
            plot_vs_paper(
                ours,
                ref,
                out_dir / f"zero-shot-auc-vs-paper-{slug}.png",
                title=f"zero-shot AUC, {ds}: ours ({name}) vs. paper",
                ours_label=f"{method_label(method)} (ours)",
                paper_label="ETP (paper)",
            )
        )
    emb = arrays.get("test_embedding", arrays.get("test_features"))
    if emb is not None and len(emb) >= 3:
        files.append(
            plot_embedding_map(
                emb,
                y,
                classes,
                out_dir / "embedding-map.png",
                title=f"test ECGs, {method_label(method)} ({ds}), PCA",
            )
        )
    return files


_CRITERION = {"loss": "cross-entropy", "auc": "macro AUC"}


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``etp evaluate``."""
    p = subparsers.add_parser(
        "evaluate",
        help="zero-shot, linear-probe and retrieval evaluation on a prepared cache",
        description="Evaluate a trained model on a prepared cache and print the paper's tables. "
        "Settings come from the YAML config (optional) and KEY=VALUE overrides, e.g. "
        "probe.label_fractions=[0.1,1] bootstrap=0; the defaults are the shipped protocol.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="YAML config (keys: etp evaluate --help-config)")
    p.add_argument("--model", metavar="DIR", help="trained model directory (key: model)")
    p.add_argument("--cache", metavar="DIR", help="prepared cache, etp prepare's (key: cache)")
    p.add_argument("--zero-shot", action="store_true", help="run zero-shot classification")
    p.add_argument("--linear-probe", action="store_true", help="run the linear probe")
    p.add_argument("--retrieval", action="store_true", help="run ECG<->report retrieval")
    p.add_argument("--out", metavar="DIR", help="write results.json and results.md here (key: out)")
    p.add_argument("--plots", action="store_true", help="with --out: also write PNG plots")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--print-config", action="store_true", help="print the resolved config, exit")
    p.add_argument("--help-config", action="store_true", help="list every config key, exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=run)


def help_config() -> str:
    """Every config key with its default and help text (for ``--help-config``)."""
    lines = []
    for key, text, default in describe(EvaluateConfig):
        shown = yaml.safe_dump(to_dict_default(default), default_flow_style=True).strip()
        shown = shown.removesuffix("\n...").removesuffix("...").strip()
        lines += [f"  {key} = {shown}", f"      {text}"]
    fields = ", ".join(k for k, _, _ in describe(PromptOptions))
    lines.append(f"  (each zero_shot item: {fields})")
    return "\n".join(lines)


def to_dict_default(value: Any) -> Any:
    """A default as plain data (prompt variants as mappings)."""
    if isinstance(value, list):
        return [to_dict(v) if hasattr(v, "__dataclass_fields__") else v for v in value]
    return value


def config_from_args(args: argparse.Namespace) -> EvaluateConfig:
    """The config of the command line: the file, then the flags, then KEY=VALUE overrides."""
    flags = []
    for key in ("model", "cache", "out"):
        if getattr(args, key):
            flags.append(f"{key}={json.dumps(getattr(args, key))}")
    if args.plots:
        flags.append("plots=true")
    chosen = [t for t, on in (("zero_shot", args.zero_shot), ("linear_probe", args.linear_probe),
                              ("retrieval", args.retrieval)) if on]
    if chosen:
        flags.append(f"tasks=[{','.join(chosen)}]")
    cfg = load_evaluate_config(args.config, [*flags, *args.overrides])
    for key, flag in (("model", "--model"), ("cache", "--cache")):
        if not getattr(cfg, key):
            raise ConfigError(f"{flag} DIR (or {key}=DIR) is required")
    return cfg


def _gallery(cfg: EvaluateConfig, prepared: Any) -> list[str] | None:
    """The ``via_reports`` gallery: the training split's reports, or those of a file."""
    from etp.commands.zero_shot import read_reports

    if not any(v.via_reports for v in cfg.zero_shot):
        return None
    if cfg.reports != "train":
        return read_reports(cfg.reports)
    if cfg.split == cfg.train_split:
        raise ConfigError(
            f"reports=train: the evaluated split is the training split {cfg.split!r}"
        )
    reports = [r for r in prepared.reports(prepared.select(split=cfg.train_split)) if r.strip()]
    if not reports:
        raise DataError(
            f"{cfg.cache}: reports=train: the {cfg.train_split!r} split has no report "
            "(give reports=FILE, or a prompt variant without via_reports)"
        )
    return reports


def run(args: argparse.Namespace) -> int:
    """Run ``etp evaluate``."""
    from etp.data.cache import load_prepared
    from etp.eval.protocol import EvalSettings, evaluate_model, make_split
    from etp.eval.report import to_jsonable, write_results_json
    from etp.io import atomic_write_text
    from etp.models.etp import load_model_dir

    if args.help_config:
        print(help_config())
        return 0
    cfg = config_from_args(args)
    if args.print_config:
        sys.stdout.write(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
        return 0
    prepared = load_prepared(cfg.cache)
    loaded = load_model_dir(cfg.model, device=cfg.device)
    tasks = list(cfg.tasks) or [t for t in TASKS if t == "linear_probe" or loaded.has_text]
    if ("zero_shot" in tasks or "retrieval" in tasks) and not loaded.has_text:
        raise ModelError(
            f"{cfg.model}: this {loaded.method!r} model has no text side: zero-shot and "
            "retrieval need an ETP model (use --linear-probe)"
        )
    test_idx = prepared.select(split=cfg.split)
    if test_idx.size == 0:
        raise DataError(f"{cfg.cache}: split {cfg.split!r} has no records")
    if cfg.split in (cfg.train_split, cfg.val_split) and "linear_probe" in tasks:
        raise ConfigError(f"split {cfg.split!r} must differ from the probe's train/val splits")
    split = make_split(
        prepared,
        test_idx,
        prepared.select(split=cfg.train_split) if cfg.train_split != cfg.split else None,
        prepared.select(split=cfg.val_split) if cfg.val_split != cfg.split else None,
    )
    settings = EvalSettings(
        probe=cfg.probe,
        zero_shot=list(cfg.zero_shot),
        prompts=cfg.prompts,
        precision=cfg.precision,
        views=cfg.views,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        features_cache=cfg.features_cache,
    )
    gallery = _gallery(cfg, prepared) if "zero_shot" in tasks else None
    out = evaluate_model(loaded, prepared, split, settings, tasks, gallery=gallery)
    results = results_of(out, loaded, prepared, test_idx.size, cfg.bootstrap, cfg.seed)
    md = results_markdown(results)
    if cfg.out:
        out_dir = Path(cfg.out)
        write_results_json(
            out_dir / "results.json",
            results,
            command=sys.argv,
            config=cfg,
            data_fingerprint=prepared.fingerprint,
            seeds=[cfg.seed],
        )
        atomic_write_text(out_dir / "results.md", md)
        if cfg.plots:
            write_plots(out_dir, results, arrays_of(out), loaded.method)
    if args.json:
        print(json.dumps(to_jsonable(results), indent=2, allow_nan=False))
    else:
        print(md, end="")
    return 0
