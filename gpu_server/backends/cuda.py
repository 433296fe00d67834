"""The real-GPU backend: every operation runs through NVIDIA's driver API (cuda-python).

Objects handed to the session layer are the bindings' own handle types (``CUcontext``,
``CUmodule``, ``CUstream``...). Each binding returns a tuple led by a ``CUresult``;
``_check`` turns a failure into ``CudaError`` and unwraps the rest.

CUDA's current context is per thread. Every method that takes a context makes it current
on the calling thread, calling ``cuCtxSetCurrent`` only when the thread's last known
current context differs (or a context has been destroyed since).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Sequence
from typing import Any

from cuda.bindings import driver

from gpu_server.backends.base import (
    Backend,
    Context,
    Event,
    Function,
    Kernel,
    KernelLaunch,
    Library,
    Module,
    ParamLayout,
    Stream,
)
from gpu_server.errors import CudaError, invalid_handle, invalid_value
from scheduler.dispatcher import clock_us

log = logging.getLogger(__name__)

_ATTR = driver.CUdevice_attribute

_SUCCESS = driver.CUresult.CUDA_SUCCESS
_NOT_READY = driver.CUresult.CUDA_ERROR_NOT_READY
_INVALID_VALUE = driver.CUresult.CUDA_ERROR_INVALID_VALUE

#: The stream ints of the wire: NULL stream, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD.
_SPECIAL_STREAMS = {value: driver.CUstream(value) for value in (0, 1, 2)}

#: Bytes of the per-thread kernel parameter buffer: the driver's limit (32764) rounded up.
_PARAM_BUFFER_BYTES = 32768
#: Parameter layouts a thread keeps ready pointer arrays for before starting over.
_MAX_CACHED_LAYOUTS = 1024

#: (synchronous, asynchronous) memset of each element width in bytes.
_MEMSETS = {
    1: (driver.cuMemsetD8, driver.cuMemsetD8Async),
    2: (driver.cuMemsetD16, driver.cuMemsetD16Async),
    4: (driver.cuMemsetD32, driver.cuMemsetD32Async),
}

#: Leading bytes of images that carry their own size: cubin (ELF) and fatbin.
_BINARY_MAGICS = (b"\x7fELF", b"\x50\xed\x55\xba")

_JIT = driver.CUjit_option
#: JIT options whose values cuda-python takes as enums; the wire carries their ints.
_JIT_ENUM_VALUES: dict[int, Any] = {
    int(_JIT.CU_JIT_TARGET): driver.CUjit_target,
    int(_JIT.CU_JIT_FALLBACK_STRATEGY): driver.CUjit_fallback,
    int(_JIT.CU_JIT_CACHE_MODE): driver.CUjit_cacheMode,
}
#: JIT log options: their buffers live in the client's process, so they are left out.
_JIT_LOG_OPTIONS = frozenset(
    int(option)
    for option in (
        _JIT.CU_JIT_INFO_LOG_BUFFER,
        _JIT.CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES,
        _JIT.CU_JIT_ERROR_LOG_BUFFER,
        _JIT.CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
    )
)
#: JIT options that pass host arrays (symbol tables) and their lengths: refused.
_JIT_HOST_ARRAY_OPTIONS = frozenset(
    int(option)
    for option in (
        _JIT.CU_JIT_GLOBAL_SYMBOL_NAMES,
        _JIT.CU_JIT_GLOBAL_SYMBOL_ADDRESSES,
        _JIT.CU_JIT_GLOBAL_SYMBOL_COUNT,
        _JIT.CU_JIT_REFERENCED_KERNEL_NAMES,
        _JIT.CU_JIT_REFERENCED_KERNEL_COUNT,
        _JIT.CU_JIT_REFERENCED_VARIABLE_NAMES,
        _JIT.CU_JIT_REFERENCED_VARIABLE_COUNT,
    )
)


def _check(result: tuple[Any, ...]) -> Any:
    """Raise ``CudaError`` unless ``result[0]`` is CUDA_SUCCESS; return the other values.

    None when there are none, the value when there is one, else a tuple of them.
    """
    if result[0]:
        raise CudaError(result[0])
    if len(result) == 1:
        return None
    if len(result) == 2:
        return result[1]
    return result[1:]


def _completed(err: driver.CUresult) -> bool:
    """A query's result: True when done, False when CUDA_ERROR_NOT_READY."""
    if err == _NOT_READY:
        return False
    if err:
        raise CudaError(err)
    return True


