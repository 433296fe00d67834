"""GPU worker processes as the front end sees them: ``--isolation shared`` and ``process``.

The front end (transports, admission, and under ``process`` the scheduler) never touches
CUDA, so a kernel fault, which ruins every context of the process it happens in, cannot
take it down. ``SharedWorker`` runs all sessions in one worker and starts a new one as soon
as it is lost; ``WorkerPerSession`` gives each session a worker of its own, so a fault
reaches only the session that caused it, and keeps one spare worker started so that a
session does not wait for CUDA to initialise. Each session is a connection to its worker
(``WorkerPort``); frames of calls and replies are relayed unparsed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack
from cuda.bindings.driver import CUresult

from fikit_wire import calls as wire
from fikit_wire.frames import FrameSocket
from gpu_server.control import ControlChannel
from gpu_server.errors import CudaError
from gpu_server.ports import (
    RECEIVE_SPIN_S,
    Emit,
    End,
    Placement,
    PlacementFailed,
    SessionPort,
    SessionSpec,
)
from gpu_server.worker import ADOPT, ENDED, FAULT_EXIT
from scheduler.dispatcher import Dispatcher, DispatcherClosed

log = logging.getLogger(__name__)

#: How long a new worker may take to open the GPU before sessions are refused.
READY_TIMEOUT_S = 60.0
#: How long a session's relay waits for its worker to say why the session ended.
EXIT_REPORT_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class WorkerSettings:
    """What every worker is started with."""

    backend: str
    log_level: str = "INFO"
    #: ``InProcess``'s polling for a client's next frame.
    receive_spin_s: float = RECEIVE_SPIN_S
    #: ``cli.open_dispatcher``'s settings, for a worker that schedules its own sessions.
    scheduling: dict[str, Any] = field(default_factory=dict)


class RemoteProbe:
    """Completion of a launch issued in a worker, as the front end's dispatcher sees it."""

    def __init__(self, stream_key: Hashable) -> None:
        self.stream_key = stream_key
        self._done = False
        self._times: tuple[float, float] | None = None

    def finish(self, times: tuple[float, float] | None) -> None:
        """The worker reported the launch done (with its GPU times when timed)."""
        self._times = times
        self._done = True

    def done(self) -> bool:
        return self._done

    def times_us(self) -> tuple[float, float] | None:
        return self._times

    def release(self) -> None:
        """The worker releases the events itself."""


