"""Framing of the same-host transport: length-prefixed msgpack payloads on a stream socket.

A frame is a 4-byte little-endian payload length and the payload. The client's first frame
is its Hello and the server's first its Welcome (msgpack maps, see ``gpu_server.hub``); all
later frames are call or reply batches as in ``fikit_wire.calls``.
"""

from __future__ import annotations

import array
import fcntl
import select
import socket
import struct
import termios
import time

from fikit_wire import calls as wire

_HEADER = struct.Struct("<I")
#: Bytes asked of the socket per read, into a buffer each FrameSocket keeps: a fresh
#: megabyte per ``recv`` cost tens of microseconds per small frame. Every complete frame a
#: read brings is handed out at once; a frame longer than this is read into its own buffer.
_READ_BYTES = 1 << 16
#: A payload up to this size leaves joined to its header in one ``send``: copying it costs
#: less than a gather write (``sendmsg``); a larger one is not copied.
_JOINED_BYTES = 1 << 16


def header(payload: bytes) -> bytes:
    """The header that goes before ``payload`` on the stream."""
    return _HEADER.pack(len(payload))


class FrameDecoder:
    """Cuts the bytes of a stream into frames as they arrive."""

    def __init__(self, received: bytes = b"") -> None:
        #: Bytes received that do not make a whole frame yet.
        self.buffer = bytearray(received)

    def feed(self, data: bytes) -> list[bytes]:
        """Take more of the stream; every frame now complete. Raises ValueError on a frame
        over the size limit."""
        self.buffer += data
        return self.frames()

    def frames(self) -> list[bytes]:
        """The complete frames at the start of the buffer, taken out of it."""
        frames = []
        offset = 0
        buffer = self.buffer
        with memoryview(buffer) as view:  # one copy per frame, not a slice and a copy
            while len(buffer) - offset >= _HEADER.size:
                (size,) = _HEADER.unpack_from(buffer, offset)
                if size > wire.MAX_MESSAGE_BYTES:
                    raise ValueError(f"a frame of {size} bytes is over the limit")
                end = offset + _HEADER.size + size
                if len(buffer) < end:
                    break
                frames.append(bytes(view[offset + _HEADER.size : end]))
                offset = end
        if offset:
            del buffer[:offset]
        return frames

    def take_long_start(self, longer_than: int) -> tuple[int, bytes] | None:
        """When the buffer holds the start of a frame longer than ``longer_than`` bytes and
        not all of it: take that start out; (the payload's size, its bytes so far). The
        caller reads the rest itself (the buffer is empty after). Call after ``frames``."""
        buffer = self.buffer
        if len(buffer) < _HEADER.size:
            return None
        (size,) = _HEADER.unpack_from(buffer)
        if size <= longer_than or len(buffer) - _HEADER.size >= size:
            return None
        start = bytes(memoryview(buffer)[_HEADER.size :])
        buffer.clear()
        return size, start


class FrameSocket:
    """Sends and receives frames on a connected stream socket."""

    def __init__(self, sock: socket.socket, received: bytes = b"") -> None:
        """``received``: bytes already read from ``sock`` (by another ``FrameSocket``)."""
        self.sock = sock
        self._decoder = FrameDecoder(received)
        self._buffer = self._decoder.buffer
        self._pending: list[bytes] = []
        self._chunk = memoryview(bytearray(_READ_BYTES))
        #: Asks whether the socket has something to read: a failed non-blocking read
        #: costs its exception, about three times as much (development machine).
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)

    def unread(self) -> bytes:
        """What was read from the socket and not handed out yet, as it arrived."""
        frames = [header(frame) + frame for frame in self._pending]
        return b"".join(frames) + bytes(self._buffer)

    def send(self, payload: bytes) -> None:
        """Send one frame (header and payload in one system call when they fit): a small
        payload joined to its header, a large one gathered with it."""
        size = len(payload)
        header = _HEADER.pack(size)
        if size <= _JOINED_BYTES:
            frame = header + payload
            sent = self.sock.send(frame)  # a send and a check cost less than ``sendall``
            if sent < len(frame):
                self.sock.sendall(memoryview(frame)[sent:])
            return
        sent = self.sock.sendmsg([header, payload])
        if sent < len(header) + size:
            self.sock.sendall((header + payload)[sent:])

    def send_all(self, payloads: list[bytes]) -> None:
        """Send frames in one write (for small ones: each is copied once)."""
        self.sock.sendall(b"".join(header(payload) + payload for payload in payloads))

    def unread_sent_bytes(self) -> int:
        """What was sent on the socket and not yet read by the peer (TIOCOUTQ: for a unix
        socket, the kernel's memory for it, more than the bytes themselves)."""
        count = array.array("i", [0])
        fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, count)
        return count[0]

    def poll(self) -> bool:
        """Whether anything has arrived that ``receive`` would hand out or start on, without
        waiting: what a read finds now is kept for it. False at the end of the stream too
        (``receive`` then says so)."""
        if self._pending or self._buffer:
            return True
        if not self._poller.poll(0):
            return False
        try:
            n = self.sock.recv_into(self._chunk, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        self._buffer += self._chunk[:n]
        return bool(n)

    def receive_one(self) -> bytes | None:
        """The next frame, waiting for it; None at the end of the stream."""
        frames = self.receive()
        if not frames:
            return None
        self._pending = frames[1:]
        return frames[0]

    def receive(self, spin_s: float = 0.0) -> list[bytes]:
        """Every complete frame that has arrived, waiting for at least one; [] at the end of
        the stream. Raises ValueError on a frame over the size limit or cut short.

        ``spin_s``: how long to poll the socket before blocking on it, for a peer expected
        to answer within microseconds (waking a blocked thread costs several)."""
        if self._pending:
            frames, self._pending = self._pending, []
            return frames
        while True:
            frames = self._decoder.frames()
            if frames:
                return frames
            if len(self._buffer) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self._buffer)
                if size > _READ_BYTES:
                    return [self._long_frame(size)]
            n = self._read(spin_s)
            if not n:
                if self._buffer:
                    raise ValueError("the stream ended inside a frame")
                return []
            self._buffer += self._chunk[:n]

    def _read(self, spin_s: float) -> int:
        """Read what has arrived into the chunk, polling for up to ``spin_s`` first."""
        if spin_s:
            deadline = time.perf_counter() + spin_s
            ready = self._poller.poll
            while not ready(0) and time.perf_counter() < deadline:
                pass
        return self.sock.recv_into(self._chunk)

    def _long_frame(self, size: int) -> bytes:
        """The frame of ``size`` bytes the buffer starts, read into a buffer of its own."""
        frame = bytearray(size)
        view = memoryview(frame)
        have = len(self._buffer) - _HEADER.size
        view[:have] = memoryview(self._buffer)[_HEADER.size :]
        self._buffer.clear()
        while have < size:
            n = self.sock.recv_into(view[have:])
            if not n:
                raise ValueError("the stream ended inside a frame")
            have += n
        return bytes(frame)
