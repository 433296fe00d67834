"""Scheduling policies on the deterministic GPU model: FIFO, strict priority and FIKIT.

The main workload is an inference task at priority 9 (requests of 12 kernels of 40..500 us,
host gaps of 30..1500 us between them, ±10 % jitter, 1.2 ms between requests: about 70 % of
its time alone is GPU idle time) sharing the GPU with two training-like tasks at priority 0
that keep 8 launches each outstanding, with kernels of 30..160 us.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import pairwise

import pytest

from gpu_server.cli import make_policy, parse_args
from scheduler.policy import (
    NO_CREDIT,
    OPENS_KEPT,
    Credit,
    FifoPolicy,
    FikitPolicy,
    GapPredictor,
    PendingLaunch,
    Policy,
    PriorityPolicy,
)
from scheduler.simulator import Kernel, SimResult, TaskSpec, run_alone, simulate

HP = 1
HP_KERNELS = (180, 60, 420, 90, 250, 40, 300, 120, 75, 500, 150, 220)
HP_GAPS = (40, 350, 900, 60, 1500, 250, 30, 700, 120, 400, 80)
LP_KERNELS = {2: (120, 45, 160, 80), 3: (100, 30, 60)}
MAX_LP_KERNEL = max(max(durations) for durations in LP_KERNELS.values())


def kernels(prefix: str, durations: tuple[float, ...]) -> tuple[Kernel, ...]:
    return tuple(Kernel(f"{prefix}{i}", d) for i, d in enumerate(durations))


def inference(task_id: int = HP, priority: int = 9, requests: int = 20, **kw: float) -> TaskSpec:
    """A closed loop: each kernel is waited for, then host work before the next."""
    return TaskSpec(
        task_id,
        priority,
        kernels(f"hp{task_id}.", HP_KERNELS),
        HP_GAPS,
        request_gap_us=1200.0,
        requests=requests,
        gap_jitter=0.1,
        **kw,
    )


def training(task_id: int, priority: int = 0, requests: int | None = None, **kw: float) -> TaskSpec:
    """A saturating stream: 8 launches outstanding, no host gaps."""
    durations = LP_KERNELS.get(task_id, (100.0,))
    return TaskSpec(
        task_id, priority, kernels(f"lp{task_id}.", durations), requests=requests, depth=8, **kw
    )


WORKLOAD = (inference(), training(2), training(3))


def slowdown(shared: SimResult) -> float:
    """The HP task's makespan in ``shared`` over its makespan alone."""
    return shared.makespan_us(HP) / run_alone(inference()).makespan_us(HP)


def fitting_lp_work_us(alone: SimResult, task_id: int = HP) -> float:
    """The lower-priority work that fits in the task's idle gaps when it runs alone.

    Per gap, everything but the last ``MAX_LP_KERNEL``: what any scheduler that never
    delays the task can be sure to place with kernels up to that size.
    """
    return sum(max(0.0, gap - MAX_LP_KERNEL) for gap in alone.idle_gaps_us(task_id))


def assert_per_task_order(result: SimResult) -> None:
    for task_id in result.priority:
        runs = result.runs(task_id)
        for earlier, later in pairwise(runs):
            assert earlier.issue_us <= later.issue_us
            assert earlier.end_us <= later.start_us


def learn_pauses(policy: Policy, seq: Iterator[int], count: int, pause_us: float) -> float:
    """Task 1 at the top makes ``count`` launches of a 10 us kernel "k" from time 0, each
    issued at once and followed by ``pause_us`` of idle time; returns when the last pause
    ends."""
    now = 0.0
    for _ in range(count):
        launch = PendingLaunch(next(seq), 1, "k", 10.0)
        policy.arrive(launch, now)
        assert policy.take_issuable(now) == [launch]
        policy.completed(launch, now + 10.0)
        now += 10.0 + pause_us
    return now


def lp_issue_times(result: SimResult) -> list[float]:
    return sorted(r.issue_us for r in result.timeline if result.priority[r.task_id] == 0)


# 1-3: the main workload under each policy


def test_fikit_fills_the_idle_gaps_without_slowing_the_hp_task() -> None:
    alone = run_alone(WORKLOAD[0])
    assert alone.idle_fraction(HP) > 0.6
    shared = simulate(WORKLOAD, FikitPolicy())

    assert slowdown(shared) <= 1.05
    count, lp_work = shared.lower_priority_work_us(HP)
    assert count > 0
    assert lp_work >= 0.9 * fitting_lp_work_us(alone)
    assert lp_work >= 0.75 * sum(alone.idle_gaps_us(HP))
    # Exact duration predictions: no HP kernel waits longer than the in-flight LP bound.
    assert max(r.wait_us for r in shared.runs(HP)) <= 200.0
    assert len(shared.request_latencies_us[HP]) == 20


def test_completions_heard_late_cost_lp_gap_time_not_hp_time() -> None:
    """The policy hears of completions 100 us late (a server polling for them): HP still
    runs as if alone, LP loses part of the gaps, and nothing else changes without a delay."""
    on_time = simulate(WORKLOAD, FikitPolicy())
    assert simulate(WORKLOAD, FikitPolicy(), report_delay_us=0.0).timeline == on_time.timeline
    late = simulate(WORKLOAD, FikitPolicy(), report_delay_us=100.0)
    assert slowdown(late) <= 1.05
    assert 0 < late.lower_priority_work_us(HP)[1] < on_time.lower_priority_work_us(HP)[1]
    assert_per_task_order(late)


