"""The ``lfm-policy`` command.

Subcommands live next to the code they drive: each module listed in ``SUBCOMMAND_MODULES`` has a
``register(subparsers)`` function that adds its parsers and sets ``func`` (a callable taking the parsed
args and returning an exit code). Those modules are cheap to import: heavy imports happen inside the
functions they register.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

import lfm_policy
from lfm_policy.errors import LfmPolicyError

SUBCOMMAND_MODULES = (
    "lfm_policy.datasets.cli",
    "lfm_policy.envs.cli",
    "lfm_policy.train_cli",
    "lfm_policy.distill_cli",
    "lfm_policy.eval.cli",
    "lfm_policy.runtime.cli",
    "lfm_policy.runtime.serve_cli",
    "lfm_policy.runtime.export_cli",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the full argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="lfm-policy",
        description="Robot imitation policies with a conditional Local Flow Matching action head.",
    )
    parser.add_argument("--version", action="version", version=f"lfm-policy {lfm_policy.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point. Returns the exit code (errors on bad input print one line, no traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (LfmPolicyError, FileNotFoundError, FileExistsError) as e:
        print(f"lfm-policy {args.command}: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `lfm-policy data info X | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"lfm-policy {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
