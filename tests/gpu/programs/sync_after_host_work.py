"""Synchronizing after host work: short kernels done by then, and a long one still running.

Through a same-host server a synchronization that its work-done notice covers returns at
once; this program checks that such a synchronization is never early: a long kernel's
results must be complete, as seen from a stream nothing orders after it, when its
stream's synchronization returns, and each short kernel's result is right after a
synchronization made once host work has passed.
"""

import ctypes
import time

import numpy as np
from common import (
    SLOW_FILL_SOURCE,
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
LONG_SPIN_CYCLES = 100_000_000
REQUESTS = 200
HOST_WORK_S = 100e-6


def busy_wait(seconds: float) -> None:
    """Host work that keeps the CPU busy."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def main() -> None:
    dev, _ = init_primary_context()
    ptx, _ = compile_ptx(SLOW_FILL_SOURCE, dev)
    module = check(driver.cuModuleLoadData(ptx))
    fill = check(driver.cuModuleGetFunction(module, b"slow_fill"))
    copy_ints = check(driver.cuModuleGetFunction(module, b"copy_ints"))
    flags = driver.CUstream_flags.CU_STREAM_NON_BLOCKING
    worker, reader = check(driver.cuStreamCreate(flags)), check(driver.cuStreamCreate(flags))
    done = check(driver.cuEventCreate(driver.CUevent_flags.CU_EVENT_DISABLE_TIMING))
    nbytes = N * 4
    d_buf, d_copy = check(driver.cuMemAlloc(nbytes)), check(driver.cuMemAlloc(nbytes))
    grid = grid_for(N, BLOCK)
    out = np.empty(N, dtype=np.int32)
    fill_types = (None, ctypes.c_int, ctypes.c_longlong, ctypes.c_int)
    copy = ((d_copy, d_buf, N), (None, None, ctypes.c_int))
    synchronizations = (
        lambda: driver.cuStreamSynchronize(worker),
        lambda: driver.cuEventSynchronize(done),
        driver.cuCtxSynchronize,
    )

    # Short kernels, a synchronization after host work each time (an inference request).
    for request in range(REQUESTS):
        args = ((d_buf, N, 0, request), fill_types)
        check(driver.cuLaunchKernel(fill, grid, 1, 1, BLOCK, 1, 1, 0, worker, args, 0))
        check(driver.cuEventRecord(done, worker))
        busy_wait(HOST_WORK_S)
        check(synchronizations[request % len(synchronizations)]())
        check(driver.cuLaunchKernel(copy_ints, grid, 1, 1, BLOCK, 1, 1, 0, reader, copy, 0))
        check(driver.cuStreamSynchronize(reader))
        check(driver.cuMemcpyDtoH(out, d_copy, nbytes))
        expect(out[0] == request and out[-1] == request + N - 1, f"request {request}: stale")
    print(f"short_requests_all_complete {REQUESTS}")

    # A long kernel: still running after host work, so a synchronization must wait for it.
    check(driver.cuMemsetD32(d_buf, 0, N))
    check(driver.cuCtxSynchronize())
    args = ((d_buf, N, LONG_SPIN_CYCLES, 7), fill_types)
    check(driver.cuLaunchKernel(fill, grid, 1, 1, BLOCK, 1, 1, 0, worker, args, 0))
    time.sleep(0.001)
    print(f"query_while_running {err_name(driver.cuStreamQuery(worker))}")
    check(driver.cuStreamSynchronize(worker))
    check(driver.cuLaunchKernel(copy_ints, grid, 1, 1, BLOCK, 1, 1, 0, reader, copy, 0))
    check(driver.cuStreamSynchronize(reader))
    check(driver.cuMemcpyDtoH(out, d_copy, nbytes))
    expect(np.array_equal(out, 7 + np.arange(N, dtype=np.int32)), "synchronized early")
    print(f"long_kernel_complete sha256={sha256(out)}")
    print(f"query_after {err_name(driver.cuStreamQuery(worker))}")

    check(driver.cuEventDestroy(done))
    for stream in (worker, reader):
        check(driver.cuStreamDestroy(stream))
    for ptr in (d_buf, d_copy):
        check(driver.cuMemFree(ptr))
    check(driver.cuModuleUnload(module))
    print("sync_after_host_work: OK")


if __name__ == "__main__":
    main()
