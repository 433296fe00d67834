"""The remote implementations of ``cuda.bindings.driver`` functions.

Each function has the real one's name, parameters and return tuple ``(CUresult, ...)``
with the real types. Calls whose only result is a status (launches, async host-to-device
copies, memsets, event records, stream waits) are posted without waiting; their errors
come back from the next synchronizing call. ``activation.build_stub`` turns these into a
module that also carries every type, enum and constant of the real one.

The current context is per thread, as in CUDA, and lives on the client: calls that act
in the current context send its handle along.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import itertools
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from cuda.bindings.driver import (
    CUcontext,
    CUdevice,
    CUdeviceptr,
    CUevent,
    CUevent_flags,
    CUfunction,
    CUjit_option,
    CUkernel,
    CUlibrary,
    CUmodule,
    CUresult,
    CUstream,
    CUstream_flags,
    CUuuid,
)

from client_stub.connection import STAGED, Connection, ConnectionLost, connect
from client_stub.host_memory import (
    HostBufferError,
    PinnedHostMemory,
    check_host,
    read_host,
    write_host,
)
from client_stub.kernel_args import ParamCountMismatch, pack_extra, pack_kernel_params
from fikit_wire.calls import CLIENT_HANDLE_BIT, COPY_CHUNK_BYTES

log = logging.getLogger("fikit.client")

#: Priorities run from 0 (lowest) to 9 (highest); a client that sets none gets 0.
DEFAULT_PRIORITY = 0
#: Chunks of a device-to-host copy asked for at once, when its bytes come in the replies:
#: enough to keep the stream busy, few enough that the copy's bytes are not all held
#: (receiving 64 MiB whole page-faulted fresh memory for every chunk: 26,000 faults).
COPY_CHUNKS_IN_FLIGHT = 8
_STREAM_FLAGS = frozenset(int(flag) for flag in CUstream_flags)
#: Stream handles meaning the current context's NULL stream (0, CU_STREAM_LEGACY,
#: CU_STREAM_PER_THREAD).
_NULL_STREAMS = (0, 1, 2)
_EVENT_FLAGS = sum(int(flag) for flag in CUevent_flags)
#: cuMemHostAlloc flag asking for memory the GPU can map: impossible across machines.
_MEMHOSTALLOC_DEVICEMAP = 0x02
#: JIT options whose values are host buffers the remote driver cannot fill.
_HOST_BUFFER_JIT_OPTIONS = frozenset(
    int(o)
    for o in (
        CUjit_option.CU_JIT_INFO_LOG_BUFFER,
        CUjit_option.CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES,
        CUjit_option.CU_JIT_ERROR_LOG_BUFFER,
        CUjit_option.CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
    )
)


class DriverFailure(Exception):
    """Ends a stub function early with a CUresult."""

    def __init__(self, code: int | CUresult) -> None:
        super().__init__(code)
        self.code = int(code)


class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.contexts: list[int] = []


class RemoteDriver:
    """Process-wide client state: the session, per-thread contexts and answer caches."""

    def __init__(self) -> None:
        self.server: str | None = None
        self.priority: int | None = None
        self.connection: Connection | None = None
        self.lock = threading.Lock()
        self.thread = _ThreadState()
        self.context_devices: dict[int, int] = {}
        self.layouts: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self.answers: dict[tuple[Any, ...], list[Any]] = {}
        self.pinned = PinnedHostMemory()
        self.uuids: dict[int, tuple[CUuuid, ctypes.Array[ctypes.c_char]]] = {}
        #: Handles this client chooses for the streams and events it creates.
        self.created_handles = itertools.count(CLIENT_HANDLE_BIT | 1)
        #: Contexts retained or created and not since released, reset or destroyed, and
        #: the context of each stream and event created and not destroyed: a
        #: synchronization the server's work-done notice answers must name one of these
        #: (``all_work_done``).
        self.live_contexts: set[int] = set()
        self.live_streams: dict[int, int] = {}
        self.live_events: dict[int, int] = {}

    def configure(self, server: str | None, priority: int | None) -> None:
        """Choose the server and priority before the first cuInit (else the environment)."""
        self.server, self.priority = server, priority

    def connect(self) -> Connection:
        """The session, opened on first use; failures are logged and raise DriverFailure."""
        with self.lock:
            if self.connection is not None:
                return self.connection
            target = self.server or os.environ.get("FIKIT_SERVER")
            if not target:
                log.error("fikit: FIKIT_SERVER is not set: no GPU server to connect to")
                raise DriverFailure(CUresult.CUDA_ERROR_NO_DEVICE)
            priority = self.priority
            if priority is None:
                priority = int(os.environ.get("FIKIT_PRIORITY", DEFAULT_PRIORITY))
            try:
                self.connection = connect(
                    target,
                    priority=priority,
                    client_name=" ".join(sys.argv)[:200] or "python",
                    timeout=float(os.environ.get("FIKIT_CONNECT_TIMEOUT", "5")),
                )
            except ConnectionLost as err:
                log.error("fikit: %s", err)
                raise DriverFailure(CUresult.CUDA_ERROR_NO_DEVICE) from None
            atexit.register(self.connection.close)
            return self.connection

    def close(self) -> None:
        """End the session: the server frees all it held; cuInit opens a new one."""
        with self.lock:
            if self.connection is not None:
                self.connection.close()
            self.connection = None
            self.thread = _ThreadState()
            self.context_devices.clear()
            self.layouts.clear()
            self.answers.clear()
            self.uuids.clear()
            self.live_contexts.clear()
            self.live_streams.clear()
            self.live_events.clear()

    def session(self) -> Connection:
        """The open session, or CUDA_ERROR_NOT_INITIALIZED before cuInit."""
        if self.connection is None:
            raise DriverFailure(CUresult.CUDA_ERROR_NOT_INITIALIZED)
        return self.connection

    def request(self, name: str, *args: Any) -> list[Any]:
        """Round trip; returns the reply values or raises DriverFailure with its status."""
        status, *values = self.session().request(name, *args)
        if status:
            raise DriverFailure(status)
        return values

    def constant(self, name: str, *args: Any) -> list[Any]:
        """A request whose answer cannot change during the session, answered once."""
        key = (name, *args)
        values = self.answers.get(key)
        if values is None:
            values = self.request(name, *args)
            self.answers[key] = values
        return values

    def post(self, name: str, *args: Any) -> None:
        """Send without waiting; a lost session fails the next synchronizing call."""
        self.session().post(name, *args)

    @property
    def current(self) -> int:
        """Handle of this thread's current context, 0 when there is none."""
        stack = self.thread.contexts
        return stack[-1] if stack else 0

    def all_work_done(
        self, stream: int | None = None, event: int | None = None, wait: bool = False
    ) -> bool:
        """Whether a synchronization of ``event``, else of ``stream``, else of the current
        context, would return success at once: it names a live event, stream or context,
        and the server said that every call sent so far finished without error (``wait``:
        see ``Connection.work_done``)."""
        if event is not None:
            ctx = self.live_events.get(event)
        elif stream is None or stream in _NULL_STREAMS:
            ctx = self.current
        else:
            ctx = self.live_streams.get(stream)
        return ctx in self.live_contexts and self.session().work_done(wait)

    def forget_context(self, handle: int) -> None:
        """A context, its streams and events are gone, or may be: ask the server about
        them."""
        self.live_contexts.discard(handle)
        for live in (self.live_streams, self.live_events):
            for gone in [h for h, ctx in live.items() if ctx == handle]:
                del live[gone]

    def known_context(self, ctx: Any) -> int:
        handle = _handle(ctx)
        if handle not in self.context_devices:
            raise DriverFailure(CUresult.CUDA_ERROR_INVALID_CONTEXT)
        return handle

    def remember_function(self, reply: list[Any]) -> int:
        handle, offsets, sizes = reply
        self.layouts[handle] = (tuple(offsets), tuple(sizes))
        return handle


