"""Priority scheduling benchmark: a latency-bound HP inference task next to a batch LP task.

Usage: python benchmarks/scheduling.py --out DIR [--model transformer] [--lp-job stencil]
           [--requests 200] [--warmup 20] [--think-ms 2] [--host-us 200] [--modes ...]

Runs each mode in turn, each server mode in a fresh `gpu-server` (all sharing the profile
store DIR/profiles.sqlite3): HP alone (fifo and fikit policy, alternating, --alone-rounds
times, latencies pooled), LP alone, LP+HP under the fifo, priority and fikit policies, then
HP alone and LP+HP natively (no server, time-slicing).
The table's runs are untraced (launches timed only as the profile store samples them); a
second, shorter pass of the server modes with traced servers (every launch timed) goes to
DIR/timeline/<mode>/ for plot_timeline.py and HP's GPU idle fraction.
Programs' JSON, logs and server traces go to DIR/<mode>/; the comparison table is printed and
written to DIR/results.md and DIR/results.json. Exits non-zero when a program failed.
"""

import argparse
import ast
import bisect
import itertools
import json
import math
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from server_process import ENV, REPO, console_script, gpu_server

WORKLOADS = REPO / "examples" / "workloads"
HP_PRIORITY = 9
LP_PRIORITY = 0
PROCESS_TIMEOUT_S = 300
LP_MAX_S = 3 * PROCESS_TIMEOUT_S
MIN_LP_ALONE_S = 3.0
#: Modes run again with a traced server (every launch timed) for the timeline picture.
TIMELINE_MODES = ("hp-alone", "fifo", "priority", "fikit")
#: Traced runs whose gap filling the report shows.
SHARING_MODES = ("fifo", "priority", "fikit")
#: GPU idle time between two HP kernels longer than this is a gap (us).
GAP_MIN_US = 100.0
#: A gap longer than this is one of HP's pauses between requests (us).
PAUSE_MIN_US = 1000.0
#: A GPU worker's log line at its session's end (gpu_server/worker.py).
WORKER_LAUNCHES = re.compile(r"the session's launches: (\{.*\})")
#: The dispatcher's warning about a launch held 100 ms or more (scheduler/dispatcher.py).
HELD_WARNING = "held for"
# mode -> (server policy, or None for native; runs HP; runs LP), in the order they run
MODES: dict[str, tuple[str | None, bool, bool]] = {
    "hp-alone-fifo": ("fifo", True, False),
    "hp-alone": ("fikit", True, False),
    "lp-alone": ("fikit", False, True),
    "fifo": ("fifo", True, True),
    "priority": ("priority", True, True),
    "fikit": ("fikit", True, True),
    "native-alone": (None, True, False),
    "native-shared": (None, True, True),
}
# table column header, row key, format
COLUMNS = [
    ("HP mean ms", "hp_mean_ms", "{:.3f}"),
    ("HP p99 ms", "hp_p99_ms", "{:.3f}"),
    ("HP mean / hp-alone", "hp_mean_vs_alone", "{:.3f}x"),
    ("HP p99 / hp-alone", "hp_p99_vs_alone", "{:.3f}x"),
    ("HP mean / native-shared", "hp_mean_vs_native_shared", "{:.3f}x"),
    ("LP kernels/s", "lp_kps", "{:.0f}"),
    ("LP / lp-alone", "lp_vs_alone", "{:.3f}x"),
    ("LP / fits", "lp_vs_fits", "{:.3f}x"),
]

Json = dict[str, Any]


@dataclass
class ModeRun:
    """What one mode produced: the programs' JSON, LP-alone's measured window, the trace."""

    hp: Json | None = None
    lp: Json | None = None
    lp_window: tuple[float, float] | None = None
    #: The traced server's completed launches, and its tasks' synchronizing calls.
    trace: list[Json] | None = None
    calls: list[Json] | None = None
    server_log: str = ""


# ---- metrics (pure functions of the loaded JSON) ----


def hp_span(hp: Json | None) -> tuple[float, float] | None:
    """Wall-clock span of HP's measured requests: first window start to last window end."""
    if not hp or not hp["windows"]:
        return None
    return min(start for start, _ in hp["windows"]), max(end for _, end in hp["windows"])


