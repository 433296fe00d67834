"""The client end of a session: over gRPC to any host, or a unix socket on the same host.

Calls that want no reply are never waited for; calls that want a reply are sent the same
way and the caller then reads replies, which come back in call order. Over gRPC a sending
thread carries queued calls, batching those that queue up while a frame is on its way.
Over the unix socket the calling thread sends each call itself, at once, as a frame of its
own; the server runs the frames it finds waiting as one batch.

On the server's host, bulk copy bytes go through a staging area (``staging.py``) instead:
calls carry the ``STAGED`` placeholder, which becomes the offset of their bytes there.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import msgpack

from client_stub.host_memory import copy_bytes
from client_stub.staging import StagingArea
from fikit_wire import calls as wire
from fikit_wire import session_pb2
from fikit_wire.frames import FrameSocket
from fikit_wire.stream_frames import (
    OPEN_METHOD,
    SerializedBatch,
    batch_prefix,
    frame_parser,
    serialize_frame,
)

log = logging.getLogger("fikit.client")

_CLOSE = object()
#: Longest a Python thread keeps the GIL while another waits for it, in seconds. The
#: sending thread must get it promptly after a call is queued, even while the program
#: computes on the host; Python's default (5 ms) would hold a launch back that long.
GIL_SWITCH_INTERVAL_S = 0.0002
#: Stands in a call for the staging offset of its bytes.
STAGED = object()
#: How long a unix-socket session polls for a reply before it blocks. A blocked thread
#: takes tens of microseconds to wake (33-60 us from the server's send to the client
#: holding a synchronization's reply on the H200), which a synchronization that waits
#: for the GPU pays each time; CUDA itself spin-waits in a synchronization by default
#: (``CU_CTX_SCHED_AUTO``). Replies that come later than this (long kernels, module
#: loads) are waited for blocked.
REPLY_SPIN_S = 1e-3
#: How long after posting a call a synchronization looks for the server's work-done notice
#: before asking: after a short kernel the notice comes sooner than a synchronization's
#: round trip would (the server reads the launch, runs it, sees the GPU done, says so). On
#: the H200 a notice after an empty kernel came a median 35-57 us after the post, 52-87 at
#: p90 (shared and none), while asking took 59-75: a shorter wait missed often enough that
#: sessions stopped waiting (NOTICE_MISS_LIMIT) and asked every time.
NOTICE_WAIT_S = 120e-6
#: Whether waiting pays is learnt from the share of a session's recent waits that went
#: unanswered (its kernels outlast the server's watch, or the server is slow to say so): an
#: average giving each new wait this weight. Above NOTICE_MISS_LIMIT the session stops
#: waiting, and tries once more every NOTICE_RETRY_AFTER synchronizations that could wait
#: (made within NOTICE_WAIT_S of a posted call).
NOTICE_MISS_WEIGHT = 0.1
NOTICE_MISS_LIMIT = 0.25
NOTICE_RETRY_AFTER = 64
#: Most payload bytes of calls a gRPC session queues before gRPC takes them.
MAX_QUEUED_BYTES = 16 * 1024 * 1024
#: A gRPC session's call with an argument of this many bytes or more (a copy's chunk, a
#: module image) leaves as a frame of its own, made by the calling thread.
OWN_FRAME_BYTES = 64 * 1024
#: How often a sender waiting for room checks that the stream still lives.
ROOM_CHECK_S = 0.1
#: How long closing a session waits for the server to end the stream.
CLOSE_TIMEOUT_S = 2.0
#: How long a client whose send failed reads for the server's reason before giving up.
PARTING_TIMEOUT_S = 0.5
#: Payloads of distinct launches a session keeps, to send again; more start
#: the memo afresh.
KEPT_LAUNCHES = 1024
#: Longest parameter buffer of a launch whose payload is kept: hashing a longer one to find
#: it again costs about what packing it does.
KEPT_LAUNCH_PARAM_BYTES = 1024


class ConnectionLost(Exception):
    """The server cannot be reached, refused the session, or went away."""


class Connection(ABC):
    """One session with a gpu-server, whichever transport carries it.

    Calls sent with the lock held (requests and staged copies) are numbered, so that the
    staging area knows which of its space the server is done with.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        self._replies: deque[list[Any]] = deque()
        self._lock = threading.Lock()
        self._lost: str | None = None
        self._closed = False
        self._numbered = 0
        self._awaiting: deque[int] = deque()
        #: Calls sent so far (counted by transports that ask for work-done notices), and
        #: how many the server's last notice covers (``fikit_wire.calls.pack_done``; -1:
        #: none came yet).
        self._sent = 0
        self._done = -1
        #: When the last call sent left, if it was posted (0.0: it wanted a reply), and how
        #: waits for notices went (``work_done``).
        self._posted_at = 0.0
        self._notice_miss_share = 0.0
        self._unwaited = 0
        self.staging: StagingArea | None = None
        self.backend = ""
        self.session_id = 0
        #: Launch arguments -> their call's payload (``post_launch``); dict operations are
        #: safe from any thread.
        self._launch_payloads: dict[tuple[Any, ...], bytes] = {}

    @staticmethod
    def _offer_staging() -> StagingArea | None:
        """A staging area to offer the server, unless FIKIT_STAGING=off."""
        return StagingArea.create() if os.environ.get("FIKIT_STAGING") != "off" else None

    def _welcomed(self, offered: StagingArea | None, welcome: dict[str, Any]) -> None:
        """Take the Welcome: keep the staging area if the server mapped it."""
        if welcome.get("protocol_version") != wire.PROTOCOL_VERSION:
            if offered:
                offered.close()
            self.close()
            raise ConnectionLost(
                f"GPU server at {self.target} speaks protocol "
                f"{welcome.get('protocol_version')}, this client speaks {wire.PROTOCOL_VERSION}"
            )
        if offered and welcome.get("staging"):
            offered.unlink()
            self.staging = offered
        elif offered:
            offered.close()
        self.backend = str(welcome.get("backend", ""))
        self.session_id = int(welcome.get("session_id", 0))

    # -- calls ---------------------------------------------------------------------------
    def post(self, name: str, *args: Any) -> None:
        """Send a call that wants no reply, from any thread. A lost session drops it: the
        next synchronizing call fails."""
        if self._lost is None:
            self._send_one(self._pack_one([name, False, *args]))

    def post_launch(self, *launch: Any) -> None:
        """Post ``cuLaunchKernel`` with these arguments: context, function, grid, block,
        shared memory bytes, stream and parameter buffer (as ``post`` does).

        Every launch takes this path, so it is written out flat. Programs launch the same
        kernels with the same arguments over and over, so the payload of a launch is kept
        (``KEPT_LAUNCHES``): finding it again costs less than packing it."""
        if self._lost is not None:
            return
        kept = self._launch_payloads
        short = len(launch[-1]) <= KEPT_LAUNCH_PARAM_BYTES
        payload = kept.get(launch) if short else None
        if payload is None:
            payload = self._pack_one(["cuLaunchKernel", False, *launch])
            if short:
                if len(kept) >= KEPT_LAUNCHES:
                    kept.clear()
                kept[launch] = payload
        self._send_one(payload)

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
            copy_bytes(self.staging.view[offset : offset + len(data)], data)
            return self._exchange([_placed(call, offset)])

    def read_staged(
        self, calls: list[tuple[list[Any], int]], consume: Callable[[int, memoryview], None]
    ) -> int:
        """Send ``(call, size)`` pairs whose calls write ``size`` bytes at their ``STAGED``
        offset, as many at a time as the staging area holds, and hand each call's bytes to
        ``consume(index, view)`` in call order as its reply comes (the view is valid during
        the callback). Stops sending at the first failing call; returns its status, or 0.

        While the client consumes one call's bytes, the server fills the space of the next.
        """
        pending: deque[tuple[int, int, int]] = deque()  # index, offset, size in flight
        failed = 0
        with self._lock:
            assert self.staging is not None
            try:
                for index, (call, size) in enumerate(calls):
                    while (offsets := self.staging.reserve([size], self._numbered + 1)) is None:
                        if not pending:
                            offsets = self._reserve([size])
                            break
                        failed = self._consume_oldest(pending, consume)
                        if failed:
                            return failed
                    self._number_and_send([_placed(call, offsets[0])])
                    pending.append((index, offsets[0], size))
                while pending and not failed:
                    failed = self._consume_oldest(pending, consume)
                return failed
            finally:
                for _ in pending:  # replies of calls sent after a failure keep their order
                    self._next_reply()

    def read_replies(
        self, calls: list[list[Any]], consume: Callable[[int, list[Any]], None], window: int
    ) -> int:
        """Send calls that each want a reply, at most ``window`` unanswered at a time, and
        hand each reply to ``consume(index, reply)`` in call order as it comes. Stops sending
        at the first failing call; returns its status, or 0.

        Only ``window`` replies are ever held: a long copy's bytes are not all in memory at
        once, and the same memory serves its chunks one after another.
        """
        sent = answered = failed = 0
        with self._lock:
            while answered < len(calls):
                while not failed and sent < len(calls) and sent - answered < window:
                    self._number_and_send([calls[sent]])
                    sent += 1
                if answered == sent:
                    break
                reply = self._next_reply()
                if not failed:
                    failed = reply[0]
                    if not failed:
                        consume(answered, reply)
                answered += 1
        return failed

    def _consume_oldest(
        self, pending: deque[tuple[int, int, int]], consume: Callable[[int, memoryview], None]
    ) -> int:
        """Wait for the oldest pending staged read; consume its bytes; return its status."""
        index, offset, size = pending.popleft()
        status = self._next_reply()[0]
        if not status:
            assert self.staging is not None
            consume(index, self.staging.view[offset : offset + size])
        return status

    def work_done(self, wait: bool = False) -> bool:
        """Whether the server said that every call sent so far ran, succeeded, and finished
        its GPU work (a synchronization would return success at once).

        ``wait`` (a synchronization is about to ask): if not yet, keep looking until
        NOTICE_WAIT_S after the last call posted, while such waits are mostly answered
        (NOTICE_MISS_LIMIT)."""
        if self._notice_covers_sent():
            return True
        if not wait or not self._notice_due():
            return False
        deadline = self._posted_at + NOTICE_WAIT_S
        answered = False
        while not answered and time.perf_counter() < deadline:
            answered = self._notice_covers_sent()
        self._notice_miss_share += NOTICE_MISS_WEIGHT * ((not answered) - self._notice_miss_share)
        return answered

    def _notice_covers_sent(self) -> bool:
        """Whether the last notice read, after reading what has arrived, covers every call
        sent."""
        with self._lock:
            if self._lost is not None:
                return False
            self._replies.extend(self._received_now())
            return self._done == self._sent

    def _notice_due(self) -> bool:
        """Whether a wait for a notice may still be answered and is worth it."""
        if time.perf_counter() >= self._posted_at + NOTICE_WAIT_S:
            return False
        if self._notice_miss_share < NOTICE_MISS_LIMIT:
            return True
        self._unwaited += 1
        if self._unwaited < NOTICE_RETRY_AFTER:
            return False
        self._unwaited = 0
        return True

    def close(self) -> None:
        """End the session; the server frees everything it held. Closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._lost is None:
            self._lost = "session closed"
        self._shut()
        if self.staging is not None:
            self.staging.close()

    def _exchange(self, calls: list[list[Any]]) -> list[list[Any]]:
        """Send numbered calls; wait for the replies wanted. Call with the lock held."""
        wanted = self._number_and_send(calls)
        return [self._next_reply() for _ in range(wanted)]

    def _number_and_send(self, calls: list[list[Any]]) -> int:
        """Send numbered calls; return how many replies they want. Call with the lock held."""
        if self._lost is not None:
            raise ConnectionLost(self._lost)
        wanted = 0
        for call in calls:
            self._numbered += 1
            if call[1]:
                self._awaiting.append(self._numbered)
                wanted += 1
        self._send(calls)
        return wanted

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
            self._replies.extend(self._receive())
        if self.staging is not None:
            self.staging.release_through(self._awaiting.popleft())
        else:
            self._awaiting.popleft()
        return self._replies.popleft()

    def _replies_in(self, payloads: list[wire.Payload]) -> list[list[Any]]:
        """The replies in frames from the server, taking note of work-done notices."""
        replies: list[list[Any]] = []
        for payload in payloads:
            done = wire.done_count(payload)
            if done is None:
                replies.extend(wire.unpack_replies(payload))
            else:
                self._done = done
        return replies

    def _lose(self, detail: str) -> ConnectionLost:
        """Mark the session lost; the error to raise."""
        self._lost = f"lost the GPU server at {self.target}: {detail}"
        log.error("fikit: %s", self._lost)
        return ConnectionLost(self._lost)

    # -- the transport -------------------------------------------------------------------
    @abstractmethod
    def _send(self, calls: list[list[Any]]) -> None:
        """Send calls together, from any thread (requests with the lock held); they are
        packed before this returns, so a call may carry a view of the caller's memory, taken
        now."""

    @staticmethod
    @abstractmethod
    def _pack_one(call: list[Any]) -> bytes:
        """One call packed as ``_send_one`` sends it."""

    @abstractmethod
    def _send_one(self, payload: bytes) -> None:
        """Send one call packed by ``_pack_one``, as ``_send`` does."""

    @abstractmethod
    def _receive(self) -> list[list[Any]]:
        """The next replies from the server, waiting for them; raises ConnectionLost."""

    def _received_now(self) -> list[list[Any]]:
        """The replies already arrived, without waiting (the transport may see none)."""
        return []

    @abstractmethod
    def _shut(self) -> None:
        """End the session on the transport."""


class GrpcConnection(Connection):
    """A session on one gRPC stream, for servers on any host.

    Calls are queued and leave at once when nothing is being sent; while a frame is on its
    way, later calls wait in the queue and leave together in the next frame.
    """

    def __init__(self, target: str, *, priority: int, client_name: str, timeout: float) -> None:
        super().__init__(target)
        options = [
            ("grpc.max_receive_message_length", wire.MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", wire.MAX_MESSAGE_BYTES),
        ]
        ca = os.environ.get("FIKIT_TLS_CA")
        if ca:
            try:
                credentials = grpc.ssl_channel_credentials(Path(ca).read_bytes())
            except OSError as err:
                raise ConnectionLost(f"cannot read FIKIT_TLS_CA {ca}: {err.strerror}") from None
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            self._channel.close()
            raise ConnectionLost(
                f"no GPU server answers at {target} within {timeout:g} s"
            ) from None
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        #: Payload bytes of the calls queued and not yet taken by gRPC.
        self._queued_bytes = 0
        self._room = threading.Condition(threading.Lock())
        offered = self._offer_staging()
        hello = session_pb2.Hello(
            protocol_version=wire.PROTOCOL_VERSION,
            client_name=client_name,
            priority=priority,
            staging_path=offered.path if offered else "",
        )
        token = os.environ.get("FIKIT_TOKEN")
        metadata = [("authorization", f"Bearer {token}")] if token else None
        open_session = self._channel.stream_stream(
            OPEN_METHOD,
            request_serializer=serialize_frame,
            response_deserializer=frame_parser(session_pb2.ServerFrame),
        )
        self._stream = open_session(self._frames(hello), metadata=metadata)
        try:
            first = next(self._stream)
        except grpc.RpcError as err:
            if offered:
                offered.close()
            self.close()
            raise ConnectionLost(
                f"GPU server at {target} refused the session: {err.details()}"
            ) from None
        # A server that answers with anything but a Welcome reads as protocol 0 below.
        welcome = (
            first.welcome if isinstance(first, session_pb2.ServerFrame) else session_pb2.Welcome()
        )
        self._welcomed(
            offered,
            {
                "protocol_version": welcome.protocol_version,
                "backend": welcome.backend,
                "session_id": welcome.session_id,
                "staging": welcome.staging,
            },
        )

    def _frames(
        self, hello: session_pb2.Hello
    ) -> Iterator[session_pb2.ClientFrame | SerializedBatch]:
        """Request stream: the Hello, then whatever has queued up while the last frame left,
        each batch joined once from its calls, packed as they were sent; a call that came
        as a frame of its own (``_own_frame``) leaves as it is, after the calls before it."""
        yield session_pb2.ClientFrame(hello=hello)
        while True:
            item = self._outbox.get()
            batch: list[bytes] = []
            size = 0
            while True:
                if item is _CLOSE or type(item) is SerializedBatch:
                    break
                batch.append(item)
                size += len(item)
                if size >= wire.FRAME_SOFT_LIMIT_BYTES:
                    item = None
                    break
                try:
                    item = self._outbox.get_nowait()
                except queue.Empty:
                    item = None
                    break
            if batch:
                header = wire.array_header(len(batch))
                prefix = batch_prefix(len(header) + size)
                yield SerializedBatch(b"".join((prefix, header, *batch)))
            if item is _CLOSE:
                return
            if item is not None:
                yield item
                size += len(item.data)
            with self._room:  # gRPC took the frames: their calls no longer count
                self._queued_bytes -= size
                self._room.notify_all()

    def _send(self, calls: list[list[Any]]) -> None:
        packed = [_own_frame(c) if any(map(_is_bulk, c)) else wire.pack(c) for c in calls]
        self._queue(
            packed, sum(len(p.data) if type(p) is SerializedBatch else len(p) for p in packed)
        )

    @staticmethod
    def _pack_one(call: list[Any]) -> bytes:
        return wire.pack(call)

    def _send_one(self, payload: bytes) -> None:
        self._queue((payload,), len(payload))

    def _queue(self, packed: Sequence[bytes | SerializedBatch], size: int) -> None:
        """Queue packed calls of ``size`` bytes (their data was taken when they were
        packed); while MAX_QUEUED_BYTES of earlier calls wait for gRPC, wait for room first
        (a long copy is taken a few frames at a time, not queued whole)."""
        room = self._room
        room.acquire()  # not ``with``: a Python-level call on every launch's path
        try:
            while self._queued_bytes and self._queued_bytes + size > MAX_QUEUED_BYTES:
                if self._stream.done():
                    raise self._lose("the stream ended")
                room.wait(ROOM_CHECK_S)
            self._queued_bytes += size
        finally:
            room.release()
        for call in packed:
            self._outbox.put(call)

    def _receive(self) -> list[list[Any]]:
        try:
            frame = next(self._stream)
        except (grpc.RpcError, StopIteration) as err:
            detail = err.details() if isinstance(err, grpc.RpcError) else "stream ended"
            raise self._lose(detail) from None
        return self._replies_in([frame if isinstance(frame, memoryview) else frame.replies])

    def _shut(self) -> None:
        """Half-close the stream and wait (up to CLOSE_TIMEOUT_S) for the server to finish
        it before closing the channel: closing a channel under a live stream can leave
        gRPC's threads behind at interpreter exit."""
        finished = threading.Event()
        self._stream.add_done_callback(lambda _: finished.set())
        self._outbox.put(_CLOSE)
        if not finished.wait(CLOSE_TIMEOUT_S):
            self._stream.cancel()
        self._channel.close()


