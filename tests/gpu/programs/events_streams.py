"""Events, prioritized streams, cross-stream ordering, device and context queries, error codes."""

import ctypes

import numpy as np
from common import (
    SLOW_FILL_SOURCE,
    c_str,
    check,
    compile_ptx,
    err_name,
    expect,
    grid_for,
    init_primary_context,
    sha256,
)
from cuda.bindings import driver

N = 1 << 16
BLOCK = 256
SPIN_CYCLES = 50_000_000
BASE = 1000
DEVICE_ATTRIBUTES = [
    "CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT",
    "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR",
    "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR",
    "CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK",
    "CU_DEVICE_ATTRIBUTE_WARP_SIZE",
    "CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK",
]
IN_FLIGHT = {"CUDA_SUCCESS", "CUDA_ERROR_NOT_READY"}


def device_queries(dev) -> None:
    """Print what the driver reports about the device."""
    print(f"device_count {check(driver.cuDeviceGetCount())}")
    print(f"device_name {c_str(check(driver.cuDeviceGetName(256, dev)))}")
    for name in DEVICE_ATTRIBUTES:
        value = check(driver.cuDeviceGetAttribute(getattr(driver.CUdevice_attribute, name), dev))
        print(f"device_attribute {name}={value}")
    print(f"device_total_mem {check(driver.cuDeviceTotalMem(dev))}")
    print(f"driver_version {check(driver.cuDriverGetVersion())}")
    print(f"device_uuid {check(driver.cuDeviceGetUuid(dev)).bytes.hex()}")


def context_queries(dev, primary) -> None:
    """Check current-context bookkeeping through create, pop, push and destroy."""

    def current_is(ctx) -> bool:
        return int(check(driver.cuCtxGetCurrent())) == int(ctx)

    print(f"ctx_device {int(check(driver.cuCtxGetDevice()))}")
    print(f"primary_is_current {current_is(primary)}")
    created = check(driver.cuCtxCreate(None, 0, dev))
    print(f"created_is_current {current_is(created)}")
    print(f"pop_returns_created {int(check(driver.cuCtxPopCurrent())) == int(created)}")
    print(f"primary_current_after_pop {current_is(primary)}")
    check(driver.cuCtxPushCurrent(created))
    print(f"created_current_after_push {current_is(created)}")
    print(f"pop_again_returns_created {int(check(driver.cuCtxPopCurrent())) == int(created)}")
    check(driver.cuCtxDestroy(created))
    print(f"primary_current_at_end {current_is(primary)}")


def ordering(module) -> None:
    """A slow kernel on stream A fills a buffer; stream B waits on an event and copies it."""
    slow_fill = check(driver.cuModuleGetFunction(module, b"slow_fill"))
    copy_ints = check(driver.cuModuleGetFunction(module, b"copy_ints"))
    least, greatest = check(driver.cuCtxGetStreamPriorityRange())
    print(f"stream_priority_range least={least} greatest={greatest}")
    flags = driver.CUstream_flags.CU_STREAM_NON_BLOCKING
    stream_a = check(driver.cuStreamCreateWithPriority(flags, greatest))
    stream_b = check(driver.cuStreamCreateWithPriority(flags, least))
    print(f"stream_a_priority {check(driver.cuStreamGetPriority(stream_a))}")
    print(f"stream_b_priority {check(driver.cuStreamGetPriority(stream_b))}")
    start, filled, stop = (
        check(driver.cuEventCreate(driver.CUevent_flags.CU_EVENT_DEFAULT)) for _ in range(3)
    )

    nbytes = N * 4
    d_src, d_dst = check(driver.cuMemAlloc(nbytes)), check(driver.cuMemAlloc(nbytes))
    check(driver.cuMemsetD32(d_src, 0, N))
    check(driver.cuMemsetD32(d_dst, 0, N))
    grid = grid_for(N, BLOCK)
    fill_args = (
        (d_src, N, SPIN_CYCLES, BASE),
        (None, ctypes.c_int, ctypes.c_longlong, ctypes.c_int),
    )
    copy_args = ((d_dst, d_src, N), (None, None, ctypes.c_int))

    check(driver.cuEventRecord(start, stream_a))
    check(driver.cuLaunchKernel(slow_fill, grid, 1, 1, BLOCK, 1, 1, 0, stream_a, fill_args, 0))
    check(driver.cuEventRecord(filled, stream_a))
    check(driver.cuEventRecord(stop, stream_a))
    check(driver.cuStreamWaitEvent(stream_b, filled, 0))
    check(driver.cuLaunchKernel(copy_ints, grid, 1, 1, BLOCK, 1, 1, 0, stream_b, copy_args, 0))
    print(f"stream_query_in_flight_valid {err_name(driver.cuStreamQuery(stream_a)) in IN_FLIGHT}")
    print(f"event_query_in_flight_valid {err_name(driver.cuEventQuery(stop)) in IN_FLIGHT}")

    check(driver.cuStreamSynchronize(stream_b))
    out = np.empty(N, dtype=np.int32)
    check(driver.cuMemcpyDtoH(out, d_dst, nbytes))
    expected = BASE + np.arange(N, dtype=np.int32)
    expect(np.array_equal(out, expected), "stream B did not see stream A's data")
    print(f"stream_b_saw_a_data True sha256={sha256(out)}")

    check(driver.cuEventSynchronize(stop))
    print(f"event_query_done {err_name(driver.cuEventQuery(stop))}")
    print(f"stream_query_done {err_name(driver.cuStreamQuery(stream_a))}")
    elapsed_ms = check(driver.cuEventElapsedTime(start, stop))
    expect(elapsed_ms > 0, f"elapsed time {elapsed_ms} ms is not positive")
    print("elapsed_positive True")

    never_recorded = check(driver.cuEventCreate(driver.CUevent_flags.CU_EVENT_DEFAULT))
    print(f"elapsed_unrecorded_event {err_name(driver.cuEventElapsedTime(start, never_recorded))}")
    for event in (start, filled, stop, never_recorded):
        check(driver.cuEventDestroy(event))
    for stream in (stream_a, stream_b):
        check(driver.cuStreamDestroy(stream))
    check(driver.cuMemFree(d_src))
    check(driver.cuMemFree(d_dst))


def bad_calls(module) -> None:
    """Print the error names of calls that must fail without harming the context."""
    count = check(driver.cuDeviceGetCount())
    print(f"bad_free {err_name(driver.cuMemFree(driver.CUdeviceptr(0xDEAD0000)))}")
    print(f"missing_function {err_name(driver.cuModuleGetFunction(module, b'no_such_function'))}")
    print(f"bad_device {err_name(driver.cuDeviceGet(count + 100))}")
    print(f"huge_alloc {err_name(driver.cuMemAlloc(1 << 60))}")
    print(f"context_still_usable {err_name(driver.cuCtxSynchronize())}")


def main() -> None:
    dev, primary = init_primary_context()
    device_queries(dev)
    context_queries(dev, primary)
    ptx, _ = compile_ptx(SLOW_FILL_SOURCE, dev)
    module = check(driver.cuModuleLoadData(ptx))
    ordering(module)
    bad_calls(module)
    check(driver.cuModuleUnload(module))
    check(driver.cuDevicePrimaryCtxRelease(dev))
    print("events_streams: OK")


if __name__ == "__main__":
    main()