REMOTE = RemoteDriver()

#: name -> implementation, filled by ``_driver_function`` and ``_registered``.
IMPLEMENTATIONS: dict[str, Callable[..., tuple[Any, ...]]] = {}


#: What every successful call's result starts with.
_SUCCEEDED = (CUresult.CUDA_SUCCESS,)


def _registered(fn: Callable[..., tuple[Any, ...]]) -> Callable[..., tuple[Any, ...]]:
    """Register a stub as it is: it returns its whole result, status first."""
    IMPLEMENTATIONS[fn.__name__] = fn
    return fn


def _driver_function(outputs: int) -> Callable[[Callable[..., tuple[Any, ...]]], Any]:
    """Register a stub: it returns its output values, or raises DriverFailure."""

    def register(fn: Callable[..., tuple[Any, ...]]) -> Callable[..., tuple[Any, ...]]:
        failed = (None,) * outputs

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
            try:
                values = fn(*args, **kwargs)
            except DriverFailure as failure:
                return (CUresult(failure.code), *failed)
            except ConnectionLost:
                return (CUresult.CUDA_ERROR_DEVICE_UNAVAILABLE, *failed)
            return _SUCCEEDED + values

        return _registered(call)

    return register


def _handle(obj: Any) -> int:
    """The int value of a handle given as a binding object, an int or None."""
    return 0 if obj is None else int(obj)


