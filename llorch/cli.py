"""`llorch` console script: one subcommand per registered module.

Each module in COMMAND_MODULES exposes `register(subparsers)`, adding its parsers and setting
`func` on them; the library functions stay importable without the CLI.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES = ("llorch.worker.cli", "llorch.convert.cli")
# The module that registers each command: a command's run imports only its own module (the
# worker's, whose settings model makes the serve flags, takes ~0.6 s to import, which every
# `llorch convert` or `llorch imatrix` paid). tests/llorch/test_cli.py keeps it complete.
COMMAND_OWNERS = {
    "serve": "llorch.worker.cli",
    "fetch-models": "llorch.worker.cli",
    "info": "llorch.worker.cli",
    "rpc-server": "llorch.worker.cli",
    "detect": "llorch.convert.cli",
    "convert": "llorch.convert.cli",
    "convert-batch": "llorch.convert.cli",
    "convert-lora": "llorch.convert.cli",
    "imatrix": "llorch.convert.cli",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of `command` alone (with its module's others)."""
    parser = argparse.ArgumentParser(prog="llorch", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    owner = COMMAND_OWNERS.get(command or "")
    for name in (owner,) if owner else COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    status = args.func(args)
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