class SocketConnection(Connection):
    """A session on a unix socket, for a server on this host.

    Each call leaves from the calling thread at once, a frame per send, with no sending
    thread to wake and nothing held back: a call that wants no reply costs the client one
    small system call. While the server is behind, the frames queue in the socket and the
    server reads and runs them together (``gpu_server.ports.serve_frames``). On the H200,
    holding such calls in an outbox until the server had caught up (TIOCOUTQ) cost the
    client more per launch than the send it saved. Replies are read by the thread that
    waits for them.
    """

    def __init__(self, target: str, *, priority: int, client_name: str, timeout: float) -> None:
        super().__init__(target)
        path = target.removeprefix("unix://").removeprefix("unix:")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as err:
            sock.close()
            raise ConnectionLost(f"no GPU server answers at {target}: {err.strerror}") from None
        self._frames = FrameSocket(sock)
        #: Held while a frame is sent: frames from two threads never interleave.
        self._send_lock = threading.Lock()
        offered = self._offer_staging()
        hello = {
            "protocol_version": wire.PROTOCOL_VERSION,
            "client_name": client_name,
            "priority": priority,
            "staging_path": offered.path if offered else "",
            "token": os.environ.get("FIKIT_TOKEN", ""),
            "notices": True,
        }
        try:
            self._frames.send(msgpack.packb(hello))
            first = self._frames.receive_one()
            welcome = {"error": "no answer"} if first is None else msgpack.unpackb(first)
        except (OSError, ValueError, msgpack.UnpackException) as err:
            welcome = {"error": str(err)}
        if not isinstance(welcome, dict) or "error" in welcome:
            if offered:
                offered.close()
            self.close()
            reason = welcome.get("error") if isinstance(welcome, dict) else "a bad Welcome"
            raise ConnectionLost(f"GPU server at {target} refused the session: {reason}")
        sock.settimeout(None)
        self._welcomed(offered, welcome)

    def _send(self, calls: list[list[Any]]) -> None:
        self._send_frame(wire.pack(calls), len(calls))
        self._posted_at = 0.0

    @staticmethod
    def _pack_one(call: list[Any]) -> bytes:
        return wire.pack([call])

    def _send_one(self, payload: bytes) -> None:
        self._send_frame(payload, 1)
        self._posted_at = time.perf_counter()

    def _send_frame(self, payload: bytes, calls: int) -> None:
        """Send one frame of ``calls`` calls; frames of two threads never interleave."""
        try:
            self._send_lock.acquire()  # not ``with``: half the cost, on every launch's path
            try:
                self._frames.send(payload)
                self._sent += calls
            finally:
                self._send_lock.release()
        except OSError as err:
            raise self._lose(self._parting_words() or err.strerror or "send failed") from None

    def _parting_words(self) -> str:
        """Why the server ended the session, when it said so before closing; else ''."""
        try:
            self._frames.sock.settimeout(PARTING_TIMEOUT_S)
            while payloads := self._frames.receive():
                for payload in payloads:
                    wire.unpack(payload)
        except wire.SessionEnded as ended:
            return str(ended)
        except (OSError, ValueError):
            pass
        return ""

    def _receive(self) -> list[list[Any]]:
        try:
            payloads = self._frames.receive(REPLY_SPIN_S)
            if not payloads:
                raise self._lose("the server closed the session")
            return self._replies_in(payloads)
        except (OSError, ValueError) as err:
            raise self._lose(str(err)) from None

    def _received_now(self) -> list[list[Any]]:
        try:
            if not self._frames.poll():
                return []
        except OSError as err:
            raise self._lose(str(err)) from None
        return self._receive()

    def _shut(self) -> None:
        self._frames.sock.close()