def lp_rate(lp: Json | None, window: tuple[float, float] | None) -> float | None:
    """LP kernels per second within `window`, interpolating its progress entries."""
    if not lp or window is None or len(lp["progress"]) < 2:
        return None
    times, kernels = np.asarray(lp["progress"], dtype=float).T
    done = np.interp(window, times, kernels)
    return float(done[1] - done[0]) / (window[1] - window[0])


def idle_fraction(trace: list[Json], kernels: int) -> float | None:
    """1 - busy/span over the last `kernels` kernels (by start) of a trace."""
    spans = sorted((k["start_us"], k["end_us"]) for k in trace)[-kernels:]
    if not spans:
        return None
    busy = 0.0
    run_start, run_end = spans[0]
    for start, end in spans[1:]:
        if start > run_end:
            busy += run_end - run_start
            run_start = start
        run_end = max(run_end, end)
    busy += run_end - run_start
    return 1.0 - busy / (run_end - spans[0][0])


def hp_gaps(
    trace: list[Json], shortest_us: float, longest_us: float = math.inf
) -> list[tuple[float, float]]:
    """(start, end) of HP's gaps in a trace: GPU time between two HP kernels longer than
    ``shortest_us`` (and at most ``longest_us``)."""
    hp = sorted((k["start_us"], k["end_us"]) for k in trace if k["priority"] == HP_PRIORITY)
    return [
        (end, start)
        for (_, end), (start, _) in itertools.pairwise(hp)
        if shortest_us < start - end <= longest_us
    ]


def gap_filling(
    trace: list[Json], shortest_us: float = GAP_MIN_US, longest_us: float = math.inf
) -> tuple[float, float, float] | None:
    """How LP work filled HP's idle gaps in a traced sharing run: the fraction of the gaps'
    time with an LP kernel on the GPU, the median time from a gap's start to its first LP
    kernel, and the median hole between one LP kernel's end and the next one's start inside
    a gap (us; about 0 when LP kernels queue back to back, about an LP kernel's duration
    when they go one at a time). Gaps as ``hp_gaps`` finds them."""
    lp = sorted((k["start_us"], k["end_us"]) for k in trace if k["priority"] != HP_PRIORITY)
    gaps = hp_gaps(trace, shortest_us, longest_us)
    if not gaps or not lp:
        return None
    filled, delays, holes = 0.0, [], []
    for gap_start, gap_end in gaps:
        inside = [(s, e) for s, e in lp if e > gap_start and s < gap_end]
        filled += sum(min(e, gap_end) - max(s, gap_start) for s, e in inside)
        starts = [s for s, _ in inside if s >= gap_start]
        if starts:
            delays.append(min(starts) - gap_start)
        holes += [max(0.0, s - e) for (_, e), (s, _) in itertools.pairwise(inside)]
    total = sum(end - start for start, end in gaps)
    return filled / total, _median(delays), _median(holes)


def lp_release_after_calls(
    trace: list[Json], calls: list[Json], shortest_us: float = PAUSE_MIN_US
) -> float | None:
    """Median time, on the server's host clock, from the end of HP's synchronizing call
    that starts one of its pauses (no HP call or launch for over ``shortest_us`` after it)
    to the issue of the pause's first LP launch: how long the server takes to give LP a
    pause, free of the GPU clock's placement. None without call lines or such pauses."""
    hp_calls = [c for c in calls if c["priority"] == HP_PRIORITY]
    ended = sorted(c["at_us"] for c in hp_calls if c["call"] == "finished")
    busy_again = sorted(
        [c["at_us"] for c in hp_calls if c["call"] == "started"]
        + [k["arrived_us"] for k in trace if k["priority"] == HP_PRIORITY]
    )
    lp_issued = sorted(k["issued_us"] for k in trace if k["priority"] != HP_PRIORITY)
    delays = []
    for end in ended:
        i = bisect.bisect_right(busy_again, end)
        next_busy = busy_again[i] if i < len(busy_again) else math.inf
        j = bisect.bisect_left(lp_issued, end)
        if next_busy - end > shortest_us and j < len(lp_issued) and lp_issued[j] < next_busy:
            delays.append(lp_issued[j] - end)
    return _median(delays) if delays else None


