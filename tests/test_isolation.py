"""Fault containment: ``gpu-server --isolation shared|process`` run as a real server process.

The sim backend faults like a GPU: a kernel named ``fikit_sim_illegal_address`` loses every
context of the process it runs in, and later calls there fail with
CUDA_ERROR_ILLEGAL_ADDRESS, as after a real kernel's illegal write.
"""

from __future__ import annotations

import ast
import contextlib
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import msgpack
import pytest
from cuda.bindings.driver import CUresult

from client_stub.connection import Connection, ConnectionLost, connect
from fikit_wire import calls as wire
from fikit_wire import session_pb2
from fikit_wire.frames import FrameSocket
from gpu_server import control as control_module
from gpu_server.backends.sim import FAULT_KERNEL_PREFIX
from gpu_server.cli import parse_args, worker_settings
from gpu_server.control import ControlChannel
from gpu_server.dispatcher_link import DispatcherLink
from gpu_server.errors import CudaError
from gpu_server.workers import WorkerProcess
from scheduler.dispatcher import clock_us
from scheduler.policy import NO_CREDIT
from tests.test_sessions import REPO, hello, open_raw, wait_until

FAULT_PTX = f"""
.version 9.0
.target sm_90
.address_size 64

.visible .entry {FAULT_KERNEL_PREFIX}(
    .param .u64 .ptr .global .align 1 p
)
{{
    ret;
}}

.visible .entry fill()
{{
    ret;
}}
\0""".encode()

ILLEGAL_ADDRESS = int(CUresult.CUDA_ERROR_ILLEGAL_ADDRESS)


class ServerProcess:
    """``gpu-server --backend sim`` in a process of its own, on a unix socket and TCP."""

    def __init__(self, tmp_path: Path, *options: str, log: Path | None = None) -> None:
        """``log``: where the server's and its workers' log lines go (default: inherited)."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.addresses = (f"127.0.0.1:{port}", f"unix:{tmp_path / 'gpu.sock'}")
        python_path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        with contextlib.ExitStack() as files:
            stderr = None if log is None else files.enter_context(log.open("ab"))
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gpu_server",
                    "--backend",
                    "sim",
                    "--profile-db",
                    str(tmp_path / "profiles.sqlite3"),
                    *(arg for address in self.addresses for arg in ("--listen", address)),
                    *options,
                ],
                env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *python_path])},
                stderr=stderr,
            )  # the server holds its own copy of the log file
        assert wait_until(self._answers, timeout=60), "the server did not start"

    def _answers(self) -> bool:
        assert self.process.poll() is None, f"the server exited ({self.process.returncode})"
        try:
            connect(self.addresses[1], priority=0, client_name="probe").close()
        except ConnectionLost:
            return False
        return True

    def session(self, transport: int = 1, priority: int = 0) -> Session:
        return Session(connect(self.addresses[transport], priority=priority, client_name="t"))

    def workers(self) -> set[int]:
        """Process ids of the server's GPU workers."""
        found = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.process.pid:
                    found.add(int(entry.name))
        return found

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