def _name(name: Any) -> str:
    return name.decode() if isinstance(name, (bytes, bytearray)) else str(name)


def _image(image: Any) -> bytes:
    """Module image bytes from a buffer, or a NUL-terminated image at an int address."""
    if isinstance(image, int):
        return ctypes.string_at(image)
    try:
        return bytes(memoryview(image).cast("B"))
    except TypeError:
        raise DriverFailure(CUresult.CUDA_ERROR_INVALID_VALUE) from None


def _jit_options(count: int, options: Any, values: Any) -> dict[int, int]:
    options, values = list(options or ())[:count], list(values or ())[:count]
    if len(options) != len(values):
        raise DriverFailure(CUresult.CUDA_ERROR_INVALID_VALUE)
    chosen = {}
    for option, value in zip(options, values):
        if int(option) in _HOST_BUFFER_JIT_OPTIONS:
            continue
        if not isinstance(value, int):
            raise DriverFailure(CUresult.CUDA_ERROR_NOT_SUPPORTED)
        chosen[int(option)] = int(value)
    return chosen


# -- initialization, version, devices ------------------------------------------------------
@_driver_function(0)
def cuInit(Flags: int) -> tuple[()]:
    REMOTE.connect()
    REMOTE.request("cuInit", int(Flags))
    return ()


@_driver_function(1)
def cuDriverGetVersion() -> tuple[int]:
    REMOTE.connect()
    return tuple(REMOTE.constant("cuDriverGetVersion"))


@_driver_function(1)
def cuDeviceGetCount() -> tuple[int]:
    return tuple(REMOTE.constant("cuDeviceGetCount"))


@_driver_function(1)
def cuDeviceGet(ordinal: int) -> tuple[CUdevice]:
    return (CUdevice(REMOTE.constant("cuDeviceGet", int(ordinal))[0]),)


@_driver_function(1)
def cuDeviceGetName(length: int, dev: Any) -> tuple[bytes]:
    if length <= 0:
        raise DriverFailure(CUresult.CUDA_ERROR_INVALID_VALUE)
    (name,) = REMOTE.constant("cuDeviceGetName", _handle(dev))
    text = name.encode()[: length - 1] + b"\0"
    return (text + b" " * (length - len(text)),)


@_driver_function(1)
def cuDeviceGetAttribute(attrib: Any, dev: Any) -> tuple[int]:
    return tuple(REMOTE.constant("cuDeviceGetAttribute", int(attrib), _handle(dev)))


@_driver_function(1)
def cuDeviceTotalMem(dev: Any) -> tuple[int]:
    return tuple(REMOTE.constant("cuDeviceTotalMem", _handle(dev)))


@_driver_function(1)
def cuDeviceGetUuid(dev: Any) -> tuple[CUuuid]:
    device = _handle(dev)
    if device not in REMOTE.uuids:
        (raw,) = REMOTE.constant("cuDeviceGetUuid", device)
        storage = ctypes.create_string_buffer(bytes(raw), 16)
        REMOTE.uuids[device] = (CUuuid(ctypes.addressof(storage)), storage)
    return (REMOTE.uuids[device][0],)


# -- contexts ------------------------------------------------------------------------------
@_driver_function(1)
def cuDevicePrimaryCtxRetain(dev: Any) -> tuple[CUcontext]:
    device = _handle(dev)
    (handle,) = REMOTE.request("cuDevicePrimaryCtxRetain", device)
    REMOTE.context_devices[handle] = device
    REMOTE.live_contexts.add(handle)
    return (CUcontext(handle),)


def _forget_primary(device: int) -> None:
    """The device's primary context may be gone (released, reset)."""
    for handle, of in REMOTE.context_devices.items():
        if of == device:
            REMOTE.forget_context(handle)


@_driver_function(0)
def cuDevicePrimaryCtxRelease(dev: Any) -> tuple[()]:
    _forget_primary(_handle(dev))
    REMOTE.request("cuDevicePrimaryCtxRelease", _handle(dev))
    return ()


@_driver_function(2)
def cuDevicePrimaryCtxGetState(dev: Any) -> tuple[int, int]:
    flags, active = REMOTE.request("cuDevicePrimaryCtxGetState", _handle(dev))
    return (flags, active)


