"""What the scheduling benchmarks report (benchmarks/ is not a package)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from scheduler.policy import FikitPolicy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import forwarding
import gap_fill_ceiling
import scheduling


def kernel(priority: int, start: float, end: float) -> dict[str, object]:
    return {"priority": priority, "start_us": start, "end_us": end}


def test_gap_filling_counts_lp_time_inside_hp_gaps_only() -> None:
    trace = [
        kernel(9, 0, 10),
        kernel(9, 210, 220),  # one gap: 10..210
        kernel(9, 250, 260),  # 30 us apart: not a gap
        kernel(0, 50, 150),  # inside the gap: 100 us
        kernel(0, 200, 300),  # 10 us of it inside, 50 us after the one before
        kernel(0, 400, 500),  # after the last HP kernel: outside any gap
    ]
    share, delay, hole = scheduling.gap_filling(trace)
    assert share == pytest.approx(110 / 200)
    assert delay == pytest.approx(40)
    assert hole == pytest.approx(50)


def test_gap_filling_without_lp_work_reports_nothing() -> None:
    assert scheduling.gap_filling([kernel(9, 0, 10), kernel(9, 500, 510)]) is None


def test_lp_hole_causes_split_the_idle_time_between_lp_kernels_in_hp_pauses() -> None:
    def lp(start: float, end: float, arrived: float, issued: float) -> dict[str, object]:
        return {**kernel(0, start, end), "arrived_us": arrived, "issued_us": issued}

    trace = [
        kernel(9, 0, 10),
        lp(20, 120, 5, 15),
        lp(150, 250, 140, 145),  # arrived after the kernel before it ended: a late hole of 30
        lp(260, 360, 100, 255),  # arrived in time, held until after: a held hole of 10
        lp(360, 460, 200, 300),  # back to back
        kernel(9, 2010, 2020),
        lp(2100, 2200, 2030, 2040),  # in a gap of 80 us, not a pause
    ]
    share, late, held = scheduling.lp_hole_causes(trace)
    assert share == pytest.approx(40 / 2000)
    assert (late, held) == (pytest.approx(0.75), pytest.approx(0.25))
    assert scheduling.lp_hole_causes([kernel(9, 0, 10), kernel(0, 20, 30)]) is None  # no times


def test_lp_predictions_say_how_many_lp_launches_the_policy_had_not_measured() -> None:
    trace = [
        {**kernel(9, 0, 10), "predicted_us": 8.0},
        {**kernel(0, 20, 90), "predicted_us": None},
        {**kernel(0, 90, 160), "predicted_us": 70.0},
        {**kernel(0, 160, 230), "predicted_us": 72.0},
        {**kernel(0, 230, 300), "predicted_us": 74.0},
    ]
    unknown, predicted = scheduling.lp_predictions(trace)
    assert unknown == pytest.approx(0.25)
    assert predicted == pytest.approx(72.0)
    assert scheduling.lp_predictions([kernel(0, 0, 10)]) is None  # a trace from before


def test_the_gap_fill_ceiling_model_fills_less_the_later_completions_are_heard() -> None:
    def run(delay_us: float, copy_us: float | None = None) -> tuple[float, float, float]:
        policy = FikitPolicy(gap_fill_ceiling.MAX_LP_INFLIGHT_US)
        row = gap_fill_ceiling.Configuration("row", policy, delay_us, result_copy_us=copy_us)
        return gap_fill_ceiling.shared_run(row, 10)

    hp_at_once, lp_at_once, first_at_once = run(0.0)
    hp_late, lp_late, first_late = run(400.0)
    assert hp_at_once <= 1.05 and hp_late <= 1.05
    assert 0.5 < lp_late < lp_at_once <= 1.0
    # The first LP kernel of a pause waits for the report, not for HP's result copy.
    assert first_at_once == 0.0 and first_late == 400.0
    assert run(0.0, 30.0)[2] == 0.0


def test_the_report_reads_worker_launch_counts_and_held_launches_from_the_server_log() -> None:
    log = "\n".join(
        [
            "2026-11-30 16:35:48,924 worker 1133 gpu_server.worker INFO the session's "
            "launches: {'leased': 2420}",
            "2026-11-30 16:35:49,000 scheduler.dispatcher WARNING task 1's launch of jacobi "
            "held for 100 ms; policy: {}",
            "2026-11-30 16:35:49,029 worker 1086 gpu_server.worker INFO the session's "
            "launches: {'leased': 8441, 'asked': 2934, 'us waiting for a go': 781835}",
        ]
    )
    notes = scheduling.server_notes(log)
    assert notes == {
        "worker_launches": [
            {"leased": 2420},
            {"leased": 8441, "asked": 2934, "us waiting for a go": 781835},
        ],
        "held_warnings": 1,
    }
    assert scheduling.server_notes("") == {"worker_launches": [], "held_warnings": 0}


def test_lp_release_after_calls_times_each_pause_from_hp_call_end_to_lp_issue() -> None:
    def kernel(priority: int, arrived: float, issued: float) -> dict[str, float]:
        return {"priority": priority, "arrived_us": arrived, "issued_us": issued}

    def call(event: str, at: float) -> dict[str, object]:
        return {"priority": 9, "call": event, "at_us": at}

    trace = [
        kernel(9, 0.0, 0.0),  # request 1
        kernel(0, 50.0, 1300.0),  # LP held through it, issued 300 us into the pause
        kernel(9, 3000.0, 3000.0),  # request 2
        kernel(0, 3100.0, 5100.0),  # 100 us into the next pause
        kernel(9, 7000.0, 7000.0),  # request 3
        kernel(9, 7600.0, 7600.0),
    ]
    calls = [
        call("started", 900.0),
        call("finished", 1000.0),
        call("started", 4900.0),
        call("finished", 5000.0),
        call("started", 7510.0),
        call("finished", 7550.0),  # 50 us to the next launch: not a pause
    ]
    assert scheduling.lp_release_after_calls(trace, calls) == 200.0  # median of 300, 100
    assert scheduling.lp_release_after_calls(trace, []) is None


def test_hp_slowdown_splits_extra_kernel_time_by_whether_lp_ran_beside() -> None:
    def hp(kid: str, start: float, end: float) -> dict[str, object]:
        return {**kernel(9, start, end), "kernel_id": kid}

    alone = [hp("a", 0, 10), hp("a", 100, 110), hp("b", 200, 250)]
    shared = [
        hp("a", 1000, 1030),  # 20 us longer, LP beside it
        hp("b", 1100, 1160),  # 10 us longer, LP ended before it began
        hp("a", 2000, 2015),  # 5 us longer, an LP stretch starts inside it
        hp("b", 2100, 2150),  # as fast as alone
        hp("c", 3000, 3100),  # never ran alone: left out
        kernel(0, 990, 1020),
        kernel(0, 1010, 1090),  # with the one before, one stretch 990..1090
        kernel(0, 2010, 2040),
    ]
    # 4 kernels of known IDs in 2-kernel requests: 2 requests.
    assert scheduling.hp_slowdown(shared, alone, 2) == ((20 + 5) / 2, (10 + 0) / 2)
    assert scheduling.hp_slowdown(shared, [], 2) is None
    # Skewed durations alone (median 10, mean 20): the alone run against itself reads 0.
    skewed = [hp("a", 0, 10), hp("a", 100, 110), hp("a", 200, 240)]
    assert scheduling.hp_slowdown(skewed, skewed, 1) == (0.0, 0.0)


def test_hp_start_waits_split_by_whether_an_lp_kernel_ran_while_hp_could_have_started() -> None:
    def hp(issued: float, start: float, end: float) -> dict[str, object]:
        return {**kernel(9, start, end), "issued_us": issued}

    trace = [
        hp(0, 5, 50),  # 5 us from its issue, the GPU free
        hp(10, 50, 80),  # queued behind the one before: no wait
        hp(200, 260, 300),  # 60 us: an LP kernel ran from 150 to 255
        hp(280, 310, 320),  # 10 us after the HP kernel before, LP gone by then
        kernel(0, 150, 255),
        kernel(0, 400, 500),
    ]
    # 4 HP kernels in 2-kernel requests: 2 requests.
    assert scheduling.hp_start_waits(trace, 2) == (60 / 2, (5 + 10) / 2)
    assert scheduling.hp_start_waits([kernel(9, 0, 1)], 2) is None  # no issue times


def test_lp_turnaround_times_an_lp_call_end_to_its_next_launch() -> None:
    calls = [
        {"task": 1, "priority": 0, "call": "finished", "at_us": 100.0},
        {"task": 1, "priority": 0, "call": "finished", "at_us": 500.0},
        {"task": 2, "priority": 9, "call": "finished", "at_us": 100.0},  # HP's: not counted
    ]
    trace = [
        {"task": 1, "priority": 0, "arrived_us": 50.0},
        {"task": 1, "priority": 0, "arrived_us": 250.0},  # 150 after the first call
        {"task": 1, "priority": 0, "arrived_us": 260.0},
        {"task": 1, "priority": 0, "arrived_us": 550.0},  # 50 after the second
        {"task": 2, "priority": 9, "arrived_us": 110.0},
    ]
    assert scheduling.lp_turnaround(calls, trace) == 100.0
    assert scheduling.lp_turnaround([], trace) is None


def test_dispatch_latencies_time_release_issue_and_the_tracker_seeing_completions() -> None:
    def traced(priority: int, arrived: float, released: float, issued: float) -> dict:
        end = issued + 50.0
        return {
            **kernel(priority, issued + 5.0, end),
            "arrived_us": arrived,
            "released_us": released,
            "issued_us": issued,
            "seen_us": end + 20.0,
        }

    trace = [
        traced(9, 0.0, 0.0, 1.0),  # HP: never held
        traced(0, 10.0, 110.0, 112.0),  # held 100, issued 2 after
        traced(0, 20.0, 320.0, 326.0),  # held 300, issued 6 after
        traced(0, 400.0, 400.0, 401.0),  # released at arrival: not held
    ]
    assert scheduling.dispatch_latencies(trace) == (200.0, 4.0, 20.0)
    assert scheduling.dispatch_latencies([kernel(0, 0, 1)]) is None


def test_the_report_renders_a_table_targets_and_server_notes() -> None:
    hp = {"latencies_ms": [2.0, 2.2], "windows": [[0.0, 1.0], [1.0, 2.0]]}
    lp = {"progress": [[0.0, 0.0], [2.0, 1000.0]]}
    log = "worker 7 gpu_server.worker INFO the session's launches: {'asked': 3}"
    runs = {
        "hp-alone-fifo": scheduling.ModeRun(hp=hp),
        "hp-alone": scheduling.ModeRun(hp=hp),
        "lp-alone": scheduling.ModeRun(lp=lp, lp_window=(0.0, 2.0)),
        "fikit": scheduling.ModeRun(hp=hp, lp=lp, server_log=log),
    }
    report = scheduling.render(scheduling.summarize(runs, 0.5, {}), "cmd", [])
    assert "| fikit | 2.100 |" in report
    assert "- fikit: launches held 100 ms or more 0; a GPU worker's launches {'asked': 3}" in report
    assert "fikit LP >= 0.9x LP that fits: 2.000x PASS" in report


def test_tcp_copies_are_measured_against_grpc_streaming_the_same_way() -> None:
    native = {
        "launch_async_us": 5.0,
        "launch_sync_us": 9.0,
        "request_us": 280.0,
        "htod_64MiB_GBps": 10.0,
        "dtoh_64MiB_GBps": 14.0,
    }
    remote = {**native, "launch_async_us": 8.0, "htod_64MiB_GBps": 0.9, "dtoh_64MiB_GBps": 1.2}
    floors = {
        "unix_ping_pong_us": 20.0,
        "grpc_ping_pong_us": 200.0,
        "grpc_stream_GBps": 1.0,  # client to server: host-to-device copies, 0.9
        "grpc_stream_down_GBps": 2.0,  # server to client: device-to-host copies, 0.6
    }
    lines = forwarding.targets(native, remote, remote, floors)
    assert [line for line in lines if line.startswith("- TCP 64 MiB")] == [
        "- TCP 64 MiB copies / gRPC streaming the same way (>= 0.8): 0.600 FAIL"
    ]
