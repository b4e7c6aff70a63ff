"""``etp embed``: ECG (and report) embeddings of a trained model, written to .npy or .csv.

ECG files are read and preprocessed exactly as for ``etp zero-shot``. Rows follow the order of
the arguments: first the ECG files, then the texts. A ``.npy`` output gets a sidecar
``<name>.rows.csv`` (row, kind, source, warnings: the input's amplitude warnings, e.g. a flat
lead) saying which row is which; a ``.csv`` output carries those columns itself, followed by
the embedding values ``e0 … e{D-1}``.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np

from etp.commands import add_views_argument, apply_views
from etp.errors import ConfigError, DataError

EPILOG = (
    "examples:\n"
    "  etp embed --model runs/etp/model records100/00000/00001_lr --out ecg.npy\n"
    '  etp embed --model runs/etp/model A0001.mat --text "sinus rhythm. normal ecg." --out e.csv\n'
    "  etp embed --model runs/etp/model --text-file reports.txt --out reports.npy\n"
    "  etp embed --model runs/etp/model --features *.hea --out features.npy  # 512-d encoder"
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``etp embed``."""
    p = subparsers.add_parser(
        "embed",
        help="write ECG (and report) embeddings of a trained model to .npy/.csv",
        description="Embed ECG files (and texts) with a trained model; rows: the files in order, "
        "then the texts.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help="ECG files: WFDB record (stem or .hea), CinC .mat+.hea, CPSC2018 .mat, .npy",
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="DIR",
        help="trained model directory, or a shipped model's name (etp-ptbxl-mini)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="output .npy or .csv")
    p.add_argument("--text", action="append", metavar="TEXT", help="a report to embed (repeatable)")
    p.add_argument("--text-file", metavar="F", help="file with one report per line")
    p.add_argument(
        "--features",
        action="store_true",
        help="write the encoder's 512-d features instead of the shared-space embeddings",
    )
    p.add_argument(
        "--pooling",
        choices=("avg", "avg+max"),
        default="avg",
        help="with --features: avg (default, 512-d) or avg+max (average and maximum over time, "
        "1024-d; a readout the benchmark's linear probe may choose)",
    )
    p.add_argument("--fs", type=float, metavar="HZ", help="sampling rate of .npy files")
    p.add_argument(
        "--pad",
        action="store_true",
        help="zero-pad records shorter than the model's input instead of failing",
    )
    p.add_argument("--bf16", action="store_true", help="bfloat16 inference")
    p.add_argument(
        "--map",
        metavar="PNG",
        help="also write a 2-D map (PCA) of the ECG embeddings, coloured by --color-by",
    )
    p.add_argument(
        "--color-by",
        metavar="CSV:COLUMN",
        help="with --map: a CSV with a 'file' column (the FILE arguments as given) and the label "
        "column to colour by, e.g. labels.csv:diagnosis",
    )
    add_views_argument(p)
    p.add_argument("--batch-size", type=int, default=256, metavar="N")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.set_defaults(func=run)


def read_texts(args: argparse.Namespace) -> list[str]:
    """Texts from --text and --text-file (blank lines skipped)."""
    texts = [t for t in (args.text or [])]
    for t in texts:
        if not t.strip():
            raise ConfigError("--text: empty text")
    if args.text_file:
        path = Path(args.text_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise DataError(f"{path}: text file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read the text file ({exc})") from None
        more = [line for line in lines if line.strip()]
        if not more:
            raise DataError(f"{path}: the text file holds no non-empty line")
        texts.extend(more)
    return texts


def write_embeddings(
    out: Path, emb: np.ndarray, kinds: list[str], sources: list[str],
    warnings: list[list[str]] | None = None,
) -> list[Path]:
    """Write ``emb`` (n, D) to ``out`` (.npy + .rows.csv sidecar, or .csv); returns the paths.
    The ``warnings`` column holds each row's input warnings (e.g. a flat lead), ``; ``-joined."""
    warned = list(warnings or []) + [[]] * (len(kinds) - len(warnings or []))
    from etp.io import atomic_path, atomic_write_text

    def rows_csv(with_values: bool) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        head = ["row", "kind", "source", "warnings"]
        w.writerow(head + ([f"e{j}" for j in range(emb.shape[1])] if with_values else []))
        for i, (k, s, wn) in enumerate(zip(kinds, sources, warned)):
            values = [f"{float(v):.7g}" for v in emb[i]] if with_values else []
            w.writerow([i, k, s, "; ".join(wn), *values])
        return buf.getvalue()

    if out.suffix.lower() == ".csv":
        atomic_write_text(out, rows_csv(True))
        return [out]
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, emb.astype(np.float32), allow_pickle=False)
    side = out.with_name(out.stem + ".rows.csv")
    atomic_write_text(side, rows_csv(False))
    return [out, side]


def map_labels(spec: str | None, files: list[str]) -> tuple[np.ndarray, list[str], str]:
    """(label index per file (-1 = none), class names, column) from ``CSV:COLUMN``."""
    if spec is None:
        return np.full(len(files), -1), [], ""
    path, sep, column = spec.rpartition(":")
    if not sep or not path or not column:
        raise ConfigError(f"--color-by {spec!r}: expected CSV:COLUMN, e.g. labels.csv:diagnosis")
    from etp.data.readers import read_csv_checked

    df = read_csv_checked(Path(path), ["file", column], "--color-by labels", dtype=str)
    by_file = {str(f): str(v) for f, v in zip(df["file"], df[column]) if str(v) != "nan"}
    missing = [f for f in files if f not in by_file]
    if len(missing) == len(files):
        raise DataError(
            f"--color-by {path}: none of the files given is in its 'file' column "
            f"(e.g. {files[0]!r}); list the files exactly as on the command line"
        )
    classes = sorted(set(by_file[f] for f in files if f in by_file))
    index = np.array([classes.index(by_file[f]) if f in by_file else -1 for f in files])
    return index, classes, column


def write_map(path: Path, emb: np.ndarray, files: list[str], color_by: str | None) -> Path:
    """A PCA map of ECG embeddings coloured by a label column (:func:`plot_embedding_map`)."""
    from etp.eval.plots import plot_embedding_map

    if path.suffix.lower() != ".png":
        raise ConfigError(f"--map {path}: must end in .png")
    labels, classes, column = map_labels(color_by, files)
    title = f"ECG embeddings (PCA), coloured by {column}" if column else None
    return plot_embedding_map(emb, labels, classes, path, title=title)


def run(args: argparse.Namespace) -> int:
    """Run ``etp embed``."""
    from etp.eval.features import embed_arrays, model_preprocess_config, read_ecg_files
    from etp.models.etp import load_model_dir

    out = Path(args.out)
    if out.suffix.lower() not in (".npy", ".csv"):
        raise ConfigError(f"--out {out}: must end in .npy or .csv")
    if args.fs is not None and not args.fs > 0:
        raise ConfigError(f"--fs must be a positive sampling rate in Hz, got {args.fs}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    texts = read_texts(args)
    files = [str(f) for f in args.files]
    if not files and not texts:
        raise ConfigError("nothing to embed: give ECG files and/or --text/--text-file")
    if args.features and texts:
        raise ConfigError(
            "--features applies to ECGs only (texts have no encoder features); "
            "embed the texts in a separate call without --features"
        )
    if args.color_by and not args.map:
        raise ConfigError("--color-by colours the --map: add --map FILE.png")
    if args.map and len(files) < 3:
        raise ConfigError(f"--map needs at least 3 ECG files to project, got {len(files)}")
    if args.pooling != "avg" and not args.features:
        raise ConfigError(f"--pooling {args.pooling} reads out encoder features: add --features")
    loaded = load_model_dir(args.model, device=args.device)
    apply_views(loaded, args)
    parts: list[np.ndarray] = []
    warnings: list[list[str]] = []
    if files:
        pcfg = model_preprocess_config(loaded)
        x = read_ecg_files(files, pcfg, fs=args.fs, pad=args.pad, warnings=warnings)
        kind = "features" if args.features else "embedding"
        parts.append(
            embed_arrays(
                loaded, x, kind, batch_size=args.batch_size, bf16=args.bf16, pooling=args.pooling
            )
        )
    if texts:
        if not loaded.has_text:
            from etp.errors import ModelError

            raise ModelError(
                f"{args.model}: this {loaded.method!r} model has no text side; "
                "it cannot embed --text"
            )
        parts.append(np.asarray(loaded.embed_texts(texts), dtype=np.float32))
    emb = np.concatenate(parts)
    kinds = ["ecg"] * len(files) + ["text"] * len(texts)
    written = write_embeddings(out, emb, kinds, files + texts, warnings)
    if args.map:
        written.append(write_map(Path(args.map), emb[: len(files)], files, args.color_by))
    what = "features" if args.features else "embeddings"
    print(
        f"wrote {emb.shape[0]} {what} of dimension {emb.shape[1]} "
        f"({len(files)} ECG(s), {len(texts)} text(s)) to {', '.join(map(str, written))}"
    )
    return 0