class Session:
    """A session driven call by call, with a module holding the faulting kernel."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.ctx = self.value("cuDevicePrimaryCtxRetain", 0)

    def value(self, name: str, *args: object) -> object:
        status, *values = self.conn.request(name, *args)
        assert status == 0, (name, CUresult(status))
        return values[0] if values else None

    def stored(self, data: bytes) -> int:
        ptr = self.value("cuMemAlloc", self.ctx, len(data))
        self.value("cuMemcpyHtoD", self.ctx, ptr, 0, data, len(data), None)
        return ptr

    def read(self, ptr: int, size: int) -> bytes:
        return self.value("cuMemcpyDtoH", self.ctx, ptr, 0, size, size, None)

    def launch(self, kernel: str, params: bytes = b"") -> None:
        module = self.value("cuModuleLoadData", self.ctx, FAULT_PTX, {})
        function = self.value("cuModuleGetFunction", module, kernel)
        self.conn.post("cuLaunchKernel", self.ctx, function, [1, 1, 1], [1, 1, 1], 0, 0, params)

    def fault(self) -> int:
        """Launch the faulting kernel and synchronize: the CUresult the sync returns."""
        self.launch(FAULT_KERNEL_PREFIX, bytes(8))
        return self.conn.request("cuCtxSynchronize", self.ctx)[0]


@pytest.fixture
def shared_server(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path, "--isolation", "shared")
    yield server
    server.stop()


@pytest.fixture
def process_server(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path, "--isolation", "process")
    yield server
    server.stop()


def lost_reason(session: Session) -> str:
    with pytest.raises(ConnectionLost) as lost:
        session.conn.request("cuDeviceGetCount")
    return str(lost.value)


@pytest.mark.parametrize("transport", [0, 1], ids=["grpc", "unix"])
def test_a_fault_in_the_shared_worker_is_told_to_everyone_and_the_worker_replaced(
    shared_server: ServerProcess, transport: int
) -> None:
    bystander = shared_server.session(transport)
    bystander.stored(b"x" * 4096)
    culprit = shared_server.session(transport)
    (before,) = shared_server.workers()

    assert culprit.fault() == ILLEGAL_ADDRESS  # the real error, to the session that caused it
    faulted = time.monotonic()
    assert wait_until(lambda: before not in shared_server.workers())
    assert "another tenant's kernel faulted (CUDA_ERROR_ILLEGAL_ADDRESS)" in lost_reason(bystander)
    assert "this session's GPU state is lost" in lost_reason(culprit)

    fresh = shared_server.session(transport)  # a new worker, within the 2 s promised
    assert fresh.read(fresh.stored(b"new"), 3) == b"new"
    assert time.monotonic() - faulted < 2.0
    assert shared_server.workers() != {before}
    for session in (bystander, culprit, fresh):
        session.conn.close()


def test_a_killed_shared_worker_is_reported_and_replaced(shared_server: ServerProcess) -> None:
    session = shared_server.session()
    (worker,) = shared_server.workers()
    os.kill(worker, signal.SIGKILL)
    assert "the GPU worker process ended unexpectedly (signal 9)" in lost_reason(session)
    fresh = shared_server.session()
    assert fresh.read(fresh.stored(b"again"), 5) == b"again"
    session.conn.close()
    fresh.conn.close()


def test_long_replies_relayed_from_the_shared_worker_arrive_whole_and_in_order(
    shared_server: ServerProcess,
) -> None:
    session = shared_server.session(0)  # gRPC: the front end relays the worker's replies
    data = os.urandom(3 << 20)
    ptr = session.stored(data)
    sizes = [3 << 20, 7, (1 << 16) + 1, 1 << 20, 1]
    calls = [["cuMemcpyDtoH", True, session.ctx, ptr, 0, n, n, None] for n in sizes]
    replies = session.conn.request_many([*calls, ["cuDeviceGetCount", True]])
    assert [reply[0] for reply in replies] == [0] * (len(sizes) + 1)
    assert [reply[1] for reply in replies[:-1]] == [data[:n] for n in sizes]
    assert session.read(ptr, len(data)) == data
    session.conn.close()


def test_a_fault_under_process_isolation_reaches_only_its_session(
    process_server: ServerProcess,
) -> None:
    bystander = process_server.session()
    ptr = bystander.stored(b"kept" * 1024)
    culprit = process_server.session()

    assert culprit.fault() == ILLEGAL_ADDRESS
    assert "this session's GPU state is lost" in lost_reason(culprit)
    assert bystander.read(ptr, 4096) == b"kept" * 1024  # untouched, and still serving
    bystander.launch("fill")
    bystander.value("cuCtxSynchronize", bystander.ctx)
    bystander.conn.close()
    culprit.conn.close()


def test_each_session_gets_a_worker_that_ends_with_it(process_server: ServerProcess) -> None:
    assert wait_until(lambda: len(process_server.workers()) == 1)  # the spare
    sessions = [process_server.session() for _ in range(3)]
    assert wait_until(lambda: len(process_server.workers()) == 4)
    for session in sessions:
        session.conn.close()
    assert wait_until(lambda: len(process_server.workers()) == 1)


def test_the_server_stops_its_workers(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, "--isolation", "process")
    session = server.session()
    workers = server.workers()
    assert len(workers) == 2
    server.stop()
    assert lost_reason(session)
    assert wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers))


@pytest.mark.parametrize(
    ("policy", "held"), [("priority", True), ("fifo", False)], ids=["priority", "fifo"]
)
def test_the_scheduler_orders_launches_across_worker_processes(
    tmp_path: Path, policy: str, held: bool
) -> None:
    # A task stays active for a minute after its last launch: only its end frees the GPU.
    server = ServerProcess(
        tmp_path, "--isolation", "process", "--policy", policy, "--quiet-after-us", "6e7"
    )
    try:
        low = server.session(priority=0)
        low.launch("fill")  # alone, the low task holds a lease: its launch goes at once
        low.value("cuCtxSynchronize", low.ctx)
        high = server.session(priority=9)
        high.launch("fill")
        high.value("cuCtxSynchronize", high.ctx)
        time.sleep(0.5)  # the front end revokes the low task's lease (a message away)
        synced = threading.Event()

        def low_work() -> None:
            low.launch("fill")
            low.value("cuCtxSynchronize", low.ctx)
            synced.set()

        threading.Thread(target=low_work, daemon=True).start()
        assert synced.wait(1.0) is not held
        high.conn.close()  # the high-priority task ends: its worker's launches stop counting
        assert synced.wait(10)
        low.conn.close()
    finally:
        server.stop()


def test_a_lower_worker_beside_a_quiet_higher_task_launches_on_credit(tmp_path: Path) -> None:
    """A higher session that has not launched holds nothing back: the lower session's
    launches go at arrival, and once its kernel's duration is known (a few asked, measured)
    a credit lets the rest go without a round trip to the front end each. The higher
    session's first launch revokes that credit."""
    log = tmp_path / "server.log"
    server = ServerProcess(tmp_path, "--isolation", "process", "--policy", "fikit", log=log)
    try:
        low = server.session(priority=0)
        high = server.session(priority=9)
        time.sleep(0.5)  # the front end revokes the low task's lease (a message away)

        def launch(session: Session, count: int) -> None:
            module = session.value("cuModuleLoadData", session.ctx, FAULT_PTX, {})
            function = session.value("cuModuleGetFunction", module, "fill")
            for _ in range(count):
                session.conn.post(
                    "cuLaunchKernel", session.ctx, function, [1, 1, 1], [1, 1, 1], 0, 0, b""
                )
            session.value("cuCtxSynchronize", session.ctx)

        launch(low, 400)
        launch(high, 1)
        launch(low, 50)
        low.conn.close()

        def launches() -> dict[str, int] | None:
            for line in log.read_text(errors="replace").splitlines():
                if "the session's launches:" in line and "asked" in line:
                    return ast.literal_eval(line.split("the session's launches: ", 1)[1])
            return None

        assert wait_until(lambda: launches() is not None, timeout=10)
        counts = launches()
        assert counts is not None
        asked, on_credit = counts.get("asked", 0), counts.get("on credit", 0)
        assert asked + on_credit + counts.get("leased", 0) == 450
        assert on_credit >= 420, counts  # a credit with a deadline ran out every 500 us
        assert counts.get("credits revoked") == 1, counts
        high.conn.close()
    finally:
        server.stop()