@_driver_function(0)
def cuDevicePrimaryCtxReset(dev: Any) -> tuple[()]:
    _forget_primary(_handle(dev))
    REMOTE.request("cuDevicePrimaryCtxReset", _handle(dev))
    return ()


@_driver_function(1)
def cuCtxCreate(ctxCreateParams: Any, flags: int, dev: Any) -> tuple[CUcontext]:
    if ctxCreateParams is not None:
        raise DriverFailure(CUresult.CUDA_ERROR_NOT_SUPPORTED)
    device = _handle(dev)
    (handle,) = REMOTE.request("cuCtxCreate", int(flags), device)
    REMOTE.context_devices[handle] = device
    REMOTE.live_contexts.add(handle)
    REMOTE.thread.contexts.append(handle)
    return (CUcontext(handle),)


@_driver_function(0)
def cuCtxDestroy(ctx: Any) -> tuple[()]:
    handle = _handle(ctx)
    REMOTE.forget_context(handle)
    REMOTE.request("cuCtxDestroy", handle)
    REMOTE.context_devices.pop(handle, None)
    stack = REMOTE.thread.contexts
    if stack and stack[-1] == handle:
        stack.pop()
    return ()


@_driver_function(0)
def cuCtxSetCurrent(ctx: Any) -> tuple[()]:
    REMOTE.session()
    stack = REMOTE.thread.contexts
    if _handle(ctx) == 0:
        if stack:
            stack.pop()
        return ()
    handle = REMOTE.known_context(ctx)
    if stack:
        stack[-1] = handle
    else:
        stack.append(handle)
    return ()


@_driver_function(1)
def cuCtxGetCurrent() -> tuple[CUcontext]:
    REMOTE.session()
    return (CUcontext(REMOTE.current),)


@_driver_function(0)
def cuCtxPushCurrent(ctx: Any) -> tuple[()]:
    REMOTE.session()
    REMOTE.thread.contexts.append(REMOTE.known_context(ctx))
    return ()


@_driver_function(1)
def cuCtxPopCurrent() -> tuple[CUcontext]:
    REMOTE.session()
    if not REMOTE.thread.contexts:
        raise DriverFailure(CUresult.CUDA_ERROR_INVALID_CONTEXT)
    return (CUcontext(REMOTE.thread.contexts.pop()),)


@_driver_function(1)
def cuCtxGetDevice() -> tuple[CUdevice]:
    REMOTE.session()
    device = REMOTE.context_devices.get(REMOTE.current)
    if device is None:
        raise DriverFailure(CUresult.CUDA_ERROR_INVALID_CONTEXT)
    return (CUdevice(device),)


@_driver_function(0)
def cuCtxSynchronize() -> tuple[()]:
    if not REMOTE.all_work_done(wait=True):
        REMOTE.request("cuCtxSynchronize", REMOTE.current)
    return ()


@_driver_function(2)
def cuCtxGetStreamPriorityRange() -> tuple[int, int]:
    least, greatest = REMOTE.request("cuCtxGetStreamPriorityRange", REMOTE.current)
    return (least, greatest)


# -- memory --------------------------------------------------------------------------------
@_driver_function(1)
def cuMemAlloc(bytesize: int) -> tuple[CUdeviceptr]:
    return (CUdeviceptr(REMOTE.request("cuMemAlloc", REMOTE.current, int(bytesize))[0]),)


@_driver_function(0)
def cuMemFree(dptr: Any) -> tuple[()]:
    REMOTE.request("cuMemFree", _handle(dptr))
    return ()


@_driver_function(2)
def cuMemGetInfo() -> tuple[int, int]:
    free, total = REMOTE.request("cuMemGetInfo", REMOTE.current)
    return (free, total)


@_driver_function(2)
def cuMemGetAddressRange(dptr: Any) -> tuple[CUdeviceptr, int]:
    base, size = REMOTE.request("cuMemGetAddressRange", _handle(dptr))
    return (CUdeviceptr(base), size)