def _stream(stream: Stream) -> Any:
    """The driver handle for a stream argument (a CUstream or one of the ints 0, 1, 2)."""
    if isinstance(stream, int):
        try:
            return _SPECIAL_STREAMS[stream]
        except KeyError:
            raise invalid_handle(f"no stream {stream}") from None
    return stream


def _enum(enum_type: Any, value: int) -> Any:
    """``value`` as a member of the bindings' ``enum_type``; CUDA_ERROR_INVALID_VALUE if none."""
    try:
        return enum_type(value)
    except ValueError:
        raise invalid_value(f"{value} is not a {enum_type.__name__}") from None


def _image(image: bytes) -> bytes:
    """``image`` as the driver reads it: PTX text gets the trailing NUL NVRTC may omit."""
    if image.endswith(b"\0") or image.startswith(_BINARY_MAGICS):
        return image
    return image + b"\0"


def _jit_options(options: dict[int, int]) -> tuple[list[Any], list[Any]]:
    """The (options, values) lists the bindings take for ``options`` (CUjit_option ints)."""
    keys: list[Any] = []
    values: list[Any] = []
    for key, value in options.items():
        if key in _JIT_LOG_OPTIONS:
            continue
        if key in _JIT_HOST_ARRAY_OPTIONS:
            raise invalid_value(f"JIT option {key} passes host arrays")
        keys.append(_enum(driver.CUjit_option, key))
        enum_type = _JIT_ENUM_VALUES.get(key)
        values.append(value if enum_type is None else _enum(enum_type, value))
    return keys, values


def _load(load: Any, *args: Any) -> Any:
    """Call a module or library loader; arguments the bindings refuse: CUDA_ERROR_INVALID_VALUE."""
    try:
        result = load(*args)
    except (TypeError, AttributeError, OverflowError) as exc:
        raise invalid_value(f"JIT options: {exc}") from None
    return _check(result)


def _device(ordinal: int) -> Any:
    """The CUdevice of a device ordinal."""
    return _check(driver.cuDeviceGet(ordinal))


def cuda_available() -> bool:
    """True when the NVIDIA driver loads, initialises and reports at least one device."""
    try:
        if driver.cuInit(0)[0]:
            return False
        err, count = driver.cuDeviceGetCount()
    except (RuntimeError, OSError):
        return False
    return not err and count > 0


class _ThreadState(threading.local):
    """What one thread knows: its current context and its kernel parameter buffers.

    ``ctx`` and ``epoch`` record the context last made current on this thread and the
    backend's destroy count at the time. ``params`` is the thread's parameter buffer;
    ``pointer_arrays`` maps a layout to its ready ``void*[]`` into ``params``:
    ``(address, bytes the layout spans, the ctypes array keeping it alive)``.
    """

    def __init__(self) -> None:
        self.ctx = 0
        self.epoch = -1
        self.params = ctypes.create_string_buffer(_PARAM_BUFFER_BYTES)
        self.params_view = memoryview(self.params).cast("B")
        self.params_address = ctypes.addressof(self.params)
        self.pointer_arrays: dict[ParamLayout, tuple[int, int, Any]] = {}

    def pointer_array(self, layout: ParamLayout) -> tuple[int, int, Any]:
        """Make and keep the ``void*[]`` pointing at each parameter of ``layout``."""
        size = layout.total_size
        if size > _PARAM_BUFFER_BYTES:
            raise invalid_value(f"kernel parameters span {size} bytes")
        if len(self.pointer_arrays) >= _MAX_CACHED_LAYOUTS:
            self.pointer_arrays.clear()
        base = self.params_address
        array = (ctypes.c_void_p * len(layout.offsets))(*[base + o for o in layout.offsets])
        entry = (ctypes.addressof(array), size, array)
        self.pointer_arrays[layout] = entry
        return entry


