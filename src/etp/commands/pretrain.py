"""``etp pretrain``: pretrain an ECG encoder with any registered objective (ETP, SimCLR, ...) from a
YAML config plus overrides."""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from etp.config import PretrainConfig, describe, load_config, to_dict

EPILOG = (
    "examples:\n"
    "  etp pretrain --config configs/quickstart.yaml\n"
    "  etp pretrain --config configs/etp-ptbxl.yaml train.epochs=10 train.out_dir=runs/etp10\n"
    "  etp pretrain --config configs/etp-ptbxl.yaml --resume          # continue after a stop\n"
    "  torchrun --nproc_per_node 2 -m etp.cli pretrain --config configs/etp-ptbxl.yaml\n"
    "  etp pretrain --help-config                                      # every config key\n"
    "\n"
    "The run directory (train.out_dir) receives config.yaml, train_log.csv, val_log.csv,\n"
    "checkpoints/last.pt, model/ (final) and model-best/ (lowest validation loss)."
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``etp pretrain``."""
    p = subparsers.add_parser(
        "pretrain",
        help="pretrain an ECG encoder (ETP, SimCLR, ...) on a prepared cache",
        description="Pretrain a ResNet18-1D ECG encoder on a prepared cache with the objective "
        "train.method names: ETP aligns each ECG with its report (frozen text model, CLIP loss); "
        "SimCLR contrasts two augmented views; --help-config lists them all. Settings come from "
        "the YAML config; KEY=VALUE arguments override single keys (e.g. train.lr=1e-3 "
        "data.train_folds=[1,2] objective.augment=true).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="YAML config (e.g. configs/quickstart.yaml)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from <train.out_dir>/checkpoints/last.pt (same config required)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the finished results (model/, summary.json) of an earlier run in "
        "train.out_dir (refused without it)",
    )
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    p.add_argument(
        "--help-config", action="store_true", help="list every config key with its default and help"
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=run)


def _shown(default: object) -> str:
    text = yaml.safe_dump(default, default_flow_style=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def help_config() -> str:
    """Every config key with its default and help text (for ``--help-config``), the settings of
    every registered objective included."""
    from etp import objectives

    lines = []
    section = None
    for key, text, default in describe(PretrainConfig):
        head = key.split(".", 1)[0]
        if head == "objective":
            continue
        if head != section:
            section = head
            lines.append(f"{section}:")
        lines.append(f"  {key} = {_shown(default)}")
        lines.append(f"      {text}")
    lines.append("objective: (the settings of the objective that train.method names)")
    for name in objectives.names():
        cls = objectives.get(name)
        import sys

        doc = (sys.modules[cls.__module__].__doc__ or cls.__doc__ or "").strip().split("\n")[0]
        lines.append(f"  train.method={name}: {doc}")
        rows = describe(cls.Options, "objective.")
        if not rows:
            lines.append("      (no settings)")
        for key, text, default in rows:
            lines.append(f"    {key} = {_shown(default)}")
            lines.append(f"        {text}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``etp pretrain``."""
    if args.help_config:
        print(help_config())
        return 0
    cfg = load_config(PretrainConfig, args.config, args.overrides)
    if args.print_config:
        sys.stdout.write(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    from etp.train.loop import pretrain

    model_dir = pretrain(cfg, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(f"model saved to {model_dir}")
    return 0
