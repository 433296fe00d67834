"""Plot a window of the kernel timelines that benchmarks/scheduling.py's server modes traced.

Usage: python benchmarks/plot_timeline.py DIR -o docs/scheduling-timeline.png [--window-ms 30]

One subplot per server mode found in DIR (hp-alone, fifo, priority, fikit), one lane per task
(highest priority on top), each kernel a bar from its GPU start to its end. Each window starts
at an HP request burst near the middle of that mode's HP kernels, so one sees where the LP
kernels ran relative to HP's work and gaps. Needs matplotlib.
"""

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: render to files, never to a display
import matplotlib.pyplot as plt

TITLES = {
    "hp-alone": "hp-alone: HP only (fikit policy)",
    "fifo": "fifo: LP + HP, launches issued as they arrive",
    "priority": "priority: LP + HP, LP held back while HP is active",
    "fikit": "fikit: LP + HP, LP fitted into HP's idle gaps",
}
BURST_GAP_US = 1000.0  # an HP kernel after a gap this long starts a request burst

Kernel = dict[str, Any]


def load_trace(path: Path) -> list[Kernel]:
    """The trace's kernels (one JSON object a line; the lines of calls left out)."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line for line in lines if "kernel" in line]


def window_start(kernels: list[Kernel]) -> float:
    """Start (us) of the HP burst nearest the middle of the top-priority kernels' span."""
    top = max(kernel["priority"] for kernel in kernels)
    hp = sorted(
        (kernel["start_us"], kernel["end_us"]) for kernel in kernels if kernel["priority"] == top
    )
    middle = (hp[0][0] + max(end for _, end in hp)) / 2
    bursts = [hp[0][0]]
    busy_until = hp[0][1]
    for start, end in hp[1:]:
        if start - busy_until >= BURST_GAP_US:
            bursts.append(start)
        busy_until = max(busy_until, end)
    return min(bursts, key=lambda start: abs(start - middle))


def lanes(kernels: list[Kernel]) -> list[tuple[int, int]]:
    """(priority, task) of every lane, highest priority first."""
    return sorted(
        {(k["priority"], k["task"]) for k in kernels}, key=lambda lane: (-lane[0], lane[1])
    )


def plot(modes: dict[str, list[Kernel]], window_ms: float, output: Path) -> None:
    """One subplot per mode: the kernels of each lane within the window, as bars."""
    fig, axes = plt.subplots(
        len(modes), 1, sharex=True, figsize=(12, 0.8 + 1.6 * len(modes)), squeeze=False
    )
    for ax, (mode, kernels) in zip(axes[:, 0], modes.items()):
        origin = window_start(kernels)
        end_us = origin + window_ms * 1000
        mode_lanes = lanes(kernels)
        for row, lane in enumerate(mode_lanes):
            bars = [
                ((k["start_us"] - origin) / 1000, (k["end_us"] - k["start_us"]) / 1000)
                for k in kernels
                if (k["priority"], k["task"]) == lane
                and k["end_us"] > origin
                and k["start_us"] < end_us
            ]
            y = len(mode_lanes) - 1 - row
            colour = f"C{row}"
            # an edge in the bar's colour keeps microsecond kernels visible at this scale
            ax.broken_barh(bars, (y - 0.4, 0.8), facecolors=colour, edgecolors=colour, lw=0.3)
        ax.set_yticks(
            range(len(mode_lanes)),
            [
                f"{'HP' if priority == mode_lanes[0][0] else 'LP'} p{priority} task {task}"
                for priority, task in reversed(mode_lanes)
            ],
        )
        ax.set_ylim(-0.6, len(mode_lanes) - 0.4)
        ax.set_title(TITLES[mode], loc="left", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlim(0, window_ms)
    axes[-1, 0].set_xlabel("ms from the window start (GPU clock of each server run)")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=150)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="the --out directory of scheduling.py")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    parser.add_argument("--window-ms", type=float, default=30.0, help="window length (30)")
    args = parser.parse_args()
    modes = {
        mode: load_trace(args.dir / mode / "trace.jsonl")
        for mode in TITLES
        if (args.dir / mode / "trace.jsonl").exists()
    }
    modes = {mode: kernels for mode, kernels in modes.items() if kernels}
    if not modes:
        parser.error(f"no non-empty trace.jsonl under {args.dir}/{{{','.join(TITLES)}}}")
    plot(modes, args.window_ms, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