def test_lp_fills_the_hp_result_copy_once_hp_kernels_are_done() -> None:
    """HP ends each request with a 100 us synchronizing copy: its kernels are done while the
    copy runs, so LP starts from the moment HP's last kernel ends, and HP is not slowed."""
    hp = inference(requests=12, result_copy_us=100.0)
    alone = simulate([hp], FikitPolicy())
    shared = simulate([hp, training(2)], FikitPolicy())
    request_ends = [run.end_us for run in shared.runs(HP)[len(HP_KERNELS) - 1 :: len(HP_KERNELS)]]
    lp = sorted(run.start_us for run in shared.timeline if run.task_id == 2)
    firsts = [min(start for start in lp if start >= end) for end in request_ends[:-1]]
    assert firsts[-5:] == request_ends[-6:-1]  # once gaps are known
    pairs = zip(shared.request_latencies_us[HP], alone.request_latencies_us[HP], strict=True)
    assert all(with_lp <= 1.05 * by_itself for with_lp, by_itself in pairs)
    assert_per_task_order(shared)


def test_a_task_that_synchronizes_per_request_waits_for_its_kernels_before_the_next() -> None:
    batch = TaskSpec(
        2,
        0,
        kernels("b", (10.0,) * 4),
        requests=3,
        depth=4,
        sync_per_request=True,
        request_gap_us=100.0,
    )
    runs = run_alone(batch).runs(2)
    assert [r.start_us for r in runs[:4]] == [0.0, 10.0, 20.0, 30.0]  # back to back
    assert runs[4].arrive_us == pytest.approx(runs[3].end_us + 100.0)  # then the sync
    assert runs[8].arrive_us == pytest.approx(runs[7].end_us + 100.0)


@pytest.mark.parametrize(
    ("resume_us", "arrivals"), [(None, [0.0] * 4), (7.0, [0.0] + [1007.0] * 3)]
)
def test_a_task_blocked_while_held_makes_its_next_launch_after_the_release(
    resume_us: float | None, arrivals: list[float]
) -> None:
    hp = TaskSpec(HP, 9, kernels("h", (1000.0,)))
    lp = TaskSpec(2, 0, kernels("l", (10.0,)), requests=4, depth=4, held_resume_us=resume_us)
    shared = simulate([hp, lp], PriorityPolicy(quiet_after_us=0.0))
    # Held behind HP's kernel until 1000; a blocked session reads its next launch 7 us
    # after the release, and those go at once: they were never held.
    assert [run.arrive_us for run in shared.runs(2)] == arrivals


def test_fifo_slows_the_hp_task_down() -> None:
    shared = simulate(WORKLOAD, FifoPolicy())
    assert slowdown(shared) > 1.5


def test_priority_holds_every_lp_launch_while_the_hp_task_is_active() -> None:
    policy = PriorityPolicy()
    quiet_at = run_alone(WORKLOAD[0]).finish_us[HP] + policy.quiet_after_us
    shared = simulate(WORKLOAD, policy, until_us=quiet_at + 5000.0)

    assert shared.makespan_us(HP) == pytest.approx(run_alone(WORKLOAD[0]).makespan_us(HP))
    issues = lp_issue_times(shared)
    assert issues and issues[0] == pytest.approx(quiet_at)
    _, lp_work = shared.work_us([2, 3], quiet_at, quiet_at + 5000.0)
    assert lp_work == pytest.approx(5000.0)


# 4: mispredicted durations


def test_mispredicted_lp_durations_delay_each_hp_launch_by_at_most_the_scaled_bound() -> None:
    """LP kernels run 3x longer than predicted: the in-flight bound of 200 us becomes 600 us.

    The bound holds per HP launch (each gap filled can overrun once), so a request's delay is
    at most its launches times 600 us; the LP tasks are finite and must all complete.
    """
    tasks = [inference(), training(2, requests=150), training(3, requests=150)]
    profile = {k.kernel_id: k.duration_us for t in tasks for k in t.kernels}
    for task in tasks[1:]:
        for kernel in task.kernels:
            profile[kernel.kernel_id] = kernel.duration_us / 3
    shared = simulate(tasks, FikitPolicy(max_lp_inflight_us=200.0), profile)

    hp_runs = shared.runs(HP)
    assert 200.0 < max(r.wait_us for r in hp_runs) <= 3 * 200.0
    alone = run_alone(tasks[0])
    latencies = zip(shared.request_latencies_us[HP], alone.request_latencies_us[HP])
    for request, (with_lp, without) in enumerate(latencies):
        waits = sum(r.wait_us for r in hp_runs if r.request == request)
        assert with_lp - without == pytest.approx(waits, abs=1e-6)
        assert waits <= len(HP_KERNELS) * 3 * 200.0
    for task in tasks:
        assert len(shared.runs(task.task_id)) == task.launches
    assert_per_task_order(shared)


# 5: tasks arriving and leaving


