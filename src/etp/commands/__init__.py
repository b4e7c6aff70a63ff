"""etp.commands: one module per ``etp`` subcommand, and the options several of them share."""

from __future__ import annotations

import argparse
from typing import Any


def add_views_argument(p: argparse.ArgumentParser) -> None:
    """``--views``: the test-time views every ECG is averaged over (:mod:`etp.data.views`)."""
    p.add_argument(
        "--views",
        metavar="N[xF]",
        help="average each ECG over N evenly spaced crops of fraction F of the record, stretched "
        "back to its length (1 = the record as it is; default: the model's own, 3x0.75 for "
        "models trained on crops)",
    )


def apply_views(loaded: Any, args: argparse.Namespace) -> None:
    """Set ``--views`` (if given) on a loaded model."""
    if getattr(args, "views", None):
        from etp.data.views import Views
        from etp.errors import ConfigError

        try:
            loaded.views = Views.parse(args.views)
        except ConfigError as exc:
            raise ConfigError(f"--{exc}") from None