@pytest.mark.parametrize("isolation", ["none", "shared", "process"])
def test_sigterm_ends_sessions_whose_launches_are_held(tmp_path: Path, isolation: str) -> None:
    server = ServerProcess(
        tmp_path,
        *("--isolation", isolation, "--policy", "priority"),
        *("--quiet-after-us", "6e7", "--grace", "0.5"),
    )
    high = server.session(priority=9)
    high.launch("fill")
    low = server.session(priority=0)
    low.launch("fill")  # held while the high-priority task is active: a minute
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 5
    assert lost_reason(low)
    assert not server.workers()


def test_a_malformed_grpc_frame_in_a_worker_ends_only_that_session_saying_why(
    shared_server: ServerProcess,
) -> None:
    other = shared_server.session(transport=0)
    batch = [["cuDeviceGetCount", True]]
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as ended:
        open_raw(
            shared_server.addresses[0],
            hello(),
            session_pb2.ClientFrame(calls=wire.pack(batch)),
            session_pb2.ClientFrame(calls=b"\xc1garbage"),
        )
    assert "malformed frame" in ended.value.details()
    assert time.monotonic() - started < 2
    assert other.value("cuDeviceGetCount") == 1
    other.conn.close()


def test_replies_to_calls_sent_before_a_half_close_all_arrive_from_a_worker(
    shared_server: ServerProcess,
) -> None:
    batch = [["cuDeviceGetCount", True], ["cuDeviceGet", True, 0]] * 50
    frames = open_raw(
        shared_server.addresses[0], hello(), session_pb2.ClientFrame(calls=wire.pack(batch))
    )
    replies = [reply for frame in frames[1:] for reply in wire.unpack(frame.replies)]
    assert replies == [[0, 1], [0, 0]] * 50


