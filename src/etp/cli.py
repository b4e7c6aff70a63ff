"""The ``etp`` command line: prepare | pretrain | evaluate | benchmark | zero-shot | embed.

Each sub-command lives in :mod:`etp.commands` and registers itself through ``add_parser``;
errors derived from :class:`etp.errors.EtpError` are printed as one line (exit code 2), never
as a traceback, and so is any other :class:`OSError` (the path and the cause).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from etp import __version__
from etp.errors import EtpError

#: sub-command name -> module in etp.commands that defines ``add_parser(subparsers)``
COMMANDS: dict[str, str] = {
    "prepare": "etp.commands.prepare",
    "pretrain": "etp.commands.pretrain",
    "evaluate": "etp.commands.evaluate",
    "benchmark": "etp.commands.benchmark",
    "zero-shot": "etp.commands.zero_shot",
    "embed": "etp.commands.embed",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="etp", description="ECG-Text Pre-training: pretrain, evaluate and use ECG encoders."
    )
    parser.add_argument("--version", action="version", version=f"etp {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:  # command not implemented in this build
                continue
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``etp`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except EtpError as exc:
        print(f"etp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an I/O fault outside etp's writers (those raise WriteError)
        where = f"{exc.filename}: " if exc.filename else ""
        cause = (exc.strerror or str(exc) or type(exc).__name__).lower()
        print(f"etp {args.command}: error: {where}{cause}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"etp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