def test_an_lp_task_added_mid_run_fills_gaps_too() -> None:
    late = training(3, start_us=50_000.0)
    shared = simulate([inference(), training(2), late], FikitPolicy())
    runs = shared.runs(3)
    assert runs and runs[0].arrive_us == 50_000.0
    count, _ = shared.work_us([3], 50_000.0, shared.finish_us[HP])
    assert count > 100
    assert slowdown(shared) <= 1.05


@pytest.mark.parametrize("policy", [PriorityPolicy, FikitPolicy])
def test_lp_runs_freely_as_soon_as_the_hp_task_leaves(policy: Callable[[], Policy]) -> None:
    stop = 30_000.0
    shared = simulate(
        [inference(stop_us=stop), training(2), training(3)], policy(), until_us=stop + 10_000.0
    )
    assert shared.finish_us[HP] == stop
    assert all(r.arrive_us < stop for r in shared.runs(HP))
    # From the removal on, the GPU runs LP back to back: no waiting for the HP task to quiet.
    first_after = min(r.start_us for r in shared.timeline if r.task_id != HP and r.issue_us >= stop)
    _, lp_work = shared.work_us([2, 3], first_after, stop + 10_000.0)
    assert first_after - stop <= 500.0
    assert lp_work == pytest.approx(stop + 10_000.0 - first_after)


def test_removing_a_task_drops_its_held_launches() -> None:
    lp = training(2, stop_us=20_000.0)
    shared = simulate([inference(requests=5), lp], FikitPolicy())
    assert shared.dropped
    assert {launch.task_id for launch in shared.dropped} == {2}
    ran = {r.seq for r in shared.timeline}
    assert not ran & {launch.seq for launch in shared.dropped}
    assert shared.runs(2)
    assert all(r.issue_us < 20_000.0 for r in shared.runs(2))


def test_remove_task_returns_held_launches_and_forgets_the_task() -> None:
    policy = FikitPolicy()
    policy.add_task(1, 9, 0.0)
    policy.add_task(2, 0, 0.0)
    policy.arrive(PendingLaunch(0, 1, "a", 10.0), 0.0)
    policy.arrive(PendingLaunch(1, 2, "b", 10.0), 0.0)
    policy.arrive(PendingLaunch(2, 2, "c", 10.0), 0.0)
    assert [launch.seq for launch in policy.take_issuable(0.0)] == [0]
    assert [launch.seq for launch in policy.remove_task(2, 1.0)] == [1, 2]
    policy.completed(PendingLaunch(0, 1, "a", 10.0), 10.0)
    assert policy.take_issuable(10.0) == []


# 6: several tasks at one level


@pytest.mark.parametrize("policy", [FifoPolicy, PriorityPolicy, FikitPolicy])
def test_tasks_at_one_level_share_the_gpu_fairly(policy: Callable[[], Policy]) -> None:
    tasks = [training(task_id, priority=4, requests=200) for task_id in range(10, 14)]
    shared = simulate(tasks, policy())
    halfway = shared.end_us / 2
    done = Counter(r.task_id for r in shared.timeline if r.end_us <= halfway)
    assert max(done.values()) - min(done.values()) <= 1
    finishes = [shared.finish_us[t.task_id] for t in tasks]
    assert max(finishes) - min(finishes) < len(tasks) * 100.0


def test_lp_tasks_at_one_level_share_the_gaps() -> None:
    tasks = [inference(), training(20), training(21)]
    shared = simulate(tasks, FikitPolicy())
    _, lp_work = shared.lower_priority_work_us(HP)
    counts = Counter(r.task_id for r in shared.timeline if r.task_id != HP)
    assert lp_work > 0
    assert abs(counts[20] - counts[21]) <= 2


def test_two_hp_tasks_are_both_served_and_lp_only_fills_when_both_are_idle() -> None:
    tasks = [inference(1), inference(4, requests=15, start_us=7_000.0), training(2), training(3)]
    shared = simulate(tasks, FikitPolicy())
    assert len(shared.request_latencies_us[1]) == 20
    assert len(shared.request_latencies_us[4]) == 15
    hp_busy = [(r.arrive_us, r.end_us) for r in shared.timeline if r.task_id in (1, 4)]
    lp_issues = [
        r.issue_us
        for r in shared.timeline
        if r.task_id in (2, 3) and r.issue_us < min(shared.finish_us[1], shared.finish_us[4])
    ]
    assert lp_issues
    assert not [t for t in lp_issues for begin, end in hp_busy if begin <= t < end]


# 7: per-task order, and no starvation once the high priority goes quiet


@pytest.mark.parametrize("policy", [FifoPolicy, PriorityPolicy, FikitPolicy])
def test_every_launch_runs_once_in_task_order(policy: Callable[[], Policy]) -> None:
    tasks = [
        inference(requests=8),
        inference(5, priority=5, requests=6, start_us=3_000.0),
        training(2, requests=60),
        training(3, priority=2, requests=60),
        training(6, requests=40, start_us=10_000.0),
    ]
    shared = simulate(tasks, policy())
    assert_per_task_order(shared)
    for task in tasks:
        assert len(shared.runs(task.task_id)) == task.launches
        assert len({r.seq for r in shared.runs(task.task_id)}) == task.launches


# 8: unknown durations


