"""The client end of a session: one gRPC stream, calls batched while a send is under way.

Calls that want no reply are queued and leave at once when nothing is being sent; while
a frame is on its way, later calls wait in the queue and leave together in the next
frame. Calls that want a reply are queued the same way and the caller then reads the
reply stream, so replies come back in call order.

On the server's host, bulk copy bytes go through a staging area (``staging.py``) instead:
calls carry the ``STAGED`` placeholder, which becomes the offset of their bytes there.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

import grpc

from client_stub.staging import StagingArea
from fikit_wire import calls as wire
from fikit_wire import session_pb2, session_pb2_grpc

log = logging.getLogger("fikit.client")

_CLOSE = object()
#: Longest a Python thread keeps the GIL while another waits for it, in seconds. The
#: sending thread must get it promptly after a call is queued, even while the program
#: computes on the host; Python's default (5 ms) would hold a launch back that long.
GIL_SWITCH_INTERVAL_S = 0.0002
#: Stands in a call for the staging offset of its bytes.
STAGED = object()
#: How long closing a session waits for the server to end the stream.
CLOSE_TIMEOUT_S = 2.0


class ConnectionLost(Exception):
    """The server cannot be reached, refused the session, or went away."""


class Connection:
    """One session with a gpu-server."""

    def __init__(
        self, target: str, *, priority: int, client_name: str, timeout: float = 5.0
    ) -> None:
        self.target = target
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", wire.MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", wire.MAX_MESSAGE_BYTES),
            ],
        )
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            self._channel.close()
            raise ConnectionLost(
                f"no GPU server answers at {target} within {timeout:g} s"
            ) from None
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._replies: deque[list[Any]] = deque()
        self._lock = threading.Lock()
        self._lost: str | None = None
        self._closed = False
        #: Calls sent under the lock are numbered; those awaiting a reply are listed.
        self._numbered = 0
        self._awaiting: deque[int] = deque()
        offered = StagingArea.create() if os.environ.get("FIKIT_STAGING") != "off" else None
        self.staging: StagingArea | None = None
        hello = session_pb2.Hello(
            protocol_version=wire.PROTOCOL_VERSION,
            client_name=client_name,
            priority=priority,
            staging_path=offered.path if offered else "",
        )
        self._stream = session_pb2_grpc.GpuSessionStub(self._channel).Open(self._frames(hello))
        try:
            first = next(self._stream)
        except grpc.RpcError as err:
            if offered:
                offered.close()
            self.close()
            raise ConnectionLost(
                f"GPU server at {target} refused the session: {err.details()}"
            ) from None
        if offered and first.welcome.staging:
            offered.unlink()
            self.staging = offered
        elif offered:
            offered.close()
        welcome = first.welcome
        if welcome.protocol_version != wire.PROTOCOL_VERSION:
            self.close()
            raise ConnectionLost(
                f"GPU server at {target} speaks protocol {welcome.protocol_version}, "
                f"this client speaks {wire.PROTOCOL_VERSION}"
            )
        self.backend = welcome.backend
        self.session_id = welcome.session_id

    def _frames(self, hello: session_pb2.Hello) -> Iterator[session_pb2.ClientFrame]:
        """Request stream: the Hello, then whatever has queued up while the last frame left."""
        yield session_pb2.ClientFrame(hello=hello)
        while True:
            call = self._outbox.get()
            if call is _CLOSE:
                return
            batch, size = [call], _payload_size(call)
            while size < wire.FRAME_SOFT_LIMIT_BYTES:
                try:
                    call = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if call is _CLOSE:
                    yield session_pb2.ClientFrame(calls=wire.pack(batch))
                    return
                batch.append(call)
                size += _payload_size(call)
            yield session_pb2.ClientFrame(calls=wire.pack(batch))

    def post(self, name: str, *args: Any) -> None:
        """Send a call that wants no reply."""
        if self._lost is None:
            self._outbox.put([name, False, *args])

    def request(self, name: str, *args: Any) -> list[Any]:
        """Send a call and wait for its reply ``[status, *values]``."""
        return self.request_many([[name, True, *args]])[0]

    def request_many(self, calls: list[list[Any]]) -> list[list[Any]]:
        """Send calls (``[name, wants_reply, *args]``) together; return the replies wanted."""
        with self._lock:
            return self._exchange(calls)

    def send_staged(self, call: list[Any], data: bytes | memoryview) -> list[list[Any]]:
        """Send a call whose ``STAGED`` argument becomes the staging offset of ``data``;
        its reply, if it wants one."""
        with self._lock:
            (offset,) = self._reserve([len(data)])
            assert self.staging is not None
            self.staging.view[offset : offset + len(data)] = data
            return self._exchange([_placed(call, offset)])

    def request_staged(
        self, calls: list[tuple[list[Any], int]]
    ) -> list[tuple[list[Any], memoryview]]:
        """Send ``(call, size)`` pairs whose calls write ``size`` bytes at their ``STAGED``
        offset; return each reply with a view of the bytes written (valid until the next
        call on this connection)."""
        with self._lock:
            assert self.staging is not None
            offsets = self._reserve([size for _, size in calls])
            replies = self._exchange([_placed(c, o) for (c, _), o in zip(calls, offsets)])
            view = self.staging.view
            return [
                (reply, view[offset : offset + size])
                for reply, offset, (_, size) in zip(replies, offsets, calls)
            ]

    def _exchange(self, calls: list[list[Any]]) -> list[list[Any]]:
        """Send numbered calls; wait for the replies wanted. Call with the lock held."""
        if self._lost is not None:
            raise ConnectionLost(self._lost)
        for call in calls:
            self._numbered += 1
            if call[1]:
                self._awaiting.append(self._numbered)
            self._outbox.put(call)
        wanted = sum(1 for call in calls if call[1])
        return [self._next_reply() for _ in range(wanted)]

    def _reserve(self, sizes: list[int]) -> list[int]:
        """Staging space for the next numbered calls; waits for the server to free some."""
        assert self.staging is not None
        offsets = self.staging.reserve(sizes, self._numbered + 1)
        if offsets is None:
            self._exchange([["cuDriverGetVersion", True]])  # every earlier call has run
            offsets = self.staging.reserve(sizes, self._numbered + 1)
            if offsets is None:
                raise ValueError(f"{sum(sizes)} bytes do not fit the staging area")
        return offsets

    def _next_reply(self) -> list[Any]:
        while not self._replies:
            try:
                frame = next(self._stream)
            except (grpc.RpcError, StopIteration) as err:
                detail = err.details() if isinstance(err, grpc.RpcError) else "stream ended"
                self._lost = f"lost the GPU server at {self.target}: {detail}"
                log.error("fikit: %s", self._lost)
                raise ConnectionLost(self._lost) from None
            self._replies.extend(wire.unpack(frame.replies))
        if self.staging is not None:
            self.staging.release_through(self._awaiting.popleft())
        else:
            self._awaiting.popleft()
        return self._replies.popleft()

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """End the session; the server frees everything it held.

        Half-closes the stream and waits (up to ``timeout``) for the server to finish it
        before closing the channel: closing a channel under a live stream can leave gRPC's
        threads behind at interpreter exit."""
        if self._closed:
            return
        self._closed = True
        if self._lost is None:
            self._lost = "session closed"
        finished = threading.Event()
        self._stream.add_done_callback(lambda _: finished.set())
        self._outbox.put(_CLOSE)
        if not finished.wait(timeout):
            self._stream.cancel()
        self._channel.close()
        if self.staging is not None:
            self.staging.close()


def _placed(call: list[Any], offset: int) -> list[Any]:
    """``call`` with its ``STAGED`` argument replaced by ``offset``."""
    return [offset if arg is STAGED else arg for arg in call]


def _payload_size(call: list[Any]) -> int:
    return sum(len(a) for a in call if isinstance(a, (bytes, bytearray, memoryview)))
