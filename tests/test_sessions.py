"""Sessions as users meet them: activation, the protocol, concurrency, and cleanup."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import grpc
import msgpack
import pytest
from cuda.bindings.driver import CUresult
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client_stub import driver as impl
from client_stub.connection import ConnectionLost, connect
from fikit_wire import calls as wire
from fikit_wire import session_pb2, session_pb2_grpc
from fikit_wire.frames import FrameSocket, header
from gpu_server.ports import LocalPort, Pollers, serve_frames
from gpu_server.session import Session, handle_counter
from tests.conftest import ServerThread

REPO = Path(__file__).resolve().parents[1]

CLIENT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from cuda.bindings import driver
    import cuda.bindings.driver as same

    def ok(result):
        assert result[0] == driver.CUresult.CUDA_SUCCESS, result
        return result[1] if len(result) == 2 else result[1:]

    assert getattr(driver, "__fikit_stub__", False) and same is driver
    ok(driver.cuInit(0))
    ctx = ok(driver.cuDevicePrimaryCtxRetain(0))
    ok(driver.cuCtxSetCurrent(ctx))
    seed = int(sys.argv[1])
    data = np.random.default_rng(seed).integers(0, 2**32, 1 << 18, dtype=np.uint32)
    ptrs = [ok(driver.cuMemAlloc(data.nbytes)) for _ in range(4)]
    for p in ptrs:
        ok(driver.cuMemcpyHtoD(p, data, data.nbytes))
    back = np.zeros_like(data)
    ok(driver.cuMemcpyDtoH(back, ptrs[-1], data.nbytes))
    assert np.array_equal(back, data)
    print("ready", flush=True)
    if sys.argv[2] == "hang":
        sys.stdin.read()
    print("done", seed)
    """
)