class RunningProbe:
    """A launch that never finishes, on stream 7."""

    stream_key = 7

    def done(self) -> bool:
        return False


class FakeControl:
    """The worker's end of a control socket, with the front end played by the test."""

    def __init__(self) -> None:
        self.sent: list[tuple[object, ...]] = []
        self.held: list[tuple[object, ...]] = []
        self.replies: queue.SimpleQueue[list[object] | None] = queue.SimpleQueue()
        self.replies_read = 0
        self.on_notice = lambda message: None

    def reply(self, *message: object) -> None:
        """The front end's reply, read off the socket."""
        self.replies_read += 1
        self.replies.put(list(message))

    def send(self, *message: object) -> None:
        self.hold(*message)
        self.flush()

    def hold(self, *message: object) -> None:
        self.held.append(message)

    def flush(self) -> None:
        self.sent += self.held
        self.held.clear()


class FinishingProbe(RunningProbe):
    """A launch that finishes when the test says so."""

    def __init__(self) -> None:
        self.finished = threading.Event()

    def done(self) -> bool:
        return self.finished.is_set()

    def times_us(self) -> None:
        return None

    def release(self) -> None:
        pass


def test_a_worker_launches_unasked_within_its_credit_window_then_asks_again() -> None:
    control = FakeControl()
    link = DispatcherLink(control)  # type: ignore[arg-type]
    first, probe = FinishingProbe(), RunningProbe()

    def asked() -> list[object]:
        return [m[0] for m in control.sent if m[0] in ("launch", "leased")]

    def launch(kernel: str, made: RunningProbe) -> None:
        with link.running(0):  # a frame of one launch: its report leaves as the frame ends
            link.launch(1, kernel, kernel, lambda timed: made)

    # A go with a window of two launches in flight, 10 us each, for a minute.
    control.replies.put(["issue", False, 2, 10.0, clock_us() + 60e6])
    launch("k", first)
    launch("k", probe)
    assert asked() == ["launch", "leased"]
    third = threading.Thread(target=launch, args=("k", probe))
    third.start()
    third.join(0.2)
    assert third.is_alive() and asked() == ["launch", "leased"]  # the window is full: waits
    first.finished.set()
    third.join(5)
    assert asked() == ["launch", "leased", "leased"]  # a completion made room: no asking
    control.replies.put(["issue", False, 0, 0.0, 0.0])
    launch("other", probe)  # another kernel: ask
    control.on_notice(["lease", True])
    launch("other", probe)
    assert asked()[3:] == ["launch", "leased"]
    control.on_notice(["lease", False])
    control.replies.put(["issue", False, 50, 10.0, clock_us() - 1.0])  # a void credit
    control.replies.put(["issue", False, 50, 1e6, clock_us() + 30e6])  # 1 s launches, 30 s
    for _ in range(3):
        launch("k", probe)
    # The void credit lets nothing go; after the second go, 6 launches are in flight: a
    # seventh is predicted to end 7 s from now, within the 30 s, so it goes unasked.
    assert asked()[5:] == ["launch", "launch", "leased"]
    link.call_started(1)  # a synchronizing call keeps the window: the job's next
    link.call_finished(1)  # iteration launches unasked
    launch("k", probe)
    assert asked()[8:] == ["leased"]
    control.replies.put(["issue", False, 50, 1e6, clock_us() + 2e6])
    control.replies.put(["issue", False, 0, 0.0, 0.0])
    launch("other", probe)
    launch("other", probe)  # 9 in flight: a tenth could not end within 2 s
    assert asked()[9:] == ["launch", "launch"]
    stats = link.stats
    assert stats["asked"] == 6 and stats["on credit"] == 4 and stats["leased"] == 1
    assert stats["waits for room"] == 1
    link.close()


