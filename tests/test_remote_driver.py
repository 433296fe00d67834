"""The driver stub end to end: real gRPC on loopback to a server on the CPU test double."""

from __future__ import annotations

import ctypes
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from types import ModuleType

import numpy as np
import pytest
from cuda.bindings.driver import CUresult

from client_stub import connection
from client_stub import driver as impl
from client_stub.connection import Connection, connect
from fikit_wire import calls as wire
from fikit_wire.calls import CLIENT_HANDLE_BIT, COPY_CHUNK_BYTES
from gpu_server.backends.sim import SimBackend
from gpu_server.ownership import DeviceOwnership
from gpu_server.session import Session, handle_counter
from scheduler.dispatcher import Dispatcher
from scheduler.policy import FifoPolicy
from tests.ptx_samples import SAXPY_PTX
from tests.test_sessions import wait_until

OK = CUresult.CUDA_SUCCESS


def ok(result: tuple) -> object:
    """The single value of a successful call (or None for a status-only call)."""
    assert result[0] == OK, result
    values = result[1:]
    return values[0] if len(values) == 1 else (values or None)


@pytest.fixture
def ctx(remote: ModuleType) -> object:
    ok(remote.cuInit(0))
    context = ok(remote.cuDevicePrimaryCtxRetain(0))
    ok(remote.cuCtxSetCurrent(context))
    return context


@pytest.fixture
def module(remote: ModuleType, ctx: object) -> object:
    return ok(remote.cuModuleLoadData(SAXPY_PTX))


def test_calls_before_cuinit_fail_with_not_initialized(remote: ModuleType) -> None:
    assert remote.cuMemAlloc(16) == (CUresult.CUDA_ERROR_NOT_INITIALIZED, None)
    assert remote.cuCtxSynchronize() == (CUresult.CUDA_ERROR_NOT_INITIALIZED,)


def test_device_queries(remote: ModuleType) -> None:
    assert remote.cuInit(0) == (OK,)
    assert remote.cuInit(1)[0] == CUresult.CUDA_ERROR_INVALID_VALUE
    assert ok(remote.cuDriverGetVersion()) >= 12000
    assert ok(remote.cuDeviceGetCount()) == 1
    dev = ok(remote.cuDeviceGet(0))
    assert isinstance(dev, remote.CUdevice) and int(dev) == 0
    assert remote.cuDeviceGet(3) == (CUresult.CUDA_ERROR_INVALID_DEVICE, None)
    name = ok(remote.cuDeviceGetName(64, dev))
    assert len(name) == 64 and b"test double" in name.split(b"\0")[0]
    attr = remote.CUdevice_attribute
    assert ok(remote.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_WARP_SIZE, dev)) == 32
    for unusable in (
        attr.CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY,
        attr.CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY,
        attr.CU_DEVICE_ATTRIBUTE_PAGEABLE_MEMORY_ACCESS,
    ):
        assert ok(remote.cuDeviceGetAttribute(unusable, dev)) == 0
    assert ok(remote.cuDeviceTotalMem(dev)) > 0
    assert len(ok(remote.cuDeviceGetUuid(dev)).bytes) == 16


def test_context_stack_is_per_thread_and_checked(remote: ModuleType) -> None:
    ok(remote.cuInit(0))
    primary = ok(remote.cuDevicePrimaryCtxRetain(0))
    assert ok(remote.cuDevicePrimaryCtxGetState(0)) == (0, 1)
    assert int(ok(remote.cuCtxGetCurrent())) == 0
    assert remote.cuCtxGetDevice() == (CUresult.CUDA_ERROR_INVALID_CONTEXT, None)
    ok(remote.cuCtxSetCurrent(primary))
    assert int(ok(remote.cuCtxGetCurrent())) == int(primary)
    created = ok(remote.cuCtxCreate(None, 0, 0))
    assert int(ok(remote.cuCtxGetCurrent())) == int(created)
    assert int(ok(remote.cuCtxGetDevice())) == 0
    assert int(ok(remote.cuCtxPopCurrent())) == int(created)
    assert int(ok(remote.cuCtxGetCurrent())) == int(primary)
    ok(remote.cuCtxPushCurrent(created))
    ok(remote.cuCtxDestroy(created))
    assert int(ok(remote.cuCtxGetCurrent())) == int(primary)
    assert (
        remote.cuCtxSetCurrent(remote.CUcontext(0xBAD0))[0] == CUresult.CUDA_ERROR_INVALID_CONTEXT
    )
    assert remote.cuCtxDestroy(primary)[0] == CUresult.CUDA_ERROR_INVALID_CONTEXT
    assert remote.cuCtxDestroy(created)[0] == CUresult.CUDA_ERROR_INVALID_CONTEXT
    least, greatest = ok(remote.cuCtxGetStreamPriorityRange())
    assert greatest <= least
    ok(remote.cuDevicePrimaryCtxRelease(0))
    assert ok(remote.cuDevicePrimaryCtxGetState(0)) == (0, 0)
    assert remote.cuMemAlloc(16) == (CUresult.CUDA_ERROR_INVALID_CONTEXT, None)


def test_memory_round_trips_in_every_host_form(remote: ModuleType, ctx: object) -> None:
    size = 3 * 1024 * 1024 + 5  # several chunks and a ragged end
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size, dtype=np.uint8)
    dptr = ok(remote.cuMemAlloc(size))
    assert isinstance(dptr, remote.CUdeviceptr)
    for source in (data, data.tobytes(), bytearray(data.tobytes()), memoryview(data)):
        ok(remote.cuMemsetD8(dptr, 0, size))
        ok(remote.cuMemcpyHtoD(dptr, source, size))
        back = np.zeros(size, np.uint8)
        ok(remote.cuMemcpyDtoH(back, dptr, size))
        assert np.array_equal(back, data)
    pinned = ok(remote.cuMemAllocHost(size))
    ctypes.memmove(pinned, data.ctypes.data, size)
    ok(remote.cuMemsetD8(dptr, 0, size))
    ok(remote.cuMemcpyHtoD(dptr, pinned, size))
    ctypes.memset(pinned, 0, size)
    ok(remote.cuMemcpyDtoH(pinned, dptr, size))
    assert ctypes.string_at(pinned, size) == data.tobytes()
    ok(remote.cuMemFreeHost(pinned))
    assert remote.cuMemFreeHost(pinned) == (CUresult.CUDA_ERROR_INVALID_VALUE,)
    c_buffer = (ctypes.c_ubyte * 8)()
    ok(remote.cuMemcpyDtoH(c_buffer, dptr, 8))
    assert bytes(c_buffer) == data[:8].tobytes()
    ok(remote.cuMemFree(dptr))