def learn_gap(policy: FikitPolicy, gap_us: float, samples: int = 3) -> float:
    """Task 1 (priority 9) runs kernel "k" then idles ``gap_us``, ``samples`` times; returns
    the time it went idle for the last time."""
    now = 0.0
    for seq in range(samples + 1):
        if seq:
            now += gap_us
        launch = PendingLaunch(1000 + seq, 1, "k", 50.0)
        policy.arrive(launch, now)
        assert policy.take_issuable(now) == [launch]
        now += 50.0
        policy.completed(launch, now)
    return now


@pytest.mark.parametrize(
    ("gap_us", "predicted_us", "released"),
    [
        (150.0, None, False),
        (150.0, 100.0, True),
        (150.0, 140.0, False),
        (1000.0, None, True),
    ],
)
def test_unknown_durations_fill_only_large_gaps(
    gap_us: float, predicted_us: float | None, released: bool
) -> None:
    policy = FikitPolicy()
    policy.add_task(1, 9, 0.0)
    policy.add_task(2, 0, 0.0)
    policy.arrive(PendingLaunch(0, 2, "lp", predicted_us), 0.0)
    now = learn_gap(policy, gap_us)
    assert policy.gap_samples(1) == {"k": (gap_us, gap_us, gap_us)}
    assert bool(policy.take_issuable(now)) is released


@pytest.mark.parametrize(("gap_us", "released"), [(300.0, False), (600.0, True)])
def test_gaps_predicted_shorter_than_min_gap_us_are_not_filled(
    gap_us: float, released: bool
) -> None:
    policy = make_policy(parse_args(["--policy", "fikit", "--min-gap-us", "500"]))
    assert isinstance(policy, FikitPolicy)
    policy.add_task(1, 9, 0.0)
    policy.add_task(2, 0, 0.0)
    policy.arrive(PendingLaunch(0, 2, "lp", 100.0), 0.0)
    now = learn_gap(policy, gap_us)
    assert bool(policy.take_issuable(now)) is released
    credit = policy.credit(2, "lp", 100.0, now)
    assert (credit == NO_CREDIT) is not released


def test_with_min_gap_us_lp_fills_only_the_long_gaps_in_simulation() -> None:
    """HP's gaps of 900 us and less (10 % jitter) stay empty; its 1500 us gap and the
    1200 us between requests are filled, and HP still runs as if alone."""
    shared = simulate(WORKLOAD, FikitPolicy(min_gap_us=1000.0))
    assert slowdown(shared) <= 1.05
    hp = sorted(shared.runs(HP), key=lambda r: r.start_us)
    hp_gaps = [(a.end_us, b.start_us) for a, b in pairwise(hp) if b.start_us > a.end_us]
    lp_starts = [r.start_us for r in shared.timeline if r.task_id != HP]
    filled = [end - begin for begin, end in hp_gaps if any(begin <= t < end for t in lp_starts)]
    assert filled and min(filled) > 1000.0
    every_gap = simulate(WORKLOAD, FikitPolicy()).lower_priority_work_us(HP)[1]
    assert 0 < shared.lower_priority_work_us(HP)[1] < every_gap


def test_unknown_lp_kernels_stay_out_of_small_gaps_in_simulation() -> None:
    hp = TaskSpec(HP, 9, kernels("hp", (100.0, 80.0)), (150.0,), request_gap_us=150.0, requests=50)
    lp = training(2, requests=20)
    profile = {k.kernel_id: k.duration_us for k in hp.kernels}
    shared = simulate([hp, lp], FikitPolicy(), profile)
    assert shared.lower_priority_work_us(HP) == (0, 0.0)
    assert shared.makespan_us(HP) == run_alone(hp).makespan_us(HP)
    assert len(shared.runs(2)) == lp.launches


# The policy's own bookkeeping


def test_best_fit_picks_the_largest_fitting_head_from_the_highest_level_first() -> None:
    policy = FikitPolicy(max_lp_inflight_us=1000.0, gap_margin=1.0)
    policy.add_task(1, 9, 0.0)
    for task_id, priority in [(2, 3), (3, 3), (4, 1)]:
        policy.add_task(task_id, priority, 0.0)
    for seq, task_id, predicted in [(0, 2, 300.0), (1, 2, 10.0), (2, 3, 500.0), (3, 4, 190.0)]:
        policy.arrive(PendingLaunch(seq, task_id, f"k{seq}", predicted), 0.0)
    now = learn_gap(policy, 1000.0)
    # Room 1000: level 3 first, largest fitting head (500, then 300, then 10), then level 1.
    assert [launch.seq for launch in policy.take_issuable(now)] == [2, 0, 1, 3]


def test_a_task_goes_quiet_after_quiet_after_us_and_next_event_says_when() -> None:
    policy = PriorityPolicy(quiet_after_us=2000.0)
    policy.add_task(1, 9, 0.0)
    policy.add_task(2, 0, 0.0)
    hp = PendingLaunch(0, 1, "hp", 10.0)
    lp = PendingLaunch(1, 2, "lp", 10.0)
    policy.arrive(hp, 0.0)
    policy.arrive(lp, 0.0)
    assert policy.take_issuable(0.0) == [hp]
    assert policy.next_event(0.0) is None
    policy.completed(hp, 10.0)
    assert policy.take_issuable(10.0) == []
    assert policy.next_event(10.0) == 2010.0
    assert policy.take_issuable(2009.0) == []
    assert policy.take_issuable(2010.0) == [lp]
    assert policy.next_event(2010.0) is None