def _copy_to_device(dst: Any, src: Any, size: int, stream: int | None) -> None:
    """Host-to-device copy in chunks; a synchronous copy waits for the last chunk.

    The bytes are taken at call time, as CUDA stages pageable memory before an
    asynchronous copy returns: through the staging area when there is one, else in
    the calls themselves."""
    connection = REMOTE.session()
    try:
        data = read_host(src, size)
    except HostBufferError as err:
        log.debug("fikit: %s", err)
        raise DriverFailure(CUresult.CUDA_ERROR_INVALID_VALUE) from None
    ctx, base = REMOTE.current, _handle(dst)
    staging = connection.staging
    step = COPY_CHUNK_BYTES if staging is None else staging.size // 4
    offsets = range(0, size, step)
    for offset in offsets:
        chunk = data[offset : offset + step]
        wants_reply = stream is None and offset == offsets[-1]
        if staging is None:
            call = ["cuMemcpyHtoD", wants_reply, ctx, base, offset, chunk, size, stream]
            replies = connection.request_many([call])
        else:
            call = ["cuMemcpyHtoDStaged", wants_reply, ctx, base, offset, STAGED, len(chunk)]
            replies = connection.send_staged([*call, size, stream], chunk)
        for status, *_ in replies:
            if status:
                raise DriverFailure(status)


def _copy_to_host(dst: Any, src: Any, size: int, stream: int | None) -> None:
    """Device-to-host copy in pipelined chunks, written into ``dst`` as they arrive."""
    connection = REMOTE.session()
    try:
        check_host(dst, size)
    except HostBufferError as err:
        log.debug("fikit: %s", err)
        raise DriverFailure(CUresult.CUDA_ERROR_INVALID_VALUE) from None
    if size == 0:
        return
    ctx, base = REMOTE.current, _handle(src)
    staging = connection.staging
    if staging is None:
        offsets = range(0, size, COPY_CHUNK_BYTES)
        calls = [
            ["cuMemcpyDtoH", True, ctx, base, o, min(COPY_CHUNK_BYTES, size - o), size, stream]
            for o in offsets
        ]
        status = connection.read_replies(
            calls, lambda i, reply: write_host(dst, offsets[i], reply[1]), COPY_CHUNKS_IN_FLIGHT
        )
        if status:
            raise DriverFailure(status)
        return
    # Chunks of an eighth of the ring, as many in flight as it holds: the server fills
    # the next chunks while this thread copies one out.
    step = staging.size // 8
    chunks = [(o, min(step, size - o)) for o in range(0, size, step)]
    calls = [
        (["cuMemcpyDtoHStaged", True, ctx, base, o, n, size, stream, STAGED], n) for o, n in chunks
    ]
    status = connection.read_staged(calls, lambda i, view: write_host(dst, i * step, view))
    if status:
        raise DriverFailure(status)


@_driver_function(0)
def cuMemcpyHtoD(dstDevice: Any, srcHost: Any, ByteCount: int) -> tuple[()]:
    _copy_to_device(dstDevice, srcHost, int(ByteCount), None)
    return ()


@_driver_function(0)
def cuMemcpyHtoDAsync(dstDevice: Any, srcHost: Any, ByteCount: int, hStream: Any) -> tuple[()]:
    _copy_to_device(dstDevice, srcHost, int(ByteCount), _handle(hStream))
    return ()


@_driver_function(0)
def cuMemcpyDtoH(dstHost: Any, srcDevice: Any, ByteCount: int) -> tuple[()]:
    _copy_to_host(dstHost, srcDevice, int(ByteCount), None)
    return ()


@_driver_function(0)
def cuMemcpyDtoHAsync(dstHost: Any, srcDevice: Any, ByteCount: int, hStream: Any) -> tuple[()]:
    _copy_to_host(dstHost, srcDevice, int(ByteCount), _handle(hStream))
    return ()


@_driver_function(0)
def cuMemcpyDtoD(dstDevice: Any, srcDevice: Any, ByteCount: int) -> tuple[()]:
    args = (REMOTE.current, _handle(dstDevice), _handle(srcDevice), int(ByteCount), None)
    REMOTE.request("cuMemcpyDtoD", *args)
    return ()


@_driver_function(0)
def cuMemcpyDtoDAsync(dstDevice: Any, srcDevice: Any, ByteCount: int, hStream: Any) -> tuple[()]:
    stream = _handle(hStream)
    REMOTE.post(
        "cuMemcpyDtoD", REMOTE.current, _handle(dstDevice), _handle(srcDevice), ByteCount, stream
    )
    return ()


def _memset(dst: Any, value: int, width: int, count: int, stream: int | None) -> tuple[()]:
    REMOTE.post("cuMemset", REMOTE.current, _handle(dst), int(value), width, int(count), stream)
    return ()


@_driver_function(0)
def cuMemsetD8(dstDevice: Any, uc: int, N: int) -> tuple[()]:
    return _memset(dstDevice, uc, 1, N, None)


@_driver_function(0)
def cuMemsetD16(dstDevice: Any, us: int, N: int) -> tuple[()]:
    return _memset(dstDevice, us, 2, N, None)


