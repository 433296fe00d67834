"""Host memory on the client: reading and writing user buffers, and pinned allocations.

cuda-python takes host memory as an int address or any object with the buffer protocol
(numpy arrays, bytes, bytearray, memoryview, ctypes arrays). Page-locked memory from
``cuMemAllocHost``/``cuMemHostAlloc`` is ordinary local memory here: the GPU is remote,
so nothing on this machine can be mapped for it.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

#: A copy between host buffers at least this long is split across COPY_THREADS threads
#: (the caller's and a pool's): one thread's memcpy (3.4-5.5 GB/s on the H200's host)
#: would bound a staged copy, where the driver's own pageable copies ran at 8-17 GB/s.
PARALLEL_COPY_BYTES = 4 << 20
COPY_THREADS = min(
    4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
)
_copiers: ThreadPoolExecutor | None = None
_copiers_lock = threading.Lock()


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
        copy_bytes(_address_view(dst + offset, len(data)), data)
        return
    view = _byte_view(dst)
    if view.readonly:
        raise HostBufferError("host buffer is read-only")
    if view.nbytes < offset + len(data):
        raise HostBufferError(f"host buffer holds {view.nbytes} bytes, copy needs more")
    copy_bytes(view[offset : offset + len(data)], data)


def copy_bytes(dst: memoryview, src: bytes | memoryview) -> None:
    """Copy ``src`` into ``dst`` (a byte view of the same length); a long copy runs in
    COPY_THREADS pieces at once (numpy copies without holding the interpreter)."""
    size = len(src)
    if size < PARALLEL_COPY_BYTES or COPY_THREADS < 2:
        dst[:] = src
        return
    target = np.frombuffer(dst, np.uint8)
    source = np.frombuffer(src, np.uint8)
    step = -(-size // COPY_THREADS)

    def piece(start: int) -> None:
        np.copyto(target[start : start + step], source[start : start + step])

    others = [_copy_pool().submit(piece, start) for start in range(step, size, step)]
    piece(0)
    for done in others:
        done.result()


def _copy_pool() -> ThreadPoolExecutor:
    global _copiers
    with _copiers_lock:
        if _copiers is None:
            _copiers = ThreadPoolExecutor(COPY_THREADS - 1, thread_name_prefix="fikit-copy")
        return _copiers


def _forget_copy_pool() -> None:
    """In a forked child: the pool's threads stayed in the parent; start a new pool."""
    global _copiers, _copiers_lock
    _copiers, _copiers_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_forget_copy_pool)


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