class _EventPool:
    """Reusable events of one context: timing ones for measured launches, plain ones else."""

    def __init__(self) -> None:
        self.free: dict[bool, list[Any]] = {True: [], False: []}
        #: The event every timed probe of the context is placed after (its GPU clock's zero),
        #: and the host time (``clock_us``) at which it was seen done.
        self.epoch: Any = None
        self.epoch_host_us = 0.0


class _CudaProbe:
    """Events around one launch: an end marker, and a start marker when timed."""

    __slots__ = ("_backend", "_ctx", "_end", "_epoch", "_pool", "_start", "stream_key")

    def __init__(
        self, backend: CudaBackend, ctx: Context, stream_key: int, pool: _EventPool, timed: bool
    ) -> None:
        self.stream_key = stream_key
        self._backend = backend
        self._ctx = ctx
        self._pool = pool
        self._epoch = backend._epoch
        self._start = backend._pooled_event(pool, True) if timed else None
        self._end = backend._pooled_event(pool, timed)

    def done(self) -> bool:
        """True once the launch finished; a failed query (a fault, a destroyed context) too."""
        self._backend._use(self._ctx)
        err = driver.cuEventQuery(self._end)[0]
        return err != _NOT_READY

    def times_us(self) -> tuple[float, float] | None:
        """(start, end) on the host clock (``clock_us``); None on failure.

        The driver gives elapsed times as 32-bit floats of milliseconds: the duration is
        measured between the launch's own events, to the event resolution however long the
        server runs; only the placement after the epoch loses precision with uptime.
        """
        if self._start is None or self._epoch != self._backend._epoch:
            return None
        pool = self._pool
        err, start_ms = driver.cuEventElapsedTime(pool.epoch, self._start)
        err2, duration_ms = driver.cuEventElapsedTime(self._start, self._end)
        if err or err2:
            return None
        start = pool.epoch_host_us + start_ms * 1e3
        return start, start + duration_ms * 1e3

    def release(self) -> None:
        """Return the events to the pool, unless their context was destroyed meanwhile."""
        if self._epoch != self._backend._epoch:
            return
        if self._start is not None:
            self._pool.free[True].extend((self._start, self._end))
        else:
            self._pool.free[False].append(self._end)


