"""The ``tongban`` command line.

Exit codes: 0 success; 1 the work failed (invalid data, failed checks, a server that could not
start); 2 usage errors.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .certs import add_certs_command
from .cli_mapping import add_mapping_commands
from .cli_ops import add_ops_commands
from .cli_serve import add_serve_command
from .cli_trace import add_cases_command
from .demo import add_demo_command

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="tongban",
        description="Tongban (通办): cross-city government-service data-exchange gateway.",
    )
    parser.add_argument("--version", action="version", version=f"tongban {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_demo_command(sub)
    add_serve_command(sub)
    add_mapping_commands(sub)
    add_ops_commands(sub)
    add_cases_command(sub)
    add_certs_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
