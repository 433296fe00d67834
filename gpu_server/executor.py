"""A gRPC session's frames of calls, on their way to where they run.

The service only talks to a ``Runner`` (``open_runner``): frames of calls go in, in order;
reply frames come out on an asyncio queue as soon as each fills up, so a long batch (a large
device-to-host copy) streams its replies while the rest of it still runs.

- ``SessionRunner``: the calls run in this process (``--isolation none``), on a dedicated
  thread per session, off the event loop.
- ``WorkerRelay``: the calls run in a GPU worker process; the event loop itself relays the
  frames to the worker's socket and its replies back, with no thread in between (each
  thread hop cost tens of microseconds per round trip).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from fikit_wire import calls as wire
from fikit_wire.frames import FrameDecoder, header
from fikit_wire.stream_frames import SerializedBatch, batch_prefix
from gpu_server.ports import SessionPort

#: Batches a session may have queued before the server stops reading its stream.
MAX_QUEUED_BATCHES = 64
#: Bytes of received call frames a session may have queued (one frame always fits).
MAX_SESSION_QUEUED_BYTES = 64 << 20
#: Bytes of received call frames all sessions together may have queued.
MAX_QUEUED_BYTES = 1 << 30
#: Put on ``SessionRunner.frames`` once every batch submitted before ``finish`` has run;
#: an Exception put there instead means the session cannot go on.
FINISHED = None


class SessionLost(Exception):
    """The server ended the session on its side; the message says why."""


class ReceiveBudget:
    """Bytes of call frames received and not yet executed, server-wide (event loop only).

    When a session would pass its own share or the total, the server stops reading its
    stream, and gRPC's flow control then holds the client back: memory stays bounded
    whatever clients send.
    """

    def __init__(self, limit: int = MAX_QUEUED_BYTES) -> None:
        self.limit = limit
        self.in_use = 0
        self._waiters: list[asyncio.Future[None]] = []

    async def changed(self) -> None:
        """Wait until some queued bytes are released."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def release(self, nbytes: int) -> None:
        """A batch of ``nbytes`` has run."""
        self.in_use -= nbytes
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


#: Bytes the relay reads from a worker's socket at once (a long reply frame is read into
#: a buffer of its own, below).
RELAY_READ_BYTES = 1 << 20
#: A frame up to this size goes to the worker with its header in one system call (the
#: two copied together); a larger one in two, uncopied. A reply frame longer than this
#: is read straight into a buffer the relay keeps, and copied once into its gRPC form.
RELAY_JOIN_BYTES = 1 << 16
#: The largest buffer for long reply frames a relay keeps between them (the client
#: stub's copies come in frames of a few megabytes; a longer one gets a buffer of its own).
RELAY_KEPT_BYTES = 8 << 20
#: What a runner hands the service: a reply frame (its payload, or a long one serialized
#: already), FINISHED, or the Exception that ends the session.
RunnerItem = bytes | SerializedBatch | Exception | None


class Runner(Protocol):
    """One gRPC session's way to where its calls run."""

    #: Reply frames, then FINISHED (or an Exception that ends the session).
    frames: asyncio.Queue[RunnerItem]

    async def submit(self, payload: wire.Payload) -> None:
        """Pass a frame of calls on after the earlier ones; waits while too much is queued."""

    def finish(self) -> None:
        """The client half-closed: FINISHED follows the replies to what it sent."""

    async def close(self, cleanup: Callable[[SessionPort], None]) -> None:
        """Stop, then run ``cleanup(port)`` off the event loop."""


def open_runner(port: SessionPort, budget: ReceiveBudget) -> Runner:
    """A relay for a session that runs in another process, else a thread of its own."""
    sock = port.relay_socket()
    return SessionRunner(port, budget) if sock is None else WorkerRelay(port, sock)