def test_async_copies_memsets_and_device_copies(remote: ModuleType, ctx: object) -> None:
    stream = ok(remote.cuStreamCreate(0))
    a, b = ok(remote.cuMemAlloc(4096)), ok(remote.cuMemAlloc(4096))
    values = np.arange(1024, dtype=np.uint32)
    ok(remote.cuMemcpyHtoDAsync(a, values, 4096, stream))
    values_sent = values.copy()
    values[:] = 7  # the source may be reused as soon as an async copy returns
    ok(remote.cuMemcpyDtoDAsync(b, a, 4096, stream))
    ok(remote.cuMemsetD32Async(a, 0xDEADBEEF, 512, stream))
    ok(remote.cuMemsetD16Async(int(a) + 2048, 0x1234, 2, stream))
    out_a, out_b = np.zeros(1024, np.uint32), np.zeros(1024, np.uint32)
    ok(remote.cuMemcpyDtoHAsync(out_a, a, 4096, stream))
    ok(remote.cuMemcpyDtoHAsync(out_b, b, 4096, stream))
    ok(remote.cuStreamSynchronize(stream))
    assert np.array_equal(out_b, values_sent)
    assert (out_a[:512] == 0xDEADBEEF).all()
    assert out_a[512] == 0x12341234
    assert np.array_equal(out_a[513:], values_sent[513:])
    ok(remote.cuMemcpyDtoD(b, a, 4096))
    ok(remote.cuMemsetD8(b, 7, 3))
    small = np.zeros(4, np.uint8)
    ok(remote.cuMemcpyDtoH(small, b, 4))
    assert small.tolist() == [7, 7, 7, 0xDE]
    ok(remote.cuStreamDestroy(stream))


def test_copies_outside_an_allocation_are_refused_whole(remote: ModuleType, ctx: object) -> None:
    dptr = ok(remote.cuMemAlloc(1024))
    ok(remote.cuMemsetD8(dptr, 1, 1024))
    big = bytes(2 * 1024 * 1024)
    assert remote.cuMemcpyHtoD(dptr, big, len(big)) == (CUresult.CUDA_ERROR_INVALID_VALUE,)
    out = bytearray(2048)
    assert remote.cuMemcpyDtoH(out, dptr, 2048) == (CUresult.CUDA_ERROR_INVALID_VALUE,)
    head = bytearray(1024)
    ok(remote.cuMemcpyDtoH(head, dptr, 1024))
    assert head == b"\x01" * 1024, "a refused copy must not write anything"
    assert remote.cuMemcpyDtoH(bytes(16), dptr, 16) == (CUresult.CUDA_ERROR_INVALID_VALUE,)
    assert remote.cuMemcpyHtoD(dptr, b"abc", 16) == (CUresult.CUDA_ERROR_INVALID_VALUE,)
    assert remote.cuMemFree(int(dptr) + 8) == (CUresult.CUDA_ERROR_INVALID_VALUE,)
    base, size = ok(remote.cuMemGetAddressRange(int(dptr) + 100))
    assert (int(base), size) == (int(dptr), 1024)
    ok(remote.cuMemFree(dptr))
    assert remote.cuMemFree(dptr) == (CUresult.CUDA_ERROR_INVALID_VALUE,)
    assert remote.cuMemGetAddressRange(dptr)[0] == CUresult.CUDA_ERROR_NOT_FOUND
    assert remote.cuMemAlloc(0) == (CUresult.CUDA_ERROR_INVALID_VALUE, None)


def test_memory_accounting(remote: ModuleType, ctx: object) -> None:
    free_before, total = ok(remote.cuMemGetInfo())
    dptr = ok(remote.cuMemAlloc(1 << 20))
    free_after, _ = ok(remote.cuMemGetInfo())
    assert free_after <= free_before - (1 << 20) and total >= free_before
    ok(remote.cuMemFree(dptr))


def test_modules_functions_and_globals(remote: ModuleType, module: object) -> None:
    saxpy = ok(remote.cuModuleGetFunction(module, b"saxpy"))
    assert isinstance(saxpy, remote.CUfunction)
    layout = [ok(remote.cuFuncGetParamInfo(saxpy, i)) for i in range(5)]
    assert layout == [(0, 4), (8, 8), (16, 8), (24, 8), (32, 4)]
    assert remote.cuFuncGetParamInfo(saxpy, 5) == (CUresult.CUDA_ERROR_INVALID_VALUE, None, None)
    assert remote.cuModuleGetFunction(module, b"missing") == (CUresult.CUDA_ERROR_NOT_FOUND, None)
    attr = remote.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK
    assert ok(remote.cuFuncGetAttribute(attr, saxpy)) > 0
    assert ok(remote.cuOccupancyMaxActiveBlocksPerMultiprocessor(saxpy, 256, 0)) > 0
    table, size = ok(remote.cuModuleGetGlobal(module, b"table"))
    assert size == 64
    ok(remote.cuMemcpyHtoD(table, bytes(range(64)), 64))
    back = bytearray(64)
    ok(remote.cuMemcpyDtoH(back, table, 64))
    assert back == bytes(range(64))
    assert remote.cuModuleGetGlobal(module, b"nope")[0] == CUresult.CUDA_ERROR_NOT_FOUND
    ok(remote.cuModuleUnload(module))
    assert remote.cuMemcpyDtoH(back, table, 64) == (CUresult.CUDA_ERROR_INVALID_VALUE,)
    assert remote.cuModuleUnload(module) == (CUresult.CUDA_ERROR_INVALID_HANDLE,)
    assert remote.cuFuncGetAttribute(attr, saxpy)[0] == CUresult.CUDA_ERROR_INVALID_HANDLE


def test_bad_module_images_are_refused(remote: ModuleType, ctx: object) -> None:
    status, mod = remote.cuModuleLoadData(b"this is not ptx\0")
    assert status in (CUresult.CUDA_ERROR_INVALID_PTX, CUresult.CUDA_ERROR_INVALID_IMAGE)
    assert mod is None