@_driver_function(0)
def cuMemsetD32(dstDevice: Any, ui: int, N: int) -> tuple[()]:
    return _memset(dstDevice, ui, 4, N, None)


@_driver_function(0)
def cuMemsetD8Async(dstDevice: Any, uc: int, N: int, hStream: Any) -> tuple[()]:
    return _memset(dstDevice, uc, 1, N, _handle(hStream))


@_driver_function(0)
def cuMemsetD16Async(dstDevice: Any, us: int, N: int, hStream: Any) -> tuple[()]:
    return _memset(dstDevice, us, 2, N, _handle(hStream))


@_driver_function(0)
def cuMemsetD32Async(dstDevice: Any, ui: int, N: int, hStream: Any) -> tuple[()]:
    return _memset(dstDevice, ui, 4, N, _handle(hStream))


def _allocate_host(bytesize: int, flags: int) -> tuple[int]:
    REMOTE.session()
    if flags & _MEMHOSTALLOC_DEVICEMAP:
        raise DriverFailure(CUresult.CUDA_ERROR_NOT_SUPPORTED)
    if bytesize <= 0:
        raise DriverFailure(CUresult.CUDA_ERROR_INVALID_VALUE)
    return (REMOTE.pinned.allocate(int(bytesize)),)


@_driver_function(1)
def cuMemAllocHost(bytesize: int) -> tuple[int]:
    return _allocate_host(bytesize, 0)


@_driver_function(1)
def cuMemHostAlloc(bytesize: int, Flags: int) -> tuple[int]:
    return _allocate_host(bytesize, int(Flags))


@_driver_function(0)
def cuMemFreeHost(p: Any) -> tuple[()]:
    REMOTE.session()
    if not REMOTE.pinned.free(_handle(p)):
        raise DriverFailure(CUresult.CUDA_ERROR_INVALID_VALUE)
    return ()


# -- modules, libraries, functions ---------------------------------------------------------
@_driver_function(1)
def cuModuleLoadData(image: Any) -> tuple[CUmodule]:
    return (CUmodule(REMOTE.request("cuModuleLoadData", REMOTE.current, _image(image), {})[0]),)


@_driver_function(1)
def cuModuleLoadDataEx(
    image: Any, numOptions: int, options: Any, optionValues: Any
) -> tuple[CUmodule]:
    jit = _jit_options(numOptions, options, optionValues)
    return (CUmodule(REMOTE.request("cuModuleLoadData", REMOTE.current, _image(image), jit)[0]),)


@_driver_function(0)
def cuModuleUnload(hmod: Any) -> tuple[()]:
    REMOTE.request("cuModuleUnload", _handle(hmod))
    return ()


@_driver_function(1)
def cuModuleGetFunction(hmod: Any, name: Any) -> tuple[CUfunction]:
    reply = REMOTE.request("cuModuleGetFunction", _handle(hmod), _name(name))
    return (CUfunction(REMOTE.remember_function(reply)),)


@_driver_function(2)
def cuModuleGetGlobal(hmod: Any, name: Any) -> tuple[CUdeviceptr, int]:
    ptr, size = REMOTE.request("cuModuleGetGlobal", _handle(hmod), _name(name))
    return (CUdeviceptr(ptr), size)


@_driver_function(1)
def cuLibraryLoadData(
    code: Any,
    jitOptions: Any,
    jitOptionsValues: Any,
    numJitOptions: int,
    libraryOptions: Any,
    libraryOptionValues: Any,
    numLibraryOptions: int,
) -> tuple[CUlibrary]:
    if numLibraryOptions:
        raise DriverFailure(CUresult.CUDA_ERROR_NOT_SUPPORTED)
    jit = _jit_options(numJitOptions, jitOptions, jitOptionsValues)
    return (CUlibrary(REMOTE.request("cuLibraryLoadData", _image(code), jit)[0]),)


@_driver_function(0)
def cuLibraryUnload(library: Any) -> tuple[()]:
    REMOTE.request("cuLibraryUnload", _handle(library))
    return ()


@_driver_function(1)
def cuLibraryGetKernel(library: Any, name: Any) -> tuple[CUkernel]:
    reply = REMOTE.request("cuLibraryGetKernel", _handle(library), _name(name))
    return (CUkernel(REMOTE.remember_function(reply)),)


@_driver_function(1)
def cuKernelGetFunction(kernel: Any) -> tuple[CUfunction]:
    reply = REMOTE.request("cuKernelGetFunction", REMOTE.current, _handle(kernel))
    return (CUfunction(REMOTE.remember_function(reply)),)


