"""``etp zero-shot``: class probabilities for one's own ECG files from a trained ETP model.

Each file (WFDB record, CinC ``.hea``+``.mat``, original CPSC2018 ``.mat``, ``.npy`` with
``--fs``) is preprocessed exactly like the model's training data (the settings travel in the
model directory), embedded, and compared with one prompt per label
(``"this ECG indicates {label}"`` by default); probabilities are the softmax of the model's
scaled cosine similarities over the given labels.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from etp.commands import add_views_argument, apply_views
from etp.errors import ConfigError, DataError, ModelError

log = logging.getLogger(__name__)

EPILOG = (
    "examples:\n"
    '  etp zero-shot --model runs/etp/model --labels "atrial fibrillation,normal ECG" \\\n'
    "      rec1.hea A0001.mat\n"
    "  etp zero-shot --model runs/etp/model --dataset ptbxl --languages en,de --synonyms 00001_lr\n"
    "  etp zero-shot --model etp-ptbxl-mini --dataset cpsc2018 A0001.hea --plot out/\n"
    '  etp zero-shot --model runs/etp/model --labels "left bundle branch block,normal ECG" \\\n'
    "      --fs 500 --csv ecg.npy > probs.csv\n"
    "\n"
    "Without prompt options (--template/--ensemble/--synonyms/--languages) a model directory's\n"
    "zero-shot defaults apply (zero_shot.json: e.g. the shipped model's 'en synonyms via reports'\n"
    "with stored class embeddings); --reports FILE alone keeps them and supplies the gallery,\n"
    "whose embeddings are cached in ~/.cache/etp ($ETP_CACHE_DIR, $XDG_CACHE_HOME/etp).\n"
    "Class names and their German/Swedish phrasings for --dataset come from the prompt table\n"
    "(etp/resources/prompts.yaml; pass your own copy with --prompts FILE)."
)


def add_prompt_arguments(p: argparse.ArgumentParser, reports_from_train: bool = False) -> None:
    """Prompt options shared by ``etp zero-shot`` and ``etp evaluate``."""
    g = p.add_argument_group("prompts")
    g.add_argument(
        "--template",
        action="append",
        metavar="TEXT",
        help="prompt template containing {name} (repeatable: templates are averaged); "
        "default: 'this ECG indicates {name}'",
    )
    g.add_argument(
        "--ensemble", action="store_true", help="average the prompt table's ensemble templates"
    )
    g.add_argument(
        "--synonyms",
        action="store_true",
        help="also use every synonym the prompt table lists for a class",
    )
    g.add_argument(
        "--languages",
        default=None,
        metavar="LANGS",
        help="comma-separated languages of class names from the table (en,de,sv); default en",
    )
    g.add_argument("--prompts", metavar="FILE", help="prompt table YAML (default: the shipped one)")
    g.add_argument(
        "--reports",
        metavar="FILE",
        help="report prototypes: represent each class by the reports of FILE nearest to its "
        "prompts (e.g. the pretraining reports; one report per line, or a CSV/TSV with a "
        "'report' column) instead of by the prompts themselves"
        + ("; 'train' = the cache's training-split reports" if reports_from_train else ""),
    )


def prompt_options(args: argparse.Namespace) -> Any:
    """:class:`PromptOptions` from the parsed prompt arguments."""
    from etp.eval.zero_shot import PromptOptions, check_template

    langs = tuple(s.strip() for s in (args.languages or "en").split(",") if s.strip())
    if not langs:
        raise ConfigError("--languages: give at least one language, e.g. en or en,de")
    templates = None
    if args.template:
        templates = tuple(check_template(t, "--template") for t in args.template)
    return PromptOptions(
        templates=templates,
        ensemble=bool(args.ensemble),
        synonyms=bool(args.synonyms),
        languages=langs,
        via_reports=getattr(args, "reports", None) is not None,
    )


def read_reports(path: str | Path) -> list[str]:
    """Reports of a gallery file: one per line (``.txt``), or the ``report`` column of a CSV/TSV.

    Blank lines and empty reports are skipped; a file without any report is an error.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"--reports {p}: no such file")
    if p.suffix.lower() in (".csv", ".tsv"):
        import pandas as pd

        try:
            df = pd.read_csv(p, sep="\t" if p.suffix.lower() == ".tsv" else ",", dtype=str)
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"--reports {p}: not a readable CSV/TSV file ({e})") from e
        if "report" not in df.columns:
            raise DataError(
                f"--reports {p}: no 'report' column (columns: {', '.join(map(str, df.columns))})"
            )
        reports = [str(r) for r in df["report"].dropna()]
    else:
        try:
            reports = p.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise DataError(f"--reports {p}: not UTF-8 text ({e})") from e
    reports = [r.strip() for r in reports if r.strip()]
    if not reports:
        raise DataError(f"--reports {p}: the file holds no report")
    return reports