def test_library_kernels(remote: ModuleType, ctx: object) -> None:
    library = ok(remote.cuLibraryLoadData(SAXPY_PTX, None, None, 0, None, None, 0))
    kernel = ok(remote.cuLibraryGetKernel(library, b"saxpy"))
    assert isinstance(kernel, remote.CUkernel)
    function = ok(remote.cuKernelGetFunction(kernel))
    assert ok(remote.cuFuncGetParamInfo(function, 4)) == (32, 4)
    dptr = ok(remote.cuMemAlloc(64))
    args = ((2.0, dptr, dptr, dptr, 16), (ctypes.c_float, None, None, None, ctypes.c_int))
    ok(remote.cuLaunchKernel(kernel, 1, 1, 1, 16, 1, 1, 0, 0, args, 0))
    ok(remote.cuLaunchKernel(function, 1, 1, 1, 16, 1, 1, 0, 0, args, 0))
    ok(remote.cuCtxSynchronize())
    ok(remote.cuLibraryUnload(library))
    assert remote.cuLibraryGetKernel(library, b"saxpy")[0] == CUresult.CUDA_ERROR_INVALID_HANDLE


def _recorded(sim_server, name: str, count: int) -> list:
    launches = [launch for launch in sim_server.backend.launches if launch.kernel == name]
    return launches[-count:]


def test_every_kernel_argument_form_packs_the_same_bytes(
    remote: ModuleType, module: object, sim_server
) -> None:
    saxpy = ok(remote.cuModuleGetFunction(module, b"saxpy"))
    x, y, out = (ok(remote.cuMemAlloc(1024)) for _ in range(3))
    a, n = ctypes.c_float(2.5), ctypes.c_int(256)
    px, py, pout = (ctypes.c_void_p(int(p)) for p in (x, y, out))
    pointers = [ctypes.addressof(v) for v in (a, px, py, pout, n)]
    void_array = (ctypes.c_void_p * 5)(*pointers)
    forms = [
        ((2.5, x, y, out, 256), (ctypes.c_float, None, None, None, ctypes.c_int)),
        (
            (a, int(x), int(y), int(out), n),
            (ctypes.c_float,) + (ctypes.c_void_p,) * 3 + (ctypes.c_int,),
        ),
        ctypes.addressof(void_array),
        void_array,
        np.array(pointers, dtype=np.uint64),
    ]
    for form in forms:
        ok(remote.cuLaunchKernel(saxpy, 2, 1, 1, 128, 1, 1, 0, 0, form, 0))
    packed = ctypes.create_string_buffer(36)
    ctypes.memmove(packed, np.float32(2.5).tobytes(), 4)
    for i, p in enumerate((x, y, out)):
        ctypes.memmove(ctypes.addressof(packed) + 8 + 8 * i, int(p).to_bytes(8, "little"), 8)
    ctypes.memmove(ctypes.addressof(packed) + 32, (256).to_bytes(4, "little"), 4)
    size = ctypes.c_size_t(36)
    extra = (ctypes.c_void_p * 5)(1, ctypes.addressof(packed), 2, ctypes.addressof(size), 0)
    ok(remote.cuLaunchKernel(saxpy, 2, 1, 1, 128, 1, 1, 0, 0, None, ctypes.addressof(extra)))
    config = remote.CUlaunchConfig()
    config.gridDimX, config.gridDimY, config.gridDimZ = 2, 1, 1
    config.blockDimX, config.blockDimY, config.blockDimZ = 128, 1, 1
    ok(remote.cuLaunchKernelEx(config, saxpy, forms[0], 0))
    ok(remote.cuCtxSynchronize())
    launches = _recorded(sim_server, "saxpy", len(forms) + 2)
    expected = (
        np.float32(2.5).tobytes()
        + bytes(4)
        + b"".join(int(p).to_bytes(8, "little") for p in (x, y, out))
        + (256).to_bytes(4, "little")
    )
    assert [launch.params[:36] for launch in launches] == [expected] * (len(forms) + 2)
    assert all(launch.grid == (2, 1, 1) and launch.block == (128, 1, 1) for launch in launches)


def test_scalars_of_every_width_and_structs_by_value(
    remote: ModuleType, module: object, sim_server
) -> None:
    kernel = ok(remote.cuModuleGetFunction(module, b"all_types"))

    class Triple(ctypes.Structure):
        _fields_ = [("a", ctypes.c_int), ("b", ctypes.c_double), ("c", ctypes.c_char)]

    triple = Triple(-7, 1e300, b"z")
    out = ok(remote.cuMemAlloc(16))
    values = (-128, -32768, -(2**31), -(2**63), 3.5, -2.25, triple, out)
    types = (
        ctypes.c_byte,
        ctypes.c_short,
        ctypes.c_int,
        ctypes.c_longlong,
        ctypes.c_float,
        ctypes.c_double,
        None,
        None,
    )
    ok(remote.cuLaunchKernel(kernel, 1, 1, 1, 1, 1, 1, 0, 0, (values, types), 0))
    ok(remote.cuCtxSynchronize())
    (launch,) = _recorded(sim_server, "all_types", 1)
    params = launch.params
    assert params[0:1] == (-128).to_bytes(1, "little", signed=True)
    assert params[2:4] == (-32768).to_bytes(2, "little", signed=True)
    assert params[4:8] == (-(2**31)).to_bytes(4, "little", signed=True)
    assert params[8:16] == (-(2**63)).to_bytes(8, "little", signed=True)
    assert params[16:20] == np.float32(3.5).tobytes()
    assert params[24:32] == np.float64(-2.25).tobytes()
    assert params[32:56] == bytes(triple)
    assert params[56:64] == int(out).to_bytes(8, "little")


def test_launch_errors(remote: ModuleType, module: object) -> None:
    saxpy = ok(remote.cuModuleGetFunction(module, b"saxpy"))
    empty = ok(remote.cuModuleGetFunction(module, b"empty"))
    ok(remote.cuLaunchKernel(empty, 1, 1, 1, 1, 1, 1, 0, 0, None, 0))
    ok(remote.cuLaunchKernel(empty, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0))
    short = ((1.0, 0), (ctypes.c_float, ctypes.c_void_p))
    assert remote.cuLaunchKernel(saxpy, 1, 1, 1, 1, 1, 1, 0, 0, short, 0) == (
        CUresult.CUDA_ERROR_INVALID_VALUE,
    )
    assert remote.cuLaunchKernel(remote.CUfunction(0x5555), 1, 1, 1, 1, 1, 1, 0, 0, None, 0) == (
        CUresult.CUDA_ERROR_INVALID_HANDLE,
    )
    with pytest.raises(TypeError):
        remote.cuLaunchKernel(saxpy, 1, 1, 1, 1, 1, 1, 0, 0, "not args", 0)
    # A launch the device refuses reports at the next synchronizing call, then clears.
    ok(remote.cuLaunchKernel(empty, 1, 1, 1, 4096, 1, 1, 0, 0, None, 0))
    assert remote.cuCtxSynchronize() == (CUresult.CUDA_ERROR_INVALID_VALUE,)
    assert remote.cuCtxSynchronize() == (OK,)


