"""``etp benchmark``'s orchestration: prepare, obtain every model, evaluate it with the shared
protocol (:mod:`etp.eval.protocol`), pool and aggregate (:mod:`etp.eval.aggregate`), write
results.json, results.md and plots (:mod:`etp.benchmark.render`)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from etp.benchmark.config import BenchmarkConfig
from etp.benchmark.render import render_markdown, write_plots
from etp.benchmark.runs import Rotation, obtain_model, rotations, seeds_of
from etp.data.prepare import PrepareConfig
from etp.errors import ConfigError
from etp.eval.aggregate import pool_outputs
from etp.eval.protocol import (
    EvalOutput,
    EvalSettings,
    Split,
    evaluate_model,
    fold_split,
    named_split,
    training_reports,
)
from etp.eval.zero_shot import PromptOptions
from etp.io import atomic_write_text

log = logging.getLogger(__name__)


def _evaluate(
    cfg: BenchmarkConfig,
    model_dir: Path,
    prepared: Any,
    split: Split,
    seed: int,
    work: Path,
    tasks: Sequence[str],
    gallery: Sequence[str] | None = None,
) -> EvalOutput:
    """One model on one split, by the protocol of ``etp evaluate`` with the config's settings;
    features and text embeddings are kept under ``work``."""
    from etp.models.etp import load_model_dir

    settings = EvalSettings(
        probe=cfg.probe,
        zero_shot=list(cfg.zero_shot) or [PromptOptions(name="en")],
        prompts=cfg.prompts,
        precision=cfg.precision,
        views=cfg.views,
        seed=seed,
        features_cache=work / "features",
        text_cache=work / "text",
    )
    model = load_model_dir(model_dir)
    return evaluate_model(model, prepared, split, settings, tasks, gallery=gallery)


def prepare(pcfg: PrepareConfig, key: str = "prepare") -> Any:
    """The prepared cache of a benchmark dataset (built, or reused when unchanged) and the
    preparation summary; ``key`` names the config section in the error of a missing download."""
    from etp.data.cache import load_prepared
    from etp.data.prepare import prepare_dataset

    if pcfg.root and not Path(pcfg.root).exists():
        example = "ptb-xl" if pcfg.dataset == "ptbxl" else (pcfg.dataset or "data")
        raise ConfigError(
            f"{key}.root: {pcfg.root} does not exist; point the config at your download of "
            f"{pcfg.dataset or 'the dataset'}, e.g. the override {key}.root=/path/to/{example}"
        )
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


def _clean_figures(
    cfg: BenchmarkConfig,
    rots: Sequence[Rotation],
    outputs: dict[str, dict[int, list[EvalOutput]]],
    classes: list[str],
) -> dict[str, Any]:
    """The pooled figures over the clean test folds (those not in ``dev_folds``: records no
    development choice has scored), beside those over every test fold.

    Returns ``{"clean_test_folds": [...]}`` plus, when some but not all test folds are clean,
    ``"clean": pool_outputs(...)`` of the clean rotations only (when all are clean the figures
    over all test folds are the clean ones).
    """
    keep = [i for i, r in enumerate(rots) if r.test not in cfg.dev_folds]
    out: dict[str, Any] = {"clean_test_folds": [rots[i].test for i in keep]}
    if keep and len(keep) < len(rots):
        clean_out = {
            method: {seed: [runs[i] for i in keep] for seed, runs in per_seed.items()}
            for method, per_seed in outputs.items()
        }
        clean = pool_outputs(clean_out, classes, cfg.bootstrap, cfg.min_class_records_for_ci)
        for key in ("y", "ids", "_probs"):
            clean.pop(key, None)
        out["clean"] = clean
    return out


def run_benchmark(cfg: BenchmarkConfig, command: Sequence[str] | None = None) -> dict[str, Any]:
    """Run everything the config asks for; returns the results mapping (also written to disk)."""
    t_start = time.perf_counter()
    work = Path(cfg.work_dir)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prepared, summary = prepare(cfg.prepare)
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
                split = fold_split(prepared, rot.train, rot.val, rot.test)
                tasks = ["linear_probe", "zero_shot"] + (["retrieval"] if cfg.retrieval else [])
                res = _evaluate(cfg, model_dir, prepared, split, seed, work, tasks)
                outputs.setdefault(method, {}).setdefault(seed, []).append(res)

    results: dict[str, Any] = {
        "name": cfg.name,
        "records_used": {dataset: _records_used(prepared, summary)},
        "rotations": [asdict(r) for r in rots],
        dataset: pool_outputs(outputs, classes, cfg.bootstrap, cfg.min_class_records_for_ci),
        "seconds": {},
    }
    internals = {dataset: {k: results[dataset].pop(k, None) for k in ("y", "ids", "_probs")}}
    results[dataset].update(_clean_figures(cfg, rots, outputs, classes))

    for tname, target in cfg.transfer.items():
        t_prepared, t_summary = prepare(target.prepare, f"transfer.{tname}.prepare")
        t_classes = list(t_prepared.classes)
        t_rot = transfer_rots[tname]
        t_fold = t_rot.test
        # the gallery of via_reports variants: the reports these models were pretrained on
        t_reports = training_reports(
            prepared, fold_split(prepared, t_rot.train, t_rot.val, t_rot.test)
        )
        t_split = named_split(t_prepared)
        t_tasks = [
            task
            for task, on in (("linear_probe", target.linear_probe), ("zero_shot", target.zero_shot))
            if on
        ]
        t_out: dict[str, dict[int, list[EvalOutput]]] = {}
        for method in cfg.methods:
            for seed in seeds_of(cfg, method):
                key = (method, seed, t_fold)  # every method/seed ran every rotation above
                log.info("[%s seed %d] transfer to %s", method, seed, tname)
                res = _evaluate(
                    cfg, model_dirs[key], t_prepared, t_split, seed, work / "transfer" / tname,
                    t_tasks, gallery=t_reports,
                )
                t_out.setdefault(method, {}).setdefault(seed, []).append(res)
        results["records_used"][tname] = _records_used(t_prepared, t_summary)
        results[tname] = pool_outputs(
            t_out, t_classes, cfg.bootstrap, cfg.min_class_records_for_ci
        )
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
        write_plots(cfg, outputs, results, internals[dataset], classes, dataset, out_dir)
    return results