@_driver_function(1)
def cuFuncGetAttribute(attrib: Any, hfunc: Any) -> tuple[int]:
    return tuple(REMOTE.request("cuFuncGetAttribute", int(attrib), _handle(hfunc), REMOTE.current))


@_driver_function(0)
def cuFuncSetAttribute(hfunc: Any, attrib: Any, value: int) -> tuple[()]:
    args = (_handle(hfunc), int(attrib), int(value), REMOTE.current)
    REMOTE.request("cuFuncSetAttribute", *args)
    return ()


@_driver_function(2)
def cuFuncGetParamInfo(func: Any, paramIndex: int) -> tuple[int, int]:
    REMOTE.session()
    layout = REMOTE.layouts.get(_handle(func))
    if layout is None:
        raise DriverFailure(CUresult.CUDA_ERROR_INVALID_HANDLE)
    offsets, sizes = layout
    if not 0 <= paramIndex < len(offsets):
        raise DriverFailure(CUresult.CUDA_ERROR_INVALID_VALUE)
    return (offsets[paramIndex], sizes[paramIndex])


@_driver_function(1)
def cuOccupancyMaxActiveBlocksPerMultiprocessor(
    func: Any, blockSize: int, dynamicSMemSize: int
) -> tuple[int]:
    args = (_handle(func), int(blockSize), int(dynamicSMemSize), REMOTE.current)
    return tuple(REMOTE.request("cuOccupancyMaxActiveBlocksPerMultiprocessor", *args))


# Every launch takes this path, so it is kept flat: it returns its failures itself (no
# ``_driver_function`` wrapper), and ``REMOTE.session``, ``_handle`` and ``REMOTE.current``
# are written out.
@_registered
def cuLaunchKernel(
    f: Any,
    gridDimX: int,
    gridDimY: int,
    gridDimZ: int,
    blockDimX: int,
    blockDimY: int,
    blockDimZ: int,
    sharedMemBytes: int,
    hStream: Any,
    kernelParams: Any,
    extra: Any,
) -> tuple[CUresult]:
    grid = (gridDimX, gridDimY, gridDimZ)
    block = (blockDimX, blockDimY, blockDimZ)
    # ints go as they are (int() on each costs more than checking them all); anything else
    # cuda-python takes (numpy ints, objects with __int__) goes as its int() value.
    if not (
        type(gridDimX)
        is type(gridDimY)
        is type(gridDimZ)
        is type(blockDimX)
        is type(blockDimY)
        is type(blockDimZ)
        is type(sharedMemBytes)
        is int
    ):
        grid, block = tuple(map(int, grid)), tuple(map(int, block))
        sharedMemBytes = int(sharedMemBytes)
    connection = REMOTE.connection
    if connection is None:
        return (CUresult.CUDA_ERROR_NOT_INITIALIZED,)
    function = 0 if f is None else int(f)
    layout = REMOTE.layouts.get(function)
    if layout is None:
        return (CUresult.CUDA_ERROR_INVALID_HANDLE,)
    offsets, sizes = layout
    try:
        if extra and not kernelParams:
            params = pack_extra(extra, offsets, sizes)
        else:
            params = pack_kernel_params(kernelParams, offsets, sizes)
    except ParamCountMismatch as err:
        log.debug("fikit: %s", err)
        return (CUresult.CUDA_ERROR_INVALID_VALUE,)
    contexts = REMOTE.thread.contexts
    stream = 0 if hStream is None else int(hStream)
    try:
        connection.post_launch(
            contexts[-1] if contexts else 0, function, grid, block, sharedMemBytes, stream, params
        )
    except ConnectionLost:
        return (CUresult.CUDA_ERROR_DEVICE_UNAVAILABLE,)
    return _SUCCEEDED


@_registered
def cuLaunchKernelEx(config: Any, f: Any, kernelParams: Any, extra: Any) -> tuple[CUresult]:
    if config is None:
        return (CUresult.CUDA_ERROR_INVALID_VALUE,)
    if config.numAttrs:
        return (CUresult.CUDA_ERROR_NOT_SUPPORTED,)
    return cuLaunchKernel(
        f,
        config.gridDimX,
        config.gridDimY,
        config.gridDimZ,
        config.blockDimX,
        config.blockDimY,
        config.blockDimZ,
        config.sharedMemBytes,
        config.hStream,
        kernelParams,
        extra,
    )


# -- streams and events --------------------------------------------------------------------
@_driver_function(1)
def cuStreamCreate(Flags: int) -> tuple[CUstream]:
    return (_create_stream(int(Flags), 0),)