def test_a_worker_launches_on_a_credit_without_deadline_until_the_front_end_revokes_it() -> None:
    """A credit given while no higher task was active has no deadline: the window's count
    bounds what is in flight, and a launch waits for room in it until the front end says
    a higher task is back; from then on the session asks. A revocation read before the
    session took its go voids the go's credit too."""
    control = FakeControl()
    link = DispatcherLink(control)  # type: ignore[arg-type]
    probe = RunningProbe()

    def asked() -> list[object]:
        return [m[0] for m in control.sent if m[0] in ("launch", "leased")]

    def launch() -> None:
        with link.running(0):
            link.launch(1, "k", "k", lambda timed: probe)

    control.reply("issue", False, 3, 10.0, math.inf)
    for _ in range(3):
        launch()
    assert asked() == ["launch", "leased", "leased"]
    fourth = threading.Thread(target=launch)
    fourth.start()
    fourth.join(0.2)
    assert fourth.is_alive()  # 3 in flight, none finishing: it waits for room
    control.reply("issue", False, 0, 0.0, 0.0)
    control.on_notice(["revoke"])  # a higher task is busy: stop waiting, ask
    fourth.join(5)
    assert not fourth.is_alive() and asked()[3:] == ["launch"]
    control.reply("issue", False, 50, 10.0, math.inf)
    control.on_notice(["revoke"])  # read after that go, before the session took it
    control.reply("issue", False, 0, 0.0, 0.0)
    launch()
    launch()
    assert asked()[4:] == ["launch", "launch"]
    assert link.stats["credits revoked"] == 2 and link.stats["on credit"] == 2
    link.close()


def test_a_leased_worker_issues_a_run_together_but_for_the_launches_to_time() -> None:
    control = FakeControl()
    link = DispatcherLink(control)  # type: ignore[arg-type]
    runs: list[tuple[int, int, bool]] = []

    def issue(first: int, stop: int, timed: bool) -> FinishingProbe:
        runs.append((first, stop, timed))
        return FinishingProbe()

    kernels = [("a", "fa"), ("a", "fa"), ("b", "fb"), ("a", "fa"), ("b", "fb")]
    assert not link.launch_run(1, kernels, issue) and runs == []  # no lease: one at a time
    control.on_notice(["lease", True])
    assert link.launch_run(1, kernels, issue)
    # The first launch of each kernel ID goes alone, timed; those between go together.
    assert runs == [(0, 1, True), (1, 2, False), (2, 3, True), (3, 5, False)]
    reports = [m for m in control.sent + control.held if m[0] == "leased"]
    assert [m[2] for m in reports] == [kernels[0:1], kernels[1:2], kernels[2:3], kernels[3:5]]
    control.on_notice(["time", "b"])  # the front end wants the next launch of b timed
    runs.clear()
    assert link.launch_run(1, kernels, issue)
    assert runs == [(0, 2, False), (2, 3, True), (3, 5, False)]
    assert link.stats["leased"] == 10
    link.close()


