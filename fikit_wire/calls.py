"""Encoding of driver calls and their replies inside session frames.

A client frame carries a msgpack array of calls. Each call is an array
``[name, wants_reply, arg0, arg1, ...]`` where ``name`` is the CUDA driver function
(``"cuMemAlloc"``) and the arguments are plain msgpack values: ints, bytes, strings,
lists. Handles travel as ints chosen by the server.

The server answers every call with ``wants_reply`` true, in order, with an array
``[status, value0, value1, ...]`` where ``status`` is a ``CUresult`` code. Calls sent
without ``wants_reply`` get no answer: their errors are kept by the session and
returned by the next synchronizing call, as CUDA reports asynchronous errors.

Staging. A client on the server's host moves bulk copy data through a shared-memory file
instead of the stream: it creates the file in ``STAGING_DIR`` (named ``fikit-`` and 32 hex
digits), names it in its Hello, and the server maps it when it can (the Welcome says so).
``cuMemcpyHtoDStaged`` then carries an offset into the file where the client put the bytes,
and ``cuMemcpyDtoHStaged`` an offset where the server writes them before it replies.

Work-done notices. A client on a unix socket may ask in its Hello for ``notices``: while it
sends nothing, the server then tells it, in a frame of its own (``pack_done``), how many of
its calls have run once they all succeeded and the GPU finished the work they queued. A
synchronization that such a notice already covers needs no round trip.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

import msgpack

PROTOCOL_VERSION = 1

#: Largest gRPC message either side accepts (module images travel whole).
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
#: Bulk copies without a staging area are cut into calls carrying at most this many bytes.
#: On the H200 over TCP, 2 MiB moved 64 MiB 15-20% faster than 1 MiB each way (gRPC's
#: cost per message); 4 MiB no faster again.
COPY_CHUNK_BYTES = 2 * 1024 * 1024
#: A frame stops growing once its payload passes this size.
FRAME_SOFT_LIMIT_BYTES = 4 * 1024 * 1024
#: Set in every handle a client chooses itself (streams and events, created without a round
#: trip); never set in a handle the server gives out.
CLIENT_HANDLE_BIT = 1 << 62
#: Where staging files live: a directory both ends see (mounted into client containers).
STAGING_DIR = os.environ.get("FIKIT_STAGING_DIR", "/dev/shm")
#: The only names a server accepts for a staging file.
STAGING_NAME = re.compile(r"fikit-[0-9a-f]{32}")
#: The largest staging file a server maps.
MAX_STAGING_BYTES = 1024 * 1024 * 1024


#: A frame's payload as received: its own bytes, or a view of the bytes it arrived in.
Payload = bytes | memoryview


#: Each thread's packer: ``msgpack.packb`` builds a packer per call, which costs more than
#: packing a launch (2.5 us against 0.8 on the development machine).
_packers = threading.local()


def _packer() -> msgpack.Packer:
    try:
        return _packers.packer
    except AttributeError:
        _packers.packer = msgpack.Packer(use_bin_type=True)
        return _packers.packer


def pack(items: Any) -> bytes:
    """Encode a batch of calls or replies (or one call, for ``array_header``)."""
    return _packer().pack(items)


def array_header(count: int) -> bytes:
    """What goes before ``count`` values packed one by one to make them one array (a batch
    of calls packed one by one, a call packed argument by argument)."""
    return _packer().pack_array_header(count)


def bin_header(size: int) -> bytes:
    """What goes before ``size`` bytes to make them one packed binary value."""
    if size <= 0xFF:
        return bytes((0xC4, size))
    if size <= 0xFFFF:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


class SessionEnded(ValueError):
    """The server ended the session; the message says why."""


def pack_end(reason: str) -> bytes:
    """The frame by which a server ends a session on a socket, saying why."""
    return msgpack.packb({"error": reason}, use_bin_type=True)


def pack_done(calls: int) -> bytes:
    """The notice that the session's first ``calls`` calls ran and their GPU work is done."""
    return _packer().pack({"done": calls})


def _is_map(payload: Payload) -> bool:
    """Whether a frame is a msgpack map (a batch of replies is an array): one byte's look."""
    return bool(payload) and (0x80 <= payload[0] <= 0x8F or payload[0] in (0xDE, 0xDF))


def done_count(payload: Payload) -> int | None:
    """The count in a ``pack_done`` frame; None for any other frame."""
    if not _is_map(payload):
        return None
    try:
        fields = msgpack.unpackb(payload)
    except Exception:  # msgpack raises several unrelated types
        return None
    calls = fields.get("done") if isinstance(fields, dict) else None
    return calls if isinstance(calls, int) else None


def end_reason(payload: bytes) -> str | None:
    """The reason in a ``pack_end`` frame; None for any other frame (only a frame that is
    a msgpack map is decoded, so a batch of replies costs one byte's look)."""
    if not _is_map(payload):
        return None
    try:
        unpack(payload)
    except SessionEnded as ended:
        return str(ended)
    except ValueError:
        pass
    return None


#: How a successful reply carrying one long binary value (a device-to-host copy's chunk)
#: starts: an array of two, status 0, a binary value with a 32-bit length.
_LONG_REPLY_START = b"\x92\x00\xc6"


def unpack_replies(data: Payload) -> list[Any]:
    """Decode a batch of replies, as ``unpack`` does; a batch of up to 15 successful replies
    that each carry one long binary value comes as views of ``data`` instead, uncopied."""
    if len(data) <= 0xFFFF:  # too short to hold one
        return unpack(data)
    view = memoryview(data)
    count = view[0] - 0x90 if 0x91 <= view[0] <= 0x9F else 0
    replies: list[Any] = []
    offset = 1
    for _ in range(count):
        if view[offset : offset + 3] != _LONG_REPLY_START:
            return unpack(data)
        size = int.from_bytes(view[offset + 3 : offset + 7], "big")
        offset += 7
        replies.append([0, view[offset : offset + size]])
        offset += size
    if not count or offset != len(view):
        return unpack(data)
    return replies


def unpack(data: Payload) -> list[Any]:
    """Decode a batch of calls or replies; raises ValueError on malformed input, and
    SessionEnded for a ``pack_end`` frame."""
    try:
        items = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ValueError(f"malformed frame: {exc}") from exc
    if isinstance(items, dict) and isinstance(items.get("error"), str):
        raise SessionEnded(items["error"])
    if not isinstance(items, list):
        raise ValueError("malformed frame: not an array")
    return items
