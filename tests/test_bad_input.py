"""Random and mutated frames from one client never crash the server, leak, or touch others.

Property-based (hypothesis): each example opens a session on the unix socket transport,
sends frames built from real call names with arbitrary arguments (or plain garbage), and
hangs up. Afterwards the server must still serve another session, correctly, and hold no
more device memory or sessions than before.
"""

from __future__ import annotations

import contextlib
import socket

import numpy as np
import pytest

from fikit_wire import calls as wire
from fikit_wire.frames import FrameSocket
from gpu_server.session import HANDLERS
from tests.test_sessions import memory_in_use, socket_hello, wait_until

# The GPU machine may lack hypothesis; this suite runs in CI.
hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")

ARGUMENT = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.sampled_from([0, 1, 2, 0x1000, 0x1010, 2**62 | 1, 2**31, 2**40])
    | st.binary(max_size=64)
    | st.text(max_size=16),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.integers(0, 64), inner),
    max_leaves=8,
)
CALL = st.tuples(
    st.sampled_from(sorted(HANDLERS)) | st.text(max_size=12),
    st.booleans(),
    st.lists(ARGUMENT, max_size=8),
).map(lambda c: [c[0], c[1], *c[2]])
FRAME = st.lists(CALL, min_size=1, max_size=6).map(wire.pack) | st.binary(max_size=64)


def send_session(address: str, frames: list[bytes]) -> None:
    """Open a session, send ``frames``, read what comes back, hang up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(address.removeprefix("unix:"))
        framed = FrameSocket(sock)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            framed.send(socket_hello())
            for frame in frames:
                framed.send(frame)
            sock.shutdown(socket.SHUT_WR)
            while framed.receive():
                pass


@pytest.fixture
def victim(remote):
    """Another client's session, with data on the device that must stay intact."""
    remote.cuInit(0)
    remote.cuCtxSetCurrent(remote.cuDevicePrimaryCtxRetain(0)[1])
    data = np.arange(4096, dtype=np.uint32)
    _, ptr = remote.cuMemAlloc(data.nbytes)
    assert remote.cuMemcpyHtoD(ptr, data, data.nbytes)[0] == 0
    return remote, ptr, data


@hypothesis.settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[
        hypothesis.HealthCheck.function_scoped_fixture,
        hypothesis.HealthCheck.too_slow,
    ],
)
@hypothesis.given(frames=st.lists(FRAME, max_size=5))
def test_random_frames_never_hurt_the_server_or_other_sessions(
    sim_server, victim, frames: list[bytes]
) -> None:
    remote, ptr, data = victim
    sessions, in_use = set(sim_server.active_sessions()), memory_in_use(sim_server)
    send_session(sim_server.running.addresses[1], frames)
    assert wait_until(lambda: sim_server.active_sessions() == sessions, timeout=10)
    assert memory_in_use(sim_server) == in_use
    back = np.zeros_like(data)
    assert remote.cuMemcpyDtoH(back, ptr, data.nbytes)[0] == 0
    assert np.array_equal(back, data)


def test_a_huge_declared_frame_ends_only_that_session(sim_server, victim) -> None:
    remote, ptr, data = victim
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(sim_server.running.addresses[1].removeprefix("unix:"))
        sock.sendall((2**32 - 1).to_bytes(4, "little") + b"x" * 100)
        assert sock.recv(100) == b""  # refused before reading a byte of it
    back = np.zeros_like(data)
    assert remote.cuMemcpyDtoH(back, ptr, data.nbytes)[0] == 0
    assert np.array_equal(back, data)