def connect(target: str, *, priority: int, client_name: str, timeout: float = 5.0) -> Connection:
    """A session with the server at ``target``: ``unix:PATH`` (this host) or ``host:port``."""
    kind = SocketConnection if target.startswith("unix:") else GrpcConnection
    return kind(target, priority=priority, client_name=client_name, timeout=timeout)


def _is_bulk(arg: Any) -> bool:
    """Whether a call's argument holds OWN_FRAME_BYTES of data or more."""
    return isinstance(arg, (bytes, bytearray, memoryview)) and len(arg) >= OWN_FRAME_BYTES


def _own_frame(call: list[Any]) -> SerializedBatch:
    """``call`` as a gRPC batch frame of its own, its bulk arguments copied once, into the
    frame (packing them first and joining the packed call to a batch copied them twice)."""
    pieces = [wire.array_header(1), wire.array_header(len(call))]
    for arg in call:
        if _is_bulk(arg):
            pieces += (wire.bin_header(len(arg)), arg)
        else:
            pieces.append(wire.pack(arg))
    size = sum(map(len, pieces))
    return SerializedBatch(b"".join((batch_prefix(size), *pieces)))


def _placed(call: list[Any], offset: int) -> list[Any]:
    """``call`` with its ``STAGED`` argument replaced by ``offset``."""
    return [offset if arg is STAGED else arg for arg in call]
