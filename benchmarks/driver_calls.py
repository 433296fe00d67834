"""Driver-call latency and copy bandwidth micro-benchmark in plain cuda-python.

Runs natively (`python benchmarks/driver_calls.py`) or remotely, unchanged, under fikit-run.
Measures the asynchronous launch rate (an empty kernel and a 4-argument one), launch+sync,
a trivial synchronizing call, a latency-sensitive request (5 kernels with 50 us of host
work between them, then a sync) and pageable copies of 1, 64 and 256 MiB each way.
Prints a human-readable table, then the results as one JSON object on the last line.
"""

import ctypes
import json
import statistics
import time

import numpy as np
from cuda.bindings import driver, nvrtc

SOURCE = b"""
extern "C" __global__ void empty() {}
extern "C" __global__ void saxpy(int n, float a, const float* x, float* y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}
"""
ASYNC_LAUNCHES = 20_000
SYNC_REPEATS = 2_000
WARMUP = 500
COPIES = [("1MiB", 1 << 20, 20), ("64MiB", 64 << 20, 5), ("256MiB", 256 << 20, 3)]
#: The latency-sensitive request: kernels with host work between them, then a sync.
REQUESTS = 500
KERNELS_PER_REQUEST = 5
HOST_WORK_S = 50e-6
SAXPY_N = 1 << 16


def check(result):
    """Raise on a CUDA/NVRTC error; return the call's value(s) without the error code."""
    err, *values = result
    if err not in (driver.CUresult.CUDA_SUCCESS, nvrtc.nvrtcResult.NVRTC_SUCCESS):
        raise RuntimeError(f"CUDA call failed: {err.name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def compile_kernels(dev):
    """Load the kernels compiled by NVRTC for the device; (module, empty, saxpy)."""
    attr = driver.CUdevice_attribute
    major = check(
        driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
    )
    minor = check(
        driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
    )
    prog = check(nvrtc.nvrtcCreateProgram(SOURCE, b"calls.cu", 0, [], []))
    options = [f"--gpu-architecture=compute_{major}{minor}".encode()]
    check(nvrtc.nvrtcCompileProgram(prog, len(options), options))
    ptx = b" " * check(nvrtc.nvrtcGetPTXSize(prog))
    check(nvrtc.nvrtcGetPTX(prog, ptx))
    check(nvrtc.nvrtcDestroyProgram(prog))
    module = check(driver.cuModuleLoadData(ptx))
    empty = check(driver.cuModuleGetFunction(module, b"empty"))
    return module, empty, check(driver.cuModuleGetFunction(module, b"saxpy"))


def busy_wait(seconds: float) -> None:
    """Host work that keeps the CPU (and the GIL) busy, as Python pre/post-processing does."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def median_seconds(call, repeats: int) -> float:
    """Median wall time of `call()` over `repeats` runs, in seconds."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def bandwidth(copy, dst, src, size: int, repeats: int) -> float:
    """GB/s of the median `copy(dst, src, size)`."""
    return size / median_seconds(lambda: check(copy(dst, src, size)), repeats) / 1e9


def open_device():
    """cuInit, then make device 0's primary context current; the device."""
    check(driver.cuInit(0))
    dev = check(driver.cuDeviceGet(0))
    check(driver.cuCtxSetCurrent(check(driver.cuDevicePrimaryCtxRetain(dev))))
    return dev


def main() -> None:
    dev = open_device()
    module, kernel, saxpy = compile_kernels(dev)
    stream = check(driver.cuStreamCreate(0))
    x, y = check(driver.cuMemAlloc(4 * SAXPY_N)), check(driver.cuMemAlloc(4 * SAXPY_N))
    saxpy_args = ((SAXPY_N, 2.0, x, y), (ctypes.c_int, ctypes.c_float, None, None))

    def launch():
        check(driver.cuLaunchKernel(kernel, 1, 1, 1, 1, 1, 1, 0, stream, None, 0))

    def launch_saxpy():
        grid = (SAXPY_N + 255) // 256
        check(driver.cuLaunchKernel(saxpy, grid, 1, 1, 256, 1, 1, 0, stream, saxpy_args, 0))

    def request():
        for _ in range(KERNELS_PER_REQUEST):
            launch_saxpy()
            busy_wait(HOST_WORK_S)
        check(driver.cuStreamSynchronize(stream))

    def launch_and_sync():
        launch()
        check(driver.cuStreamSynchronize(stream))

    def ctx_sync():
        check(driver.cuCtxSynchronize())

    for _ in range(WARMUP):
        launch_and_sync()
        ctx_sync()

    results = {}
    for key, one_launch in (("launch_async_us", launch), ("launch_4arg_async_us", launch_saxpy)):
        start = time.perf_counter()
        for _ in range(ASYNC_LAUNCHES):
            one_launch()
        check(driver.cuStreamSynchronize(stream))
        results[key] = (time.perf_counter() - start) / ASYNC_LAUNCHES * 1e6
    results["launch_sync_us"] = median_seconds(launch_and_sync, SYNC_REPEATS) * 1e6
    results["sync_call_us"] = median_seconds(ctx_sync, SYNC_REPEATS) * 1e6
    results["request_us"] = median_seconds(request, REQUESTS) * 1e6

    rng = np.random.default_rng(0)
    for label, size, repeats in COPIES:
        host = rng.integers(0, 256, size, dtype=np.uint8)
        back = np.empty_like(host)
        d_buf = check(driver.cuMemAlloc(size))
        check(driver.cuMemcpyHtoD(d_buf, host, size))
        check(driver.cuMemcpyDtoH(back, d_buf, size))
        results[f"htod_{label}_GBps"] = bandwidth(driver.cuMemcpyHtoD, d_buf, host, size, repeats)
        results[f"dtoh_{label}_GBps"] = bandwidth(driver.cuMemcpyDtoH, back, d_buf, size, repeats)
        check(driver.cuMemFree(d_buf))
        if not np.array_equal(host, back):
            raise RuntimeError(f"{label} round trip returned different bytes")

    check(driver.cuMemFree(x))
    check(driver.cuMemFree(y))
    check(driver.cuStreamDestroy(stream))
    check(driver.cuModuleUnload(module))
    check(driver.cuDevicePrimaryCtxRelease(dev))

    name = check(driver.cuDeviceGetName(256, dev)).split(b"\0", 1)[0].decode()
    print(f"device: {name}")
    print(f"{'metric':<20} {'value':>12}")
    for key, value in results.items():
        print(f"{key:<20} {value:>12.3f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
