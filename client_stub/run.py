"""``fikit-run``: run a program with its cuda-python calls forwarded to a GPU server."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> None:
    """Set FIKIT_SERVER (and FIKIT_PRIORITY) and replace this process with the command."""
    parser = argparse.ArgumentParser(
        prog="fikit-run",
        description="Run a command whose cuda-python calls go to a FIKIT GPU server.",
    )
    parser.add_argument(
        "--server",
        default=os.environ.get("FIKIT_SERVER", "127.0.0.1:50051"),
        help="GPU server address host:port (default: $FIKIT_SERVER or 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--priority", type=int, choices=range(10), help="task priority, 0 (lowest) to 9 (highest)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the program and its arguments")
    args = parser.parse_args(argv)
    if not args.command:
        parser.error("no command given")
    os.environ["FIKIT_SERVER"] = args.server
    if args.priority is not None:
        os.environ["FIKIT_PRIORITY"] = str(args.priority)
    try:
        os.execvp(args.command[0], args.command)
    except OSError as err:
        sys.exit(f"fikit-run: cannot run {args.command[0]}: {err.strerror}")
