"""A GPU worker process: the only place CUDA runs under ``--isolation shared|process``.

The front end (``gpu_server/workers.py``) starts ``python -m gpu_server.worker SETTINGS``
with a control socket inherited as a descriptor. The worker opens the backend, listens on
a private unix socket the front end named, and says "ready". Each session then arrives as
a connection on that socket: a ``SessionSpec``, then the client's frames of calls, run
exactly as in-process sessions run them (``InProcess``), replies written back as they come.

A call that finds the process's GPU state lost (a kernel fault: ``CONTEXT_LOST_ERRORS``)
gets its real CUresult; the worker then reports which session saw it on the control
socket and exits, since only a new process recovers. It also exits when the control
socket closes (the front end went away), so it never outlives the server.

Scheduling: a ``shared`` worker runs the dispatcher for all its sessions; a worker of one
session (``process``) reaches the front end's dispatcher through ``DispatcherLink``
(``gpu_server/dispatcher_link.py``), so one policy orders the launches of all workers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
import threading

import msgpack
from cuda.bindings.driver import CUresult

from fikit_wire.frames import FrameSocket
from gpu_server.backends import BackendUnavailable, open_backend
from gpu_server.backends.base import Backend
from gpu_server.control import ControlSocket
from gpu_server.dispatcher_link import DispatcherLink
from gpu_server.ports import InProcess, SessionSpec, end_session, serve_frames
from scheduler.dispatcher import Dispatcher

log = logging.getLogger("gpu_server.worker")

#: Exit status of a worker whose GPU state was lost.
FAULT_EXIT = 3
#: Leads the message that hands a client's socket over (the socket rides along with it).
ADOPT = b"A"
#: Sent on the front end's connection once an adopted session ended normally.
ENDED = b"E"
#: Bytes read at once from a session's connection before its frames start.
_FIRST_READ_BYTES = 1 << 20


class Worker:
    """Serves the sessions the front end places here, until told to go or the GPU is lost."""

    def __init__(
        self,
        backend: Backend,
        dispatcher: Dispatcher | DispatcherLink,
        control: ControlSocket,
        one_session: bool,
        receive_spin_s: float,
    ) -> None:
        self.placement = InProcess(backend, dispatcher, self._lost, receive_spin_s)
        self.control = control
        self.one_session = one_session

    def serve(self, path: str) -> None:
        """Accept sessions on ``path`` in the background."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(64)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        """Run one session: its spec, then its frames of calls, to the end.

        The frames come relayed on ``conn``, or from the client's own socket when the front
        end hands it over (a message starting with ADOPT, the socket attached); ``conn``
        then only tells the front end when the session ended."""
        lifeline = FrameSocket(conn)
        client = None
        try:
            first = lifeline.receive_one()
            if first is None:
                return
            port = self.placement.open(SessionSpec(*msgpack.unpackb(first)))
            try:
                lifeline.send(msgpack.packb(port.staging))
                data, fds, _, _ = socket.recv_fds(conn, _FIRST_READ_BYTES, 1)
                if fds and data.startswith(ADOPT):
                    client = socket.socket(fileno=fds[0])
                    frames = FrameSocket(client, data[len(ADOPT) :])
                else:
                    for fd in fds:
                        os.close(fd)
                    frames = FrameSocket(conn, data)
                reason = serve_frames(port, frames)
                if reason:
                    end_session(frames, reason)
            finally:
                port.close()
            if client is not None:
                conn.sendall(ENDED)
        except OSError as err:
            log.info("session ended: %s", err)
        finally:
            if client is not None:
                client.close()
            conn.close()
        if self.one_session:
            self.exit(0)

    def _lost(self, session_id: int, code: int) -> None:
        """The GPU state of this process is gone: say who saw it, then exit."""
        log.error(
            "session %d saw %s: this worker's GPU state is lost; exiting",
            session_id,
            CUresult(code).name,
        )
        self.control.send("fault", session_id, code)
        self.exit(FAULT_EXIT)

    def exit(self, status: int) -> None:
        """Exit now, whatever other threads do: the kernel frees the GPU state."""
        dispatcher = self.placement.dispatcher
        if isinstance(dispatcher, DispatcherLink) and dispatcher.stats:
            log.info("the session's launches: %s", dict(dispatcher.stats))
        profiles = dispatcher.profiles
        if profiles is not None:
            with contextlib.suppress(Exception):
                profiles.flush()
        logging.shutdown()
        os._exit(status)


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m gpu_server.worker SETTINGS`` (JSON, from the front end)."""
    from gpu_server.cli import GIL_SWITCH_INTERVAL_S, open_dispatcher, settle_interpreter

    settings = json.loads((argv or sys.argv[1:])[0])
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    logging.basicConfig(
        level=settings["log_level"],
        format=f"%(asctime)s worker {os.getpid()} %(name)s %(levelname)s %(message)s",
    )
    control = ControlSocket(socket.socket(fileno=settings["control_fd"]))
    try:
        backend = open_backend(settings["backend"])
    except BackendUnavailable as err:
        control.send("failed", str(err))
        raise SystemExit(1) from None
    with contextlib.ExitStack() as stack:
        if settings["one_session"]:
            dispatcher = DispatcherLink(control)
            stack.callback(dispatcher.close)
        else:
            scheduling = argparse.Namespace(**settings["scheduling"])
            dispatcher = stack.enter_context(open_dispatcher(scheduling, in_one_process=True))
        worker = Worker(
            backend, dispatcher, control, settings["one_session"], settings["receive_spin_s"]
        )
        worker.serve(settings["socket"])
        settle_interpreter()
        control.send("ready", *worker.placement.describe())
        control.read()
        worker.exit(0)


if __name__ == "__main__":
    main()