def lp_hole_causes(
    trace: list[Json], shortest_us: float = PAUSE_MIN_US
) -> tuple[float, float, float] | None:
    """Why the GPU sat idle between LP kernels inside HP's gaps longer than ``shortest_us``
    in a traced run: the holes' share of the gaps' time, and the fractions of the hole time
    before an LP launch that reached the server only after the previous LP kernel ended
    (the LP side could not supply launches faster) and before one that had arrived but was
    held by the policy until then. None for a trace without arrival times."""
    lp = sorted(
        (k for k in trace if k["priority"] != HP_PRIORITY and "arrived_us" in k),
        key=lambda k: k["start_us"],
    )
    gaps = hp_gaps(trace, shortest_us)
    if not gaps or not lp:
        return None
    late = held = other = 0.0
    for gap_start, gap_end in gaps:
        inside = [k for k in lp if gap_start <= k["start_us"] < gap_end]
        for before, after in itertools.pairwise(inside):
            hole = after["start_us"] - before["end_us"]
            if hole <= 0:
                continue
            if after["arrived_us"] >= before["end_us"]:
                late += hole
            elif after["issued_us"] >= before["end_us"]:
                held += hole
            else:
                other += hole
    holes = late + held + other
    total = sum(end - start for start, end in gaps)
    if not holes:
        return 0.0, 0.0, 0.0
    return holes / total, late / holes, held / holes


def _lp_stretches(trace: list[Json]) -> tuple[list[float], list[float]]:
    """LP's busy time on the GPU in a trace, as disjoint intervals in order: their starts
    and their ends."""
    starts: list[float] = []
    ends: list[float] = []
    for start, end in sorted(
        (k["start_us"], k["end_us"]) for k in trace if k["priority"] != HP_PRIORITY
    ):
        if ends and start <= ends[-1]:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends


def _lp_within(stretches: tuple[list[float], list[float]], a: float, b: float) -> bool:
    """Whether an LP stretch (``_lp_stretches``) overlaps [a, b]."""
    starts, ends = stretches
    i = bisect.bisect_left(starts, b) - 1  # the last stretch begun before b
    return i >= 0 and ends[i] > a


def hp_slowdown(
    trace: list[Json], alone: list[Json], kernels_per_request: int
) -> tuple[float, float] | None:
    """How much longer HP's kernels ran in a traced sharing run than alone, in us per
    request: each kernel against the mean of its kernel ID in the traced hp-alone run (so
    that run against itself reads 0 however skewed its durations), summed over the
    kernels that had an LP kernel on the GPU beside them, and over those that had none
    (what LP left behind: the caches, the clocks). None without both."""
    durations: dict[str, list[float]] = {}
    for k in alone:
        if k["priority"] == HP_PRIORITY:
            durations.setdefault(k["kernel_id"], []).append(k["end_us"] - k["start_us"])
    means = {kid: float(np.mean(values)) for kid, values in durations.items()}
    hp = [k for k in trace if k["priority"] == HP_PRIORITY and k["kernel_id"] in means]
    if not hp or kernels_per_request < 1:
        return None
    stretches = _lp_stretches(trace)
    beside = without = 0.0
    for k in hp:
        extra = k["end_us"] - k["start_us"] - means[k["kernel_id"]]
        if _lp_within(stretches, k["start_us"], k["end_us"]):
            beside += extra
        else:
            without += extra
    requests = len(hp) / kernels_per_request
    return beside / requests, without / requests


def hp_start_waits(trace: list[Json], kernels_per_request: int) -> tuple[float, float] | None:
    """How long HP's kernels waited to start on the GPU in a traced run, in us per request:
    each from when it could start (its issue, or the end of the HP kernel before it,
    whichever is later) to its start, summed over the kernels with an LP kernel on the GPU
    in that time (what a non-preemptive LP kernel costs HP's start), and over the others
    (the launch's own latency). The issue is on the host clock, the rest on the GPU's.
    None for a trace without HP kernels or issue times."""
    hp = sorted(
        (k for k in trace if k["priority"] == HP_PRIORITY and "issued_us" in k),
        key=lambda k: k["start_us"],
    )
    if not hp or kernels_per_request < 1:
        return None
    stretches = _lp_stretches(trace)
    beside = without = 0.0
    previous_end = -math.inf
    for k in hp:
        ready = max(k["issued_us"], previous_end)
        wait = max(0.0, k["start_us"] - ready)
        if _lp_within(stretches, ready, k["start_us"]):
            beside += wait
        else:
            without += wait
        previous_end = max(previous_end, k["end_us"])
    requests = len(hp) / kernels_per_request
    return beside / requests, without / requests


