"""The scheduler wired into the server: policies, kernel IDs, profiles and stream semantics.

Two sessions in one test are two ``Connection``s speaking the wire protocol directly. The
sim backend's clock is virtual: a kernel "runs" until the server's completion tracker has
polled past its modelled end, so a long kernel stays in flight while the test acts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cuda.bindings.driver import CUresult

from client_stub.connection import ConnectionLost, connect
from scheduler.policy import FifoPolicy, FikitPolicy, Policy, PriorityPolicy
from scheduler.profiles import ProfileStore
from tests.conftest import ServerThread
from tests.ptx_samples import SAXPY_PTX
from tests.test_sessions import wait_until

SAXPY_PARAMS = bytes(36)
NON_BLOCKING = 1


class Task:
    """One session with a loaded saxpy kernel, driven call by call."""

    def __init__(self, server: ServerThread, priority: int, name: str) -> None:
        self.conn = connect(server.address, priority=priority, client_name=name)
        self.ctx = self.value("cuDevicePrimaryCtxRetain", 0)
        module = self.value("cuModuleLoadData", self.ctx, SAXPY_PTX, {})
        self.saxpy = self.value("cuModuleGetFunction", module, "saxpy")

    def value(self, name: str, *args: object) -> object:
        status, *values = self.conn.request(name, *args)
        assert status == 0, (name, CUresult(status))
        return values[0] if values else None

    def launch(self, stream: int = 0, grid: int = 1) -> None:
        self.conn.post(
            "cuLaunchKernel",
            self.ctx,
            self.saxpy,
            [grid, 1, 1],
            [32, 1, 1],
            0,
            stream,
            SAXPY_PARAMS,
        )

    def sync(self) -> None:
        self.value("cuCtxSynchronize", self.ctx)

    def close(self) -> None:
        self.conn.close()


def make_server(policy: Policy, profiles: ProfileStore | None = None) -> ServerThread:
    # One poll of an unfinished kernel moves the virtual clock 1 ms.
    return ServerThread(policy, profiles, poll_step_ns=1_000_000)


@pytest.fixture
def server_for(tmp_path: Path) -> Iterator:
    started: list[ServerThread] = []

    def start(policy: Policy, profiles: ProfileStore | None = None) -> ServerThread:
        started.append(make_server(policy, profiles))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def launches_of(server: ServerThread, count: int) -> list:
    assert len(server.backend.launches) == count
    return server.backend.launches


@pytest.mark.parametrize("policy", [PriorityPolicy(quiet_after_us=500), FikitPolicy()])
def test_low_priority_launch_waits_for_the_active_high_priority_task(server_for, policy) -> None:
    server = server_for(policy)
    server.backend.set_kernel_duration("saxpy", 40_000)
    hp, lp = Task(server, 9, "hp"), Task(server, 0, "lp")
    hp.launch()
    hp.value("cuDeviceGetCount")  # the launch has reached the GPU
    lp.launch()
    lp.sync()  # waits for its held launch: issued, then finished; never a deadlock
    first, second = launches_of(server, 2)
    assert first.end_ns <= second.start_ns
    hp.sync()
    hp.close()
    lp.close()


def test_fifo_runs_low_priority_work_beside_high_priority_work(server_for) -> None:
    server = server_for(FifoPolicy())
    server.backend.set_kernel_duration("saxpy", 40_000)
    hp, lp = Task(server, 9, "hp"), Task(server, 0, "lp")
    hp.launch()
    hp.value("cuDeviceGetCount")
    lp.launch()
    lp.sync()
    first, second = launches_of(server, 2)
    assert second.start_ns < first.end_ns
    hp.close()
    lp.close()


def test_a_quiet_high_priority_task_stops_holding_low_priority_work(server_for) -> None:
    server = server_for(PriorityPolicy(quiet_after_us=2_000))
    hp, lp = Task(server, 9, "hp"), Task(server, 0, "lp")
    hp.launch()
    hp.sync()
    for _ in range(3):
        lp.launch()
    lp.sync()  # released once the high-priority task has been idle for 2 ms
    assert len(server.backend.launches) == 4
    hp.close()
    lp.close()


def test_high_priority_streams_get_the_greatest_cuda_priority(server_for) -> None:
    server = server_for(FikitPolicy())
    hp, lp = Task(server, 9, "hp"), Task(server, 0, "lp")
    for task in (hp, lp):
        stream = task.value("cuStreamCreate", task.ctx, 0, 0)
        assert task.value("cuStreamGetPriority", task.ctx, stream) == 0  # as the client asked
        task.launch(stream)
        task.launch(0)
        task.sync()
    hp_stream, hp_null, lp_stream, lp_null = (launch.stream for launch in server.backend.launches)
    least, greatest = server.backend.stream_priority_range(server.backend.primary_context(0))
    assert hp_stream.priority == hp_null.priority == greatest
    assert lp_stream.priority == lp_null.priority == least
    hp.close()
    lp.close()


def test_fifo_keeps_the_priorities_clients_ask_for(server_for) -> None:
    server = server_for(FifoPolicy())
    task = Task(server, 9, "hp")
    stream = task.value("cuStreamCreate", task.ctx, 0, -3)
    assert task.value("cuStreamGetPriority", task.ctx, stream) == -3
    task.launch(stream)
    task.sync()
    assert server.backend.launches[0].stream.priority == -3
    task.close()


def test_two_clients_of_one_module_share_kernel_ids_and_profiles(
    server_for, tmp_path: Path
) -> None:
    with ProfileStore(tmp_path / "profiles.sqlite3", measure_count=4) as profiles:
        server = server_for(FifoPolicy(), profiles)
        server.backend.set_kernel_duration("saxpy", 30)
        for name in ("a", "b"):
            task = Task(server, 5, name)
            for grid in (2, 2, 2, 4):
                task.launch(grid=grid)
                task.sync()
                time.sleep(0.02)  # idle host time: a gap after each kernel
            task.close()

        def counts() -> list[tuple[str, int, int]]:
            return sorted(
                (p.name, p.duration.count, p.gap_after.count) for p in profiles.all_profiles()
            )

        # Per client: 3 launches of grid 2, each followed by a gap, and 1 of grid 4. Only 4
        # of the 6 launches of grid 2 are timed: the measurement stage ends at 4 samples.
        assert wait_until(lambda: counts() == [("saxpy", 2, 0), ("saxpy", 4, 6)]), counts()
        measured = max(profiles.all_profiles(), key=lambda p: p.duration.count)
        assert measured.duration.p50 == pytest.approx(30)
        assert measured.gap_after.p50 >= 20_000


def test_a_session_never_waits_for_another_sessions_work(server_for) -> None:
    server = server_for(FifoPolicy())
    server.backend.set_kernel_duration("saxpy", 1e9)
    busy, other = Task(server, 5, "busy"), Task(server, 5, "other")
    busy.launch()
    busy.value("cuDeviceGetCount")
    other.sync()
    other.value("cuStreamSynchronize", other.ctx, 0)
    assert server.backend.now < server.backend.launches[0].end_ns
    busy.close()
    other.close()


def test_the_null_stream_keeps_legacy_order_within_a_session(server_for) -> None:
    server = server_for(FifoPolicy())
    server.backend.set_kernel_duration("saxpy", 10_000)
    task = Task(server, 5, "app")
    blocking = task.value("cuStreamCreate", task.ctx, 0, 0)
    free = task.value("cuStreamCreate", task.ctx, NON_BLOCKING, 0)
    task.launch(blocking)
    task.launch(0)  # waits for the blocking stream
    task.launch(blocking)  # waits for the NULL stream
    task.launch(free)  # waits for nothing
    task.sync()
    first, null, after, free_launch = launches_of(server, 4)
    assert null.start_ns >= first.end_ns
    assert after.start_ns >= null.end_ns
    assert free_launch.start_ns < first.end_ns
    task.close()


def test_a_priority_outside_the_ten_levels_is_refused(server_for) -> None:
    server = server_for(FifoPolicy())
    with pytest.raises(ConnectionLost, match=r"priority 12 is outside 0\.\.9"):
        connect(server.address, priority=12, client_name="bad")