def test_gap_prediction_is_a_low_percentile_of_recent_gaps_after_the_same_kernel() -> None:
    gaps = GapPredictor(window=4, percentile=0.25)
    assert gaps.predict(1, "k") == 0.0
    for gap in (900.0, 100.0, 400.0, 200.0, 300.0):
        gaps.record(1, "k", gap)
    gaps.record(1, "other", 5.0)
    assert gaps.samples(1)["k"] == (100.0, 400.0, 200.0, 300.0)
    assert gaps.predict(1, "k") == 100.0
    assert gaps.predict(2, "k") == 0.0


def test_no_gap_is_learnt_while_the_task_still_has_work_in_flight() -> None:
    policy = FikitPolicy()
    policy.add_task(1, 9, 0.0)
    first, second, third = (PendingLaunch(seq, 1, "k", 10.0) for seq in range(3))
    policy.arrive(first, 0.0)
    policy.arrive(second, 0.0)
    policy.take_issuable(0.0)
    policy.completed(first, 10.0)
    policy.arrive(third, 15.0)
    assert policy.gap_samples(1) == {}


@pytest.mark.parametrize("policy", [PriorityPolicy, FikitPolicy])
def test_a_task_in_a_synchronizing_call_is_busy_and_its_gap_opens_after(
    policy: Callable[..., Policy],
) -> None:
    pol = policy(quiet_after_us=100.0)
    pol.add_task(1, 9, 0.0)
    pol.add_task(2, 0, 0.0)
    hp, lp = PendingLaunch(0, 1, "hp", 10.0), PendingLaunch(1, 2, "lp", 10.0)
    pol.arrive(hp, 0.0)
    assert pol.take_issuable(0.0) == [hp]
    pol.call_started(1, 5.0)  # e.g. copying the result back, waiting for the kernel
    pol.completed(hp, 10.0)
    pol.arrive(lp, 10.0)
    assert pol.take_issuable(500.0) == []  # still busy: not quiet, no gap
    assert pol.next_event(500.0) is None
    pol.call_finished(1, 600.0)
    assert pol.next_event(600.0) == 700.0
    assert pol.take_issuable(699.0) == []
    assert pol.take_issuable(700.0) == [lp]


def test_a_gap_runs_from_a_completion_to_the_next_launch_without_the_calls_between() -> None:
    policy = FikitPolicy()
    policy.add_task(1, 9, 0.0)
    policy.add_task(2, 0, 0.0)
    times = [(0.0, 20.0), (1000.0, 1020.0), (3000.0, 3020.0)]
    for seq, (start, end) in enumerate(times):
        launch = PendingLaunch(seq, 1, "k", 10.0)
        policy.call_started(1, start - 100.0)  # the request's input copy, before its kernel
        policy.call_finished(1, start)
        policy.arrive(launch, start)
        policy.take_issuable(start)
        policy.completed(launch, end)
        policy.call_started(1, end + 100.0)  # copying the result back
        policy.call_finished(1, end + 300.0)
    # Idle stretches of each gap: completion to the result copy (100), then from its end to
    # the next input copy (580, 1580); the copies' own time does not count.
    assert policy.gap_samples(1) == {"k+call": (680.0, 1680.0)}
    lp = PendingLaunch(9, 2, "lp", 150.0)
    policy.arrive(lp, 3400.0)  # 100 + 80 idle so far: 500 left of the prediction (680)
    assert policy.take_issuable(3400.0) == [lp]


def test_gaps_with_a_call_are_learnt_apart_from_short_gaps_after_the_same_kernel() -> None:
    # A request: kernel k, 150 us of host work, k again, then the result copy and a long
    # pause. The same kernel opens both gaps; a low percentile over both would predict the
    # short one and leave the long gap between requests almost empty.
    policy = FikitPolicy(max_lp_inflight_us=1000.0, gap_margin=1.0)
    policy.add_task(1, 9, 0.0)
    policy.add_task(2, 0, 0.0)
    seq = itertools.count()
    now = 0.0
    for _ in range(3):
        for host_us in (150.0, 0.0):
            launch = PendingLaunch(next(seq), 1, "k", 20.0)
            policy.arrive(launch, now)
            policy.take_issuable(now)
            now += 20.0
            policy.completed(launch, now)
            now += host_us
        policy.call_started(1, now)
        now += 50.0
        policy.call_finished(1, now)
        now += 2000.0
    assert policy.gap_samples(1) == {"k": (150.0,) * 3, "k+call": (2000.0,) * 2}
    lp = [PendingLaunch(next(seq), 2, "lp", 300.0) for _ in range(4)]
    for launch in lp:
        policy.arrive(launch, now - 2000.0)
    assert policy.take_issuable(now - 2000.0) == lp[:3]  # 1000 us of room, not 150


