"""Vector addition with cuda-python: NVRTC compile, launch on device 0, check against numpy.

Runs natively (`python examples/vector_add.py`) or, unchanged, on a remote GPU
(`fikit-run python examples/vector_add.py`).
"""

import ctypes
import sys

import numpy as np
from cuda.bindings import driver, nvrtc

SOURCE = b"""
extern "C" __global__ void vector_add(const float* a, const float* b, float* out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}
"""
N = 1 << 20
BLOCK = 256


def check(result):
    """Raise on a CUDA/NVRTC error; return the call's value(s) without the error code."""
    err, *values = result
    if err not in (driver.CUresult.CUDA_SUCCESS, nvrtc.nvrtcResult.NVRTC_SUCCESS):
        raise RuntimeError(f"CUDA call failed: {err.name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def compile_ptx(dev) -> bytes:
    """Compile SOURCE for the device's compute capability; return NUL-terminated PTX."""
    attr = driver.CUdevice_attribute
    major = check(
        driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
    )
    minor = check(
        driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
    )
    prog = check(nvrtc.nvrtcCreateProgram(SOURCE, b"vector_add.cu", 0, [], []))
    options = [f"--gpu-architecture=compute_{major}{minor}".encode()]
    (err,) = nvrtc.nvrtcCompileProgram(prog, len(options), options)
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        log = b" " * check(nvrtc.nvrtcGetProgramLogSize(prog))
        check(nvrtc.nvrtcGetProgramLog(prog, log))
        raise RuntimeError(f"NVRTC compilation failed:\n{log.decode(errors='replace')}")
    ptx = b" " * check(nvrtc.nvrtcGetPTXSize(prog))
    check(nvrtc.nvrtcGetPTX(prog, ptx))
    check(nvrtc.nvrtcDestroyProgram(prog))
    return ptx


def main() -> int:
    check(driver.cuInit(0))
    dev = check(driver.cuDeviceGet(0))
    name = check(driver.cuDeviceGetName(256, dev)).split(b"\0", 1)[0].decode()
    ctx = check(driver.cuDevicePrimaryCtxRetain(dev))
    check(driver.cuCtxSetCurrent(ctx))

    module = check(driver.cuModuleLoadData(compile_ptx(dev)))
    kernel = check(driver.cuModuleGetFunction(module, b"vector_add"))

    rng = np.random.default_rng(0)
    a = rng.standard_normal(N, dtype=np.float32)
    b = rng.standard_normal(N, dtype=np.float32)
    out = np.zeros_like(a)
    nbytes = a.nbytes
    d_a, d_b, d_out = (check(driver.cuMemAlloc(nbytes)) for _ in range(3))
    check(driver.cuMemcpyHtoD(d_a, a, nbytes))
    check(driver.cuMemcpyHtoD(d_b, b, nbytes))

    args = ((d_a, d_b, d_out, N), (None, None, None, ctypes.c_int))
    grid = (N + BLOCK - 1) // BLOCK
    check(driver.cuLaunchKernel(kernel, grid, 1, 1, BLOCK, 1, 1, 0, 0, args, 0))
    check(driver.cuCtxSynchronize())
    check(driver.cuMemcpyDtoH(out, d_out, nbytes))

    for ptr in (d_a, d_b, d_out):
        check(driver.cuMemFree(ptr))
    check(driver.cuModuleUnload(module))
    check(driver.cuDevicePrimaryCtxRelease(dev))

    print(f"device: {name}")
    print(f"n: {N}")
    expected = a + b
    bad = np.flatnonzero(out != expected)
    if bad.size:
        i = bad[0]
        print(
            f"vector_add: MISMATCH at {bad.size} of {N} elements; first at index {i}: "
            f"got {out[i]!r}, expected {expected[i]!r}",
            file=sys.stderr,
        )
        return 1
    print("vector_add: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