class WorkerProcess:
    """One worker process: its control socket, its sessions' socket, and its fate.

    ``dispatcher``: the front end's, for a worker of one session whose launches it orders;
    ``on_tasks`` runs once its task came or went, in that dispatcher (the leases may
    change); ``on_exit`` runs (on the control thread) once the process is gone.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        dispatcher: Dispatcher | None = None,
        on_tasks: Callable[[], None] = lambda: None,
        on_exit: Callable[[WorkerProcess], None] | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self._on_tasks = on_tasks
        self._on_exit = on_exit
        #: Whether the worker was told its session holds a lease (``DispatcherLink``).
        self._leased = False
        self._dir = tempfile.mkdtemp(prefix="fikit-worker-")
        self.socket_path = os.path.join(self._dir, "sessions.sock")
        ours, theirs = socket.socketpair()
        config = {
            **asdict(settings),
            "one_session": dispatcher is not None,
            "socket": self.socket_path,
            "control_fd": theirs.fileno(),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gpu_server.worker", json.dumps(config)],
            pass_fds=(theirs.fileno(),),
            env={k: v for k, v in os.environ.items() if k != "FIKIT_SERVER"},  # CUDA, not a stub
        )
        theirs.close()
        self._control = ControlChannel(ours)
        self.ready = threading.Event()
        self.exited = threading.Event()
        #: (backend name, device name), once ready.
        self.description = ("", "")
        #: Why the worker could not start, if it could not.
        self.failure = ""
        #: (session id, CUresult) of the call that found the GPU state lost.
        self.fault: tuple[int, int] | None = None
        self._tasks: set[int] = set()
        self._probes: dict[int, RemoteProbe] = {}
        #: Held from granting a credit until its go is sent, and while revoking one: a
        #: revocation never goes ahead of the go it revokes.
        self._grant_lock = threading.Lock()
        #: ``_on_issued``'s answers to ``_issue``; None once the worker is gone.
        self._issued: queue.SimpleQueue[RemoteProbe | CudaError | None] = queue.SimpleQueue()
        self._launches: queue.SimpleQueue[list[Any] | None] = queue.SimpleQueue()
        threading.Thread(
            target=self._read_control, name="fikit-worker-control", daemon=True
        ).start()
        if dispatcher is not None:
            threading.Thread(target=self._launch, name="fikit-worker-launch", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self) -> None:
        """Wait until the worker serves sessions; raises PlacementFailed if it never will."""
        if not self.ready.wait(READY_TIMEOUT_S) or self.exited.is_set():
            raise PlacementFailed(self.failure or f"GPU worker {self.pid} did not start")

    def attach(self, spec: SessionSpec) -> WorkerPort:
        """Open a session in this worker."""
        self.wait_ready()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.socket_path)
            frames = FrameSocket(sock)
            frames.send(msgpack.packb(list(asdict(spec).values())))
            answer = frames.receive_one()
        except OSError as err:
            sock.close()
            raise PlacementFailed(f"GPU worker {self.pid}: {err}") from None
        if answer is None:
            sock.close()
            raise PlacementFailed(f"GPU worker {self.pid} refused the session")
        return WorkerPort(self, spec.session_id, frames, bool(msgpack.unpackb(answer)))

    def ending(self, session_id: int) -> str:
        """Why a session's connection to this worker ended, for its client."""
        if not self.exited.wait(EXIT_REPORT_TIMEOUT_S):
            return "the GPU worker ended the session"
        if self.fault is None:
            return f"the GPU worker process ended unexpectedly ({self._status()})"
        faulted, code = self.fault
        name = CUresult(code).name
        if faulted == session_id:
            return f"this session's GPU state is lost after {name}; open a new session"
        return (
            f"this session's GPU state was lost: another tenant's kernel faulted ({name}) "
            "in the GPU worker it shared; open a new session"
        )

    def stop(self) -> None:
        """Close the control socket (the worker then exits) and wait for the process."""
        with contextlib.suppress(OSError):
            self._control.frames.sock.shutdown(socket.SHUT_RDWR)
        self.exited.wait(10)

    def _status(self) -> str:
        code = self.process.returncode
        if code is not None and code < 0:
            return f"signal {-code}"
        return f"exit status {code}"

    def revoke_credit(self, task_id: int) -> bool:
        """Tell the worker that its session's credit ended, if the session is ``task_id``'s;
        whether it is."""
        if task_id not in self._tasks:
            return False
        with self._grant_lock:
            self._control.send("revoke")
        return True

    def lease(self, leased: set[int]) -> None:
        """Tell the worker whether its session may launch without asking, if that changed
        (``leased``: the dispatcher's leased tasks)."""
        lease = bool(self._tasks) and self._tasks <= leased
        if lease != self._leased:
            self._leased = lease
            self._control.send("lease", lease)

    # -- the control thread ----------------------------------------------------------------
    def _read_control(self) -> None:
        try:
            while (data := self._control.frames.receive_one()) is not None:
                message = msgpack.unpackb(data)
                getattr(self, f"_on_{message[0]}")(*message[1:])
        except (OSError, ValueError, TypeError, AttributeError) as err:
            log.error("GPU worker %d: bad control message: %s", self.pid, err)
        finally:
            self._gone()

    def _on_ready(self, backend: str, device: str) -> None:
        self.description = (backend, device)
        log.info("GPU worker %d ready (%s: %s)", self.pid, backend, device)
        self.ready.set()

    def _on_failed(self, reason: str) -> None:
        self.failure = reason

    def _on_fault(self, session_id: int, code: int) -> None:
        self.fault = (session_id, code)

    def _on_add(self, task_id: int, priority: int, client: str) -> None:
        assert self.dispatcher is not None
        self._tasks.add(task_id)
        self.dispatcher.add_task(task_id, priority, client)
        self._on_tasks()

    def _on_remove(self, task_id: int) -> None:
        assert self.dispatcher is not None
        self._tasks.discard(task_id)
        self.dispatcher.remove_task(task_id)
        self._on_tasks()

    def _on_priority(self, task_id: int, requested: int, least: int, greatest: int) -> None:
        assert self.dispatcher is not None
        priority = self.dispatcher.stream_priority(task_id, requested, least, greatest)
        self._control.send("priority", priority)

    def _on_started(self, task_id: int) -> None:
        assert self.dispatcher is not None
        self.dispatcher.call_started(task_id)

    def _on_finished(self, task_id: int) -> None:
        assert self.dispatcher is not None
        self.dispatcher.call_finished(task_id)

    def _on_launch(self, task_id: int, kernel_id: str, name: str) -> None:
        self._launches.put([task_id, kernel_id, name])

    def _on_leased(
        self,
        task_id: int,
        kernels: list[list[str]],
        probe_id: int,
        stream_key: int,
        timed: bool,
        arrived_us: float,
    ) -> None:
        """Launches the worker issued unasked, one probe after them: ``kernels`` gives each
        one's (kernel ID, name)."""
        assert self.dispatcher is not None
        probe = self._remote_probe(probe_id, stream_key)
        for kernel_id in self.dispatcher.launched(task_id, kernels, probe, timed, arrived_us):
            self._control.send("time", kernel_id)

    def _on_issued(self, probe_id: int, stream_key: int, error: int) -> None:
        """The worker's answer to ``issue``: its probe is made here, on the control thread,
        so that the worker's report of the launch done, read next, finds it (made by the
        thread waiting in ``_issue``, it could come too late and never finish)."""
        self._issued.put(CudaError(error) if error else self._remote_probe(probe_id, stream_key))

    def _remote_probe(self, probe_id: int, stream_key: int) -> RemoteProbe:
        """The probe of a launch issued in the worker, finished by its ``done`` report."""
        probe = self._probes[probe_id] = RemoteProbe((self.pid, stream_key))
        return probe

    def _on_done(self, *reports: int | float | None) -> None:
        """Launches the worker saw done: (probe ID, start, end) each, times None if untimed."""
        for i in range(0, len(reports), 3):
            probe_id, start, end = reports[i : i + 3]
            probe = self._probes.pop(probe_id, None)  # type: ignore[arg-type]
            if probe is not None:
                probe.finish(None if start is None or end is None else (start, end))

    def _gone(self) -> None:
        """The worker exited or its control socket broke: account for what it had."""
        self._control.frames.sock.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.dispatcher is not None:
            for task_id in list(self._tasks):
                self.dispatcher.remove_task(task_id)
            self._tasks.clear()
            self._on_tasks()
            for probe in self._probes.values():
                probe.finish(None)
            self._probes.clear()
            self._issued.put(None)
            self._launches.put(None)
        shutil.rmtree(self._dir, ignore_errors=True)
        if self.process.returncode not in (0, FAULT_EXIT) or self.fault is not None:
            log.warning("GPU worker %d ended (%s)", self.pid, self._status())
        self.exited.set()
        self.ready.set()
        if self._on_exit is not None:
            self._on_exit(self)

    # -- the launch thread (a worker of one session) ---------------------------------------
    def _launch(self) -> None:
        """Pass each launch the worker asks for through the front end's dispatcher."""
        assert self.dispatcher is not None
        while (request := self._launches.get()) is not None:
            task_id, kernel_id, name = request
            try:
                issue = functools.partial(self._issue, task_id, kernel_id)
                self.dispatcher.launch(task_id, kernel_id, name, issue)
            except DispatcherClosed as err:
                self._control.send("closed", str(err))
            except CudaError:
                pass  # issuing failed in the worker, which has the error already

    def _issue(self, task_id: int, kernel_id: str, timed: bool) -> RemoteProbe:
        """Tell the worker to issue the launch now, with the credit the policy grants for
        more of the same (``Credit``); the launch's probe, or the worker's error."""
        assert self.dispatcher is not None
        with self._grant_lock:
            credit = self.dispatcher.credit(task_id, kernel_id)
            self._control.send("issue", timed, credit.count, credit.cost_us, credit.until)
        answer = self._issued.get()
        if answer is None:
            raise CudaError(CUresult.CUDA_ERROR_DEVICE_UNAVAILABLE, "the GPU worker is gone")
        if isinstance(answer, CudaError):
            raise answer
        return answer