@pytest.mark.parametrize("policy", [FifoPolicy, PriorityPolicy, FikitPolicy])
def test_a_task_that_leaves_takes_nothing_from_a_task_that_looks_the_same(
    policy: Callable[..., Policy],
) -> None:
    pol = policy()
    for task_id in (1, 2, 3):
        pol.add_task(task_id, 0, 0.0)
    pol.remove_task(2, 0.0)  # tasks 1 and 3 are in the very same state as task 2 was
    launches = [PendingLaunch(seq, task_id, "k", 10.0) for seq, task_id in enumerate((1, 3))]
    for launch in launches:
        pol.arrive(launch, 1.0)
    assert pol.take_issuable(1.0) == launches


@pytest.mark.parametrize(
    ("make", "leased"),
    [(FifoPolicy, {1, 2, 3}), (PriorityPolicy, {1, 3}), (FikitPolicy, {1, 3})],
    ids=["fifo", "priority", "fikit"],
)
def test_a_lease_goes_to_the_tasks_no_policy_state_can_hold(
    make: Callable[[], Policy], leased: set[int]
) -> None:
    policy = make()
    for task_id, priority in ((1, 7), (2, 3), (3, 7)):
        policy.add_task(task_id, priority, 0.0)
    assert policy.leased() == leased
    policy.remove_task(1, 0.0)
    policy.remove_task(3, 0.0)
    assert policy.leased() == {2}


def test_a_launch_issued_under_a_lease_counts_in_flight_and_ends_its_task_gap() -> None:
    policy = FikitPolicy(max_lp_inflight_us=1000.0, quiet_after_us=10_000.0)
    policy.add_task(1, 9, 0.0)
    policy.add_task(2, 0, 0.0)
    first = PendingLaunch(0, 1, "k", 50.0)
    policy.issue_now(first, 0.0)
    policy.arrive(PendingLaunch(1, 2, "lp", 100.0), 10.0)
    assert policy.take_issuable(10.0) == []  # the leased task is busy: LP is held
    policy.completed(first, 60.0)
    policy.issue_now(PendingLaunch(2, 1, "k", 50.0), 460.0)  # a 400 us gap after "k"
    assert policy.gap_samples(1) == {"k": (400.0,)}
    assert policy.take_issuable(470.0) == []  # busy again


def test_under_fikit_a_task_is_not_quiet_within_pauses_it_has_come_back_from() -> None:
    policy = FikitPolicy(max_lp_inflight_us=100.0, quiet_after_us=2000.0)
    policy.add_task(1, 9, 0.0)
    policy.add_task(2, 0, 0.0)
    seq = itertools.count()
    now = learn_pauses(policy, seq, 4, 3000.0)  # requests 3 ms apart
    pause_start = now - 3000.0  # the fourth pause, three learnt before it
    for _ in range(10):
        policy.arrive(PendingLaunch(next(seq), 2, "lp", 50.0), pause_start + 2500.0)
    # 2.5 ms into the pause: past quiet_after_us, but the task came back later before.
    released = policy.take_issuable(pause_start + 2500.0)
    assert len(released) == 2  # only the fitted bound (100 us of LP), not all ten
    assert policy.next_event(pause_start + 2500.0) == pytest.approx(pause_start + 3750.0)
    assert len(policy.take_issuable(pause_start + 3760.0)) == 8  # quiet now: LP runs freely


def test_fikit_credits_a_lower_task_with_a_window_of_the_room_left_in_the_gap() -> None:
    policy = FikitPolicy(max_lp_inflight_us=300.0, quiet_after_us=1e6)
    for task_id, priority in ((1, 9), (2, 0), (3, 0)):
        policy.add_task(task_id, priority, 0.0)
    seq = itertools.count()
    now = learn_pauses(policy, seq, 2, 1000.0)  # gaps of 1000 us after "k"
    hp = PendingLaunch(next(seq), 1, "k", 10.0)
    policy.arrive(hp, now)
    policy.take_issuable(now)
    assert policy.credit(2, "lp", 50.0, now) == NO_CREDIT  # HP busy: no gap, no credit
    policy.completed(hp, now + 10.0)
    now += 20.0  # 10 us into a gap of 1000
    first = PendingLaunch(next(seq), 2, "lp", 50.0)
    policy.arrive(first, now)
    assert policy.take_issuable(now) == [first]
    credit = policy.credit(2, "lp", 50.0, now)  # 300 us in flight at most, its own included
    assert credit == Credit("lp", 6, 50.0, pytest.approx(now + 0.9 * 990.0))
    assert credit.allows("lp", 5, now) and not credit.allows("lp", 6, now)
    assert not credit.allows("lp", 1, credit.until - 60.0)  # it would end past the gap
    other = PendingLaunch(next(seq), 3, "lp", 50.0)
    policy.arrive(other, now)
    assert policy.take_issuable(now) == []  # the window holds the rest of the room
    policy.issue_now(PendingLaunch(next(seq), 2, "lp", 50.0), now)
    policy.completed(first, now + 50.0)
    assert policy.take_issuable(now + 50.0) == []  # still the window's, in flight or not
    # Late in the gap the window can put fewer launches in flight: the room frees.
    assert policy.take_issuable(now + 600.0) == [other]
    again = policy.credit(2, "lp", 50.0, now + 600.0)  # replaces the old window
    assert again.count == 5  # 300 us, less task 3's launch in flight
    policy.arrive(PendingLaunch(next(seq), 3, "lp", 50.0), now + 600.0)
    assert policy.take_issuable(now + 600.0) == []
    assert policy.take_issuable(now + 2000.0) == []  # past the predicted gap: nothing goes


