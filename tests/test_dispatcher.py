"""The dispatch point on its own: fake probes stand in for a backend."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest

from gpu_server.errors import CudaError
from scheduler import dispatcher as dispatcher_module
from scheduler.dispatcher import TURN_WAIT_S, Dispatcher, DispatcherClosed
from scheduler.policy import OPENS_KEPT, FifoPolicy, FikitPolicy, PriorityPolicy
from scheduler.profiles import ProfileStore
from tests.test_sessions import wait_until


class FakeProbe:
    """Finishes when the test says so; timed probes report the given times."""

    def __init__(self, stream: str, times: tuple[float, float] | None) -> None:
        self.stream_key = stream
        self.finished = threading.Event()
        self.times = times
        self.released = False

    def done(self) -> bool:
        return self.finished.is_set()

    def times_us(self) -> tuple[float, float] | None:
        return self.times

    def release(self) -> None:
        self.released = True


class FakeGpu:
    """Records issued launches in order and hands out their probes."""

    def __init__(self) -> None:
        self.issued: list[tuple[str, bool]] = []
        self.probes: list[FakeProbe] = []
        #: By launch name: the probe of the launch it was issued to follow, if any.
        self.after: dict[str, FakeProbe | None] = {}
        #: Launches issued from now on finish at once.
        self.instant = False

    def issuer(self, name: str, stream: str = "s", fail: bool = False):
        def issue(timed: bool, after: FakeProbe | None = None) -> FakeProbe:
            if fail:
                raise CudaError(1, "refused")
            self.issued.append((name, timed))
            self.after[name] = after
            probe = FakeProbe(stream, (10.0, 35.0) if timed else None)
            if self.instant:
                probe.finished.set()
            self.probes.append(probe)
            return probe

        return issue


def in_thread(fn, *args) -> threading.Thread:
    thread = threading.Thread(target=fn, args=args, daemon=True)
    thread.start()
    return thread


def test_an_issue_error_reaches_the_caller_and_frees_the_slot() -> None:
    dispatcher, gpu = Dispatcher(PriorityPolicy(quiet_after_us=0)), FakeGpu()
    dispatcher.add_task(1, 9)
    dispatcher.add_task(2, 0)
    with pytest.raises(CudaError):
        dispatcher.launch(1, "k", "bad", gpu.issuer("bad", fail=True))
    dispatcher.launch(2, "k", "lp", gpu.issuer("lp"))  # the failed launch holds nothing back
    assert gpu.issued == [("lp", False)]
    dispatcher.close()


def test_held_launches_are_issued_in_order_when_the_high_task_finishes() -> None:
    dispatcher, gpu = Dispatcher(PriorityPolicy(quiet_after_us=0)), FakeGpu()
    dispatcher.add_task(1, 9)
    dispatcher.add_task(2, 0)
    dispatcher.launch(1, "k", "hp", gpu.issuer("hp"))
    waiter = in_thread(
        lambda: [dispatcher.launch(2, "k", f"lp{i}", gpu.issuer(f"lp{i}")) for i in range(3)]
    )
    waiter.join(0.2)
    assert waiter.is_alive() and [name for name, _ in gpu.issued] == ["hp"]
    gpu.instant = True
    gpu.probes[0].finished.set()
    waiter.join(5)
    assert not waiter.is_alive()
    assert [name for name, _ in gpu.issued] == ["hp", "lp0", "lp1", "lp2"]
    assert wait_until(lambda: all(probe.released for probe in gpu.probes))
    dispatcher.close()


def test_an_idle_session_that_saw_its_work_done_issues_the_launches_that_frees() -> None:
    dispatcher, gpu = Dispatcher(PriorityPolicy(quiet_after_us=0)), FakeGpu()
    dispatcher.add_task(1, 9)
    dispatcher.add_task(2, 0)
    dispatcher.launch(1, "k", "hp", gpu.issuer("hp", stream="hp"))
    waiter = in_thread(dispatcher.launch, 2, "k", "lp", gpu.issuer("lp", stream="lp"))
    waiter.join(0.2)
    dispatcher.idle(1, False)  # not seen done: left to the tracker (its probe is not done)
    assert waiter.is_alive() and [name for name, _ in gpu.issued] == ["hp"]
    dispatcher.idle(1, True)  # its probe is never asked: the session saw its streams done
    assert [name for name, _ in gpu.issued] == ["hp", "lp"]  # issued by this thread
    assert gpu.probes[0].released
    waiter.join(5)
    assert not waiter.is_alive()
    dispatcher.close()


def test_a_launch_made_under_a_lease_is_tracked_and_sets_the_timing_of_the_next(
    tmp_path: Path,
) -> None:
    profiles = ProfileStore(tmp_path / "p.sqlite3", measure_count=1, sample_every=2)
    dispatcher, gpu = Dispatcher(PriorityPolicy(quiet_after_us=0), profiles), FakeGpu()
    dispatcher.add_task(1, 9)
    dispatcher.add_task(2, 0)
    assert dispatcher.leased_tasks() == {1}
    timed = FakeProbe("hp", (10.0, 35.0))
    assert dispatcher.launched(1, [("k", "hp")], timed, True) == {"k"}  # new: time the next
    waiter = in_thread(dispatcher.launch, 2, "k2", "lp", gpu.issuer("lp"))
    waiter.join(0.2)
    assert waiter.is_alive() and gpu.issued == []  # held behind the leased launch
    timed.finished.set()
    waiter.join(5)
    assert gpu.issued == [("lp", True)]
    assert wait_until(lambda: profiles.get("k") is not None)
    assert profiles.get("k").duration.count == 1  # the leased launch's time was recorded
    plans = [dispatcher.launched(1, [("k", "hp")], FakeProbe("hp", None), False) for _ in range(4)]
    assert plans == [set(), {"k"}, set(), {"k"}]  # measured: one launch in two
    assert dispatcher.launches == 6
    dispatcher.close()
    profiles.close()


def test_a_leased_run_goes_out_together_but_for_the_launches_to_measure(tmp_path: Path) -> None:
    profiles = ProfileStore(tmp_path / "p.sqlite3", measure_count=1, sample_every=3)
    profiles.record_duration("known", "k", 5.0)  # sharing stage: one launch in three timed
    dispatcher = Dispatcher(PriorityPolicy(quiet_after_us=0), profiles)
    dispatcher.add_task(1, 9)
    dispatcher.add_task(2, 0)
    runs: list[tuple[int, int, bool]] = []

    def issue(first: int, stop: int, timed: bool) -> FakeProbe:
        runs.append((first, stop, timed))
        return FakeProbe("s", (10.0, 35.0) if timed else None)

    kernels = [("known", "k")] * 3 + [("new", "n")] + [("known", "k")] * 2
    assert dispatcher.launch_run(1, kernels, issue)
    assert runs == [(0, 2, False), (2, 3, True), (3, 4, True), (4, 6, False)]
    assert (dispatcher.launches, dispatcher.timed_launches) == (6, 2)
    assert not dispatcher.launch_run(2, kernels, issue), "task 2 holds no lease"
    assert len(runs) == 4
    assert dispatcher.launch_run(1, [("known", "k")], lambda *_: None)  # nothing went out
    assert dispatcher.launches == 6
    # A run a worker issued under the lease and reported counts the same way, as one
    # record after the stream's last one, and a credit launch of task 2 as its own.
    in_flight = len(dispatcher._streams["s"])
    assert dispatcher.launched(1, kernels[:2], FakeProbe("s", None), False) == set()
    assert (dispatcher.launches, len(dispatcher._streams["s"])) == (8, in_flight)
    dispatcher.launched(2, kernels[:1], FakeProbe("s", None), False)
    assert (dispatcher.launches, len(dispatcher._streams["s"])) == (9, in_flight + 1)
    dispatcher.close()
    profiles.close()


def test_a_run_of_leased_launches_ends_with_its_newest_launch_and_its_gap_follows_it(
    tmp_path: Path,
) -> None:
    profiles = ProfileStore(tmp_path / "p.sqlite3", measure_count=1, sample_every=1000)
    for kernel in ("k1", "k2", "k3"):
        profiles.record_duration(kernel, kernel, 5.0)  # measured: launches go untimed
    dispatcher, gpu = Dispatcher(PriorityPolicy(quiet_after_us=0), profiles), FakeGpu()
    dispatcher.add_task(1, 9)
    dispatcher.add_task(2, 0)
    for kernel in ("k1", "k2", "k3"):
        dispatcher.launch(1, kernel, kernel, gpu.issuer(kernel, stream="hp"))
    waiter = in_thread(dispatcher.launch, 2, "lp", "lp", gpu.issuer("lp"))
    gpu.probes[0].finished.set()
    gpu.probes[1].finished.set()
    waiter.join(0.2)
    assert waiter.is_alive()  # the high task still has k3 in flight
    gpu.probes[2].finished.set()
    waiter.join(5)
    assert [name for name, _ in gpu.issued] == ["k1", "k2", "k3", "lp"]
    assert wait_until(lambda: all(probe.released for probe in gpu.probes[:3]))
    time.sleep(0.01)
    dispatcher.launch(1, "k1", "k1", gpu.issuer("k1", stream="hp"))
    assert dispatcher.launches == 5
    dispatcher.close()
    profiles.flush()
    assert profiles.get("k3").gap_after.count == 1  # the idle time after the run follows k3
    assert profiles.get("k1").gap_after.count == 0
    profiles.close()


def test_a_launch_seen_done_late_is_taken_as_finished_at_its_predicted_end(
    tmp_path: Path,
) -> None:
    """The idle gap after a kernel runs from its predicted end (within when it can have
    finished), not from the tracker's later poll: polls far apart keep gaps right."""
    profiles = ProfileStore(tmp_path / "p.sqlite3", measure_count=1, sample_every=1000)
    for _ in range(3):
        profiles.record_duration("k", "k", 100.0)  # predicted 100 us; launches go untimed
    now = [1000.0]
    dispatcher, gpu = Dispatcher(FifoPolicy(), profiles, clock=lambda: now[0]), FakeGpu()
    dispatcher.add_task(1, 9)
    dispatcher.launch(1, "k", "k", gpu.issuer("k"))  # issued at 1000, predicted to end at 1100
    now[0] = 5000.0  # the tracker sees it done only now
    gpu.probes[0].finished.set()
    assert wait_until(lambda: gpu.probes[0].released)
    now[0] = 6000.0
    dispatcher.launch(1, "k", "k", gpu.issuer("k"))
    dispatcher.close()
    assert profiles.get("k").gap_after.recent == (4900.0,)
    profiles.close()