def test_streams_events_and_elapsed_time(remote: ModuleType, module: object, sim_server) -> None:
    empty = ok(remote.cuModuleGetFunction(module, b"empty"))
    sim_server.backend.set_kernel_duration("empty", 250.0)
    high = ok(remote.cuStreamCreateWithPriority(0, -5))
    assert ok(remote.cuStreamGetPriority(high)) == -5
    other = ok(remote.cuStreamCreate(0))
    start, stop, marker = (ok(remote.cuEventCreate(0)) for _ in range(3))
    ok(remote.cuEventRecord(start, high))
    for _ in range(4):
        ok(remote.cuLaunchKernel(empty, 1, 1, 1, 1, 1, 1, 0, high, None, 0))
    ok(remote.cuEventRecord(stop, high))
    ok(remote.cuStreamWaitEvent(other, stop, 0))
    ok(remote.cuEventRecord(marker, other))
    ok(remote.cuEventSynchronize(marker))
    assert ok(remote.cuEventQuery(stop)) is None
    assert ok(remote.cuStreamQuery(other)) is None
    assert ok(remote.cuEventElapsedTime(start, stop)) == pytest.approx(1.0)
    assert ok(remote.cuEventElapsedTime(start, marker)) >= 1.0
    for event in (start, stop, marker):
        ok(remote.cuEventDestroy(event))
    assert remote.cuEventRecord(start, high) == (OK,)  # status-only: reported later
    assert remote.cuStreamSynchronize(high) == (CUresult.CUDA_ERROR_INVALID_HANDLE,)
    ok(remote.cuStreamDestroy(high))
    assert remote.cuStreamDestroy(high) == (CUresult.CUDA_ERROR_INVALID_HANDLE,)
    assert remote.cuStreamSynchronize(remote.CUstream(0x4242)) == (
        CUresult.CUDA_ERROR_INVALID_HANDLE,
    )


def test_handles_of_another_session_are_invalid(
    remote: ModuleType, module: object, sim_server
) -> None:
    ok(remote.cuMemAlloc(64))
    other = connect(sim_server.address, priority=0, client_name="other")
    try:
        ctx_handle = other.request("cuDevicePrimaryCtxRetain", 0)[1]
        stream = other.request("cuStreamCreate", ctx_handle, 0, 0)[1]
        foreign_ptr = other.request("cuMemAlloc", ctx_handle, 64)[1]
    finally:
        other.close()
    assert (
        remote.cuStreamSynchronize(remote.CUstream(stream))[0] == CUresult.CUDA_ERROR_INVALID_HANDLE
    )
    assert remote.cuMemFree(foreign_ptr) == (CUresult.CUDA_ERROR_INVALID_VALUE,)
    assert remote.cuMemcpyHtoD(foreign_ptr, b"x" * 8, 8) == (CUresult.CUDA_ERROR_INVALID_VALUE,)
    assert (
        remote.cuCtxSetCurrent(remote.CUcontext(ctx_handle))[0]
        == CUresult.CUDA_ERROR_INVALID_CONTEXT
    )
    assert remote.cuModuleUnload(remote.CUmodule(stream)) == (CUresult.CUDA_ERROR_INVALID_HANDLE,)


def test_unknown_calls_and_malformed_arguments(sim_server, remote: ModuleType, ctx: object) -> None:
    session = impl.REMOTE.session()
    assert session.request("cuNoSuchCall", 1, 2)[0] == CUresult.CUDA_ERROR_NOT_SUPPORTED
    assert session.request("cuMemAlloc")[0] == CUresult.CUDA_ERROR_INVALID_VALUE
    assert session.request("cuMemAlloc", "ctx", "size")[0] != OK
    assert (
        session.request("cuMemAlloc", impl.REMOTE.current, -5)[0]
        == CUresult.CUDA_ERROR_INVALID_VALUE
    )
    assert session.request("cuMemcpyDtoH", 1, 2, 3, 4, 5, 6)[0] == CUresult.CUDA_ERROR_INVALID_VALUE
    assert session.request("cuCtxSynchronize", 12345)[0] == CUresult.CUDA_ERROR_INVALID_CONTEXT
    assert ok(remote.cuDeviceGetCount()) == 1


def test_unsupported_functions_keep_the_real_return_shape(remote: ModuleType, ctx: object) -> None:
    assert remote.cuMemAllocManaged(64, 1) == (CUresult.CUDA_ERROR_NOT_SUPPORTED, None)
    assert remote.cuIpcGetMemHandle(0) == (CUresult.CUDA_ERROR_NOT_SUPPORTED, None)
    assert remote.cuMemHostAlloc(64, 0x02) == (CUresult.CUDA_ERROR_NOT_SUPPORTED, None)
    assert (
        remote.cuCtxCreate(remote.CUctxCreateParams(), 0, 0)[0] == CUresult.CUDA_ERROR_NOT_SUPPORTED
    )


def test_error_names_and_strings_need_no_session(remote: ModuleType) -> None:
    assert remote.cuGetErrorName(CUresult.CUDA_ERROR_INVALID_VALUE) == (
        OK,
        b"CUDA_ERROR_INVALID_VALUE",
    )
    status, text = remote.cuGetErrorString(CUresult.CUDA_ERROR_OUT_OF_MEMORY)
    assert status == OK and text
    assert remote.cuGetErrorName(123456) == (CUresult.CUDA_ERROR_INVALID_VALUE, None)


def test_streams_and_events_are_created_without_a_round_trip(
    remote: ModuleType, ctx: object
) -> None:
    connection = impl.REMOTE.session()
    exchanged = connection._numbered  # calls that waited for the server, or were numbered
    stream = ok(remote.cuStreamCreate(0))
    event = ok(remote.cuEventCreate(0))
    ok(remote.cuEventRecord(event, stream))
    assert connection._numbered == exchanged
    ok(remote.cuEventSynchronize(event))
    assert remote.cuStreamCreate(4) == (CUresult.CUDA_ERROR_INVALID_VALUE, None)
    assert remote.cuEventCreate(1 << 20) == (CUresult.CUDA_ERROR_INVALID_VALUE, None)
    ok(remote.cuCtxPopCurrent())
    assert remote.cuStreamCreate(0) == (CUresult.CUDA_ERROR_INVALID_CONTEXT, None)


