"""``etp prepare``: turn a PTB-XL / CPSC2018 / manifest source into a memory-mapped cache."""

from __future__ import annotations

import argparse
import json
import sys

from etp.data.prepare import DATASETS, PrepareConfig, prepare_dataset
from etp.data.signal import PreprocessConfig, describe
from etp.errors import ConfigError

EPILOG = (
    "preprocessing defaults (the paper leaves all of them open):\n"
    + describe().replace("`", "")
    + "\n\nexamples:\n"
    "  etp prepare --dataset ptbxl --root data/sample/ptb-xl --out runs/cache/ptbxl-sample\n"
    "  etp prepare --dataset ptbxl --root ../shared/data/ptb-xl --out /tmp/ptbxl --only-present\n"
    "  etp prepare --dataset cpsc2018 --root ../shared/data/cpsc2018 --out /tmp/cpsc "
    "--split-csv ../shared/data/cpsc2018/labels/merl-split\n"
    "  etp prepare --dataset manifest --root my_pairs.csv --out /tmp/mine"
)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _bandpass(text: str) -> list[float] | None:
    if text.strip().lower() in ("none", "off", "no"):
        return None
    values = _float_list(text)
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH in Hz or 'none', got {text!r}")
    return values


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``etp prepare``."""
    d = PreprocessConfig()
    p = subparsers.add_parser(
        "prepare",
        help="read a dataset once into a memory-mapped cache",
        description="Read a PTB-XL, CPSC2018 or manifest source once, preprocess every record "
        "and write a memory-mapped cache (signals.npy, meta.csv, info.json). A second run with "
        "the same inputs reuses the cache; changed options rebuild it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", required=True, choices=DATASETS, help="source format")
    p.add_argument("--root", required=True, help="dataset folder, or the manifest CSV file")
    p.add_argument("--out", required=True, help="cache directory to write")
    g = p.add_argument_group("source options")
    g.add_argument(
        "--fs-source", type=float, metavar="HZ",
        help="PTB-XL: read the 100 Hz (default) or 500 Hz files; "
        "manifest: sampling rate of rows without an fs value",
    )  # fmt: skip
    g.add_argument("--classes", type=_str_list, metavar="A,B,...",
                   help="manifest: class names in order (default: sorted labels found)")
    g.add_argument("--train-folds", type=_int_list, metavar="1,2,...",
                   help="PTB-XL: train strat_folds (default 1-8)")
    g.add_argument("--val-folds", type=_int_list, metavar="9",
                   help="PTB-XL: validation strat_folds (default 9)")
    g.add_argument("--test-folds", type=_int_list, metavar="10",
                   help="PTB-XL: test strat_folds (default 10)")
    g.add_argument("--split-seed", type=int, metavar="N",
                   help="CPSC2018, manifest without a split column: seed of the stratified "
                   "split (default 0)")
    g.add_argument("--split-fractions", type=_float_list, metavar="0.7,0.1,0.2",
                   help="CPSC2018, manifest without a split column: train,val,test fractions")
    g.add_argument("--split-csv", metavar="DIR",
                   help="CPSC2018: take the split from CSV files in DIR (e.g. labels/merl-split)")
    g.add_argument("--reference-csv", metavar="FILE",
                   help="CPSC2018: labels file (default: REFERENCE.csv searched under --root)")
    g.add_argument("--only-present", action="store_true",
                   help="use only listed records whose signal files exist (partial downloads)")
    g.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable/invalid records and list them instead of failing")
    g.add_argument("--max-records", type=int, metavar="N",
                   help="use at most the first N records")
    q = p.add_argument_group("preprocessing")
    q.add_argument("--fs", type=float, default=d.fs, metavar="HZ",
                   help=f"target sampling rate in Hz (default {d.fs:g})")
    q.add_argument("--length", type=float, default=d.length_s, metavar="SECONDS",
                   help=f"fixed length in seconds (default {d.length_s:g})")
    q.add_argument("--bandpass", type=_bandpass, default=d.bandpass, metavar="LOW,HIGH|none",
                   help="band-pass edges in Hz (default 0.5,40)")
    q.add_argument("--filter-order", type=int, default=d.filter_order, metavar="N",
                   help=f"Butterworth order (default {d.filter_order})")
    q.add_argument("--normalize", choices=("none", "zscore"), default=d.normalize,
                   help="per-lead normalisation (default none: keep mV)")
    q.add_argument("--crop", choices=("center", "start"), default=d.crop,
                   help="part of longer records to keep (default center)")
    q.add_argument("--pad", choices=("end", "center"), default=d.pad,
                   help="where shorter records are zero-padded (default end)")
    q.add_argument("--min-length", type=float, default=d.min_length_s, metavar="SECONDS",
                   help="reject records shorter than this (default 0: pad any)")
    r = p.add_argument_group("run")
    r.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    r.add_argument("--force", action="store_true", help="rebuild even if the cache is up to date")
    r.add_argument("--json", action="store_true", help="print a machine-readable JSON summary")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> PrepareConfig:
    """The :class:`PrepareConfig` that the parsed arguments describe."""
    pre = PreprocessConfig(
        fs=args.fs,
        length_s=args.length,
        bandpass=args.bandpass,
        filter_order=args.filter_order,
        normalize=args.normalize,
        crop=args.crop,
        pad=args.pad,
        min_length_s=args.min_length,
    )
    if args.split_fractions is not None and len(args.split_fractions) != 3:
        raise ConfigError(f"--split-fractions: expected train,val,test, got {args.split_fractions}")
    return PrepareConfig(
        dataset=args.dataset,
        root=args.root,
        out=args.out,
        fs_source=args.fs_source,
        classes=args.classes,
        train_folds=args.train_folds,
        val_folds=args.val_folds,
        test_folds=args.test_folds,
        split_seed=args.split_seed,
        split_fractions=args.split_fractions,
        split_csv_dir=args.split_csv,
        reference_csv=args.reference_csv,
        preprocess=pre,
        only_present=args.only_present,
        skip_bad=args.skip_bad,
        max_records=args.max_records,
        workers=args.workers,
        force=args.force,
    )


def run(args: argparse.Namespace) -> int:
    """Prepare (or reuse) the cache and print its summary."""
    cfg = config_from_args(args)
    progress = not args.no_progress and not args.json and sys.stderr.isatty()
    summary = prepare_dataset(cfg, progress=progress)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(summary.format())
    return 0
