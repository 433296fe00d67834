"""``fikit-profiles``: list the kernel profiles recorded in a FIKIT profile database."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scheduler.profiles import Distribution, KernelProfile, default_profile_path, read_profiles

NAME_WIDTH = 40

#: Sort key and direction (True: largest first) of each ``--sort`` choice.
_SORTS: dict[str, tuple[Callable[[KernelProfile], Any], bool]] = {
    "count": (lambda p: p.duration.count, True),
    "mean": (lambda p: p.duration.mean or 0.0, True),
    "p95": (lambda p: p.duration.p95 or 0.0, True),
    "name": (lambda p: p.name, False),
}

_COLUMNS = (
    ("KERNEL ID", 16),
    ("NAME", NAME_WIDTH),
    ("COUNT", 8),
    ("MEAN us", 10),
    ("P50 us", 10),
    ("P95 us", 10),
    ("MAX us", 10),
    ("GAP P50 us", 11),
    ("GAP P95 us", 11),
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line of ``fikit-profiles``."""
    parser = argparse.ArgumentParser(
        prog="fikit-profiles",
        description="List the kernel profiles (durations and idle gaps after them) that "
        "gpu-server measured.",
    )
    parser.add_argument(
        "--db",
        type=Path,
        default=None,
        help="profile database (default: $FIKIT_PROFILE_DB, else "
        "$XDG_CACHE_HOME/fikit/profiles.sqlite3 or ~/.cache/fikit/profiles.sqlite3)",
    )
    parser.add_argument(
        "--sort",
        choices=tuple(_SORTS),
        default="count",
        help="order: launches measured, mean or p95 duration (largest first), or name",
    )
    parser.add_argument("--limit", type=_positive_int, help="show at most N kernels")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def summary(profile: KernelProfile) -> dict[str, Any]:
    """A JSON-compatible summary of one profile (times in microseconds)."""
    return {
        "kernel_id": profile.kernel_id,
        "name": profile.name,
        "duration_us": _stats(profile.duration),
        "gap_after_us": _stats(profile.gap_after),
    }


def _stats(dist: Distribution) -> dict[str, Any]:
    return {
        "count": dist.count,
        "mean": dist.mean,
        "p50": dist.p50,
        "p95": dist.p95,
        "max": dist.max,
    }


def truncate(name: str, width: int = NAME_WIDTH) -> str:
    """``name`` cut to ``width`` characters, ending in ``...`` when cut."""
    return name if len(name) <= width else name[: width - 3] + "..."


def format_table(profiles: Sequence[KernelProfile]) -> str:
    """The profiles as a fixed-width table with a header line."""

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, (_, width)) in enumerate(zip(cells, _COLUMNS))
        ]
        return "  ".join(parts).rstrip()

    lines = [line([title for title, _ in _COLUMNS])]
    for p in profiles:
        d, g = p.duration, p.gap_after
        lines.append(
            line(
                [
                    p.kernel_id,
                    truncate(p.name or "?"),
                    str(d.count),
                    *(_us(v) for v in (d.mean, d.p50, d.p95, d.max, g.p50, g.p95)),
                ]
            )
        )
    return "\n".join(lines)


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``fikit-profiles``."""
    args = parse_args(argv)
    path: Path = args.db if args.db is not None else default_profile_path()
    profiles: list[KernelProfile] = []
    if path.exists():
        try:
            profiles = read_profiles(path)
        except (sqlite3.Error, RuntimeError) as err:
            sys.exit(f"fikit-profiles: cannot read {path}: {err}")
    key, largest_first = _SORTS[args.sort]
    profiles.sort(key=lambda p: p.kernel_id)
    profiles.sort(key=key, reverse=largest_first)
    if args.limit is not None:
        profiles = profiles[: args.limit]
    if args.json:
        print(json.dumps({"db": str(path), "profiles": [summary(p) for p in profiles]}, indent=2))
        if not profiles:
            print(f"no profiles recorded yet at {path}", file=sys.stderr)
    elif profiles:
        print(format_table(profiles))
    else:
        print(f"no profiles recorded yet at {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
