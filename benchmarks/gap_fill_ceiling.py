"""How much of HP's idle time the fikit policy can fill, in the GPU model, for the workload
of benchmarks/scheduling.py: the ceiling of its "LP / fits" column.

Usage: python benchmarks/gap_fill_ceiling.py [--requests 200]

No GPU and no server: ``scheduler.simulator`` runs the policy on a virtual clock, with the
HP task shaped like the scheduling benchmark's transformer as traced alone on the H200 (each
kernel's median duration and the median GPU idle time after it, `3748eab`) and an LP task
that always has 8 stencil launches of 65 us waiting, or, like the benchmark's batch job,
launches 8, waits for them and needs a round trip (LP_SYNC_US) before the next 8. The
model's GPU runs one kernel at a time, and the server hears of each completion a fixed
delay after it happened (``report_delay_us``: how late its completion tracker sees it).
The last rows end each HP request with a synchronizing result copy, as the inference
program's download does (HP's kernels are done meanwhile, so LP may fill it). Prints, per
configuration, HP's mean request latency over running alone, LP's kernels over what fits
(LP's rate alone times HP's idle fraction alone), as the benchmark reports them, and how
long after HP's last kernel the first LP kernel of a pause between HP's requests starts
(median).
"""

import argparse
import math
import statistics
from dataclasses import dataclass, replace

from scheduling import PAUSE_MIN_US, gap_filling

from scheduler.policy import FifoPolicy, FikitPolicy, Policy
from scheduler.simulator import Kernel, SimResult, TaskSpec, run_alone, simulate

#: (kernel, median duration us, median GPU idle after it us) of one request, traced alone.
HP_REQUEST = (
    ("sgemm.qkv", 148.9, 1.3),
    ("bgemm.scores", 11.6, 52.4),
    ("softmax_rows", 17.1, 53.4),
    ("bgemm.context", 34.0, 39.8),
    ("sgemm.proj", 127.0, 1.3),
    ("add.1", 3.8, 16.9),
    ("layernorm_rows.1", 11.0, 45.9),
    ("sgemm.ffn1", 136.0, 1.3),
    ("sgemm.ffn2", 475.4, 1.3),
    ("add.2", 3.8, 1.3),
    ("layernorm_rows.2", 6.0, 3069.2),
)
LP_KERNEL_US = 65.0
#: Launches per LP iteration, and the time from its last kernel's end to the next
#: iteration's first launch reaching the server (the synchronization's reply, the client's
#: loop, the launch's way back).
LP_ITERATION = 8
LP_SYNC_US = 100.0
#: The server's --max-lp-inflight-us.
MAX_LP_INFLIGHT_US = 500.0
REPORT_DELAYS_US = (0.0, 20.0, 50.0, 100.0, 200.0, 400.0)
#: HP's result copy at the end of each request (``TaskSpec.result_copy_us``).
RESULT_COPY_US = 30.0
START_US = 5000.0


def hp_task(requests: int, result_copy_us: float | None = None) -> TaskSpec:
    """The HP task: its kernels one after another, each followed by its idle time; with
    ``result_copy_us``, each request ends with a synchronizing result copy that long, and
    the pause after it is that much shorter."""
    kernels = tuple(Kernel(name, duration) for name, duration, _ in HP_REQUEST)
    gaps = tuple(gap for _, _, gap in HP_REQUEST)
    return TaskSpec(
        1,
        9,
        kernels,
        gaps[:-1],
        request_gap_us=gaps[-1] - (result_copy_us or 0.0),
        requests=requests,
        gap_jitter=0.05,
        start_us=START_US,
        result_copy_us=result_copy_us,
    )


#: An LP task that never lacks a launch.
LP_STREAM = TaskSpec(2, 0, (Kernel("jacobi", LP_KERNEL_US),), requests=None, depth=LP_ITERATION)
#: The benchmark's batch job: LP_ITERATION launches, a synchronization, again.
LP_BATCH = TaskSpec(
    2,
    0,
    (Kernel("jacobi", LP_KERNEL_US),) * LP_ITERATION,
    request_gap_us=LP_SYNC_US,
    requests=None,
    depth=LP_ITERATION,
    sync_per_request=True,
)

#: How long after its held launch went out a blocked session's next launch arrived: median
#: in the `e8c0edf` `shared` fikit trace (held LP launches' issue to the next arrival).
HELD_RESUME_US = 15.0
#: The same job as the server runs it: the policy sees one held launch of it at a time.
LP_BLOCKED = replace(LP_BATCH, held_resume_us=HELD_RESUME_US)