def test_a_run_growing_as_the_tracker_looks_is_not_done_yet_but_frees_its_done_probes() -> None:
    dispatcher, gpu = Dispatcher(PriorityPolicy(quiet_after_us=0)), FakeGpu()
    dispatcher.add_task(1, 9)
    dispatcher.add_task(2, 0)
    first = FakeProbe("hp", None)
    grew = threading.Event()

    def done_as_the_run_grows() -> bool:
        if not grew.is_set():  # the task launches again between the look and the answer
            dispatcher.launch(1, "k", "second", gpu.issuer("second", stream="hp"))
            grew.set()
        return True

    first.done = done_as_the_run_grows
    dispatcher.launch(1, "k", "first", lambda timed: first)
    waiter = in_thread(dispatcher.launch, 2, "lp", "lp", gpu.issuer("lp"))
    assert grew.wait(5)
    waiter.join(0.2)
    assert waiter.is_alive()  # "second" is still in flight
    assert first.released and not gpu.probes[0].released  # a growing run holds no done probes
    gpu.probes[0].finished.set()
    waiter.join(5)
    assert [name for name, _ in gpu.issued] == ["second", "lp"]
    dispatcher.close()


def test_a_probe_is_not_asked_before_its_launch_should_finish_and_others_still_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatcher_module, "MAX_POLL_WAIT_S", 5.0)
    profiles = ProfileStore(tmp_path / "p.sqlite3", min_samples=1, measure_count=1)
    profiles.record_duration("long", "long", 10e6)  # predicted: 10 s
    dispatcher, gpu = Dispatcher(FifoPolicy(), profiles), FakeGpu()
    dispatcher.add_task(1, 0)
    asked = 0
    probe = FakeProbe("a", None)

    def done() -> bool:
        nonlocal asked
        asked += 1
        return False

    probe.done = done
    dispatcher.launch(1, "long", "long", lambda timed: probe)
    time.sleep(0.3)
    assert asked <= 2  # not polled every 20 us while it should still run
    gpu.instant = True
    dispatcher.launch(1, "short", "short", gpu.issuer("short", stream="b"))
    assert wait_until(lambda: gpu.probes[0].released, timeout=2.0)  # seen without waiting 5 s
    dispatcher.close()
    profiles.close()