class CudaBackend(Backend):
    """Executes every operation on the machine's GPUs through the CUDA driver API."""

    name = "cuda"

    def __init__(self) -> None:
        _check(driver.cuInit(0))
        self._lock = threading.Lock()
        self._tls = _ThreadState()
        #: Contexts destroyed so far: a thread whose record predates one sets its context anew.
        self._epoch = 0
        self._primary: dict[int, Any] = {}
        self._layouts: dict[int, ParamLayout] = {}
        self._pools: dict[int, _EventPool] = {}

    # -- context currency --------------------------------------------------------------
    def _set_current(self, tls: _ThreadState, ctx: Context) -> None:
        epoch = self._epoch
        _check(driver.cuCtxSetCurrent(ctx))
        tls.ctx = int(ctx)
        tls.epoch = epoch

    def _use(self, ctx: Context) -> None:
        """Make ``ctx`` current on the calling thread unless it already is."""
        tls = self._tls
        if tls.ctx != int(ctx) or tls.epoch != self._epoch:
            self._set_current(tls, ctx)

    def _forget_functions(self) -> None:
        """Drop cached layouts: unloading frees function handles the driver may reuse."""
        with self._lock:
            self._layouts.clear()

    # -- driver and devices ------------------------------------------------------------
    def driver_version(self) -> int:
        """CUDA version the driver supports, as 1000 * major + 10 * minor."""
        return _check(driver.cuDriverGetVersion())

    def device_count(self) -> int:
        """Number of visible devices."""
        return _check(driver.cuDeviceGetCount())

    def device_name(self, device: int) -> str:
        """The device's marketing name."""
        name = _check(driver.cuDeviceGetName(256, _device(device)))
        return name.split(b"\0", 1)[0].decode()

    def device_attribute(self, attribute: int, device: int) -> int:
        """A CU_DEVICE_ATTRIBUTE value."""
        attrib = _enum(driver.CUdevice_attribute, attribute)
        return _check(driver.cuDeviceGetAttribute(attrib, _device(device)))

    def device_total_mem(self, device: int) -> int:
        """Device memory in bytes."""
        return _check(driver.cuDeviceTotalMem(_device(device)))

    def device_uuid(self, device: int) -> bytes:
        """The device's 16-byte UUID."""
        return _check(driver.cuDeviceGetUuid(_device(device))).bytes

    # -- contexts ----------------------------------------------------------------------
    def primary_context(self, device: int) -> Context:
        """The device's primary context, retained once for the server's lifetime."""
        ctx = self._primary.get(device)
        if ctx is None:
            with self._lock:
                ctx = self._primary.get(device)
                if ctx is None:
                    ctx = _check(driver.cuDevicePrimaryCtxRetain(_device(device)))
                    self._primary[device] = ctx
        return ctx

    def context_create(self, flags: int, device: int) -> Context:
        """A new context; the calling thread's current context is left as it was."""
        ctx = _check(driver.cuCtxCreate(None, flags, _device(device)))
        _check(driver.cuCtxPopCurrent())
        return ctx

    def context_destroy(self, ctx: Context) -> None:
        """Destroy ``ctx`` with everything in it."""
        _check(driver.cuCtxDestroy(ctx))
        with self._lock:
            self._epoch += 1
            self._layouts.clear()
            self._pools.pop(int(ctx), None)

    def stream_priority_range(self, ctx: Context) -> tuple[int, int]:
        """(least, greatest) stream priority."""
        self._use(ctx)
        least, greatest = _check(driver.cuCtxGetStreamPriorityRange())
        return least, greatest

    # -- memory ------------------------------------------------------------------------
    def mem_get_info(self, ctx: Context) -> tuple[int, int]:
        """(free, total) device memory in bytes."""
        self._use(ctx)
        free, total = _check(driver.cuMemGetInfo())
        return free, total

    def mem_alloc(self, ctx: Context, size: int) -> int:
        """Allocate ``size`` bytes of device memory; returns the device address."""
        self._use(ctx)
        return int(_check(driver.cuMemAlloc(size)))

    def mem_free(self, ctx: Context, ptr: int) -> None:
        """Free device memory from ``mem_alloc``."""
        self._use(ctx)
        _check(driver.cuMemFree(driver.CUdeviceptr(ptr)))

    def host_register(self, memory: memoryview) -> object | None:
        """Register ``memory`` as portable page-locked memory, in device 0's primary context
        (retained for the backend's lifetime, so the registration outlives any session's
        contexts); None, logged, when the driver refuses."""
        holder = ctypes.c_char.from_buffer(memory)
        address = ctypes.addressof(holder)
        del holder  # no export may outlive this call: the caller releases ``memory`` later
        self._use(self.primary_context(0))
        (err,) = driver.cuMemHostRegister(address, len(memory), driver.CU_MEMHOSTREGISTER_PORTABLE)
        if err:
            log.info("staging area stays pageable: cuMemHostRegister gave %s", err.name)
            return None
        return address

    def host_unregister(self, handle: object) -> None:
        """Unregister memory from ``host_register``."""
        self._use(self.primary_context(0))
        _check(driver.cuMemHostUnregister(handle))

    def memcpy_htod(
        self, ctx: Context, dst: int, data: bytes | memoryview, stream: Stream | None
    ) -> None:
        """Copy host bytes to the device; ``stream`` None means a synchronous copy.

        ``data`` is pageable memory, so even the asynchronous copy has staged it by the
        time the driver returns: the caller may release it afterwards.
        """
        self._use(ctx)
        if stream is None:
            _check(driver.cuMemcpyHtoD(driver.CUdeviceptr(dst), data, len(data)))
        else:
            _check(
                driver.cuMemcpyHtoDAsync(driver.CUdeviceptr(dst), data, len(data), _stream(stream))
            )

    def memcpy_dtoh(self, ctx: Context, src: int, out: memoryview, stream: Stream | None) -> None:
        """Copy ``len(out)`` device bytes into ``out``; returns once the copy has completed."""
        self._use(ctx)
        size = len(out)
        if stream is None:
            _check(driver.cuMemcpyDtoH(out, driver.CUdeviceptr(src), size))
        else:
            handle = _stream(stream)
            _check(driver.cuMemcpyDtoHAsync(out, driver.CUdeviceptr(src), size, handle))
            _check(driver.cuStreamSynchronize(handle))

    def memcpy_dtod(
        self, ctx: Context, dst: int, src: int, size: int, stream: Stream | None
    ) -> None:
        """Copy ``size`` bytes between device addresses."""
        self._use(ctx)
        if stream is None:
            _check(driver.cuMemcpyDtoD(driver.CUdeviceptr(dst), driver.CUdeviceptr(src), size))
        else:
            _check(
                driver.cuMemcpyDtoDAsync(
                    driver.CUdeviceptr(dst), driver.CUdeviceptr(src), size, _stream(stream)
                )
            )

    def memset(
        self, ctx: Context, dst: int, value: int, width: int, count: int, stream: Stream | None
    ) -> None:
        """Set ``count`` elements of ``width`` bytes (1, 2 or 4) to ``value``.

        ``value`` is truncated to ``width`` bytes, as the C API's conversion does.
        """
        try:
            sync, asynchronous = _MEMSETS[width]
        except KeyError:
            raise invalid_value(f"memset width {width}") from None
        self._use(ctx)
        value &= (1 << (8 * width)) - 1
        if stream is None:
            _check(sync(driver.CUdeviceptr(dst), value, count))
        else:
            _check(asynchronous(driver.CUdeviceptr(dst), value, count, _stream(stream)))

    # -- modules, libraries, functions -------------------------------------------------
    def module_load(self, ctx: Context, image: bytes, jit_options: dict[int, int]) -> Module:
        """Load PTX, cubin or fatbin into ``ctx``.

        JIT log buffer options are left out (their buffers are in the client's process);
        options passing host arrays, and options the bindings cannot pass, are
        CUDA_ERROR_INVALID_VALUE.
        """
        self._use(ctx)
        image = _image(image)
        if not jit_options:
            return _check(driver.cuModuleLoadData(image))
        options, values = _jit_options(jit_options)
        return _load(driver.cuModuleLoadDataEx, image, len(options), options, values)

    def module_unload(self, ctx: Context, module: Module) -> None:
        """Unload a module; its functions become invalid."""
        self._use(ctx)
        _check(driver.cuModuleUnload(module))
        self._forget_functions()

    def module_function(self, ctx: Context, module: Module, name: str) -> Function:
        """The CUfunction called ``name`` in ``module``."""
        self._use(ctx)
        return _check(driver.cuModuleGetFunction(module, name.encode()))

    def module_global(self, ctx: Context, module: Module, name: str) -> tuple[int, int]:
        """(device pointer, size) of a module-scope ``__device__`` variable."""
        self._use(ctx)
        ptr, size = _check(driver.cuModuleGetGlobal(module, name.encode()))
        return int(ptr), size

    def library_load(self, image: bytes, jit_options: dict[int, int]) -> Library:
        """Load a context-independent library; JIT options as for ``module_load``."""
        options, values = _jit_options(jit_options)
        return _load(
            driver.cuLibraryLoadData, _image(image), options, values, len(options), None, None, 0
        )

    def library_unload(self, library: Library) -> None:
        """Unload a library; its kernels and their functions become invalid."""
        _check(driver.cuLibraryUnload(library))
        self._forget_functions()

    def library_kernel(self, library: Library, name: str) -> Kernel:
        """The CUkernel called ``name`` in ``library``."""
        return _check(driver.cuLibraryGetKernel(library, name.encode()))

    def kernel_function(self, ctx: Context, kernel: Kernel) -> Function:
        """The CUfunction of ``kernel`` in ``ctx``."""
        self._use(ctx)
        return _check(driver.cuKernelGetFunction(kernel))

    def function_name(self, function: Function) -> str:
        """The function's or library kernel's (possibly mangled) name."""
        if isinstance(function, driver.CUkernel):
            return _check(driver.cuKernelGetName(function)).decode()
        return _check(driver.cuFuncGetName(function)).decode()

    def function_param_layout(self, function: Function) -> ParamLayout:
        """Offset and size of each kernel parameter, from cuFuncGetParamInfo or, for a
        library kernel, cuKernelGetParamInfo (cached)."""
        key = int(function)
        param_info = (
            driver.cuKernelGetParamInfo
            if isinstance(function, driver.CUkernel)
            else driver.cuFuncGetParamInfo
        )
        layout = self._layouts.get(key)
        if layout is not None:
            return layout
        offsets: list[int] = []
        sizes: list[int] = []
        while True:
            err, offset, size = param_info(function, len(offsets))
            if err == _INVALID_VALUE:
                break
            if err:
                raise CudaError(err)
            offsets.append(offset)
            sizes.append(size)
        layout = ParamLayout(tuple(offsets), tuple(sizes))
        with self._lock:
            self._layouts[key] = layout
        return layout

    def function_attribute(self, ctx: Context, function: Function, attribute: int) -> int:
        """A CU_FUNC_ATTRIBUTE value."""
        attrib = _enum(driver.CUfunction_attribute, attribute)
        self._use(ctx)
        return _check(driver.cuFuncGetAttribute(attrib, function))

    def function_set_attribute(
        self, ctx: Context, function: Function, attribute: int, value: int
    ) -> None:
        """Set a CU_FUNC_ATTRIBUTE."""
        attrib = _enum(driver.CUfunction_attribute, attribute)
        self._use(ctx)
        _check(driver.cuFuncSetAttribute(function, attrib, value))

    def occupancy_max_active_blocks(
        self, ctx: Context, function: Function, block_size: int, dynamic_smem: int
    ) -> int:
        """Blocks of ``block_size`` threads that fit on one multiprocessor at once."""
        self._use(ctx)
        return _check(
            driver.cuOccupancyMaxActiveBlocksPerMultiprocessor(function, block_size, dynamic_smem)
        )

    def launch(
        self,
        ctx: Context,
        launches: Sequence[KernelLaunch],
        timed: bool,
        after: _CudaProbe | None = None,
    ) -> tuple[_CudaProbe, CudaError | None]:
        """Launch each of ``launches`` (one stream's) in order; events recorded on the
        stream before them (when ``timed``) and after them make the run's probe.

        Each launch's parameters are copied into the calling thread's parameter buffer, at
        which its layout's cached ``void*[]`` points; the driver has read them by the time
        cuLaunchKernel returns, so the buffer is free for the next launch. ``after``'s end
        event, of this or another context, gates the stream first.
        """
        tls = self._tls
        if tls.ctx != int(ctx) or tls.epoch != self._epoch:
            self._set_current(tls, ctx)
        stream = launches[0][1].stream
        if isinstance(stream, int):
            stream = _stream(stream)
        pool = self._pools.get(int(ctx)) or self._pool(ctx)
        probe = _CudaProbe(self, ctx, int(stream), pool, timed)
        failure: CudaError | None = None
        went_out = False
        try:
            if after is not None:
                _check(driver.cuStreamWaitEvent(stream, after._end, 0))
            if timed:
                _check(driver.cuEventRecord(probe._start, stream))
            arrays, params_view, launch = tls.pointer_arrays, tls.params_view, driver.cuLaunchKernel
            for function, config, params, layout in launches:
                if layout.offsets:
                    kernel_params, size, _ = arrays.get(layout) or tls.pointer_array(layout)
                    if not size <= len(params) <= _PARAM_BUFFER_BYTES:
                        failure = failure or invalid_value(
                            f"{len(params)} parameter bytes for a layout of {size}"
                        )
                        continue
                    params_view[: len(params)] = params
                else:
                    kernel_params = None
                (gx, gy, gz), (bx, by, bz), smem, _ = config
                (err,) = launch(function, gx, gy, gz, bx, by, bz, smem, stream, kernel_params, 0)
                if err:
                    failure = failure or CudaError(err)
                else:
                    went_out = True
            if not went_out and failure is not None:
                raise failure
            _check(driver.cuEventRecord(probe._end, stream))
        except CudaError:
            probe.release()  # its events go back to the pool
            raise
        return probe, failure

    def _pool(self, ctx: Context) -> _EventPool:
        """The context's event pool, made with its epoch event on first use."""
        pool = _EventPool()
        pool.epoch = _check(driver.cuEventCreate(0))
        _check(driver.cuEventRecord(pool.epoch, _SPECIAL_STREAMS[0]))
        _check(driver.cuEventSynchronize(pool.epoch))
        pool.epoch_host_us = clock_us()
        with self._lock:
            return self._pools.setdefault(int(ctx), pool)

    def _pooled_event(self, pool: _EventPool, timing: bool) -> Any:
        """A free event of the pool, or a new one (the caller's context is current)."""
        free = pool.free[timing]
        try:
            return free.pop()
        except IndexError:
            flags = 0 if timing else driver.CUevent_flags.CU_EVENT_DISABLE_TIMING
            return _check(driver.cuEventCreate(flags))

    # -- streams and events ------------------------------------------------------------
    def stream_create(self, ctx: Context, flags: int, priority: int) -> Stream:
        """A new stream with CU_STREAM flags and a priority (clamped by the driver)."""
        self._use(ctx)
        return _check(driver.cuStreamCreateWithPriority(flags, priority))

    def stream_destroy(self, ctx: Context, stream: Stream) -> None:
        """Destroy a stream from ``stream_create``."""
        if isinstance(stream, int):
            raise invalid_handle(f"stream {stream} cannot be destroyed")
        self._use(ctx)
        _check(driver.cuStreamDestroy(stream))

    def stream_synchronize(self, ctx: Context, stream: Stream) -> None:
        """Wait for all work submitted to ``stream``."""
        self._use(ctx)
        _check(driver.cuStreamSynchronize(_stream(stream)))

    def stream_query(self, ctx: Context, stream: Stream) -> bool:
        """True when all work submitted to ``stream`` has completed."""
        self._use(ctx)
        return _completed(driver.cuStreamQuery(_stream(stream))[0])

    def stream_wait_event(self, ctx: Context, stream: Stream, event: Event, flags: int) -> None:
        """Make future work on ``stream`` wait for ``event``."""
        self._use(ctx)
        _check(driver.cuStreamWaitEvent(_stream(stream), event, flags))

    def stream_priority(self, ctx: Context, stream: Stream) -> int:
        """The stream's priority."""
        self._use(ctx)
        return _check(driver.cuStreamGetPriority(_stream(stream)))

    def event_create(self, ctx: Context, flags: int) -> Event:
        """A new event with CU_EVENT flags."""
        self._use(ctx)
        return _check(driver.cuEventCreate(flags))

    def event_record(self, ctx: Context, event: Event, stream: Stream) -> None:
        """Record ``event`` on ``stream``."""
        self._use(ctx)
        _check(driver.cuEventRecord(event, _stream(stream)))

    def event_synchronize(self, ctx: Context, event: Event) -> None:
        """Wait for the work captured by the event's last record."""
        self._use(ctx)
        _check(driver.cuEventSynchronize(event))

    def event_query(self, ctx: Context, event: Event) -> bool:
        """True when the work captured by the event's last record has completed."""
        self._use(ctx)
        return _completed(driver.cuEventQuery(event)[0])

    def event_elapsed_ms(self, ctx: Context, start: Event, end: Event) -> float:
        """Milliseconds between two recorded events."""
        self._use(ctx)
        return _check(driver.cuEventElapsedTime(start, end))

    def event_destroy(self, ctx: Context, event: Event) -> None:
        """Destroy an event."""
        self._use(ctx)
        _check(driver.cuEventDestroy(event))
