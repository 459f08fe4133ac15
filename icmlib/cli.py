"""The ``icm`` command. Each subcommand's parser and handler live side by side below;
the work itself is done by the icmlib module named in each handler."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


class CLIError(Exception):
    """An error a user can fix; printed without a traceback, exit status 2."""


# ---- encode / decode / info ------------------------------------------------------------
def _add_codec_commands(sub) -> None:
    pass  # filled in by the bitstream work


# ---- train-task ------------------------------------------------------------------------
def _add_train_task_command(sub) -> None:
    pass  # filled in by the tasks work


# ---- train -----------------------------------------------------------------------------
def _add_train_command(sub) -> None:
    pass  # filled in by the training work


# ---- evaluate / reproduce --------------------------------------------------------------
def _add_evaluate_commands(sub) -> None:
    pass  # filled in by the evaluation work


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="icm",
        description="Image Coding for Machines: compress images for a frozen vision network. "
                    "Run 'icm COMMAND --help' for each command's options.")
    from icmlib import __version__
    parser.add_argument("--version", action="version", version=f"icm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_codec_commands(sub)
    _add_train_task_command(sub)
    _add_train_command(sub)
    _add_evaluate_commands(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"icm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