def test_a_client_chosen_handle_is_taken_once_and_only_from_the_client_range(
    sim_server,
) -> None:
    conn = connect(sim_server.address, priority=0, client_name="raw")
    try:
        ctx = conn.request("cuDevicePrimaryCtxRetain", 0)[1]
        chosen = CLIENT_HANDLE_BIT | 7
        assert conn.request("cuStreamCreate", ctx, 0, 0, chosen) == [0, chosen]
        for taken in (
            ["cuStreamCreate", ctx, 0, 0, chosen],
            ["cuEventCreate", ctx, 0, chosen],
            ["cuEventCreate", ctx, 0, 0x1000],  # the server's own range
        ):
            assert conn.request(*taken) == [CUresult.CUDA_ERROR_INVALID_VALUE]
        assert conn.request("cuStreamSynchronize", ctx, chosen) == [0]
    finally:
        conn.close()


def test_a_kernel_argument_into_another_sessions_memory_is_refused(
    remote: ModuleType, module: object, sim_server
) -> None:
    saxpy = ok(remote.cuModuleGetFunction(module, b"saxpy"))
    mine = ok(remote.cuMemAlloc(256))
    other = connect(sim_server.address, priority=0, client_name="other")
    try:
        ctx_handle = other.request("cuDevicePrimaryCtxRetain", 0)[1]
        theirs = other.request("cuMemAlloc", ctx_handle, 256)[1]
        foreign = remote.CUdeviceptr(theirs + 16)
        for pointer, status in ((mine, OK), (foreign, CUresult.CUDA_ERROR_INVALID_VALUE)):
            args = (
                (2.0, mine, pointer, mine, 64),
                (ctypes.c_float, None, None, None, ctypes.c_uint),
            )
            ok(remote.cuLaunchKernel(saxpy, 1, 1, 1, 64, 1, 1, 0, 0, args, 0))
            assert remote.cuCtxSynchronize() == (status,)
        other.request("cuMemFree", theirs)
    finally:
        other.close()
    ok(remote.cuLaunchKernel(saxpy, 1, 1, 1, 64, 1, 1, 0, 0, args, 0))  # freed: no owner now
    assert remote.cuCtxSynchronize() == (OK,)


def test_ownership_lookups_stay_right_while_other_sessions_allocate_and_free() -> None:
    ownership = DeviceOwnership()
    ownership.add(10_000, 100, session=1)
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            for base in range(0, 20_000, 200):
                if base != 10_000:
                    ownership.add(base, 50, session=2)
            for base in range(0, 20_000, 200):
                if base != 10_000:
                    ownership.remove(base)

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        assert all(ownership.owner(10_050) == 1 for _ in range(20_000))
    finally:
        stop.set()
        worker.join()


def test_a_pointer_check_is_made_again_once_the_memory_changes_owner() -> None:
    ownership = DeviceOwnership()
    dispatcher = Dispatcher(FifoPolicy())
    session = Session(1, SimBackend(), dispatcher, handle_counter(), 0, ownership=ownership)
    ctx = session.execute(["cuDevicePrimaryCtxRetain", True, 0])[1]
    module = session.execute(["cuModuleLoadData", True, ctx, SAXPY_PTX, {}])[1]
    saxpy = session.execute(["cuModuleGetFunction", True, module, "saxpy"])[1]
    address = 0x7F00_0000_0000
    params = bytes(8) + address.to_bytes(8, "little") * 3 + bytes(4)
    launch = ["cuLaunchKernel", True, ctx, saxpy, [1, 1, 1], [64, 1, 1], 0, 0, params]
    assert session.execute(launch) == [0]  # nobody owns it (the kernel would fault)
    ownership.add(address, 4096, session=2)  # another session's allocation lands there
    assert session.execute(launch) == [CUresult.CUDA_ERROR_INVALID_VALUE]
    ownership.remove(address)
    assert session.execute(launch) == [0]
    session.close()
    dispatcher.close()


def test_alternating_parameter_buffers_are_each_checked_once(monkeypatch) -> None:
    dispatcher = Dispatcher(FifoPolicy())
    session = Session(1, SimBackend(), dispatcher, handle_counter(), 0)
    ctx = session.execute(["cuDevicePrimaryCtxRetain", True, 0])[1]
    module = session.execute(["cuModuleLoadData", True, ctx, SAXPY_PTX, {}])[1]
    saxpy = session.execute(["cuModuleGetFunction", True, module, "saxpy"])[1]
    checks = []
    check = session._check_pointers
    monkeypatch.setattr(session, "_check_pointers", lambda *a: checks.append(a) or check(*a))
    ping, pong = (bytes(8) + bytes([n]) * 24 + bytes(4) for n in (1, 2))
    for params in [ping, pong] * 5:  # a stencil's two buffers, swapped each step
        launch = ["cuLaunchKernel", True, ctx, saxpy, [1, 1, 1], [64, 1, 1], 0, 0, params]
        assert session.execute(launch) == [0]
    assert len(checks) == 2
    session.close()
    dispatcher.close()