class WorkerPort(SessionPort):
    """A session run in a worker process: frames relayed both ways, unparsed, or the
    client's socket handed to the worker (``adopt``)."""

    can_adopt = True

    def __init__(self, worker: WorkerProcess, session_id: int, frames: FrameSocket, staging: bool):
        super().__init__(session_id, staging)
        self.worker = worker
        self._frames = frames
        self._closing = False
        self._relay: threading.Thread | None = None

    def start(self, emit: Emit, end: End) -> None:
        self._relay = threading.Thread(
            target=self._pass_replies, args=(emit, end), name=f"fikit-relay-{self.id}", daemon=True
        )
        self._relay.start()

    def submit(self, payloads: list[wire.Payload]) -> None:
        with contextlib.suppress(OSError):  # the relay tells the client why
            for payload in payloads:
                self._frames.send(payload)

    def drain(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._frames.sock.shutdown(socket.SHUT_WR)  # the worker runs what it has, then ends
        if self._relay is not None:
            self._relay.join()

    def close(self) -> None:
        self.drain()
        self._frames.sock.close()

    def relay_socket(self) -> socket.socket:
        return self._frames.sock

    def lost(self) -> str:
        return self.worker.ending(self.id)

    def adopt(self, sock: socket.socket, received: bytes) -> str:
        lifeline = self._frames.sock
        try:
            socket.send_fds(lifeline, [ADOPT + received], [sock.fileno()])
            said = lifeline.recv(1)  # until the session ends
        except OSError:
            said = b""
        return "" if said == ENDED else self.worker.ending(self.id)

    def _pass_replies(self, emit: Emit, end: End) -> None:
        try:
            while payloads := self._frames.receive():
                for payload in payloads:
                    reason = wire.end_reason(payload)
                    if reason is None:
                        emit(payload)
                        continue
                    end(reason)  # the worker ended the session (a malformed frame)
                    return
        except (OSError, ValueError) as err:
            log.info("session %d: worker connection: %s", self.id, err)
        if not self._closing:
            end(self.lost())


class SharedWorker(Placement):
    """All sessions in one worker process, replaced as soon as it is lost."""

    isolation = "shared"

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._closed = False
        self._worker = self._start()
        self._worker.wait_ready()

    def _start(self) -> WorkerProcess:
        return WorkerProcess(self.settings, on_exit=self._replace)

    def _replace(self, lost: WorkerProcess) -> None:
        with self._lock:
            if self._closed or lost is not self._worker or not lost.ready.is_set():
                return
            if lost.failure or not lost.description[0]:
                return  # it never started: a new one would fail the same way
            log.warning("GPU worker %d lost; starting another", lost.pid)
            self._worker = self._start()

    def open(self, spec: SessionSpec) -> WorkerPort:
        with self._lock:
            worker = self._worker
        return worker.attach(spec)

    def describe(self) -> tuple[str, str]:
        return self._worker.description

    def close(self) -> None:
        with self._lock:
            self._closed = True
            worker = self._worker
        worker.stop()


class WorkerPerSession(Placement):
    """Each session in a worker process of its own, its launches ordered by ``dispatcher``."""

    isolation = "process"

    def __init__(self, settings: WorkerSettings, dispatcher: Dispatcher) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self._lock = threading.Lock()
        self._closed = False
        self._workers: set[WorkerProcess] = set()
        self._spare: WorkerProcess | None = None
        dispatcher.on_credit_revoked = self._revoke_credit
        self._restock()
        assert self._spare is not None
        self._spare.wait_ready()
        self._description = self._spare.description

    def _start(self) -> WorkerProcess:
        """A new worker (call with the lock held)."""
        worker = WorkerProcess(
            self.settings,
            dispatcher=self.dispatcher,
            on_tasks=self._update_leases,
            on_exit=self._forget,
        )
        self._workers.add(worker)
        return worker

    def _update_leases(self) -> None:
        """A task came or went: grant and revoke leases (see ``DispatcherLink``). Under the
        lock, so that the last change's view is the one that stays."""
        with self._lock:
            leased = self.dispatcher.leased_tasks()
            for worker in self._workers:
                worker.lease(leased)

    def _revoke_credit(self, task_id: int) -> None:
        """The policy ended the task's credit: tell its worker (see ``DispatcherLink``)."""
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            if worker.revoke_credit(task_id):
                return

    def _restock(self) -> None:
        """Start a spare worker unless one is there."""
        with self._lock:
            if self._spare is None and not self._closed:
                self._spare = self._start()

    def _forget(self, worker: WorkerProcess) -> None:
        with self._lock:
            self._workers.discard(worker)
            if self._spare is worker:
                self._spare = None

    def open(self, spec: SessionSpec) -> WorkerPort:
        with self._lock:
            worker, self._spare = self._spare, None
            if worker is None or worker.exited.is_set():
                worker = self._start()
        self._restock()
        return worker.attach(spec)

    def describe(self) -> tuple[str, str]:
        return self._description

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._workers)
        for worker in workers:
            worker.stop()