def test_fikit_credits_a_task_no_higher_task_holds_back_until_one_is_busy() -> None:
    """A higher task that has not launched yet, or went quiet, holds nothing back: a lower
    task's launches go at arrival, and its credit saves it asking for each (a round trip
    per launch under ``--isolation process``), max_lp_inflight_us of them in flight, with no
    deadline. It ends once a higher task is busy (a launch, a call), which is then told
    once (``revoked``); a task at the same level or below ends nothing."""
    policy = FikitPolicy(max_lp_inflight_us=300.0, quiet_after_us=1000.0)
    for task_id, priority in ((1, 9), (2, 0), (3, 0)):
        policy.add_task(task_id, priority, 0.0)
    seq = itertools.count()
    first = PendingLaunch(next(seq), 2, "lp", 50.0)
    policy.arrive(first, 0.0)
    assert policy.take_issuable(0.0) == [first]  # task 1 never launched: free
    assert policy.credit(2, "lp", 50.0, 0.0) == Credit("lp", 6, 50.0, math.inf)
    assert policy.credit(2, "lp", 50.0, 0.0).allows("lp", 5, 1e12)  # no deadline
    assert policy.credit(2, "lp", 500.0, 0.0).count == 1  # longer than the window: ask
    policy.issue_now(PendingLaunch(next(seq), 3, "lp", 50.0), 1.0)  # the same level
    assert policy.revoked() == []
    now = learn_pauses(policy, seq, 1, 2000.0)  # task 1 launched, then went quiet
    assert policy.revoked() == [2]  # once, when task 1 launched
    assert policy.revoked() == []
    assert policy.credit(2, "lp", 50.0, now) == Credit("lp", 6, 50.0, math.inf)
    policy.call_started(1, now + 5.0)  # task 1 is back, with a copy first
    assert policy.revoked() == [2]
    policy.call_finished(1, now + 8.0)
    hp = PendingLaunch(next(seq), 1, "k", 10.0)
    policy.arrive(hp, now + 10.0)
    assert policy.take_issuable(now + 10.0) == [hp]
    assert policy.revoked() == []  # nothing left to end
    assert policy.credit(2, "lp", 50.0, now + 10.0) == NO_CREDIT  # task 1 busy


def test_a_credit_goes_when_its_task_asks_again_not_when_it_synchronizes() -> None:
    policy = FikitPolicy(max_lp_inflight_us=300.0, quiet_after_us=1e6)
    policy.add_task(1, 9, 0.0)
    policy.add_task(2, 0, 0.0)
    seq = itertools.count()
    now = learn_pauses(policy, seq, 3, 1000.0)  # gaps of 1000 us after "k"
    now -= 990.0  # 20 us into the third gap
    first = PendingLaunch(next(seq), 2, "lp", 50.0)
    policy.arrive(first, now)
    assert policy.take_issuable(now) == [first]
    assert policy.credit(2, "lp", 50.0, now).count == 6  # the whole room, reserved
    again = PendingLaunch(next(seq), 2, "other", 50.0)
    policy.arrive(again, now)  # asks for another kernel: the credit is no use to it
    assert policy.take_issuable(now) == [again]
    assert policy.credit(2, "other", 50.0, now).count == 6  # both in flight count in it
    policy.add_task(3, 0, now)
    third = PendingLaunch(next(seq), 3, "lp", 50.0)
    policy.arrive(third, now)
    assert policy.take_issuable(now) == []  # task 2's credit holds the room
    policy.call_started(2, now)  # task 2 synchronizes: its credit stays for its next launches
    policy.call_finished(2, now)
    assert policy.take_issuable(now) == []
    fourth = PendingLaunch(next(seq), 2, "lp", 50.0)
    policy.arrive(fourth, now)  # task 2 asks again: its credit goes
    assert policy.take_issuable(now) == [third, fourth]


def test_a_completion_dated_before_a_call_ended_opens_the_gap_at_the_call_end() -> None:
    """The tracker dates a completion it saw late at the launch's predicted end; a call
    that ran until later (a copy that waited for the kernel) still kept the task busy."""
    policy = FikitPolicy()
    policy.add_task(1, 9, 0.0)
    launch = PendingLaunch(0, 1, "k", 10.0)
    policy.arrive(launch, 0.0)
    assert policy.take_issuable(0.0) == [launch]
    policy.call_started(1, 5.0)
    policy.call_finished(1, 50.0)
    policy.completed(launch, 20.0)
    assert policy.describe(60.0)["tasks"][1]["idle_us"] == 10.0


def learn_stage_end(policy: FikitPolicy, requests: int) -> float:
    """Task 1 (priority 9) runs "a" then, while it runs, "z", then idles 500 us: "z" always
    opens a gap, "a" never does. Returns when the task went idle for the last time."""
    seq = itertools.count(1000)
    now = 0.0
    for _ in range(requests):
        first, last = PendingLaunch(next(seq), 1, "a", 20.0), PendingLaunch(next(seq), 1, "z", 20.0)
        policy.issue_now(first, now)
        policy.issue_now(last, now + 5.0)
        policy.completed(first, now + 20.0)
        policy.completed(last, now + 40.0)
        now += 540.0
    return now - 500.0