class RunRecordingSim(SimBackend):
    """The CPU test double, noting how many launches each of its launch calls took."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[int] = []

    def launch(self, ctx, launches, timed, after=None):
        self.runs.append(len(launches))
        return super().launch(ctx, launches, timed, after)


@pytest.fixture
def run_session() -> Iterator[tuple[Session, RunRecordingSim, Dispatcher, int, int]]:
    """A session over RunRecordingSim, its primary context and the saxpy kernel."""
    backend, dispatcher = RunRecordingSim(), Dispatcher(FifoPolicy())
    session = Session(1, backend, dispatcher, handle_counter(), 0)
    ctx = session.execute(["cuDevicePrimaryCtxRetain", True, 0])[1]
    module = session.execute(["cuModuleLoadData", True, ctx, SAXPY_PTX, {}])[1]
    saxpy = session.execute(["cuModuleGetFunction", True, module, "saxpy"])[1]
    yield session, backend, dispatcher, ctx, saxpy
    session.close()
    dispatcher.close()


def posted_launch(ctx: int, function: int, stream: int, blocks: int, **changes: object) -> list:
    """A posted cuLaunchKernel of ``blocks`` blocks; ``changes``: block, params."""
    block, params = changes.get("block", [64, 1, 1]), changes.get("params", bytes(36))
    return ["cuLaunchKernel", False, ctx, function, [blocks, 1, 1], block, 0, stream, params]


def test_posted_launches_in_a_row_on_one_stream_go_out_together_in_order(run_session) -> None:
    session, backend, dispatcher, ctx, saxpy = run_session
    first, second = (session.execute(["cuStreamCreate", True, ctx, 1, 0])[1] for _ in range(2))
    payloads = [
        wire.pack([posted_launch(ctx, saxpy, first, 1)]),
        wire.pack([posted_launch(ctx, saxpy, first, 2), posted_launch(ctx, saxpy, first, 3)]),
        wire.pack([posted_launch(ctx, saxpy, second, 4)]),
        wire.pack([posted_launch(ctx, saxpy, first, 5), ["cuCtxSynchronize", True, ctx]]),
    ]
    replies: list[bytes] = []
    session.run_frames(payloads, replies.append)
    assert backend.runs == [3, 1, 1]
    assert [launch.grid[0] for launch in backend.launches] == [1, 2, 3, 4, 5]
    assert dispatcher.launches == 5
    assert [wire.unpack(frame) for frame in replies] == [[[0]]]
    assert session.replied_last and session.calls_run == 6
    session.run_frames([wire.pack([posted_launch(ctx, saxpy, first, 6)])], replies.append)
    assert not session.replied_last and session.calls_run == 7


def test_a_launch_failing_in_a_run_fails_the_next_synchronization_and_the_rest_go_out(
    run_session,
) -> None:
    session, backend, _, ctx, saxpy = run_session
    too_wide = posted_launch(ctx, saxpy, 0, 2, block=[2048, 1, 1])  # refused by the backend
    short = posted_launch(ctx, saxpy, 0, 4, params=bytes(10))  # refused by the session
    launches = [posted_launch(ctx, saxpy, 0, 1), too_wide, posted_launch(ctx, saxpy, 0, 3)]
    launches += [short, posted_launch(ctx, saxpy, 0, 5)]
    synchronize = ["cuCtxSynchronize", True, ctx]
    replies: list[bytes] = []
    session.run_frames([wire.pack(launches), wire.pack([synchronize] * 2)], replies.append)
    assert backend.runs == [3, 1]
    assert [launch.grid[0] for launch in backend.launches] == [1, 3, 5]
    invalid = CUresult.CUDA_ERROR_INVALID_VALUE
    assert [wire.unpack(frame) for frame in replies] == [[[invalid], [0]]]


def test_a_posted_launch_frame_seen_before_is_refused_once_its_stream_is_gone(
    run_session,
) -> None:
    session, backend, _, ctx, saxpy = run_session
    stream = session.execute(["cuStreamCreate", True, ctx, 1, 0])[1]
    frame = wire.pack([posted_launch(ctx, saxpy, stream, 1)])
    synchronize = wire.pack([["cuCtxSynchronize", True, ctx]])
    replies: list[bytes] = []
    session.run_frames([frame, frame, synchronize], replies.append)
    assert session.execute(["cuStreamDestroy", True, stream]) == [0]
    session.run_frames([frame, synchronize], replies.append)
    assert len(backend.launches) == 2
    invalid = CUresult.CUDA_ERROR_INVALID_HANDLE
    assert [wire.unpack(reply) for reply in replies] == [[[0]], [[invalid]]]


def test_a_posted_launch_frame_seen_before_is_checked_again_once_memory_changes_owner() -> None:
    ownership = DeviceOwnership()
    backend, dispatcher = RunRecordingSim(), Dispatcher(FifoPolicy())
    session = Session(1, backend, dispatcher, handle_counter(), 0, ownership=ownership)
    ctx = session.execute(["cuDevicePrimaryCtxRetain", True, 0])[1]
    module = session.execute(["cuModuleLoadData", True, ctx, SAXPY_PTX, {}])[1]
    saxpy = session.execute(["cuModuleGetFunction", True, module, "saxpy"])[1]
    address = 0x7F00_0000_0000
    params = bytes(8) + address.to_bytes(8, "little") * 3 + bytes(4)
    frame = wire.pack([posted_launch(ctx, saxpy, 0, 1, params=params)])
    synchronize = wire.pack([["cuCtxSynchronize", True, ctx]])
    replies: list[bytes] = []
    session.run_frames([frame, frame, synchronize], replies.append)  # nobody owns it
    ownership.add(address, 4096, session=2)  # another session's allocation lands there
    session.run_frames([frame, synchronize], replies.append)
    ownership.remove(address)
    session.run_frames([frame, synchronize], replies.append)
    assert len(backend.launches) == 3
    invalid = CUresult.CUDA_ERROR_INVALID_VALUE
    assert [wire.unpack(reply) for reply in replies] == [[[0]], [[invalid]], [[0]]]
    session.close()
    dispatcher.close()


def test_a_remembered_launch_is_refused_once_its_stream_module_or_context_is_gone() -> None:
    dispatcher = Dispatcher(FifoPolicy())
    session = Session(1, SimBackend(), dispatcher, handle_counter(), 0)
    params = bytes(36)

    def loaded(ctx: int) -> tuple[int, int]:
        module = session.execute(["cuModuleLoadData", True, ctx, SAXPY_PTX, {}])[1]
        return module, session.execute(["cuModuleGetFunction", True, module, "saxpy"])[1]

    def launch(ctx: int, function: int, stream: int, grid: list[int] | None = None) -> list:
        geometry = [grid or [1, 1, 1], [64, 1, 1], 0, stream]
        return session.execute(["cuLaunchKernel", True, ctx, function, *geometry, params])

    primary = session.execute(["cuDevicePrimaryCtxRetain", True, 0])[1]
    module, saxpy = loaded(primary)
    stream = session.execute(["cuStreamCreate", True, primary, 0, 0])[1]
    assert launch(primary, saxpy, stream) == launch(primary, saxpy, stream) == [0]
    assert session.execute(["cuStreamDestroy", True, stream]) == [0]
    assert launch(primary, saxpy, stream) == [CUresult.CUDA_ERROR_INVALID_HANDLE]
    assert launch(primary, saxpy, 0) == [0]
    assert launch(primary, saxpy, 0, [1, 1]) == [CUresult.CUDA_ERROR_INVALID_VALUE]
    assert session.execute(["cuModuleUnload", True, module]) == [0]
    assert launch(primary, saxpy, 0) == [CUresult.CUDA_ERROR_INVALID_HANDLE]
    own = session.execute(["cuCtxCreate", True, 0, 0])[1]
    _, kernel = loaded(own)
    assert launch(own, kernel, 0) == launch(own, kernel, 0) == [0]
    assert session.execute(["cuCtxDestroy", True, own]) == [0]
    assert launch(own, kernel, 0) == [CUresult.CUDA_ERROR_INVALID_HANDLE]
    assert session.execute(["cuCtxSynchronize", True, primary]) == [0]
    session.close()
    dispatcher.close()


@pytest.fixture
def unix_remote(sim_server) -> Iterator[ModuleType]:
    """The driver stub with a fresh session to the sim server over the unix socket."""
    from cuda.bindings import driver as real

    from client_stub.activation import make_driver_stub

    impl.REMOTE.close()
    impl.REMOTE.configure(sim_server.running.addresses[1], None)
    yield make_driver_stub(real)
    impl.REMOTE.close()


class SentFrames:
    """Counts the frames a unix-socket session sends."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, connection: object) -> None:
        self.count = 0
        send = connection._frames.send

        def counted(payload: bytes) -> None:
            self.count += 1
            send(payload)

        monkeypatch.setattr(connection._frames, "send", counted)


