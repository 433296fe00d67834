"""Host memory on the client: reading and writing user buffers, and pinned allocations.

cuda-python takes host memory as an int address or any object with the buffer protocol
(numpy arrays, bytes, bytearray, memoryview, ctypes arrays). Page-locked memory from
``cuMemAllocHost``/``cuMemHostAlloc`` is ordinary local memory here: the GPU is remote,
so nothing on this machine can be mapped for it.
"""

from __future__ import annotations

import ctypes
import mmap
import threading
from typing import Any


class HostBufferError(ValueError):
    """A host buffer is too small, read-only where it is written, or not memory."""


def read_host(src: Any, nbytes: int) -> memoryview | bytes:
    """The first ``nbytes`` of host memory ``src``, uncopied."""
    if isinstance(src, int):
        if src == 0:
            raise HostBufferError("NULL host pointer")
        return _address_view(src, nbytes)
    view = _byte_view(src)
    if view.nbytes < nbytes:
        raise HostBufferError(f"host buffer holds {view.nbytes} bytes, copy needs {nbytes}")
    return view[:nbytes]


def write_host(dst: Any, offset: int, data: bytes | memoryview) -> None:
    """Store ``data`` at byte ``offset`` of host memory ``dst``."""
    if isinstance(dst, int):
        if dst == 0:
            raise HostBufferError("NULL host pointer")
        _address_view(dst + offset, len(data))[:] = data
        return
    view = _byte_view(dst)
    if view.readonly:
        raise HostBufferError("host buffer is read-only")
    if view.nbytes < offset + len(data):
        raise HostBufferError(f"host buffer holds {view.nbytes} bytes, copy needs more")
    view[offset : offset + len(data)] = data


def check_host(dst: Any, nbytes: int) -> None:
    """Refuse a destination that cannot take ``nbytes`` before any data moves."""
    if isinstance(dst, int):
        if dst == 0:
            raise HostBufferError("NULL host pointer")
        return
    view = _byte_view(dst)
    if view.readonly or view.nbytes < nbytes:
        raise HostBufferError("host buffer is read-only or too small")


def _address_view(address: int, nbytes: int) -> memoryview:
    """The ``nbytes`` of memory at ``address``, uncopied."""
    return memoryview((ctypes.c_char * nbytes).from_address(address)).cast("B")


def _byte_view(obj: Any) -> memoryview:
    try:
        view = memoryview(obj)
    except TypeError:
        raise HostBufferError(f"{type(obj).__name__} is not host memory") from None
    if not view.contiguous:
        raise HostBufferError("host buffer is not contiguous")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


class PinnedHostMemory:
    """Allocations made by cuMemAllocHost/cuMemHostAlloc, kept alive until freed."""

    def __init__(self) -> None:
        self._blocks: dict[int, tuple[mmap.mmap, ctypes.Array[ctypes.c_char]]] = {}
        self._lock = threading.Lock()

    def allocate(self, nbytes: int) -> int:
        """Page-aligned host memory of ``nbytes``; returns its address."""
        block = mmap.mmap(-1, nbytes)
        view = (ctypes.c_char * nbytes).from_buffer(block)
        address = ctypes.addressof(view)
        with self._lock:
            self._blocks[address] = (block, view)
        return address

    def free(self, address: int) -> bool:
        """Release an allocation; False when ``address`` is not one."""
        with self._lock:
            entry = self._blocks.pop(address, None)
        if entry is None:
            return False
        block, view = entry
        del entry, view  # releases the export so that the mapping can close
        block.close()
        return True