def test_a_leased_launch_is_reported_with_the_time_it_came_before_its_issue() -> None:
    control = FakeControl()
    link = DispatcherLink(control)  # type: ignore[arg-type]
    control.on_notice(["lease", True])
    issued_at = []

    def issue(timed: bool) -> FinishingProbe:
        issued_at.append(clock_us())
        return FinishingProbe()

    link.launch(1, "k", "k", issue)
    (report,) = control.sent  # the task was idle: the report leaves at once
    assert report[0] == "leased" and report[-1] <= issued_at[0]
    link.close()


def test_a_worker_reports_a_burst_of_launches_and_their_completions_together() -> None:
    class BurstProbe(FinishingProbe):
        queries = 0
        finished = threading.Event()

        def __init__(self) -> None:
            pass

        def done(self) -> bool:
            BurstProbe.queries += 1
            return self.finished.is_set()

    control = FakeControl()
    link = DispatcherLink(control)  # type: ignore[arg-type]
    control.on_notice(["lease", True])
    for _ in range(1000):
        link.launch(1, "k", "k", lambda timed: BurstProbe())
    # The first ends an idle gap and leaves at once; the rest wait for the frame's end.
    assert [m[0] for m in control.sent] == ["leased"] and len(control.held) == 999
    BurstProbe.queries = 0
    BurstProbe.finished.set()  # the stream ran them all
    assert wait_until(lambda: sum(len(m) // 3 for m in control.sent if m[0] == "done") == 1000)
    assert BurstProbe.queries <= 3
    kinds = [m[0] for m in control.sent]
    assert kinds.index("done") == 1000  # every launch was reported before one was done
    assert kinds.count("done") <= 3  # the completions together, not one by one
    link.close()


def test_a_worker_reports_completions_at_a_calls_end_and_when_its_session_is_idle() -> None:
    """While the session runs its frames the tracker leaves its thread alone: a
    synchronization reports what it waited for as it ends, in the write of its end; the
    tracker follows launches left in flight once the session waits for its client, and
    a session that saw its work done reports it itself."""
    control = FakeControl()
    link = DispatcherLink(control)  # type: ignore[arg-type]
    control.on_notice(["lease", True])
    kinds = lambda: [m[0] for m in control.sent]  # noqa: E731
    synced, left, seen = FinishingProbe(), FinishingProbe(), FinishingProbe()
    with link.running(0):  # a launch, then a synchronization, as one client's frames
        link.launch(1, "k", "k", lambda timed: synced)
        link.call_started(1)
        synced.finished.set()
        link.call_finished(1)
    assert kinds() == ["leased", "started", "done", "finished"]
    assert control.sent[2][1] == control.sent[0][3]  # the probe it was reported with
    with link.running(0):
        link.launch(1, "k", "k", lambda timed: left)
    left.finished.set()
    time.sleep(0.05)
    assert kinds()[4:] == ["leased"]  # not looked for during the frame, nor after it
    link.idle(1, work_done=False)  # the client is quiet: the tracker takes over
    assert wait_until(lambda: kinds()[4:] == ["leased", "done"])
    with link.running(0):
        link.launch(1, "k", "k", lambda timed: seen)
    seen.finished.set()
    link.idle(1, work_done=True)  # the session's thread saw the work done: reported now
    assert kinds()[6:] == ["leased", "done"]
    link.close()


def test_a_worker_reports_completions_while_its_session_waits_for_a_go() -> None:
    """A lower task's launch waits for the front end's go inside a frame; its launches
    before it are reported done meanwhile, or the policy would count them in flight."""
    control = FakeControl()
    link = DispatcherLink(control)  # type: ignore[arg-type]
    first, second = FinishingProbe(), FinishingProbe()
    control.replies.put(["issue", False, 0, 0.0, 0.0])
    with link.running(0):
        link.launch(1, "k", "k", lambda timed: first)
        first.finished.set()
        waiting = threading.Thread(target=link.launch, args=(1, "k", "k", lambda t: second))
        waiting.start()
        assert wait_until(lambda: [m[0] for m in control.sent][-2:] == ["launch", "done"])
        control.replies.put(["issue", False, 0, 0.0, 0.0])
        waiting.join(5)
    link.close()


def test_held_control_messages_leave_in_order_when_sent_after_or_too_many_or_too_old(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours, theirs = socket.socketpair()
    channel, peer = ControlChannel(ours), FrameSocket(theirs)
    theirs.settimeout(5)

    def received(count: int) -> list[object]:
        messages: list[object] = []
        while len(messages) < count:
            messages += [msgpack.unpackb(frame) for frame in peer.receive()]
        return messages

    with ours, theirs:
        channel.hold("leased", 1)
        channel.send("started", 1)
        assert received(2) == [["leased", 1], ["started", 1]]
        monkeypatch.setattr(control_module, "HOLD_LIMIT_S", 60.0)
        for i in range(control_module.HOLD_LIMIT_MESSAGES):
            channel.hold("leased", i)
        assert len(received(control_module.HOLD_LIMIT_MESSAGES)) == 64  # none held back
        monkeypatch.setattr(control_module, "HOLD_LIMIT_S", 0.0)
        channel.hold("leased", "old")  # waited the limit already: leaves with itself
        assert received(1) == [["leased", "old"]]


def test_a_launch_reported_done_before_its_issuer_woke_counts_as_done() -> None:
    """The front end reads a worker's ``issued`` and then its ``done`` for a short kernel
    before the thread that asked for the launch wakes: the probe it gets is finished (a
    probe that missed its ``done`` would count in flight for good and starve the task)."""
    worker = WorkerProcess.__new__(WorkerProcess)  # the control protocol, without a process
    worker.process = SimpleNamespace(pid=1)
    worker.dispatcher = SimpleNamespace(credit=lambda task_id, kernel_id: NO_CREDIT)
    worker._control = SimpleNamespace(send=lambda *message: None)
    worker._probes = {}
    worker._grant_lock = threading.Lock()
    worker._issued = queue.SimpleQueue()
    worker._on_issued(7, 3, 0)
    worker._on_done(7, 1.0, 2.0)
    probe = worker._issue(1, "k", True)
    assert probe.done() and probe.times_us() == (1.0, 2.0) and probe.stream_key == (1, 3)
    assert worker._probes == {}
    worker._on_issued(0, 0, int(CUresult.CUDA_ERROR_LAUNCH_FAILED))
    with pytest.raises(CudaError) as failed:
        worker._issue(1, "k", False)
    assert failed.value.code == CUresult.CUDA_ERROR_LAUNCH_FAILED


def test_workers_poll_for_frames_as_long_as_the_command_line_says(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert worker_settings(parse_args(["--receive-spin-us", "250"])).receive_spin_s == 250e-6
    assert worker_settings(parse_args(["--receive-spin-us", "0"])).receive_spin_s == 0.0
    for wrong in ("-1", "nan", "inf", "soon"):
        with pytest.raises(SystemExit):
            parse_args(["--receive-spin-us", wrong])
        assert "--receive-spin-us" in capsys.readouterr().err