def parse_labels(text: str | None) -> list[str]:
    """Comma-separated labels -> list; ConfigError when nothing is left. Labels that differ only
    in case or spacing are one label; a single label warns (its probability is always 1)."""
    from etp.zero_shot_defaults import merge_labels

    labels = [s.strip() for s in (text or "").split(",") if s.strip()]
    if not labels:
        raise ConfigError(
            f"--labels: the label list is empty ({text!r}); give class names separated by commas, "
            'e.g. --labels "atrial fibrillation,normal ECG"'
        )
    return merge_labels(labels, "--labels")


def explicit_prompt_options(args: argparse.Namespace) -> Any:
    """:class:`PromptOptions` when the user chose any prompt option, else None (the model's
    zero-shot defaults apply; ``--reports`` alone keeps them and supplies the gallery)."""
    chosen = args.template or args.ensemble or args.synonyms or args.languages is not None
    return prompt_options(args) if chosen else None


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``etp zero-shot``."""
    p = subparsers.add_parser(
        "zero-shot",
        help="class probabilities for your own ECG files (no labelled data needed)",
        description="Zero-shot diagnosis of ECG files with a trained ETP model: each file is "
        "compared with a text prompt per label; prints per-file class probabilities.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="ECG files: WFDB record (stem or .hea), CinC .mat+.hea, CPSC2018 .mat, .npy",
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="DIR",
        help="trained model directory, or a shipped model's name (etp-ptbxl-mini)",
    )
    p.add_argument(
        "--labels",
        metavar="LIST",
        help='comma-separated class names, e.g. "atrial fibrillation,normal ECG" '
        "(with --dataset: a subset of its class codes)",
    )
    p.add_argument(
        "--dataset",
        metavar="NAME",
        help="use the prompt table's classes of this dataset (ptbxl, cpsc2018)",
    )
    p.add_argument(
        "--fs",
        type=float,
        metavar="HZ",
        help="sampling rate of .npy files (WFDB and .mat headers give their own)",
    )
    p.add_argument(
        "--pad",
        action="store_true",
        help="zero-pad records shorter than the model's input instead of failing",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON")
    out.add_argument("--csv", action="store_true", help="print CSV")
    p.add_argument("--bf16", action="store_true", help="bfloat16 inference")
    p.add_argument(
        "--plot",
        metavar="DIR",
        help="write one PNG per file to DIR: the 12-lead ECG on ECG paper (as the model sees it) "
        "with the class probabilities beside it",
    )
    add_views_argument(p)
    p.add_argument("--batch-size", type=int, default=256, metavar="N")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    add_prompt_arguments(p)
    p.set_defaults(func=run)


def resolve_classes(args: argparse.Namespace, table: Any) -> tuple[list[str], str | None]:
    """(labels, dataset or None) from --labels / --dataset."""
    if args.dataset:
        from etp.zero_shot_defaults import label_key

        classes = table.classes(args.dataset)
        if args.labels is None:
            return classes, args.dataset
        wanted = parse_labels(args.labels)
        by_key = {label_key(c): c for c in classes}
        unknown = [w for w in wanted if label_key(w) not in by_key]
        if unknown:
            raise ConfigError(
                f"--labels {unknown} are not classes of {args.dataset} in {table.source} "
                f"(its classes: {', '.join(classes)})"
            )
        return [by_key[label_key(w)] for w in wanted], args.dataset
    if args.labels is None:
        raise ConfigError('give --labels "name 1,name 2,..." or --dataset NAME')
    return parse_labels(args.labels), None


def load_text_model(path: str, device: str = "cpu") -> Any:
    """Load a model directory that has a text side (ModelError naming it otherwise)."""
    from etp.models.etp import load_model_dir

    loaded = load_model_dir(path, device=device)
    if not loaded.has_text:
        raise ModelError(
            f"{path}: this {loaded.method!r} model has no text side, so it cannot do zero-shot "
            "classification (use an ETP model; SimCLR encoders need a linear probe)"
        )
    return loaded


def format_output(
    files: list[str], labels: list[str], probs: np.ndarray, pred: np.ndarray, kind: str,
    warnings: list[list[str]] | None = None,
) -> str:
    """Render per-file probabilities as a table, JSON or CSV; JSON and CSV carry each file's
    input warnings (e.g. a flat lead; ``warnings``, one list per file) beside its result."""
    warned = warnings if warnings is not None else [[] for _ in files]
    if kind == "json":
        rows = [
            {
                "file": f,
                "prediction": labels[int(k)],
                "probabilities": {lab: round(float(v), 6) for lab, v in zip(labels, pr)},
                "warnings": list(wn),
            }
            for f, pr, k, wn in zip(files, probs, pred, warned)
        ]
        return json.dumps(rows, indent=2, ensure_ascii=False)
    if kind == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["file", "prediction", *labels, "warnings"])
        for f, pr, k, wn in zip(files, probs, pred, warned):
            w.writerow([f, labels[int(k)], *(f"{float(v):.6f}" for v in pr), "; ".join(wn)])
        return buf.getvalue().rstrip("\n")
    from etp.eval.report import markdown_table

    rows = [
        [f, labels[int(k)], *(f"{float(v):.3f}" for v in pr)]
        for f, pr, k in zip(files, probs, pred)
    ]
    return markdown_table(["file", "prediction", *labels], rows)


def run(args: argparse.Namespace) -> int:
    """Run ``etp zero-shot``."""
    from etp.eval.features import embed_arrays, model_preprocess_config, read_ecg_files
    from etp.eval.zero_shot import load_prompt_table, zero_shot_scores
    from etp.zero_shot_defaults import resolve_zero_shot

    if args.fs is not None and not args.fs > 0:
        raise ConfigError(f"--fs must be a positive sampling rate in Hz, got {args.fs}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    table = load_prompt_table(args.prompts)
    labels, dataset = resolve_classes(args, table)
    options = explicit_prompt_options(args)
    reports = read_reports(args.reports) if args.reports is not None else None
    loaded = load_text_model(args.model, device=args.device)
    apply_views(loaded, args)
    pcfg = model_preprocess_config(loaded)
    warnings: list[list[str]] = []
    x = read_ecg_files(list(args.files), pcfg, fs=args.fs, pad=args.pad, warnings=warnings)
    emb = embed_arrays(loaded, x, "embedding", batch_size=args.batch_size, bf16=args.bf16)
    scale = float(loaded.model.scale().detach())
    resolved = resolve_zero_shot(loaded, labels, dataset, table, options, reports)
    _, probs = zero_shot_scores(emb, resolved.class_emb, scale)
    pred = probs.argmax(axis=1)
    kind = "json" if args.json else "csv" if args.csv else "table"
    files = [str(f) for f in args.files]
    print(format_output(files, labels, probs, pred, kind, warnings))
    if args.plot:
        from etp.eval.ecg_plot import plot_prediction_files

        written = plot_prediction_files(args.plot, files, x, pcfg.fs, labels, probs)
        print(f"wrote {len(written)} plot(s) to {args.plot}", file=sys.stderr)
    if kind == "table":
        first = resolved.prompts[labels[0]][0]
        print(
            f"\n(prompts: {resolved.description}; e.g. {first!r}; logit scale {scale:.1f})",
            file=sys.stderr,
        )
    return 0
