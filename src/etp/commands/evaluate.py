"""``etp evaluate``: zero-shot, linear probe and retrieval of a trained model on a prepared cache.

Prints the paper's table layouts (zero-shot: Tables 2/3, linear probe: Table 1) with the paper's
numbers beside ours and bootstrap 95 % confidence intervals, or JSON with ``--json``; ``--out DIR``
also writes ``results.json``, ``results.md`` and (with ``--plots``) PNG figures.

:func:`evaluate_model` is the library entry point that ``etp benchmark`` reuses: it takes record
indices, so the caller decides the splits (named splits here, rotated folds in the benchmark).
Classification uses the single-label records of each split (the paper's setting); retrieval uses
every record of the test split that has a report.
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

from etp.commands import add_views_argument, apply_views
from etp.errors import ConfigError, DataError, ModelError

log = logging.getLogger(__name__)

EPILOG = (
    "examples:\n"
    "  etp evaluate --model runs/etp/model --cache runs/cache/ptbxl\n"
    "  etp evaluate --model runs/etp/model --cache runs/cache/ptbxl --zero-shot --languages en,de\n"
    "  etp evaluate --model runs/etp/model --cache runs/cache/ptbxl --linear-probe \\\n"
    "      --label-fractions 0.01,0.1,1 --out runs/eval --plots\n"
    "\n"
    "With none of --zero-shot/--linear-probe/--retrieval every task the model supports runs.\n"
    "The linear probe chooses its epoch and weight decay on the validation split only (or, with\n"
    "--probe-solver lbfgs --probe-cv-folds K, its weight decay by K-fold cross-validation over the\n"
    "training split) and looks at the test split once."
)


@dataclass
class EvalOptions:
    """What :func:`evaluate_model` runs and how."""

    zero_shot: bool = True
    linear_probe: bool = True
    retrieval: bool = True
    prompt_variants: dict[str, Any] = field(default_factory=dict)  # name -> PromptOptions
    prompt_table: str | None = None
    probe: Any = None  # ProbeConfig (label_fraction is overridden by label_fractions)
    #: encoder readouts the probe chooses among on validation (etp.models.resnet1d.POOLINGS)
    probe_pooling: tuple[str, ...] = ("avg",)
    label_fractions: tuple[float, ...] = (1.0,)
    bootstrap: int = 1000
    seed: int = 0
    bf16: bool = False
    batch_size: int = 256
    features_cache: str | None = None
    reports: list[str] | None = None  # gallery of prompt variants with via_reports


@dataclass
class EvalOutput:
    """Results (JSON-ready) plus the per-record arrays that plots need."""

    results: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _single(prepared: Any, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = prepared.label_index(idx)
    keep = y >= 0
    return np.asarray(idx)[keep], y[keep]


def preprocessing_mismatch(loaded: Any, prepared: Any) -> list[str]:
    """Preprocessing settings on which the model and the cache disagree."""
    a, b = dict(loaded.preprocessing or {}), dict(prepared.preprocessing or {})
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def evaluate_model(
    loaded: Any,
    prepared: Any,
    test_idx: np.ndarray,
    train_idx: np.ndarray | None = None,
    val_idx: np.ndarray | None = None,
    opts: EvalOptions | None = None,
) -> EvalOutput:
    """Zero-shot, linear probe and retrieval of ``loaded`` on records of ``prepared``.

    Args:
        loaded: a :class:`~etp.models.etp.LoadedModel`.
        prepared: a :class:`~etp.data.cache.PreparedDataset`.
        test_idx: records of the test split (any labels; single-label ones are classified).
        train_idx, val_idx: records for the linear probe (needed when it runs).
        opts: what to run.
    """
    from etp.eval.features import extract, model_fingerprint
    from etp.eval.linear_probe import ProbeConfig, select_readout
    from etp.eval.metrics import bootstrap_ci, classification_metrics, zero_shot_metrics
    from etp.eval.retrieval import evaluate_retrieval
    from etp.eval.zero_shot import (
        PromptOptions,
        ReportGallery,
        evaluate_zero_shot,
        load_prompt_table,
    )

    opts = opts or EvalOptions()
    classes = list(prepared.classes)
    dataset = str(prepared.info.get("dataset", ""))
    test_idx = np.asarray(test_idx, dtype=np.int64)
    cls_idx, y_test = _single(prepared, test_idx)
    where = f"{prepared.path}"
    results: dict[str, Any] = {
        "model": {
            "path": str(getattr(loaded, "path", "")),
            "method": loaded.method,
            "fingerprint": model_fingerprint(loaded),
            "views": str(getattr(loaded, "views", "1")),
        },
        "data": {
            "cache": str(prepared.path),
            "dataset": dataset,
            "fingerprint": prepared.fingerprint,
            "classes": classes,
            "n_test_records": int(test_idx.size),
            "n_test_single_label": int(cls_idx.size),
            "test_counts": {c: int((y_test == i).sum()) for i, c in enumerate(classes)},
        },
    }
    mismatch = preprocessing_mismatch(loaded, prepared)
    if mismatch:
        log.warning(
            "model and cache were preprocessed differently (%s): results may suffer",
            ", ".join(mismatch),
        )
        results["preprocessing_mismatch"] = mismatch
    arrays: dict[str, np.ndarray] = {"y_test": y_test, "test_indices": cls_idx}
    kw = dict(bf16=opts.bf16, batch_size=opts.batch_size, cache_dir=opts.features_cache)
    boot = dict(n_boot=opts.bootstrap, seed=opts.seed)

    if (opts.zero_shot or opts.retrieval) and not loaded.has_text:
        raise ModelError(
            f"{results['model']['path']}: this {loaded.method!r} model has no text "
            "side: zero-shot and retrieval need an ETP model (use --linear-probe)"
        )
    if opts.zero_shot:
        if cls_idx.size == 0:
            raise DataError(f"{where}: no single-label record in the test selection to classify")
        table = load_prompt_table(opts.prompt_table)
        emb = extract(loaded, prepared, cls_idx, kind="embedding", **kw)
        arrays["test_embedding"] = emb
        scale = float(loaded.model.scale().detach())
        variants = opts.prompt_variants or {"en": PromptOptions()}
        gallery = (
            ReportGallery(opts.reports, loaded.embed_texts_frozen)
            if opts.reports is not None
            else None
        )
        results["zero_shot"] = {}
        for name, popts in variants.items():
            res = evaluate_zero_shot(
                emb,
                y_test,
                classes,
                loaded.embed_texts,
                scale,
                dataset=dataset,
                table=table,
                options=popts,
                gallery=gallery,
            )
            entry = res.to_dict()
            if opts.bootstrap > 0:
                entry["ci"] = bootstrap_ci(
                    lambda y, p: zero_shot_metrics(y, p, classes, warn=False),
                    y_test,
                    res.prediction.probabilities,
                    **boot,
                )
            results["zero_shot"][name] = entry
            arrays[f"zero_shot_probs:{name}"] = res.prediction.probabilities

    if opts.linear_probe:
        if train_idx is None or val_idx is None:
            raise ConfigError("the linear probe needs a train and a validation split")
        tr_idx, y_tr = _single(prepared, train_idx)
        va_idx, y_va = _single(prepared, val_idx)
        for name, n in (
            ("train", tr_idx.size),
            ("validation", va_idx.size),
            ("test", cls_idx.size),
        ):
            if n == 0:
                raise DataError(
                    f"{where}: the {name} split has no single-label record for the probe"
                )
        base = opts.probe or ProbeConfig(seed=opts.seed)
        feats = {
            pooling: [
                extract(loaded, prepared, idx, kind="features", **kw, pooling=pooling)
                for idx in (tr_idx, va_idx, cls_idx)
            ]
            for pooling in opts.probe_pooling
        }
        arrays["test_features"] = feats[opts.probe_pooling[0]][2]
        results["linear_probe"] = {}
        for frac in opts.label_fractions:
            cfg = ProbeConfig(**{**base.__dict__, "label_fraction": float(frac)})
            # train + validation only (and the readout, when several, chosen on validation)
            chosen, probe = select_readout(
                classes, cfg, {k: (f[0], f[1]) for k, f in feats.items()}, y_tr, y_va
            )
            res = probe.evaluate_test(feats[chosen][2], y_test)  # the single look at the test split
            entry = res.to_dict()
            if opts.bootstrap > 0:
                entry["ci"] = bootstrap_ci(
                    lambda y, p: classification_metrics(y, p, classes, warn=False),
                    y_test,
                    res.test_probabilities,
                    **boot,
                )
            key = f"{100 * frac:g}%"
            results["linear_probe"][key] = entry
            arrays[f"probe_probs:{key}"] = res.test_probabilities

    if opts.retrieval:
        texts = prepared.reports(test_idx)  # canonical= below normalises/translates
        has = np.array([bool(t.strip()) for t in texts])
        if not has.any():
            raise DataError(f"{where}: no record of the test selection has a report to retrieve")
        r_idx = test_idx[has]
        emb = extract(loaded, prepared, r_idx, kind="embedding", **kw)
        results["retrieval"] = evaluate_retrieval(
            emb,
            [t for t, h in zip(texts, has) if h],
            loaded.embed_texts,
            canonical=loaded.prepare_texts,
        )
    return EvalOutput(results=results, arrays=arrays)


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


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``etp evaluate``."""
    from etp.commands.zero_shot import add_prompt_arguments

    p = subparsers.add_parser(
        "evaluate",
        help="zero-shot, linear-probe and retrieval evaluation on a prepared cache",
        description="Evaluate a trained model on a prepared cache and print the paper's tables.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, metavar="DIR", help="trained model directory")
    p.add_argument("--cache", required=True, metavar="DIR", help="prepared cache (etp prepare)")
    p.add_argument("--split", default="test", help="split to report on (default test)")
    p.add_argument("--zero-shot", action="store_true", help="run zero-shot classification")
    p.add_argument("--linear-probe", action="store_true", help="run the linear probe")
    p.add_argument("--retrieval", action="store_true", help="run ECG<->report retrieval")
    p.add_argument("--train-split", default="train", help="probe training split (default train)")
    p.add_argument("--val-split", default="val", help="probe validation split (default val)")
    p.add_argument(
        "--label-fractions",
        default="1",
        metavar="LIST",
        help="comma-separated fractions of the training labels for the probe, e.g. 0.01,0.1,1",
    )
    p.add_argument("--probe-epochs", type=int, default=100, metavar="N", help="probe max epochs")
    p.add_argument(
        "--probe-patience",
        type=int,
        default=10,
        metavar="N",
        help="probe early-stopping patience (epochs without validation gain)",
    )
    p.add_argument(
        "--probe-select-by",
        choices=("loss", "auc"),
        default="loss",
        help="validation criterion for the probe's epoch and weight decay: cross-entropy "
        "(default, steadier on small validation sets) or macro AUC",
    )
    p.add_argument(
        "--probe-inits",
        type=int,
        default=1,
        metavar="N",
        help="independently initialised probes, each selected on validation, whose weights are "
        "averaged into one linear classifier (default 1, the paper's single probe; adam only)",
    )
    p.add_argument(
        "--probe-solver",
        choices=("adam", "lbfgs"),
        default="adam",
        help="adam: minibatch Adam, epoch chosen on validation (default, the paper's); lbfgs: "
        "full-batch L-BFGS to the optimum of the L2-penalised cross-entropy",
    )
    p.add_argument(
        "--probe-cv-folds",
        type=int,
        default=0,
        metavar="K",
        help="with --probe-solver lbfgs: choose the weight decay by stratified K-fold "
        "cross-validation over the training split instead of on validation (default 0: validation)",
    )
    p.add_argument(
        "--probe-pooling",
        default="avg",
        metavar="R[,R]",
        help="readout(s) of the frozen encoder for the probe: avg (default, the 512-d pretrained "
        "output), avg+max (average and maximum over time, 1024-d), or both comma-separated to "
        "choose per fit on validation",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for 95%% CIs (0 = none)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bfloat16 feature extraction")
    add_views_argument(p)
    p.add_argument("--batch-size", type=int, default=256, metavar="N")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--features-cache", metavar="DIR", help="keep extracted features here for reuse")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--out", metavar="DIR", help="write results.json and results.md here")
    p.add_argument("--plots", action="store_true", help="with --out: also write PNG plots")
    add_prompt_arguments(p, reports_from_train=True)
    p.set_defaults(func=run)


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(
            f"--label-fractions: expected numbers like 0.01,0.1,1, got {text!r}"
        ) from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise ConfigError(f"--label-fractions: each fraction must be in (0, 1], got {text!r}")
    return values


def _poolings(text: str) -> tuple[str, ...]:
    from etp.models.resnet1d import check_poolings

    values = tuple(v.strip() for v in text.split(",") if v.strip())
    return check_poolings(values, "--probe-pooling")


_CRITERION = {"loss": "cross-entropy", "auc": "macro AUC"}


def _gallery(args: argparse.Namespace, prepared: Any) -> list[str] | None:
    """The ``--reports`` gallery: a file, or ``train`` = the training split's reports."""
    from etp.commands.zero_shot import read_reports

    if args.reports is None:
        return None
    if args.reports != "train":
        return read_reports(args.reports)
    if args.split == args.train_split:
        raise ConfigError(f"--reports train: the evaluated split is the training split {args.split!r}")
    reports = [r for r in prepared.reports(prepared.select(split=args.train_split)) if r.strip()]
    if not reports:
        raise DataError(f"{args.cache}: --reports train: the {args.train_split!r} split has no report")
    return reports


def run(args: argparse.Namespace) -> int:
    """Run ``etp evaluate``."""
    from etp.commands.zero_shot import prompt_options
    from etp.data.cache import load_prepared
    from etp.eval.linear_probe import ProbeConfig
    from etp.eval.report import to_jsonable, write_results_json
    from etp.io import atomic_write_text
    from etp.models.etp import load_model_dir

    if args.plots and not args.out:
        raise ConfigError("--plots needs --out DIR")
    if (
        args.bootstrap < 0
        or args.batch_size < 1
        or args.probe_epochs < 1
        or args.probe_patience < 1
        or args.probe_inits < 1
    ):
        raise ConfigError(
            "--bootstrap must be >= 0; --batch-size, --probe-epochs, --probe-patience, "
            "--probe-inits >= 1"
        )
    fractions = _fractions(args.label_fractions)
    poolings = _poolings(args.probe_pooling)
    popts = prompt_options(args)
    try:
        probe = ProbeConfig(
            max_epochs=args.probe_epochs,
            patience=args.probe_patience,
            select_by=args.probe_select_by,
            inits=args.probe_inits,
            solver=args.probe_solver,
            cv_folds=args.probe_cv_folds,
            seed=args.seed,
        )
    except ValueError as exc:
        raise ConfigError(f"--probe-solver / --probe-cv-folds / --probe-inits: {exc}") from exc
    prepared = load_prepared(args.cache)
    loaded = load_model_dir(args.model, device=args.device)
    probe.device = str(loaded.device)
    apply_views(loaded, args)
    chosen = args.zero_shot or args.linear_probe or args.retrieval
    opts = EvalOptions(
        zero_shot=args.zero_shot or (not chosen and loaded.has_text),
        linear_probe=args.linear_probe or not chosen,
        retrieval=args.retrieval or (not chosen and loaded.has_text),
        prompt_variants={popts.describe(): popts},
        prompt_table=args.prompts,
        probe=probe,
        probe_pooling=poolings,
        label_fractions=fractions,
        bootstrap=args.bootstrap,
        seed=args.seed,
        bf16=args.bf16,
        batch_size=args.batch_size,
        features_cache=args.features_cache,
        reports=_gallery(args, prepared),
    )
    test_idx = prepared.select(split=args.split)
    if test_idx.size == 0:
        raise DataError(f"{args.cache}: split {args.split!r} has no records")
    train_idx = val_idx = None
    if opts.linear_probe:
        train_idx = prepared.select(split=args.train_split)
        val_idx = prepared.select(split=args.val_split)
        if args.split in (args.train_split, args.val_split):
            raise ConfigError(
                f"--split {args.split!r} must differ from the probe's train/val splits"
            )
    out = evaluate_model(loaded, prepared, test_idx, train_idx, val_idx, opts)
    md = results_markdown(out.results)
    if args.out:
        out_dir = Path(args.out)
        config = {k: v for k, v in vars(args).items() if k != "func"}
        write_results_json(
            out_dir / "results.json",
            out.results,
            command=sys.argv,
            config=config,
            data_fingerprint=prepared.fingerprint,
            seeds=[args.seed],
        )
        atomic_write_text(out_dir / "results.md", md)
        if args.plots:
            write_plots(out_dir, out.results, out.arrays, loaded.method)
    if args.json:
        print(json.dumps(to_jsonable(out.results), indent=2, allow_nan=False))
    else:
        print(md, end="")
    return 0
