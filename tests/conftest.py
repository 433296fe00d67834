"""Shared fixtures: a gpu-server on the CPU test double, reached through real transports.

The session-wide server listens on TCP (gRPC) and on a unix socket (the same-host
transport); ``remote`` runs each test that uses it over both.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import pytest

from gpu_server.backends.sim import SimBackend
from gpu_server.hub import Admission
from gpu_server.ports import InProcess
from gpu_server.server import RunningServer, start_server
from scheduler.dispatcher import Dispatcher
from scheduler.policy import FifoPolicy, Policy
from scheduler.profiles import ProfileStore


class ServerThread:
    """A gpu-server with the sim backend, on its own event loop in a thread."""

    def __init__(
        self,
        policy: Policy | None = None,
        profiles: ProfileStore | None = None,
        poll_step_ns: int = 1_000,
        listen: Sequence[str] = ("127.0.0.1:0",),
        admission: Admission | None = None,
        tls: tuple[bytes, bytes] | None = None,
    ) -> None:
        self.backend = SimBackend(poll_step_ns=poll_step_ns)
        self.dispatcher = Dispatcher(policy or FifoPolicy(), profiles)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.running: RunningServer = self.run(
            start_server(InProcess(self.backend, self.dispatcher), list(listen), admission, tls)
        )

    @property
    def address(self) -> str:
        return self.running.address

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def active_sessions(self) -> set[int]:
        return set(self.running.hub.active_sessions)

    def stop(self) -> None:
        self.run(self.running.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.dispatcher.close()


@pytest.fixture(scope="session")
def sim_server() -> Iterator[ServerThread]:
    with tempfile.TemporaryDirectory() as directory:
        server = ServerThread(listen=("127.0.0.1:0", f"unix:{Path(directory) / 'gpu.sock'}"))
        yield server
        server.stop()


@pytest.fixture(params=["grpc", "unix"])
def remote(request: pytest.FixtureRequest, sim_server: ServerThread) -> Iterator[ModuleType]:
    """The driver stub module with a fresh session to the sim server, over each transport."""
    from cuda.bindings import driver as real

    from client_stub import driver as impl
    from client_stub.activation import make_driver_stub

    tcp, unix = sim_server.running.addresses
    impl.REMOTE.close()
    impl.REMOTE.configure(unix if request.param == "unix" else tcp, None)
    yield make_driver_stub(real)
    impl.REMOTE.close()
