"""Where a session's calls run, as a transport sees it: a ``SessionPort``.

A transport submits the frames of calls a client sends, in order, and gets reply frames
back through ``emit``; when the server ends a session on its own side (its GPU worker was
lost) ``end`` gets the reason once. A ``Placement`` opens ports: ``InProcess`` runs the
session in this process (``--isolation none``, and inside every GPU worker process);
``gpu_server/workers.py`` has the placements that run sessions in worker processes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from fikit_wire import calls as wire
from fikit_wire.frames import FrameSocket
from gpu_server.backends.base import Backend
from gpu_server.ownership import DeviceOwnership
from gpu_server.session import Session, handle_counter
from gpu_server.staging import map_staging
from scheduler.dispatcher import Dispatcher

#: Receives one packed frame of replies.
Emit = Callable[[bytes], None]
#: Receives the reason a session was ended on the server's side.
End = Callable[[str], None]
#: Told (session id, CUresult) when a session's call found the process's GPU state lost.
OnFault = Callable[[int, int], None]

#: How long a session's thread polls its socket for the client's next frame before it
#: blocks (``gpu-server --receive-spin-us``). On the H200 test machine a launch frame that
#: found the thread blocked for 1 ms cost it 42-94 us against 14-24 us right after another
#: call; same-host launch+sync, polling 500 us against blocking, read lower in each of six
#: paired rounds (34-68 us against 47-92). Polling costs a CPU core while the client keeps
#: calling.
RECEIVE_SPIN_S = 500e-6


class Pollers:
    """Whether the sessions of one process may poll for their clients' frames: while each
    has two cores to itself (its client's and its thread's). Past that, polling threads
    slow the threads that have work: on a 2-core machine four clients' launch+sync took
    up to twice as long with every session polling, and longer for all but one with one
    polling at a time."""

    def __init__(self, cores: int | None = None) -> None:
        self._cores = cores or os.cpu_count() or 1
        self._sessions = 0
        self._lock = threading.Lock()

    def opened(self) -> None:
        with self._lock:
            self._sessions += 1

    def closed(self) -> None:
        with self._lock:
            self._sessions -= 1

    def allowed(self) -> bool:
        """Whether a session may poll now."""
        return 2 * self._sessions <= self._cores


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionSpec:
    """An admitted session: what running it needs."""

    session_id: int
    priority: int
    client_name: str
    staging_path: str
    memory_quota: int | None
    #: Whether the client wants work-done notices (``fikit_wire.calls.pack_done``).
    notices: bool = False


class PlacementFailed(Exception):
    """No place to run a session now (a GPU worker did not start)."""


class SessionPort(ABC):
    """One session, wherever its calls run."""

    #: Whether ``adopt`` can hand a same-host client's socket to where the session runs.
    can_adopt = False

    def __init__(self, session_id: int, staging: bool) -> None:
        self.id = session_id
        #: Whether bulk copies go through the client's shared-memory staging area.
        self.staging = staging

    @abstractmethod
    def start(self, emit: Emit, end: End) -> None:
        """Say where replies go; called once, before the first ``submit``."""

    @abstractmethod
    def submit(self, payloads: list[wire.Payload]) -> None:
        """Run frames of calls after those submitted before; raises ValueError when a
        frame is not a list of calls."""

    @abstractmethod
    def close(self) -> None:
        """End the session: everything it held is freed."""

    @abstractmethod
    def drain(self) -> None:
        """Wait until every frame submitted has run and its replies were emitted."""

    def adopt(self, sock: socket.socket, received: bytes) -> str:
        """Let the session be served straight from ``sock`` (``received``: bytes already
        read from it) instead of through ``start``/``submit``; wait for its end; return
        why the server ended it, or "" when the client did. Only when ``can_adopt``."""
        raise NotImplementedError

    def relay_socket(self) -> socket.socket | None:
        """The socket to the process that runs the session's calls, when they run in
        another one: a transport on an event loop may then relay frames on it itself (both
        ways, unparsed, replies ended by a ``wire.pack_end`` frame or the stream's end)
        instead of through ``start``/``submit``/``drain``. None when they run here."""
        return None

    def lost(self) -> str:
        """Why the relay socket ended without the transport closing it (may wait a
        moment for the other process to say)."""
        return "the session ended"


class Placement(ABC):
    """Decides where sessions run and opens them there."""

    #: The ``--isolation`` value this placement implements.
    isolation: str

    @abstractmethod
    def open(self, spec: SessionSpec) -> SessionPort:
        """Run a new session; raises PlacementFailed."""

    @abstractmethod
    def describe(self) -> tuple[str, str]:
        """(backend name, device name) of the GPU sessions run on."""

    @abstractmethod
    def close(self) -> None:
        """Stop what the placement started; sessions are closed before."""


class LocalPort(SessionPort):
    """A session executed on the thread that submits its frames."""

    def __init__(
        self,
        session: Session,
        on_fault: OnFault | None = None,
        notices: bool = False,
        receive_spin_s: float = RECEIVE_SPIN_S,
        pollers: Pollers | None = None,
    ) -> None:
        super().__init__(session.id, session.staging is not None)
        self.session = session
        self._on_fault = on_fault
        self._emit: Emit | None = None
        #: Whether the client wants work-done notices (``serve_frames``).
        self.notices = notices
        #: How long ``serve_frames`` polls for the client's next frame before it blocks,
        #: while ``pollers`` allow it.
        self.receive_spin_s = receive_spin_s
        self.pollers = pollers or Pollers()
        self.pollers.opened()

    def start(self, emit: Emit, end: End) -> None:
        self._emit = emit

    def submit(self, payloads: list[wire.Payload]) -> None:
        assert self._emit is not None, "start() comes first"
        session = self.session
        session.run_frames(payloads, self._emit)
        if session.fault and self._on_fault is not None:
            self._on_fault(session.id, session.fault)

    def drain(self) -> None:
        """Frames run as they are submitted: nothing to wait for."""

    def close(self) -> None:
        self.pollers.closed()
        session = self.session
        session.close()
        if session.staging is not None:
            mapping = session.staging.obj
            session.staging.release()
            mapping.close()


class InProcess(Placement):
    """Sessions run in this process, on one backend and dispatcher; ``on_fault`` hears of
    a call that found the process's GPU state lost; each session's thread polls for its
    client's next frame for ``receive_spin_s`` before it blocks (``serve_frames``), while
    there are few enough of them (``Pollers``)."""

    isolation = "none"

    def __init__(
        self,
        backend: Backend,
        dispatcher: Dispatcher,
        on_fault: OnFault | None = None,
        receive_spin_s: float = RECEIVE_SPIN_S,
    ) -> None:
        self.backend = backend
        self.dispatcher = dispatcher
        self.on_fault = on_fault
        self.receive_spin_s = receive_spin_s
        self.pollers = Pollers()
        #: Who owns which device memory, across the sessions of this process.
        self.ownership = DeviceOwnership()
        self._handle_ids = handle_counter()

    def open(self, spec: SessionSpec) -> LocalPort:
        staging = map_staging(spec.staging_path) if spec.staging_path else None
        session = Session(
            spec.session_id,
            self.backend,
            self.dispatcher,
            self._handle_ids,
            spec.priority,
            spec.client_name,
            None if staging is None else memoryview(staging),
            spec.memory_quota,
            self.ownership,
        )
        return LocalPort(session, self.on_fault, spec.notices, self.receive_spin_s, self.pollers)

    def describe(self) -> tuple[str, str]:
        return self._description

    @functools.cached_property
    def _description(self) -> tuple[str, str]:
        backend = self.backend
        return backend.name, backend.device_name(0) if backend.device_count() else "no device"

    def close(self) -> None:
        """Nothing to stop: the backend and the dispatcher are the caller's."""


#: How long a session whose client went quiet watches for its GPU work to finish, to send
#: a work-done notice; work that runs longer is left to the client's synchronization.
NOTICE_WATCH_S = 30e-6
#: A notice is sent only while the client has read all but this many bytes sent to it: a
#: client that never synchronizes must not have notices fill its socket.
NOTICE_BACKLOG_BYTES = 4096


def serve_frames(port: LocalPort, frames: FrameSocket) -> str:
    """Run the frames of calls a socket brings, replies going back on it, until the client
    ends the session (""), or sends a malformed frame (the reason; nothing after it runs).
    The frames that arrived together run as one batch: a client that sends each call as it
    comes costs the session one turn per read, not one per call, while it is behind.

    For a client that asked for notices, whenever nothing more has arrived after a batch
    that ended with a call wanting no reply (the client is not reading one), the session
    watches for NOTICE_WATCH_S for the GPU to finish its work, then says so. Then, unless
    the client sent more meanwhile, the dispatcher hears that the session is idle. Between
    batches the thread polls for the next frame for ``port.receive_spin_s`` before it
    blocks, while the port's ``Pollers`` allow it."""
    port.start(frames.send, lambda reason: end_session(frames, reason))
    spin_s, pollers, session = port.receive_spin_s, port.pollers, port.session
    try:
        while payloads := frames.receive(spin_s if pollers.allowed() else 0.0):
            port.submit(payloads)
            work_done: bool | None = False
            if port.notices and not session.replied_last:
                work_done = _notice_when_done(session, frames)
            if work_done is not None:
                session.dispatcher.idle(session.id, work_done)
    except ValueError as err:
        log.info("session %d: %s", port.id, err)
        return str(err)
    return ""


def _notice_when_done(session: Session, frames: FrameSocket) -> bool | None:
    """Until the client sends more or NOTICE_WATCH_S passed: once the session's work is
    done, tell the client (unless it left earlier notices unread). Whether the work was
    seen done; None when the client sent more first."""
    deadline = time.perf_counter() + NOTICE_WATCH_S
    while not frames.poll():
        if session.work_done():
            if frames.unread_sent_bytes() <= NOTICE_BACKLOG_BYTES:
                frames.send(wire.pack_done(session.calls_run))
            return True
        if time.perf_counter() >= deadline:
            return False
    return None


def end_session(frames: FrameSocket, reason: str) -> None:
    """End a session on its socket from the server's side: say why, then stop both ways."""
    with contextlib.suppress(OSError):
        frames.send(wire.pack_end(reason))
        frames.sock.shutdown(socket.SHUT_RDWR)