def lp_turnaround(calls: list[Json], trace: list[Json]) -> float | None:
    """Median time from the end of an LP synchronizing call to the arrival of that task's
    next launch at the dispatcher (us, the server's clock): the LP job's own round trip."""
    delays = []
    for task in {c["task"] for c in calls if c["priority"] != HP_PRIORITY}:
        ended = sorted(c["at_us"] for c in calls if c["task"] == task and c["call"] == "finished")
        arrived = sorted(k["arrived_us"] for k in trace if k.get("task") == task)
        for end in ended:
            i = bisect.bisect_left(arrived, end)
            if i < len(arrived):
                delays.append(arrived[i] - end)
    return _median(delays) if delays else None


def dispatch_latencies(trace: list[Json]) -> tuple[float, float, float] | None:
    """Medians (us) along a launch's way through a traced server: for LP launches the
    policy held, from arrival to release and from release to issue; for every launch, from
    its GPU end to the tracker seeing it done (the GPU time placed on the host clock). None
    for a trace without release times."""
    traced = [k for k in trace if "released_us" in k]
    if not traced:
        return None
    held = [
        k for k in traced if k["priority"] != HP_PRIORITY and k["released_us"] > k["arrived_us"]
    ]
    return (
        _median([k["released_us"] - k["arrived_us"] for k in held]),
        _median([k["issued_us"] - k["released_us"] for k in held]),
        _median([k["seen_us"] - k["end_us"] for k in traced]),
    )


def lp_predictions(trace: list[Json]) -> tuple[float, float] | None:
    """What the policy knew of LP launches' durations in a traced run: the share traced
    without a prediction (fitted as ``--max-lp-inflight-us`` each) and the median of the
    predictions there were (us); None for a trace without them."""
    lp = [k for k in trace if k["priority"] != HP_PRIORITY and "predicted_us" in k]
    if not lp:
        return None
    known = [k["predicted_us"] for k in lp if k["predicted_us"] is not None]
    return 1.0 - len(known) / len(lp), _median(known)


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, or None when either is missing."""
    return None if value is None or not reference else value / reference


def base_row(run: ModeRun) -> dict[str, float | None]:
    """HP mean and p99 latency (ms) and LP kernels/s of one mode."""
    latencies = run.hp["latencies_ms"] if run.hp else []
    window = hp_span(run.hp) if run.hp else run.lp_window
    return {
        "hp_mean_ms": float(np.mean(latencies)) if latencies else None,
        "hp_p99_ms": float(np.percentile(latencies, 99)) if latencies else None,
        "lp_kps": lp_rate(run.lp, window),
    }


def server_notes(log: str) -> Json:
    """From a server's log: each GPU worker's launch counts (how its session's launches
    went under ``--isolation process``), and how many launches were held 100 ms or more."""
    return {
        "worker_launches": [ast.literal_eval(found) for found in WORKER_LAUNCHES.findall(log)],
        "held_warnings": log.count(HELD_WARNING),
    }


def traced_idle_fraction(alone: ModeRun | None) -> float | None:
    """HP's GPU idle fraction over its measured requests in a traced hp-alone run."""
    if not alone or not alone.hp or not alone.trace:
        return None
    return idle_fraction(alone.trace, alone.hp["requests"] * alone.hp["kernels_per_request"])


