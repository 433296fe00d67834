"""A gRPC session's frames of calls, run on a dedicated thread per session, off the event loop.

The service only talks to ``SessionRunner``: frames of calls go in, in order, to the
session's port; reply frames come out on an asyncio queue as soon as each fills up, so a
long batch (a large device-to-host copy) streams its replies while the rest of it still
runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fikit_wire import session_pb2
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


class SessionRunner:
    """Runs one session's frames of calls in arrival order on its own thread."""

    def __init__(self, port: SessionPort, budget: ReceiveBudget) -> None:
        self.port = port
        self.budget = budget
        self._queued_bytes = 0
        self.frames: asyncio.Queue[session_pb2.ServerFrame | Exception | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(MAX_QUEUED_BATCHES)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"session-{port.id}")
        port.start(self._reply, self._end)

    def _emit(self, item: session_pb2.ServerFrame | Exception) -> None:
        self._loop.call_soon_threadsafe(self.frames.put_nowait, item)

    def _reply(self, replies: bytes) -> None:
        self._emit(session_pb2.ServerFrame(replies=replies))

    def _end(self, reason: str) -> None:
        self._emit(SessionLost(reason))

    def _run_batch(self, payload: bytes) -> None:
        """Run a frame; a malformed one (ValueError) or a server bug is put on ``frames``
        to end the session."""
        try:
            self.port.submit(payload)
        except Exception as err:
            self._emit(err)
        finally:
            self._loop.call_soon_threadsafe(self._ran, len(payload))

    def _ran(self, nbytes: int) -> None:
        self._slots.release()
        self._queued_bytes -= nbytes
        self.budget.release(nbytes)

    async def submit(self, payload: bytes) -> None:
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