def lp_alone_rate(lp: TaskSpec) -> float:
    """LP kernels per microsecond, alone on the GPU."""
    span = 1e6
    alone = simulate([lp], FifoPolicy(), until_us=span)
    return alone.work_us([lp.task_id], 0.0, span)[0] / span


@dataclass(frozen=True)
class Configuration:
    """One row: a policy, how late it hears of completions, the LP task, HP's result copy."""

    label: str
    policy: Policy
    report_delay_us: float = 0.0
    lp: TaskSpec = LP_STREAM
    result_copy_us: float | None = None


def shared_run(config: Configuration, requests: int) -> tuple[float, float, float]:
    """(HP mean latency over alone, LP kernels over what fits, median time from HP's last
    kernel before a pause of over PAUSE_MIN_US to the first LP kernel in it) for one row."""
    hp = hp_task(requests, config.result_copy_us)
    lp = config.lp
    alone = run_alone(hp)
    alone_mean = statistics.mean(alone.request_latencies_us[1])
    idle = alone.idle_fraction(1)
    until = START_US + 20 * alone.makespan_us(1)
    shared = simulate(
        [hp, lp], config.policy, until_us=until, report_delay_us=config.report_delay_us
    )
    begin, end = shared.start_us[1], shared.finish_us[1]
    lp_kernels, _ = shared.work_us([lp.task_id], begin, end)
    fits = (end - begin) * idle * lp_alone_rate(lp)
    hp_ratio = statistics.mean(shared.request_latencies_us[1]) / alone_mean
    return hp_ratio, lp_kernels / fits, first_lp_into_pauses_us(shared)


def first_lp_into_pauses_us(result: SimResult) -> float:
    """Median, over HP's pauses longer than PAUSE_MIN_US, of the time from HP's last kernel's
    end to the start of the first LP kernel in the pause (nan when LP ran in none), as the
    scheduling report measures it on a trace."""
    trace = [
        {"priority": result.priority[run.task_id], "start_us": run.start_us, "end_us": run.end_us}
        for run in result.timeline
    ]
    filling = gap_filling(trace, PAUSE_MIN_US)
    return math.nan if filling is None else filling[1]


def configurations() -> list[Configuration]:
    """What is compared."""
    fikit = FikitPolicy
    relaxed = FikitPolicy(MAX_LP_INFLIGHT_US, gap_margin=1.0, gap_percentile=0.5)
    rows = [Configuration("fifo", FifoPolicy())]
    rows += [
        Configuration(f"fikit, heard {delay:.0f} us late", fikit(MAX_LP_INFLIGHT_US), delay)
        for delay in REPORT_DELAYS_US
    ]
    rows.append(Configuration("fikit, gap median without margin, heard at once", relaxed))
    rows += [
        Configuration(
            f"fikit, LP syncs every {LP_ITERATION} kernels, heard {delay:.0f} us late",
            fikit(MAX_LP_INFLIGHT_US),
            delay,
            LP_BATCH,
        )
        for delay in (0.0, 100.0)
    ]
    rows += [
        Configuration(
            f"fikit, LP syncs every {LP_ITERATION} kernels{blocked}, HP's "
            f"{RESULT_COPY_US:.0f} us result copy, heard {delay:.0f} us late",
            fikit(MAX_LP_INFLIGHT_US),
            delay,
            lp,
            RESULT_COPY_US,
        )
        for blocked, lp in (
            ("", LP_BATCH),
            (f", its session blocked while held (+{HELD_RESUME_US:.0f} us)", LP_BLOCKED),
        )
        for delay in (0.0, 100.0)
    ]
    rows += [
        Configuration(
            f"fikit placing LP behind HP's last kernel before a gap, LP syncs every "
            f"{LP_ITERATION} kernels, HP's {RESULT_COPY_US:.0f} us result copy, heard "
            f"{delay:.0f} us late",
            fikit(MAX_LP_INFLIGHT_US, arm_behind=True),
            delay,
            LP_BATCH,
            RESULT_COPY_US,
        )
        for delay in (0.0, 100.0, 300.0)
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="HP requests per run")
    args = parser.parse_args()
    print(
        "| configuration | HP mean / alone | LP / fits | first LP kernel into a pause, us |\n"
        "|---|---:|---:|---:|"
    )
    for config in configurations():
        hp_ratio, lp_ratio, first_lp = shared_run(config, args.requests)
        print(f"| {config.label} | {hp_ratio:.3f}x | {lp_ratio:.3f}x | {first_lp:.0f} |")


if __name__ == "__main__":
    main()