def summarize(runs: dict[str, ModeRun], idle: float | None, timeline: dict[str, ModeRun]) -> Json:
    """Per-mode rows with ratios, LP that fits (from HP's idle fraction), overhead, targets,
    and how LP filled HP's gaps in the traced runs."""
    rows = {mode: base_row(run) for mode, run in runs.items()}

    def ref(mode: str, key: str) -> float | None:
        return rows.get(mode, {}).get(key)

    lp_alone = ref("lp-alone", "lp_kps")
    fits = None if lp_alone is None or idle is None else lp_alone * idle
    for row in rows.values():
        row["hp_mean_vs_alone"] = ratio(row["hp_mean_ms"], ref("hp-alone", "hp_mean_ms"))
        row["hp_p99_vs_alone"] = ratio(row["hp_p99_ms"], ref("hp-alone", "hp_p99_ms"))
        row["hp_mean_vs_native_shared"] = ratio(
            row["hp_mean_ms"], ref("native-shared", "hp_mean_ms")
        )
        row["lp_vs_alone"] = ratio(row["lp_kps"], lp_alone)
        row["lp_vs_fits"] = ratio(row["lp_kps"], fits)
    alone_vs_fifo = ratio(ref("hp-alone", "hp_mean_ms"), ref("hp-alone-fifo", "hp_mean_ms"))
    overhead = None if alone_vs_fifo is None else alone_vs_fifo - 1.0
    hp_mean, hp_p99 = ref("fikit", "hp_mean_vs_alone"), ref("fikit", "hp_p99_vs_alone")
    lp_fits = ref("fikit", "lp_vs_fits")
    targets = [
        {
            "target": "fikit HP mean and p99 <= 1.05x hp-alone",
            "measured": "n/a"
            if hp_mean is None or hp_p99 is None
            else f"mean {hp_mean:.3f}x, p99 {hp_p99:.3f}x",
            "pass": None if hp_mean is None or hp_p99 is None else max(hp_mean, hp_p99) <= 1.05,
        },
        {
            "target": "fikit LP >= 0.9x LP that fits",
            "measured": "n/a" if lp_fits is None else f"{lp_fits:.3f}x",
            "pass": None if lp_fits is None else lp_fits >= 0.9,
        },
        {
            "target": "|hp-alone mean / hp-alone-fifo mean - 1| <= 2%",
            "measured": "n/a" if overhead is None else f"{overhead:+.2%}",
            "pass": None if overhead is None else abs(overhead) <= 0.02,
        },
    ]
    filling = {
        mode: gap_filling(timeline[mode].trace)
        for mode in SHARING_MODES
        if mode in timeline and timeline[mode].trace
    }
    predictions = {mode: lp_predictions(timeline[mode].trace) for mode in filling}
    causes = {mode: lp_hole_causes(timeline[mode].trace) for mode in filling}
    releases = {
        mode: lp_release_after_calls(timeline[mode].trace, timeline[mode].calls or [])
        for mode in filling
    }
    alone = timeline.get("hp-alone")
    slowdowns = {
        mode: hp_slowdown(timeline[mode].trace, alone.trace, alone.hp["kernels_per_request"])
        for mode in filling
        if alone is not None and alone.trace and alone.hp
    }
    start_waits = {
        mode: hp_start_waits(timeline[mode].trace, alone.hp["kernels_per_request"])
        for mode in ("hp-alone", *filling)
        if mode in timeline and alone is not None and alone.hp
    }
    latencies = {mode: dispatch_latencies(timeline[mode].trace) for mode in filling}
    turnarounds = {
        mode: lp_turnaround(timeline[mode].calls or [], timeline[mode].trace) for mode in filling
    }
    notes = {mode: server_notes(runs[mode].server_log) for mode in SHARING_MODES if mode in runs}
    return {
        "modes": rows,
        "server_notes": notes,
        "gap_filling": {mode: value for mode, value in filling.items() if value is not None},
        "lp_predictions": {mode: p for mode, p in predictions.items() if p is not None},
        "lp_hole_causes": {mode: c for mode, c in causes.items() if c is not None},
        "lp_release_after_calls": {mode: r for mode, r in releases.items() if r is not None},
        "hp_slowdown": {mode: d for mode, d in slowdowns.items() if d is not None},
        "hp_start_waits": {mode: w for mode, w in start_waits.items() if w is not None},
        "lp_turnaround": {mode: t for mode, t in turnarounds.items() if t is not None},
        "dispatch_latencies": {mode: d for mode, d in latencies.items() if d is not None},
        "hp_idle_fraction": idle,
        "lp_fits_kps": fits,
        "scheduler_overhead": overhead,
        "targets": targets,
    }