class SessionRunner:
    """Runs one session's frames of calls in arrival order on its own thread."""

    def __init__(self, port: SessionPort, budget: ReceiveBudget) -> None:
        self.port = port
        self.budget = budget
        self._queued_bytes = 0
        self.frames: asyncio.Queue[RunnerItem] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(MAX_QUEUED_BATCHES)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"session-{port.id}")
        port.start(self._reply, self._end)

    def _emit(self, item: bytes | Exception) -> None:
        self._loop.call_soon_threadsafe(self.frames.put_nowait, item)

    def _reply(self, replies: bytes) -> None:
        self._emit(replies)

    def _end(self, reason: str) -> None:
        self._emit(SessionLost(reason))

    def _run_batch(self, payload: wire.Payload) -> None:
        """Run a frame; a malformed one (ValueError) or a server bug is put on ``frames``
        to end the session."""
        try:
            self.port.submit([payload])
        except Exception as err:
            self._emit(err)
        finally:
            self._loop.call_soon_threadsafe(self._ran, len(payload))

    def _ran(self, nbytes: int) -> None:
        self._slots.release()
        self._queued_bytes -= nbytes
        self.budget.release(nbytes)

    async def submit(self, payload: wire.Payload) -> None:
        """Queue a frame of calls, waiting while the session already has
        MAX_QUEUED_BATCHES or MAX_SESSION_QUEUED_BYTES queued, or all sessions together
        the budget's limit (a session with nothing queued may always queue one)."""
        nbytes = len(payload)
        budget = self.budget
        while self._queued_bytes and (
            self._queued_bytes + nbytes > MAX_SESSION_QUEUED_BYTES
            or budget.in_use + nbytes > budget.limit
        ):
            await budget.changed()
        self._queued_bytes += nbytes
        budget.in_use += nbytes
        await self._slots.acquire()
        self._thread.submit(self._run_batch, payload)

    def finish(self) -> None:
        """Put FINISHED on ``frames`` once every batch submitted so far has run and its
        replies are on ``frames``."""
        self._thread.submit(self._finished)

    def _finished(self) -> None:
        self.port.drain()
        self._loop.call_soon_threadsafe(self.frames.put_nowait, FINISHED)

    async def close(self, cleanup: Callable[[SessionPort], None]) -> None:
        """Run ``cleanup(port)`` on the session's thread after all queued batches, then
        stop the thread."""
        await asyncio.get_running_loop().run_in_executor(self._thread, cleanup, self.port)
        self._thread.shutdown(wait=False)


class WorkerRelay:
    """Relays one session's frames to the GPU worker that runs it, and its replies back,
    on the event loop. A frame waits for the worker's socket to take it before the next is
    read from the client, so gRPC's flow control holds a client back that sends faster
    than its worker reads."""

    def __init__(self, port: SessionPort, sock: socket.socket) -> None:
        self.port = port
        self.frames: asyncio.Queue[RunnerItem] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._decoder = FrameDecoder()
        self._chunk = memoryview(bytearray(RELAY_READ_BYTES))
        #: The long reply frame being read straight into a buffer kept for them (a fresh
        #: megabyte per read costs its page faults): its payload's size and the bytes of it
        #: read so far (``_long_size`` 0: none is being read).
        self._long_buffer = memoryview(bytearray())
        self._long_size = 0
        self._long_read = 0
        self._finishing = False
        self._ended = False
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._readable)

    async def submit(self, payload: wire.Payload) -> None:
        try:
            if len(payload) <= RELAY_JOIN_BYTES:
                await self._loop.sock_sendall(self._sock, header(payload) + payload)
            else:
                await self._loop.sock_sendall(self._sock, header(payload))
                await self._loop.sock_sendall(self._sock, payload)
        except OSError:
            pass  # the reader tells the client why the worker went away

    def finish(self) -> None:
        self._finishing = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)  # the worker runs what it has, then ends

    async def close(self, cleanup: Callable[[SessionPort], None]) -> None:
        self._stop_reading()
        await asyncio.to_thread(cleanup, self.port)

    def _readable(self) -> None:
        reading_long = self._long_size > 0
        try:
            if reading_long:
                view = self._long_buffer[self._long_read : self._long_size]
                received = self._sock.recv_into(view)
            else:
                received = self._sock.recv_into(self._chunk)
        except BlockingIOError:
            return
        except OSError:
            received = 0
        if not received:
            self._stop_reading()
            if self._finishing and not reading_long:
                self.frames.put_nowait(FINISHED)
            else:
                self._loop.create_task(self._lost())
            return
        if reading_long:
            self._long_read += received
            if self._long_read == self._long_size:
                self._hand_on_long_frame()
            return
        try:
            payloads = self._decoder.feed(self._chunk[:received])
        except ValueError as err:
            self._stop_reading()
            self.frames.put_nowait(SessionLost(f"the GPU worker's replies: {err}"))
            return
        for payload in payloads:
            reason = wire.end_reason(payload)
            if reason is not None:  # the worker ended the session (a malformed frame)
                self._stop_reading()
                self.frames.put_nowait(ValueError(reason))
                return
            self.frames.put_nowait(payload)
        long_start = self._decoder.take_long_start(RELAY_JOIN_BYTES)
        if long_start is not None:
            size, start = long_start
            if len(self._long_buffer) < size:
                self._long_buffer = memoryview(bytearray(size))
            self._long_buffer[: len(start)] = start
            self._long_size, self._long_read = size, len(start)

    def _hand_on_long_frame(self) -> None:
        """The long reply frame is all read: on to gRPC in its wire form (one copy)."""
        size = self._long_size
        data = b"".join((batch_prefix(size), self._long_buffer[:size]))
        self.frames.put_nowait(SerializedBatch(data))
        self._long_size = 0
        if len(self._long_buffer) > RELAY_KEPT_BYTES:
            self._long_buffer = memoryview(bytearray())

    async def _lost(self) -> None:
        self.frames.put_nowait(SessionLost(await asyncio.to_thread(self.port.lost)))

    def _stop_reading(self) -> None:
        if not self._ended:
            self._ended = True
            self._loop.remove_reader(self._sock.fileno())
