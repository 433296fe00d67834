"""The control socket between the front end and a GPU worker (``gpu_server/workers.py``,
``gpu_server/worker.py``): msgpack arrays in frames, both ways. The worker says it is
ready or lost, and its one-session dispatcher link (``gpu_server/dispatcher_link.py``)
asks for launches and reports them; the front end answers, and sends the notices named in
NOTICES unasked."""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack

from fikit_wire.frames import FrameSocket

log = logging.getLogger(__name__)

#: Most messages a control channel holds back (``ControlChannel.hold``), and longest.
HOLD_LIMIT_MESSAGES = 64
HOLD_LIMIT_S = 100e-6

#: Messages the front end sends a one-session worker unasked: ``lease`` (whether its
#: launches may go without asking), ``revoke`` (its credit ended) and ``time`` (time its
#: next launch of a kernel ID).
NOTICES = frozenset({"lease", "revoke", "time"})


class ControlChannel:
    """One end of the control socket between the front end and a worker: messages are
    msgpack arrays, each sent whole from any thread, in order. A message can be held
    (``hold``) to leave with the next one sent, in one write, but no longer than
    HOLD_LIMIT_S or behind more than HOLD_LIMIT_MESSAGES."""

    def __init__(self, sock: socket.socket) -> None:
        self.frames = FrameSocket(sock)
        self._lock = threading.Lock()
        self._held: list[bytes] = []
        self._held_since = 0.0

    def send(self, *message: Any) -> None:
        """Send the held messages and this one; a peer that is gone is noticed by the
        reader."""
        with self._lock:
            self._held.append(msgpack.packb(message))
            self._write_held()

    def hold(self, *message: Any) -> None:
        """Keep a message to leave, in order, with the next ``send`` or ``flush``; the
        held ones leave now once there are HOLD_LIMIT_MESSAGES or the oldest has waited
        HOLD_LIMIT_S (a long frame of launches is reported as it runs)."""
        now = time.perf_counter()
        with self._lock:
            held = self._held
            if not held:
                self._held_since = now
            held.append(msgpack.packb(message))
            if len(held) >= HOLD_LIMIT_MESSAGES or now - self._held_since >= HOLD_LIMIT_S:
                self._write_held()

    def flush(self) -> None:
        """Send the held messages now."""
        with self._lock:
            if self._held:
                self._write_held()

    def _write_held(self) -> None:
        held, self._held = self._held, []
        with contextlib.suppress(OSError):
            self.frames.send_all(held)


class ControlSocket(ControlChannel):
    """The worker's end of the control socket."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        #: Replies from the front end to a ``DispatcherLink`` request; None once it is gone.
        self.replies: queue.SimpleQueue[list[Any] | None] = queue.SimpleQueue()
        #: How many replies were read so far: a notice comes after all of those.
        self.replies_read = 0
        #: Takes the messages the front end sends unasked (named in ``NOTICES``).
        self.on_notice: Callable[[list[Any]], None] = lambda message: None

    def read(self) -> None:
        """Pass replies on until the front end closes the socket."""
        try:
            while (data := self.frames.receive_one()) is not None:
                message = msgpack.unpackb(data)
                if message[0] in NOTICES:
                    self.on_notice(message)
                else:
                    self.replies_read += 1
                    self.replies.put(message)
        except (OSError, ValueError) as err:
            log.error("control socket: %s", err)
        self.replies.put(None)