def test_closing_fails_launches_still_held() -> None:
    dispatcher, gpu = Dispatcher(PriorityPolicy()), FakeGpu()
    dispatcher.add_task(1, 9)
    dispatcher.add_task(2, 0)
    dispatcher.launch(1, "k", "hp", gpu.issuer("hp"))
    errors: list[BaseException] = []

    def low() -> None:
        try:
            dispatcher.launch(2, "k", "lp", gpu.issuer("lp"))
        except DispatcherClosed as err:
            errors.append(err)

    waiter = in_thread(low)
    waiter.join(0.1)
    dispatcher.close()
    waiter.join(5)
    assert len(errors) == 1 and [name for name, _ in gpu.issued] == ["hp"]
    with pytest.raises(DispatcherClosed):
        dispatcher.launch(1, "k", "late", gpu.issuer("late"))


def test_a_launch_held_long_is_logged_once_with_the_policy_view(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(dispatcher_module, "HELD_WARNING_US", 50_000.0)
    dispatcher, gpu = Dispatcher(FikitPolicy()), FakeGpu()
    dispatcher.add_task(1, 9)
    dispatcher.add_task(2, 0)
    dispatcher.launch(1, "k", "hp", gpu.issuer("hp"))  # never finishes: task 1 stays busy
    waiter = in_thread(dispatcher.launch, 2, "k", "lp", gpu.issuer("lp"))
    assert wait_until(lambda: "held for" in caplog.text)
    time.sleep(0.1)
    warnings = [r.getMessage() for r in caplog.records if "held for" in r.getMessage()]
    assert len(warnings) == 1
    assert "task 2's launch of lp held" in warnings[0]
    assert "'in_flight': 1" in warnings[0] and "'held': 1" in warnings[0]
    assert "'room_us': None" in warnings[0]  # the top task is busy: nothing fits
    gpu.instant = True
    gpu.probes[0].finished.set()
    waiter.join(5)
    assert [name for name, _ in gpu.issued] == ["hp", "lp"]
    dispatcher.close()


def test_a_trace_line_per_completed_launch() -> None:
    trace = io.StringIO()
    dispatcher = Dispatcher(FifoPolicy(), trace=trace, clock=lambda: 5.0)
    gpu = FakeGpu()
    dispatcher.add_task(7, 3, "client-a")
    dispatcher.launch(7, "abc", "gemm", gpu.issuer("gemm"))
    gpu.probes[0].finished.set()
    assert wait_until(lambda: trace.getvalue().endswith("\n"))
    dispatcher.close()
    assert json.loads(trace.getvalue()) == {
        "task": 7,
        "priority": 3,
        "client": "client-a",
        "kernel": "gemm",
        "kernel_id": "abc",
        "predicted_us": None,  # no profiles: the policy fits it as never measured
        "arrived_us": 5.0,  # host times, on the dispatcher's clock
        "released_us": 5.0,
        "issued_us": 5.0,
        "start_us": 10.0,
        "end_us": 35.0,
        "seen_us": 5.0,
    }
    assert gpu.issued == [("gemm", True)]  # a trace times every launch


def test_a_leased_launch_arrives_when_it_came_not_when_the_lock_was_free() -> None:
    trace = io.StringIO()
    now = [5.0]
    dispatcher = Dispatcher(FifoPolicy(), trace=trace, clock=lambda: now[0])
    gpu = FakeGpu()
    dispatcher.add_task(7, 3)
    issue = gpu.issuer("gemm")

    def slow_issue(timed: bool) -> FakeProbe:
        now[0] = 400.0  # the issue, then the wait for the lock, took this long
        return issue(timed)

    dispatcher.launch(7, "abc", "gemm", slow_issue)
    gpu.probes[0].finished.set()
    assert wait_until(lambda: trace.getvalue().endswith("\n"))
    dispatcher.close()
    line = json.loads(trace.getvalue())
    assert (line["arrived_us"], line["issued_us"]) == (5.0, 5.0)


def test_a_reported_launch_arrives_at_the_time_its_worker_stamped() -> None:
    trace = io.StringIO()
    dispatcher = Dispatcher(FifoPolicy(), trace=trace, clock=lambda: 900.0)
    dispatcher.add_task(7, 3)
    probe = FakeProbe("s", (10.0, 35.0))
    dispatcher.launched(7, [("abc", "gemm")], probe, True, arrived_us=640.0)  # heard at 900
    probe.finished.set()
    assert wait_until(lambda: trace.getvalue().endswith("\n"))
    dispatcher.close()
    assert json.loads(trace.getvalue())["arrived_us"] == 640.0


def test_a_trace_line_says_when_a_held_launch_was_released_and_a_completion_seen() -> None:
    trace = io.StringIO()
    now = [1.0]
    dispatcher = Dispatcher(PriorityPolicy(quiet_after_us=0), trace=trace, clock=lambda: now[0])
    gpu = FakeGpu()
    dispatcher.add_task(1, 9)
    dispatcher.add_task(2, 0)
    dispatcher.launch(1, "k", "hp", gpu.issuer("hp"))
    now[0] = 2.0
    waiter = in_thread(dispatcher.launch, 2, "k", "lp", gpu.issuer("lp"))
    assert wait_until(lambda: dispatcher.policy.describe(2.0)["tasks"][2]["held"] == 1)
    now[0] = 50.0
    gpu.probes[0].finished.set()  # the tracker sees HP done at 50 and releases LP
    waiter.join(5)
    now[0] = 70.0
    gpu.probes[1].finished.set()
    assert wait_until(lambda: trace.getvalue().count("\n") == 2)
    dispatcher.close()
    lines = {line["kernel"]: line for line in map(json.loads, trace.getvalue().splitlines())}
    when = ("arrived_us", "released_us", "issued_us", "seen_us")
    assert [lines["hp"][key] for key in when] == [1.0, 1.0, 1.0, 50.0]
    assert [lines["lp"][key] for key in when] == [2.0, 50.0, 50.0, 70.0]


def test_a_trace_line_per_start_and_end_of_a_synchronizing_call() -> None:
    trace = io.StringIO()
    now = [1.0]
    dispatcher = Dispatcher(FifoPolicy(), trace=trace, clock=lambda: now[0])
    dispatcher.add_task(7, 3, "client-a")
    dispatcher.call_started(7)
    now[0] = 2.0
    dispatcher.call_finished(7)
    dispatcher.close()
    lines = [json.loads(line) for line in trace.getvalue().splitlines()]
    assert lines == [
        {"task": 7, "priority": 3, "call": "started", "at_us": 1.0},
        {"task": 7, "priority": 3, "call": "finished", "at_us": 2.0},
    ]


def test_stream_priorities_follow_task_priorities_under_priority_policies() -> None:
    fikit, fifo = Dispatcher(FikitPolicy()), Dispatcher(FifoPolicy())
    for dispatcher in (fikit, fifo):
        for task, priority in ((1, 9), (2, 0), (3, 5)):
            dispatcher.add_task(task, priority)
    least, greatest = 0, -5
    assert [fikit.stream_priority(t, 0, least, greatest) for t in (1, 2, 3)] == [-5, 0, -3]
    assert fifo.stream_priority(2, -4, least, greatest) == -4
    assert fifo.stream_priority(2, -9, least, greatest) == -5
    fikit.close()
    fifo.close()


def test_a_lower_task_waits_for_its_turn_while_a_higher_task_runs_a_frame() -> None:
    dispatcher = Dispatcher(FikitPolicy())
    dispatcher.add_task(1, 9)
    dispatcher.add_task(2, 0)
    order: list[str] = []

    def lower_call() -> None:
        dispatcher.wait_turn(0)
        order.append("lp call")

    with dispatcher.running(9):
        dispatcher.wait_turn(9)  # the task itself, and its peers, never wait
        with dispatcher.running(0):
            thread = in_thread(lower_call)
            thread.join(0.005)
            assert order == []
            order.append("hp frame done")
    thread.join(1)
    assert order == ["hp frame done", "lp call"]
    dispatcher.close()


def test_a_lower_task_waits_at_most_a_turn_for_a_higher_frame_that_does_not_end() -> None:
    dispatcher = Dispatcher(PriorityPolicy())
    dispatcher.add_task(1, 5)
    dispatcher.add_task(2, 1)
    with dispatcher.running(5):
        start = time.perf_counter()
        dispatcher.wait_turn(1)
        waited = time.perf_counter() - start
    assert TURN_WAIT_S <= waited < 1.0
    dispatcher.close()


def test_fifo_lets_every_session_run_its_calls_as_they_come() -> None:
    dispatcher = Dispatcher(FifoPolicy())
    dispatcher.add_task(1, 9)
    dispatcher.add_task(2, 0)
    with dispatcher.running(9):
        thread = in_thread(dispatcher.wait_turn, 0)
        thread.join(0.005)
        assert not thread.is_alive()
    dispatcher.close()


def test_the_tracker_polls_rarely_only_while_no_launch_can_be_held() -> None:
    fifo, fikit = Dispatcher(FifoPolicy()), Dispatcher(FikitPolicy())
    for dispatcher in (fifo, fikit):
        dispatcher.add_task(1, 9)
        assert dispatcher._idle_poll_s == dispatcher_module.UNCONTENDED_POLL_INTERVAL_S
        dispatcher.add_task(2, 0)
    assert fifo._idle_poll_s == dispatcher_module.UNCONTENDED_POLL_INTERVAL_S
    assert fikit._idle_poll_s == dispatcher_module.IDLE_POLL_INTERVAL_S  # task 2 can be held
    fikit.remove_task(1)
    assert fikit._idle_poll_s == dispatcher_module.UNCONTENDED_POLL_INTERVAL_S
    fifo.close()
    fikit.close()


def test_short_kernels_launched_while_the_tracker_looks_do_not_wake_it_each_time() -> None:
    """A lone session's launches of kernels done before the next one is issued: the
    tracker polls about once per UNCONTENDED_POLL_INTERVAL_S, not once per launch, even
    though each launch arrived before the tracker's previous wait began."""
    dispatcher = Dispatcher(FifoPolicy())
    dispatcher.add_task(1, 0)
    asked = 0

    def issue(timed: bool) -> FakeProbe:
        # The driver call, 100 us with the interpreter let go (the tracker may run
        # meanwhile); not one sleep, which a busy machine stretches to most of a ms.
        end = time.perf_counter() + 100e-6
        while time.perf_counter() < end:
            time.sleep(0)
        probe = FakeProbe("s", (1.0, 2.0) if timed else None)

        def done() -> bool:
            nonlocal asked
            asked += 1
            return True

        probe.done = done
        return probe

    launches = 300
    start = time.perf_counter()
    for _ in range(launches):
        dispatcher.launch(1, "k", "short", issue)
    elapsed_ms = (time.perf_counter() - start) * 1e3
    dispatcher.close()
    polls_per_ms = 1e-3 / dispatcher_module.UNCONTENDED_POLL_INTERVAL_S
    assert asked <= 2 * polls_per_ms * elapsed_ms + 10 < launches


def test_lp_launches_placed_behind_hp_go_out_with_hp_newest_probe_to_follow() -> None:
    """Under fikit with ``arm_behind``: once HP's kernel "z" has always been its last before
    a gap, an LP launch held while HP runs "z" is issued at once, to follow "z" on the GPU."""
    now = [0.0]
    policy = FikitPolicy(max_lp_inflight_us=1000.0, default_unknown_us=100.0, arm_behind=True)
    dispatcher, gpu = Dispatcher(policy, clock=lambda: now[0]), FakeGpu()
    dispatcher.add_task(1, 9)
    dispatcher.add_task(2, 0)

    def request() -> None:
        """HP's "a" then "z" (one run: issued while "a" runs), done 40 us later."""
        dispatcher.launch(1, "a", "a", gpu.issuer("a", stream="hp"))
        dispatcher.launch(1, "z", "z", gpu.issuer("z", stream="hp"))
        now[0] += 40.0
        gpu.probes[-1].finished.set()
        assert wait_until(lambda: policy.describe(now[0])["tasks"][1]["in_flight"] == 0)
        now[0] += 500.0

    for _ in range(OPENS_KEPT + 1):
        request()
    dispatcher.launch(1, "a", "a", gpu.issuer("a", stream="hp"))
    waiter = in_thread(dispatcher.launch, 2, "lp", "lp", gpu.issuer("lp", stream="lp"))
    assert wait_until(lambda: policy.describe(now[0])["tasks"][2]["held"] == 1)
    assert [name for name, _ in gpu.issued][-1] == "a"  # "a" opens no gap: LP waits
    dispatcher.launch(1, "z", "z", gpu.issuer("z", stream="hp"))
    waiter.join(5)
    assert not waiter.is_alive()
    assert [name for name, _ in gpu.issued][-2:] == ["z", "lp"]
    assert gpu.after["lp"] is gpu.probes[-2]  # "z"'s probe
    assert not gpu.probes[-2].released  # given back only once seen done
    dispatcher.close()
