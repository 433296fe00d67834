"""Same-host bulk copies through the staging area, and the server's checks of it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from client_stub import driver as impl
from client_stub import staging
from client_stub.connection import connect
from client_stub.host_memory import PARALLEL_COPY_BYTES, copy_bytes
from client_stub.staging import StagingArea
from fikit_wire import calls as wire
from gpu_server.staging import map_staging
from tests.conftest import ServerThread
from tests.test_remote_driver import ok
from tests.test_sessions import wait_until


def test_ring_space_comes_back_once_the_calls_using_it_ran() -> None:
    area = StagingArea.create(1000)
    assert area is not None
    try:
        assert area.reserve([400, 400], first_call=1) == [0, 400]
        assert area.reserve([400], first_call=3) is None  # nothing has run yet
        area.release_through(1)
        assert area.reserve([300], first_call=3) == [0]  # wraps to the freed start
        assert area.reserve([100, 50], first_call=4) is None  # up to the oldest: all or nothing
        assert area.reserve([100], first_call=4) == [300]
        area.release_through(4)
        assert area.reserve([1000], first_call=6) == [0]
        assert area.reserve([1001], first_call=7) is None
    finally:
        area.close()
    assert not os.path.exists(area.path)


def test_the_server_maps_only_plain_staging_files(tmp_path: Path) -> None:
    area = StagingArea.create(4096)
    assert area is not None
    try:
        mapping = map_staging(area.path)
        assert mapping is not None and len(mapping) == 4096
        mapping.close()
        directory = Path(wire.STAGING_DIR)
        link = directory / f"fikit-{'ab' * 16}"
        link.symlink_to(area.path)
        try:
            assert map_staging(str(link)) is None
        finally:
            link.unlink()
        assert map_staging("/etc/passwd") is None
        assert map_staging(str(directory / "fikit-../../etc/passwd")) is None
        assert map_staging(str(directory / f"fikit-{'0' * 32}")) is None  # no such file
    finally:
        area.close()


@pytest.mark.parametrize("mode", ["staging", "tiny staging ring", "no staging"])
def test_copies_arrive_whole_through_every_path(
    mode: str, remote: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    if mode == "no staging":
        monkeypatch.setenv("FIKIT_STAGING", "off")
    if mode == "tiny staging ring":
        monkeypatch.setattr(staging, "DEFAULT_STAGING_BYTES", 64 * 1024)
    ok(remote.cuInit(0))
    ok(remote.cuCtxSetCurrent(ok(remote.cuDevicePrimaryCtxRetain(0))))
    assert (impl.REMOTE.session().staging is None) == (mode == "no staging")
    size = 9 * 1024 * 1024 + 5  # past PARALLEL_COPY_BYTES: split across threads
    data = np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8)
    dptr, stream = ok(remote.cuMemAlloc(size)), ok(remote.cuStreamCreate(0))
    ok(remote.cuMemcpyHtoDAsync(dptr, data.ctypes.data, size, stream))
    sent = data.copy()
    data[:] = 0  # an asynchronous copy took the bytes when it returned
    back = np.zeros(size, np.uint8)
    ok(remote.cuMemcpyDtoHAsync(back, dptr, size, stream))
    ok(remote.cuStreamSynchronize(stream))
    assert np.array_equal(back, sent)
    ok(remote.cuMemcpyHtoD(dptr, data, size))
    ok(remote.cuMemcpyDtoH(back.ctypes.data, dptr, size))
    assert not back.any()
    ok(remote.cuMemFree(dptr))


def test_a_client_reaches_a_unix_socket_server_and_stages_through_it(tmp_path: Path) -> None:
    server = ServerThread(listen=[f"unix:{tmp_path}/gpu.sock"])
    try:
        assert server.address == f"unix:{tmp_path}/gpu.sock"
        connection = connect(server.address, priority=0, client_name="unix")
        assert connection.staging is not None
        assert connection.request("cuDeviceGetCount") == [0, 1]
        connection.close()
    finally:
        server.stop()


def test_the_staging_area_is_page_locked_once_and_unlocked_with_its_session(
    remote: ModuleType, sim_server: ServerThread
) -> None:
    registered = sim_server.backend.registered
    assert registered == {}
    ok(remote.cuInit(0))
    ok(remote.cuCtxSetCurrent(ok(remote.cuDevicePrimaryCtxRetain(0))))
    staging_size = impl.REMOTE.session().staging.size
    dptr = ok(remote.cuMemAlloc(1 << 20))
    for _ in range(3):
        ok(remote.cuMemcpyHtoD(dptr, bytes(1 << 20), 1 << 20))
        ok(remote.cuMemcpyDtoH(bytearray(1 << 20), dptr, 1 << 20))
    assert list(registered.values()) == [staging_size]
    impl.REMOTE.close()
    assert wait_until(lambda: registered == {})


def test_a_failed_pipelined_copy_leaves_later_calls_their_own_replies(
    remote: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(staging, "DEFAULT_STAGING_BYTES", 64 * 1024)
    ok(remote.cuInit(0))
    ok(remote.cuCtxSetCurrent(ok(remote.cuDevicePrimaryCtxRetain(0))))
    size = 1 << 20  # 128 chunks of the tiny ring, eight of them in flight at the failure
    dptr = ok(remote.cuMemAlloc(size))
    ok(remote.cuMemFree(dptr))
    (err,) = remote.cuMemcpyDtoH(np.zeros(size, np.uint8), dptr, size)
    assert err == remote.CUresult.CUDA_ERROR_INVALID_VALUE
    assert ok(remote.cuDeviceGetCount()) == 1
    data = np.arange(size, dtype=np.uint32).view(np.uint8)[:size]
    dptr = ok(remote.cuMemAlloc(size))
    ok(remote.cuMemcpyHtoD(dptr, data, size))
    back = np.zeros(size, np.uint8)
    ok(remote.cuMemcpyDtoH(back, dptr, size))
    assert np.array_equal(back, data)


@pytest.mark.parametrize("size", [PARALLEL_COPY_BYTES - 1, PARALLEL_COPY_BYTES, 9 * 2**20 + 5])
def test_a_long_host_copy_split_across_threads_arrives_whole(size: int) -> None:
    source = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    target = bytearray(size + 2)
    copy_bytes(memoryview(target)[1 : size + 1], memoryview(source))
    assert target[1 : size + 1] == source.tobytes() and target[0] == target[-1] == 0


def test_a_forked_child_copies_with_threads_of_its_own() -> None:
    size = PARALLEL_COPY_BYTES + 7
    source = memoryview(np.arange(size, dtype=np.uint8).tobytes())
    copy_bytes(memoryview(bytearray(size)), source)  # the parent's pool is running
    pid = os.fork()
    if pid == 0:  # the child: its copy must finish, with the data whole
        target = bytearray(size)
        copy_bytes(memoryview(target), source)
        os._exit(0 if target == source else 1)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0