def saxpy_launcher(remote: ModuleType) -> Callable[[int], None]:
    """Loads saxpy; the function returned launches it ``count`` times with n = 0, 1, ...
    (``launched_ns`` reads them back)."""
    ok(remote.cuInit(0))
    ok(remote.cuCtxSetCurrent(ok(remote.cuDevicePrimaryCtxRetain(0))))
    saxpy = ok(remote.cuModuleGetFunction(ok(remote.cuModuleLoadData(SAXPY_PTX)), b"saxpy"))
    dptr = ok(remote.cuMemAlloc(64))
    types = (ctypes.c_float, None, None, None, ctypes.c_int)

    def launch(count: int) -> None:
        for n in range(count):
            args = ((1.0, dptr, dptr, dptr, n), types)
            ok(remote.cuLaunchKernel(saxpy, 1, 1, 1, 16, 1, 1, 0, 0, args, 0))

    return launch


def launched_ns(sim_server, count: int) -> list[int]:
    return [
        int.from_bytes(launch.params[32:36], "little")
        for launch in _recorded(sim_server, "saxpy", count)
    ]


def test_posted_calls_leave_at_once_each_in_a_frame_and_run_in_order(
    unix_remote: ModuleType, sim_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    launch = saxpy_launcher(unix_remote)
    frames = SentFrames(monkeypatch, impl.REMOTE.connection)
    before = len(sim_server.backend.launches)
    launch(50)  # then the program computes: nothing follows to carry them
    assert frames.count == 50
    assert wait_until(lambda: len(sim_server.backend.launches) == before + 50, timeout=5)
    assert launched_ns(sim_server, 50) == list(range(50))


class AnsweringConnection(Connection):
    """A transport that answers each call in order, failing the one whose first argument
    is ``fail_at``; counts the calls left unanswered at most."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__("in memory")
        self.fail_at = fail_at
        self.sent: list[list] = []
        self.unanswered: deque[list] = deque()
        self.most_unanswered = 0

    def _send(self, calls: list[list]) -> None:
        self.sent += calls
        self.unanswered.extend(call for call in calls if call[1])
        self.most_unanswered = max(self.most_unanswered, len(self.unanswered))

    @staticmethod
    def _pack_one(call: list) -> list:
        return call  # kept as it is: this transport sends calls unpacked

    def _send_one(self, payload: list) -> None:
        self._send([payload])

    def _receive(self) -> list[list]:
        index = self.unanswered.popleft()[2]
        return [[1 if index == self.fail_at else 0, f"bytes of {index}"]]

    def _shut(self) -> None:
        pass


def test_replies_are_read_in_order_with_a_bounded_number_of_calls_unanswered() -> None:
    conn = AnsweringConnection()
    calls = [["cuMemcpyDtoH", True, i] for i in range(20)]
    seen: list[tuple[int, str]] = []
    assert conn.read_replies(calls, lambda i, reply: seen.append((i, reply[1])), 3) == 0
    assert seen == [(i, f"bytes of {i}") for i in range(20)]
    assert conn.most_unanswered == 3


def test_a_failing_call_stops_the_reading_and_every_call_sent_is_answered() -> None:
    conn = AnsweringConnection(fail_at=5)
    calls = [["cuMemcpyDtoH", True, i] for i in range(20)]
    seen: list[int] = []
    assert conn.read_replies(calls, lambda i, reply: seen.append(i), 3) == 1
    assert seen == [0, 1, 2, 3, 4]
    assert len(conn.sent) == 8  # nothing sent once the failure was read
    assert not conn.unanswered  # the replies after it were read: later calls get their own


def test_a_copy_without_staging_arrives_whole_in_many_chunks(
    sim_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIKIT_STAGING", "off")
    impl.REMOTE.close()
    impl.REMOTE.configure(sim_server.running.addresses[0], None)
    try:
        ok(impl.cuInit(0))
        ok(impl.cuCtxSetCurrent(ok(impl.cuDevicePrimaryCtxRetain(0))))
        assert impl.REMOTE.session().staging is None
        size = (impl.COPY_CHUNKS_IN_FLIGHT * 3 + 1) * COPY_CHUNK_BYTES + 12345
        data = np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8)
        dptr = ok(impl.cuMemAlloc(size))
        ok(impl.cuMemcpyHtoD(dptr, data, size))
        back = np.zeros(size, np.uint8)
        ok(impl.cuMemcpyDtoH(back, dptr, size))
        assert np.array_equal(back, data)
        ok(impl.cuMemFree(dptr))
        assert impl.cuMemcpyDtoH(back, dptr, size) == (CUresult.CUDA_ERROR_INVALID_VALUE,)
        assert ok(impl.cuDeviceGetCount()) == 1  # the session goes on, replies in order
    finally:
        impl.REMOTE.close()


def test_copies_over_grpc_keep_their_place_among_the_calls_posted_around_them(
    sim_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIKIT_STAGING", "off")
    own_frames: list[int] = []
    own_frame = connection._own_frame

    def counted(call):
        own_frames.append(len(call))
        return own_frame(call)

    monkeypatch.setattr(connection, "_own_frame", counted)
    impl.REMOTE.close()
    impl.REMOTE.configure(sim_server.running.addresses[0], None)
    try:
        ok(impl.cuInit(0))
        ok(impl.cuCtxSetCurrent(ok(impl.cuDevicePrimaryCtxRetain(0))))
        rng = np.random.default_rng(11)
        size, tail = 3 * COPY_CHUNK_BYTES + 5, connection.OWN_FRAME_BYTES + 7
        data = rng.integers(0, 256, size, dtype=np.uint8)
        last = rng.integers(0, 256, tail, dtype=np.uint8)
        dptr = int(ok(impl.cuMemAlloc(size)))
        stream = ok(impl.cuStreamCreate(0))
        ok(impl.cuMemsetD8Async(dptr, 1, size, stream))
        ok(impl.cuMemcpyHtoDAsync(dptr, data, size, stream))
        ok(impl.cuMemsetD8Async(dptr + 10, 2, 100, stream))
        ok(impl.cuMemcpyHtoDAsync(dptr + size - tail, last, tail, stream))
        ok(impl.cuMemsetD8Async(dptr + size - 3, 3, 3, stream))
        ok(impl.cuStreamSynchronize(stream))
        assert len(own_frames) == 4  # the three whole chunks and the tail, not the last 5 bytes
        expected = data.copy()
        expected[10:110] = 2
        expected[size - tail :] = last
        expected[size - 3 :] = 3
        back = np.zeros(size, np.uint8)
        ok(impl.cuMemcpyDtoH(back, dptr, size))
        assert np.array_equal(back, expected)
    finally:
        impl.REMOTE.close()


def test_a_long_copy_over_grpc_waits_for_the_stream_instead_of_queueing_whole(
    sim_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIKIT_STAGING", "off")
    monkeypatch.setattr(connection, "MAX_QUEUED_BYTES", 2 * COPY_CHUNK_BYTES)
    queued: list[int] = []
    send = connection.GrpcConnection._send

    def watched(self, calls):
        send(self, calls)
        queued.append(self._queued_bytes)

    monkeypatch.setattr(connection.GrpcConnection, "_send", watched)
    impl.REMOTE.close()
    impl.REMOTE.configure(sim_server.running.addresses[0], None)
    try:
        ok(impl.cuInit(0))
        ok(impl.cuCtxSetCurrent(ok(impl.cuDevicePrimaryCtxRetain(0))))
        size = 16 * COPY_CHUNK_BYTES
        data = np.random.default_rng(3).integers(0, 256, size, dtype=np.uint8)
        dptr = ok(impl.cuMemAlloc(size))
        stream = ok(impl.cuStreamCreate(0))
        ok(impl.cuMemcpyHtoDAsync(dptr, data, size, stream))
        ok(impl.cuStreamSynchronize(stream))
        assert max(queued) <= 3 * COPY_CHUNK_BYTES  # the limit and the chunk that waited
        back = np.zeros(size, np.uint8)
        ok(impl.cuMemcpyDtoH(back, dptr, size))
        assert np.array_equal(back, data)
    finally:
        impl.REMOTE.close()


@pytest.mark.parametrize("remote", ["unix", "grpc"], indirect=True)
def test_a_synchronization_after_a_work_done_notice_needs_no_round_trip(
    remote: ModuleType, module: object, sim_server, request: pytest.FixtureRequest
) -> None:
    unix = request.node.callspec.params["remote"] == "unix"
    connection = impl.REMOTE.session()
    empty = ok(remote.cuModuleGetFunction(module, b"empty"))
    stream, gone = ok(remote.cuStreamCreate(0)), ok(remote.cuStreamCreate(0))
    event, gone_event = ok(remote.cuEventCreate(0)), ok(remote.cuEventCreate(0))
    ok(remote.cuStreamDestroy(gone))
    ok(remote.cuEventDestroy(gone_event))
    sim_server.backend.set_kernel_duration("empty", 0.0)
    ok(remote.cuLaunchKernel(empty, 1, 1, 1, 1, 1, 1, 0, stream, None, 0))
    ok(remote.cuEventRecord(event, stream))
    assert wait_until(connection.work_done, timeout=1.0) == unix  # only same-host sessions
    sent = connection._sent
    assert remote.cuStreamSynchronize(stream) == (OK,)
    assert remote.cuStreamQuery(0) == (OK,)
    assert remote.cuCtxSynchronize() == (OK,)
    assert remote.cuEventSynchronize(event) == (OK,)
    assert remote.cuEventQuery(event) == (OK,)
    assert connection._sent == sent  # answered here
    # Not for a stream or event that is gone, nor one never made: the server says why.
    assert remote.cuStreamSynchronize(gone) == (CUresult.CUDA_ERROR_INVALID_HANDLE,)
    assert remote.cuEventQuery(gone_event) == (CUresult.CUDA_ERROR_INVALID_HANDLE,)
    assert remote.cuStreamSynchronize(remote.CUstream(0x4242)) == (
        CUresult.CUDA_ERROR_INVALID_HANDLE,
    )
    # Nor while work runs, nor once a call failed: its error comes back from the sync.
    sim_server.backend.set_kernel_duration("empty", 10e6)
    ok(remote.cuLaunchKernel(empty, 1, 1, 1, 1, 1, 1, 0, stream, None, 0))
    time.sleep(0.05)
    assert not connection.work_done()
    sim_server.backend.set_kernel_duration("empty", 0.0)
    ok(remote.cuCtxSynchronize())
    ok(remote.cuLaunchKernel(empty, 1, 1, 1, 4096, 1, 1, 0, stream, None, 0))
    time.sleep(0.05)
    assert remote.cuStreamSynchronize(stream) == (CUresult.CUDA_ERROR_INVALID_VALUE,)
    assert remote.cuStreamSynchronize(stream) == (OK,)


@pytest.mark.parametrize("remote", ["unix"], indirect=True)
def test_a_synchronization_right_after_a_launch_takes_the_notice_that_follows(
    remote: ModuleType, module: object, sim_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = impl.REMOTE.session()
    empty = ok(remote.cuModuleGetFunction(module, b"empty"))
    stream = ok(remote.cuStreamCreate(0))

    def launch_and_synchronize() -> tuple[int, float]:
        ok(remote.cuLaunchKernel(empty, 1, 1, 1, 1, 1, 1, 0, stream, None, 0))
        sent, start = session._sent, time.perf_counter()
        assert remote.cuStreamSynchronize(stream) == (OK,)
        return session._sent - sent, time.perf_counter() - start

    monkeypatch.setattr(connection, "NOTICE_WAIT_S", 10.0)  # however slow this machine is
    sim_server.backend.set_kernel_duration("empty", 0.0)
    assert launch_and_synchronize()[0] == 0  # the server's notice answered it
    # Kernels that outlast the server's watch: no notice comes, so the synchronization is
    # sent after the wait; once most recent waits went unanswered, at once.
    monkeypatch.setattr(connection, "NOTICE_WAIT_S", 0.02)
    sim_server.backend.set_kernel_duration("empty", 100e3)
    waits = 0
    while session._notice_miss_share < connection.NOTICE_MISS_LIMIT:
        sent, took = launch_and_synchronize()
        assert sent == 1 and took >= 0.02
        waits += 1
    assert waits == 3  # a share of 0.1, 0.19, then 0.271
    assert launch_and_synchronize()[0] == 1
    assert session._unwaited == 1  # it asked without waiting