def run_client(address: str, *args: str, **popen: object) -> subprocess.Popen:
    env = {**os.environ, "FIKIT_SERVER": address, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def memory_in_use(server) -> int:
    free, total = server.backend.mem_get_info(server.backend.primary_context(0))
    return total - free


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


TRANSPORTS = pytest.mark.parametrize("transport", [0, 1], ids=["grpc", "unix"])


@TRANSPORTS
def test_concurrent_clients_get_their_own_correct_results(sim_server, transport: int) -> None:
    address = sim_server.running.addresses[transport]
    clients = [run_client(address, str(seed), "exit") for seed in range(6)]
    for seed, client in enumerate(clients):
        out, err = client.communicate(timeout=120)
        assert client.returncode == 0, err
        assert out.split() == ["ready", "done", str(seed)]


@TRANSPORTS
def test_killed_client_has_everything_freed(sim_server, transport: int) -> None:
    assert wait_until(lambda: not sim_server.active_sessions())
    in_use = memory_in_use(sim_server)
    address = sim_server.running.addresses[transport]
    client = run_client(address, "7", "hang", stdin=subprocess.PIPE)
    assert client.stdout.readline().strip() == "ready"
    assert memory_in_use(sim_server) >= in_use + 4 * (1 << 20)
    client.send_signal(signal.SIGKILL)
    client.wait(10)
    killed = time.monotonic()
    assert wait_until(lambda: memory_in_use(sim_server) == in_use, timeout=5)
    assert time.monotonic() - killed < 1.0, "device memory must be back within a second"
    assert wait_until(lambda: not sim_server.active_sessions(), timeout=5)


def test_fikit_run_activates_the_stub(sim_server, tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(CLIENT)
    fikit_run = shutil.which("fikit-run")
    command = [fikit_run] if fikit_run else [sys.executable, "-m", "client_stub.run"]
    env = {k: v for k, v in os.environ.items() if k != "FIKIT_SERVER"}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [*command, "--server", sim_server.address, sys.executable, str(script), "3", "exit"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ready", "done", "3"]


NOT_FORWARDED = "cuda.core calls the CUDA driver mostly from compiled code"


@pytest.mark.parametrize(
    ("server", "program", "warned"),
    [
        ("127.0.0.1:9", "import cuda.core", True),
        ("", "import cuda.core", False),
        ("", "import cuda.core, client_stub; client_stub.install('127.0.0.1:9')", True),
    ],
    ids=["imported-with-the-stub", "no-stub", "imported-before-install"],
)
def test_a_package_calling_the_driver_from_compiled_code_is_named_at_import(
    tmp_path: Path, server: str, program: str, warned: bool
) -> None:
    """cuda.core reaches the driver past the stub: the user is told, and it still imports."""
    package = tmp_path / "cuda" / "core"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("IMPORTED = True\n")
    env = {k: v for k, v in os.environ.items() if k != "FIKIT_SERVER"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO)])
    if server:
        env["FIKIT_SERVER"] = server
    done = subprocess.run(
        [sys.executable, "-c", f"{program}; import cuda.core; print(cuda.core.IMPORTED)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True"]
    assert (NOT_FORWARDED in done.stderr) == warned, done.stderr
    assert done.stderr.count(NOT_FORWARDED) <= 1


@pytest.mark.parametrize("address", ["127.0.0.1:9", "unix:///nonexistent/gpu.sock"])
def test_unreachable_server_fails_cuinit_quickly_and_names_it(
    remote, caplog: pytest.LogCaptureFixture, address: str
) -> None:
    impl.REMOTE.configure(address, None)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="fikit.client"):
        assert remote.cuInit(0) == (CUresult.CUDA_ERROR_NO_DEVICE,)
    assert time.monotonic() - started < 8
    assert address in caplog.text
    assert remote.cuDeviceGetCount() == (CUresult.CUDA_ERROR_NOT_INITIALIZED, None)


def open_raw(address: str, *frames: session_pb2.ClientFrame) -> list[session_pb2.ServerFrame]:
    with grpc.insecure_channel(address) as channel:
        return list(session_pb2_grpc.GpuSessionStub(channel).Open(iter(frames), timeout=10))


def hello(version: int = wire.PROTOCOL_VERSION) -> session_pb2.ClientFrame:
    return session_pb2.ClientFrame(
        hello=session_pb2.Hello(protocol_version=version, client_name="raw", priority=0)
    )


def test_protocol_version_mismatch_is_refused_clearly(sim_server) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        open_raw(sim_server.address, hello(wire.PROTOCOL_VERSION + 1))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "protocol version mismatch" in refused.value.details()


def test_a_session_must_start_with_hello(sim_server) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        open_raw(sim_server.address, session_pb2.ClientFrame(calls=wire.pack([])))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_malformed_frame_ends_only_that_session(sim_server, remote) -> None:
    assert remote.cuInit(0) == (CUresult.CUDA_SUCCESS,)
    with pytest.raises(grpc.RpcError) as refused:
        open_raw(sim_server.address, hello(), session_pb2.ClientFrame(calls=b"\xc1garbage"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed frame" in refused.value.details()
    assert remote.cuDeviceGetCount() == (CUresult.CUDA_SUCCESS, 1)


def test_calls_are_answered_in_order_over_a_raw_stream(sim_server) -> None:
    batch = [["cuDeviceGetCount", True], ["cuNoSuchCall", True], ["cuDeviceGet", True, 0]]
    frames = open_raw(sim_server.address, hello(), session_pb2.ClientFrame(calls=wire.pack(batch)))
    assert frames[0].welcome.backend == "sim"
    replies = [r for f in frames[1:] for r in wire.unpack(f.replies)]
    assert replies == [[0, 1], [int(CUresult.CUDA_ERROR_NOT_SUPPORTED)], [0, 0]]


def test_health_service_reports_serving(sim_server) -> None:
    with grpc.insecure_channel(sim_server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "fikit.v1.GpuSession"):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


def raw_socket_session(sim_server, *payloads: bytes) -> list[object]:
    """Send frames on the unix socket transport; every frame the server sends back, decoded."""
    path = sim_server.running.addresses[1].removeprefix("unix:")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        frames = FrameSocket(sock)
        # The server may hang up on a bad frame before the rest is sent, or read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for payload in payloads:
                frames.send(payload)
            sock.shutdown(socket.SHUT_WR)
        received = []
        with contextlib.suppress(ConnectionResetError):
            while batch := frames.receive():
                received += [msgpack.unpackb(frame) for frame in batch]
        return received


def socket_hello(version: int = wire.PROTOCOL_VERSION, priority: int = 0) -> bytes:
    fields = {"protocol_version": version, "client_name": "raw", "priority": priority}
    return msgpack.packb(fields)


@pytest.mark.parametrize(
    ("first", "refusal"),
    [
        (socket_hello(wire.PROTOCOL_VERSION + 1), "protocol version mismatch: client speaks"),
        (socket_hello(priority=10), "priority 10 is outside 0..9"),
        (b"\xc1garbage", "the first frame must be a Hello"),
        (msgpack.packb([1, 2]), "the first frame must be a Hello"),
    ],
    ids=["version", "priority", "garbage", "not a map"],
)
def test_the_socket_transport_refuses_a_bad_hello_clearly(
    sim_server, remote, first: bytes, refusal: str
) -> None:
    [answer] = raw_socket_session(sim_server, first)
    assert answer["error"].startswith(refusal)
    assert remote.cuInit(0) == (CUresult.CUDA_SUCCESS,)


def test_the_socket_transport_answers_in_order_and_ends_a_session_on_a_bad_frame(
    sim_server, remote
) -> None:
    assert remote.cuInit(0) == (CUresult.CUDA_SUCCESS,)
    batch = [["cuDeviceGetCount", True], ["cuNoSuchCall", True], ["cuDeviceGet", True, 0]]
    welcome, replies = raw_socket_session(sim_server, socket_hello(), wire.pack(batch))
    assert welcome["backend"] == "sim"
    assert replies == [[0, 1], [int(CUresult.CUDA_ERROR_NOT_SUPPORTED)], [0, 0]]
    welcome, *rest = raw_socket_session(
        sim_server, socket_hello(), b"\xc1garbage", wire.pack(batch)
    )
    # The malformed frame ended that session, saying why, and nothing after it ran.
    assert [reply["error"][:15] for reply in rest] == ["malformed frame"]
    assert remote.cuDeviceGetCount() == (CUresult.CUDA_SUCCESS, 1)
    assert wait_until(lambda: len(sim_server.active_sessions()) <= 1)


def test_frames_that_arrive_together_run_as_one_batch_each_answered_in_order(
    sim_server, remote
) -> None:
    batches: list[list[bytes]] = []

    class Recording(LocalPort):
        def submit(self, payloads: list[bytes]) -> None:
            batches.append(list(payloads))
            super().submit(payloads)

    session = Session(99, sim_server.backend, sim_server.dispatcher, handle_counter(), 0)
    port = Recording(session)
    server_end, client_end = socket.socketpair()
    first, second = wire.pack([["cuDeviceGetCount", True]]), wire.pack([["cuDeviceGet", True, 0]])
    with server_end, client_end:
        client_end.sendall(header(first) + first + header(second) + second)
        client_end.shutdown(socket.SHUT_WR)
        assert serve_frames(port, FrameSocket(server_end)) == ""
        replies = FrameSocket(client_end).receive()
    port.close()
    assert batches == [[first, second]]
    assert [wire.unpack(frame) for frame in replies] == [[[0, 1]], [[0, 0]]]


def test_work_done_notices_stop_while_the_client_leaves_them_unread(sim_server) -> None:
    session = Session(98, sim_server.backend, sim_server.dispatcher, handle_counter(), 0)
    port = LocalPort(session, notices=True)
    server_end, client_end = socket.socketpair()
    posted = wire.pack([["cuInit", False, 0]])  # no GPU work: done at once
    with server_end, client_end:
        serving = threading.Thread(target=serve_frames, args=(port, FrameSocket(server_end)))
        serving.start()
        client_end.sendall(header(posted) + posted)
        frames = FrameSocket(client_end)
        assert [wire.done_count(frame) for frame in frames.receive()] == [1]
        for _ in range(200):  # each its own batch, none of the notices read
            client_end.sendall(header(posted) + posted)
            time.sleep(0.001)
        client_end.shutdown(socket.SHUT_WR)
        serving.join(10)
        notices = [wire.done_count(frame) for frame in frames.receive()]
    port.close()
    assert 1 <= len(notices) < 20  # a few, up to the backlog, not one per batch
    assert all(count is not None for count in notices) and notices == sorted(notices)


def test_a_session_thread_polls_for_the_next_frame_then_blocks_until_it_comes(
    sim_server,
) -> None:
    session = Session(97, sim_server.backend, sim_server.dispatcher, handle_counter(), 0)
    port = LocalPort(session, receive_spin_s=0.02)
    server_end, client_end = socket.socketpair()
    call = wire.pack([["cuDeviceGetCount", True]])
    with server_end, client_end:
        serving = threading.Thread(target=serve_frames, args=(port, FrameSocket(server_end)))
        serving.start()
        frames = FrameSocket(client_end)
        client_end.sendall(header(call) + call)
        assert [wire.unpack(frame) for frame in frames.receive()] == [[[0, 1]]]
        client_end.sendall(header(call) + call)  # while it polls
        assert [wire.unpack(frame) for frame in frames.receive()] == [[[0, 1]]]
        cpu_before = time.process_time()
        time.sleep(0.3)
        assert time.process_time() - cpu_before < 0.15  # blocked after 0.02 s, not polling
        client_end.sendall(header(call) + call)  # wakes it
        assert [wire.unpack(frame) for frame in frames.receive()] == [[[0, 1]]]
        client_end.shutdown(socket.SHUT_WR)
        serving.join(10)
    port.close()
    assert not serving.is_alive()


def test_sessions_poll_for_frames_only_while_each_has_two_cores(sim_server) -> None:
    pollers = Pollers(cores=4)
    ports = [
        LocalPort(
            Session(90 + i, sim_server.backend, sim_server.dispatcher, handle_counter(), 0),
            pollers=pollers,
        )
        for i in range(3)
    ]
    assert not pollers.allowed()  # three sessions, four cores
    ports.pop().close()
    assert pollers.allowed()
    for port in ports:
        port.close()
    assert pollers.allowed()


@pytest.mark.parametrize("transport", [0, 1], ids=["grpc", "unix"])
def test_a_server_going_away_fails_the_next_call_with_device_unavailable(
    tmp_path: Path, transport: int
) -> None:
    server = ServerThread(listen=("127.0.0.1:0", f"unix:{tmp_path}/gpu.sock"))
    conn = connect(server.running.addresses[transport], priority=0, client_name="app")
    assert conn.request("cuDeviceGetCount") == [0, 1]
    server.stop()
    started = time.monotonic()
    with pytest.raises(ConnectionLost, match="the GPU server is shutting down"):
        conn.request("cuDeviceGetCount")
    assert time.monotonic() - started < 5
    conn.close()