def render(summary: Json, command: str, failures: list[str]) -> str:
    """The markdown report: table, idle fraction, overhead, targets, command, failures."""
    lines = [
        "| mode | " + " | ".join(header for header, _, _ in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for mode, row in summary["modes"].items():
        cells = ["" if row[key] is None else fmt.format(row[key]) for _, key, fmt in COLUMNS]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    idle, fits, overhead = (
        summary["hp_idle_fraction"],
        summary["lp_fits_kps"],
        summary["scheduler_overhead"],
    )
    lines += [
        "",
        "HP idle fraction (traced hp-alone run of the timeline pass): "
        + ("n/a" if idle is None else f"{idle:.3f}"),
        "LP that fits (lp-alone kernels/s x HP idle fraction): "
        + ("n/a" if fits is None else f"{fits:.0f} kernels/s"),
        "Scheduler overhead (hp-alone mean / hp-alone-fifo mean - 1): "
        + ("n/a" if overhead is None else f"{overhead:+.2%}"),
        "",
        f"Gap filling (traced runs; gaps: HP GPU idle > {GAP_MIN_US:.0f} us):",
        *(
            f"- {mode}: LP kernels on the GPU {share:.1%} of HP's gap time; first LP kernel "
            f"{delay:.0f} us into a gap, {hole:.0f} us between LP kernels in a gap (medians)"
            for mode, (share, delay, hole) in summary["gap_filling"].items()
        ),
        *(
            f"- {mode}: LP launches traced without a predicted duration {unknown:.1%}; "
            f"predicted LP duration {predicted:.0f} us (median)"
            for mode, (unknown, predicted) in summary["lp_predictions"].items()
        ),
        *(
            f"- {mode}: in HP gaps > {PAUSE_MIN_US:.0f} us, the GPU idle between LP kernels "
            f"{share:.1%} of the time: {late:.0%} of it before an LP launch that reached the "
            f"server after the previous LP kernel ended, {held:.0%} before one the policy held"
            for mode, (share, late, held) in summary["lp_hole_causes"].items()
        ),
        *(
            f"- {mode}: the first LP launch of an HP pause issued {delay:.0f} us after the "
            "HP call that began the pause ended (median; the server's clock)"
            for mode, delay in summary["lp_release_after_calls"].items()
        ),
        *(
            f"- {mode}: LP's next launch reached the server {delay:.0f} us after its "
            "synchronizing call ended (median; the server's clock)"
            for mode, delay in summary["lp_turnaround"].items()
        ),
        *(
            f"- {mode}: held LP launches released {held:.0f} us after they arrived and "
            f"issued {issue:.0f} us after that; completions seen {seen:.0f} us after the GPU "
            "finished them (medians; the last compares the host clock with the GPU's)"
            for mode, (held, issue, seen) in summary["dispatch_latencies"].items()
        ),
        *(
            f"- {mode}: HP's kernels ran {beside:.0f} us per request longer than alone with "
            f"an LP kernel beside them, {after:.0f} us with none (against each kernel's "
            "mean in the traced hp-alone run)"
            for mode, (beside, after) in summary["hp_slowdown"].items()
        ),
        *(
            f"- {mode}: HP's kernels waited {beside:.0f} us per request to start on the GPU "
            f"with an LP kernel running, {other:.0f} us with none (each from its issue or "
            "the previous HP kernel's end, whichever is later; the issue on the host clock)"
            for mode, (beside, other) in summary["hp_start_waits"].items()
        ),
        "",
        "Server logs (the table's runs):",
        *(
            f"- {mode}: launches held 100 ms or more {note['held_warnings']}"
            + "".join(f"; a GPU worker's launches {counts}" for counts in note["worker_launches"])
            for mode, note in summary["server_notes"].items()
        ),
        "",
        "Targets:",
    ]
    verdicts = {True: " PASS", False: " FAIL", None: ""}
    for target in summary["targets"]:
        lines.append(f"- {target['target']}: {target['measured']}{verdicts[target['pass']]}")
    lines += ["", f"Command: `{command}`"]
    if failures:
        lines += ["", "Failed:", *(f"- {failure}" for failure in failures)]
    return "\n".join(lines) + "\n"


# ---- running the programs ----


def hp_command(args: argparse.Namespace, mode_dir: Path) -> list[str]:
    """The inference program's command line, its JSON to mode_dir/hp.json."""
    return [
        sys.executable,
        str(WORKLOADS / "inference.py"),
        *("--model", args.model, "--requests", str(args.requests)),
        *("--warmup", str(args.warmup), "--think-ms", str(args.think_ms)),
        *("--host-us", str(args.host_us), "--out", str(mode_dir / "hp.json")),
    ]


def lp_command(args: argparse.Namespace, mode_dir: Path) -> list[str]:
    """The batch program's command line, its files in mode_dir (lp.json, lp.ready, lp.stop)."""
    size = [] if args.lp_n is None else ["--n", str(args.lp_n)]
    return [
        sys.executable,
        str(WORKLOADS / "batch.py"),
        *("--job", args.lp_job, *size, "--seconds", str(LP_MAX_S)),
        *("--stop-file", str(mode_dir / "lp.stop"), "--ready-file", str(mode_dir / "lp.ready")),
        *("--out", str(mode_dir / "lp.json")),
    ]


def client_prefix(addr: str | None, priority: int) -> list[str]:
    """`fikit-run --server addr --priority P`, or nothing to run natively (addr None)."""
    if addr is None:
        return []
    fikit_run = console_script("fikit-run", "client_stub.run")
    return [*fikit_run, "--server", addr, "--priority", str(priority)]


def launch(command: list[str], log: Path) -> subprocess.Popen:
    """Start a program with stdout and stderr to `log`."""
    print(f"  $ {shlex.join(command)}", file=sys.stderr)
    with log.open("wb") as log_file:
        return subprocess.Popen(
            command, cwd=REPO, env=ENV, stdout=log_file, stderr=subprocess.STDOUT
        )


def finish(mode_dir: Path, role: str, proc: subprocess.Popen, failures: list[str]) -> Json | None:
    """Wait for program `role` (hp or lp), load its JSON; add what went wrong to failures."""
    label = f"{mode_dir.name}/{role} (log {mode_dir / role}.log)"
    try:
        code = proc.wait(timeout=PROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        failures.append(f"{label}: killed after {PROCESS_TIMEOUT_S} s")
        return None
    if code != 0:
        failures.append(f"{label}: exit status {code}")
    out = mode_dir / f"{role}.json"
    if not out.exists():
        failures.append(f"{label}: wrote no {out.name}")
        return None
    result = json.loads(out.read_text())
    if not result.get("checked"):
        failures.append(f"{label}: result check failed")
    return result


def wait_ready(proc: subprocess.Popen, ready: Path) -> bool:
    """Wait until `ready` exists; False if the process exits or PROCESS_TIMEOUT_S passes."""
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def run_programs(
    mode: str,
    mode_dir: Path,
    args: argparse.Namespace,
    addr: str | None,
    lp_seconds: float,
    failures: list[str],
) -> ModeRun:
    """Run the mode's programs: HP alone, LP alone for lp_seconds, or LP then HP while LP runs."""
    _, with_hp, with_lp = MODES[mode]
    run = ModeRun()

    def run_hp() -> Json | None:
        command = [*client_prefix(addr, HP_PRIORITY), *hp_command(args, mode_dir)]
        return finish(mode_dir, "hp", launch(command, mode_dir / "hp.log"), failures)

    if not with_lp:
        run.hp = run_hp()
        return run
    command = [*client_prefix(addr, LP_PRIORITY), *lp_command(args, mode_dir)]
    lp = launch(command, mode_dir / "lp.log")
    try:
        if not wait_ready(lp, mode_dir / "lp.ready"):
            failures.append(f"{mode}/lp: never became ready; HP not run")
        elif with_hp:
            run.hp = run_hp()
        else:
            start = time.time()
            time.sleep(lp_seconds)
            run.lp_window = (start, time.time())
        (mode_dir / "lp.stop").touch()
        run.lp = finish(mode_dir, "lp", lp, failures)
    except BaseException:
        lp.kill()
        raise
    return run


def run_mode(
    mode: str,
    mode_dir: Path,
    args: argparse.Namespace,
    lp_seconds: float,
    failures: list[str],
    traced: bool = False,
) -> ModeRun:
    """Run one mode in mode_dir, behind a fresh gpu-server unless it is native; a traced
    server times every launch and writes mode_dir/trace.jsonl."""
    policy = MODES[mode][0]
    mode_dir.mkdir(parents=True, exist_ok=True)
    for name in ("hp.json", "lp.json", "lp.ready", "lp.stop", "trace.jsonl"):
        (mode_dir / name).unlink(missing_ok=True)
    print(f"[{mode}]", file=sys.stderr)
    if policy is None:
        return run_programs(mode, mode_dir, args, None, lp_seconds, failures)
    trace = mode_dir / "trace.jsonl"
    server_args = ["--policy", policy, "--profile-db", str(args.out / "profiles.sqlite3")]
    server_args += ["--isolation", args.isolation, *args.server_arg]
    if traced:
        server_args += ["--trace", str(trace)]
    with tempfile.TemporaryDirectory() as sockets:
        socket_address = f"unix:{Path(sockets) / 'gpu.sock'}"
        server_args += ["--listen", socket_address]
        with gpu_server(server_args, mode_dir / "server.log") as tcp_address:
            addr = socket_address if args.transport == "unix" else tcp_address
            run = run_programs(mode, mode_dir, args, addr, lp_seconds, failures)
    if trace.exists():
        lines = [json.loads(line) for line in trace.read_text().splitlines() if line]
        run.trace = [line for line in lines if "kernel" in line]
        run.calls = [line for line in lines if "call" in line]
    run.server_log = (mode_dir / "server.log").read_text(errors="replace")
    return run


def lp_alone_seconds(hp_alone: ModeRun | None) -> float:
    """How long lp-alone runs: hp-alone's measured span, at least MIN_LP_ALONE_S."""
    span = hp_span(hp_alone.hp) if hp_alone else None
    return MIN_LP_ALONE_S if span is None else max(MIN_LP_ALONE_S, span[1] - span[0])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for all results")
    parser.add_argument("--model", choices=("mlp", "transformer"), default="transformer")
    parser.add_argument("--lp-job", choices=("gemm", "stencil"), default="stencil")
    parser.add_argument("--lp-n", type=int, help="LP problem size (default: batch.py's)")
    parser.add_argument("--requests", type=int, default=200, help="measured HP requests")
    parser.add_argument("--warmup", type=int, default=20, help="HP warm-up requests")
    parser.add_argument("--think-ms", type=float, default=2.0, help="HP pause between requests")
    parser.add_argument("--host-us", type=float, default=200.0, help="HP host work per step")
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, default=list(MODES), help="modes to run"
    )
    parser.add_argument(
        "--transport",
        choices=("unix", "tcp"),
        default="unix",
        help="how clients reach the server: its same-host unix socket (default) or gRPC on TCP",
    )
    parser.add_argument(
        "--isolation",
        choices=("shared", "process", "none"),
        default="shared",
        help="the server's --isolation (default shared, the server's default)",
    )
    parser.add_argument(
        "--timeline-requests",
        type=int,
        default=60,
        help="HP requests in each traced run of the timeline pass (DIR/timeline/<mode>/)",
    )
    parser.add_argument(
        "--alone-rounds",
        type=int,
        default=4,
        help="run hp-alone-fifo and hp-alone this many times, in alternating order, and pool their "
        "latencies: the two differ by a few percent at most, less than one run's noise",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="pass ARG to every gpu-server started (repeat for more; e.g. "
        "--server-arg=--no-arm-behind)",
    )
    return parser.parse_args()


def pooled(earlier: ModeRun | None, later: ModeRun) -> ModeRun:
    """``later`` with ``earlier``'s HP latencies added (its windows and trace are kept)."""
    if earlier is None or earlier.hp is None or later.hp is None:
        return later
    later.hp["latencies_ms"] = earlier.hp["latencies_ms"] + later.hp["latencies_ms"]
    return later


def main() -> None:
    args = parse_args()
    args.out = args.out.resolve()
    failures: list[str] = []
    runs: dict[str, ModeRun] = {}
    alone = [mode for mode in ("hp-alone-fifo", "hp-alone") if mode in args.modes]
    rounds = [alone[:: 1 if i % 2 == 0 else -1] for i in range(args.alone_rounds)]
    schedule = [mode for pair in rounds for mode in pair]
    schedule += [mode for mode in MODES if mode in args.modes and mode not in alone]
    for mode in schedule:
        run = run_mode(
            mode, args.out / mode, args, lp_alone_seconds(runs.get("hp-alone")), failures
        )
        runs[mode] = pooled(runs.get(mode), run)
    timeline_args = argparse.Namespace(**{**vars(args), "requests": args.timeline_requests})
    timeline = {
        mode: run_mode(mode, args.out / "timeline" / mode, timeline_args, 0, failures, True)
        for mode in TIMELINE_MODES
        if mode in args.modes
    }
    summary = summarize(runs, traced_idle_fraction(timeline.get("hp-alone")), timeline)
    command = shlex.join(sys.orig_argv)
    report = render(summary, command, failures)
    (args.out / "results.md").write_text(report)
    results = {"command": command, **summary, "failures": failures}
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(report, end="")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
