"""``etp benchmark``: pretrain (or reuse) -> linear probe -> zero-shot -> retrieval -> tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from etp.config import describe, to_dict

EPILOG = (
    "examples:\n"
    "  etp benchmark --config configs/quickstart-benchmark.yaml     # bundled sample, minutes\n"
    "  etp benchmark --config configs/benchmark-ptbxl.yaml          # Tables 1-3 (+ CPSC2018)\n"
    "  etp benchmark --config configs/benchmark-ptbxl.yaml seeds=[0,1,2] pretrain.train.epochs=20\n"
    "\n"
    "Models, features and text embeddings are kept under work_dir and reused when their config\n"
    "is unchanged, so an interrupted benchmark continues where it stopped (pretraining resumes\n"
    "from its last checkpoint)."
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``etp benchmark``."""
    p = subparsers.add_parser(
        "benchmark",
        help="reproduce the paper's tables: pretrain, linear probe, zero-shot, retrieval",
        description="Run the whole protocol for every method and seed (optionally rotating the "
        "test fold), then write results.md (Tables 1-3 with mean ± std and bootstrap CIs), "
        "results.json and plots to out_dir, and print the tables.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="benchmark YAML config")
    p.add_argument("--print-config", action="store_true", help="print the resolved config, exit")
    p.add_argument("--help-config", action="store_true", help="list every benchmark config key")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``etp benchmark``."""
    from etp.benchmark import BenchmarkConfig, load_benchmark_config, run_benchmark

    if args.help_config:
        for key, text, default in describe(BenchmarkConfig):
            print(f"  {key} = {default!r}\n      {text}")
        return 0
    cfg = load_benchmark_config(args.config, args.overrides)
    if args.print_config:
        sys.stdout.write(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    run_benchmark(cfg, command=["etp", *sys.argv[1:]] if sys.argv else None)
    out = Path(cfg.out_dir) / "results.md"
    print(out.read_text(encoding="utf-8"))
    print(f"written: {out}, {out.with_name('results.json')} and plots in {out.parent}")
    return 0