def test_with_arm_behind_lp_is_placed_behind_the_last_hp_launch_before_a_gap() -> None:
    policy = FikitPolicy(max_lp_inflight_us=1000.0, arm_behind=True)
    policy.add_task(1, 9, 0.0)
    policy.add_task(2, 0, 0.0)
    now = learn_stage_end(policy, OPENS_KEPT + 1) + 500.0
    first, last = PendingLaunch(1, 1, "a", 20.0), PendingLaunch(2, 1, "z", 20.0)
    lp = [PendingLaunch(seq, 2, "lp", 100.0) for seq in (3, 4, 5, 6)]
    lp.append(PendingLaunch(7, 2, "lp", 60.0))
    policy.issue_now(first, now)
    for launch in lp:
        policy.arrive(launch, now)
    assert policy.take_issuable(now) == []  # "a" is followed at once: no gap to fill yet
    policy.issue_now(last, now + 5.0)
    # "z" opens a 500 us gap (0.9 of it: 450 us of room): LP goes now, behind HP's "z".
    assert policy.take_issuable(now + 5.0) == lp[:4]
    assert [policy.behind(launch.seq) for launch in lp[:4]] == [1, 1, 1, 1]
    assert policy.behind(lp[0].seq) is None  # asked once
    assert policy.credit(2, "lp", 100.0, now + 5.0).count == 0  # credit could not follow "z"
    policy.completed(first, now + 20.0)
    policy.completed(last, now + 40.0)
    policy.completed(lp[0], now + 140.0)
    # In the gap now (400 us left, 360 with the margin, 300 in flight): nothing to follow.
    assert policy.take_issuable(now + 140.0) == [lp[4]]
    assert policy.behind(lp[4].seq) is None


def test_without_arm_behind_lp_waits_for_the_gap_to_begin() -> None:
    policy = FikitPolicy(max_lp_inflight_us=1000.0)
    policy.add_task(1, 9, 0.0)
    policy.add_task(2, 0, 0.0)
    now = learn_stage_end(policy, OPENS_KEPT + 1) + 500.0
    last, lp = PendingLaunch(1, 1, "z", 20.0), PendingLaunch(2, 2, "lp", 100.0)
    policy.issue_now(last, now)
    policy.arrive(lp, now)
    assert policy.take_issuable(now) == []
    policy.completed(last, now + 20.0)
    assert policy.take_issuable(now + 20.0) == [lp]
    assert policy.behind(lp.seq) is None


def test_a_kernel_that_opened_a_gap_too_few_times_is_not_armed_behind() -> None:
    policy = FikitPolicy(max_lp_inflight_us=1000.0, arm_behind=True)
    policy.add_task(1, 9, 0.0)
    policy.add_task(2, 0, 0.0)
    now = learn_stage_end(policy, OPENS_KEPT - 1) + 500.0
    last, lp = PendingLaunch(1, 1, "z", 20.0), PendingLaunch(2, 2, "lp", 100.0)
    policy.issue_now(last, now)
    policy.arrive(lp, now)
    assert policy.take_issuable(now) == []


def test_with_arm_behind_a_synchronizing_call_arms_with_the_pause_after_it() -> None:
    # Each request: kernel "k", then the result copy starts while it runs; 2 ms pause.
    policy = FikitPolicy(max_lp_inflight_us=1000.0, arm_behind=True)
    policy.add_task(1, 9, 0.0)
    policy.add_task(2, 0, 0.0)
    now = 0.0
    for seq in range(3):
        launch = PendingLaunch(seq, 1, "k", 50.0)
        policy.issue_now(launch, now)
        policy.call_started(1, now + 10.0)
        policy.completed(launch, now + 50.0)
        policy.call_finished(1, now + 80.0)
        now += 2080.0
    assert policy.gap_samples(1) == {"k+call": (2000.0, 2000.0)}
    hp, lp = PendingLaunch(10, 1, "k", 50.0), PendingLaunch(11, 2, "lp", 300.0)
    policy.issue_now(hp, now)
    policy.arrive(lp, now)
    assert policy.take_issuable(now) == []  # "k" alone does not say a pause comes
    policy.call_started(1, now + 10.0)
    assert policy.take_issuable(now + 10.0) == [lp]
    assert policy.behind(lp.seq) == 1


@pytest.mark.parametrize(
    ("flags", "in_one_process", "armed"),
    [([], True, False), (["--arm-behind"], True, True), (["--arm-behind"], False, False)],
)
def test_the_server_arms_behind_only_where_its_sessions_launch_in_one_process(
    flags: list[str], in_one_process: bool, armed: bool
) -> None:
    policy = make_policy(parse_args(["--policy", "fikit", *flags]), in_one_process)
    assert isinstance(policy, FikitPolicy) and policy.arm_behind is armed


@pytest.mark.parametrize("flag", ["--max-lp-inflight-us", "--min-gap-us", "--quiet-after-us"])
@pytest.mark.parametrize("wrong", ["-1", "nan", "inf", "soon"])
def test_the_server_refuses_scheduling_times_that_are_not_finite_and_non_negative(
    flag: str, wrong: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args([flag, wrong])
    assert flag in capsys.readouterr().err