@_driver_function(1)
def cuStreamCreateWithPriority(flags: int, priority: int) -> tuple[CUstream]:
    return (_create_stream(int(flags), int(priority)),)


def _create_stream(flags: int, priority: int) -> CUstream:
    if flags not in _STREAM_FLAGS:
        raise DriverFailure(CUresult.CUDA_ERROR_INVALID_VALUE)
    handle = _created_handle()
    REMOTE.post("cuStreamCreate", REMOTE.current, flags, priority, handle)
    REMOTE.live_streams[handle] = REMOTE.current
    return CUstream(handle)


@_driver_function(0)
def cuStreamDestroy(hStream: Any) -> tuple[()]:
    REMOTE.live_streams.pop(_handle(hStream), None)
    REMOTE.request("cuStreamDestroy", _handle(hStream))
    return ()


@_driver_function(0)
def cuStreamSynchronize(hStream: Any) -> tuple[()]:
    stream = _handle(hStream)
    if not REMOTE.all_work_done(stream, wait=True):
        REMOTE.request("cuStreamSynchronize", REMOTE.current, stream)
    return ()


@_driver_function(0)
def cuStreamQuery(hStream: Any) -> tuple[()]:
    stream = _handle(hStream)
    if not REMOTE.all_work_done(stream):
        REMOTE.request("cuStreamQuery", REMOTE.current, stream)
    return ()


@_driver_function(0)
def cuStreamWaitEvent(hStream: Any, hEvent: Any, Flags: int) -> tuple[()]:
    REMOTE.post("cuStreamWaitEvent", REMOTE.current, _handle(hStream), _handle(hEvent), Flags)
    return ()


@_driver_function(1)
def cuStreamGetPriority(hStream: Any) -> tuple[int]:
    return tuple(REMOTE.request("cuStreamGetPriority", REMOTE.current, _handle(hStream)))


@_driver_function(1)
def cuEventCreate(Flags: int) -> tuple[CUevent]:
    if int(Flags) & ~_EVENT_FLAGS:
        raise DriverFailure(CUresult.CUDA_ERROR_INVALID_VALUE)
    handle = _created_handle()
    REMOTE.post("cuEventCreate", REMOTE.current, int(Flags), handle)
    REMOTE.live_events[handle] = REMOTE.current
    return (CUevent(handle),)


def _created_handle() -> int:
    """A handle for a stream or event made without a round trip: the server takes the
    client's choice. Creation errors beyond these local checks come back from the next
    synchronizing call, and the handle is then unknown to the server."""
    REMOTE.session()
    if not REMOTE.current:
        raise DriverFailure(CUresult.CUDA_ERROR_INVALID_CONTEXT)
    return next(REMOTE.created_handles)


@_driver_function(0)
def cuEventRecord(hEvent: Any, hStream: Any) -> tuple[()]:
    REMOTE.post("cuEventRecord", REMOTE.current, _handle(hEvent), _handle(hStream))
    return ()


@_driver_function(0)
def cuEventSynchronize(hEvent: Any) -> tuple[()]:
    event = _handle(hEvent)
    if not REMOTE.all_work_done(event=event, wait=True):
        REMOTE.request("cuEventSynchronize", event)
    return ()


@_driver_function(0)
def cuEventQuery(hEvent: Any) -> tuple[()]:
    event = _handle(hEvent)
    if not REMOTE.all_work_done(event=event):
        REMOTE.request("cuEventQuery", event)
    return ()


@_driver_function(1)
def cuEventElapsedTime(hStart: Any, hEnd: Any) -> tuple[float]:
    return tuple(REMOTE.request("cuEventElapsedTime", _handle(hStart), _handle(hEnd)))


@_driver_function(0)
def cuEventDestroy(hEvent: Any) -> tuple[()]:
    REMOTE.live_events.pop(_handle(hEvent), None)
    REMOTE.request("cuEventDestroy", _handle(hEvent))
    return ()


# -- errors (answered locally, like the real driver they need no initialization) -----------
def _known_result(error: Any) -> CUresult:
    try:
        return CUresult(int(error))
    except ValueError:
        raise DriverFailure(CUresult.CUDA_ERROR_INVALID_VALUE) from None


@_driver_function(1)
def cuGetErrorName(error: Any) -> tuple[bytes]:
    return (_known_result(error).name.encode(),)


@_driver_function(1)
def cuGetErrorString(error: Any) -> tuple[bytes]:
    doc = (_known_result(error).__doc__ or "").strip()
    return (" ".join(doc.split()).encode(),)
