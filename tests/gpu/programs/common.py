"""Shared helpers for the plain cuda-python test programs (error checks, NVRTC, contexts)."""

import hashlib
from collections.abc import Iterable

from cuda.bindings import driver, nvrtc, runtime

_SUCCESS = (
    driver.CUresult.CUDA_SUCCESS,
    nvrtc.nvrtcResult.NVRTC_SUCCESS,
    runtime.cudaError_t.cudaSuccess,
)


#: CUDA C of two kernels: ``slow_fill`` spins for ``spin_cycles`` clock cycles, then writes
#: ``base + i`` to ``buf[i]``; ``copy_ints`` copies ``n`` ints.
SLOW_FILL_SOURCE = r"""
extern "C" {
__global__ void slow_fill(int* buf, int n, long long spin_cycles, int base)
{
    long long start = clock64();
    while (clock64() - start < spin_cycles) { }
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) buf[i] = base + i;
}

__global__ void copy_ints(int* dst, const int* src, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = src[i];
}
}
"""


class CudaError(RuntimeError):
    """A CUDA driver, runtime or NVRTC call returned an error."""


def check(result):
    """Raise CudaError unless result[0] is a success code; return the remaining values.

    Returns None for a bare (err,), the value for (err, value), else the tuple of values.
    """
    err, *values = result
    if err not in _SUCCESS:
        raise CudaError(err.name)
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def err_name(result) -> str:
    """Name of the error code in a call's result tuple (success included)."""
    return result[0].name


def sha256(data) -> str:
    """Hex sha256 of a contiguous buffer (bytes, numpy array, ctypes array)."""
    return hashlib.sha256(data).hexdigest()


def c_str(raw: bytes) -> str:
    """Decode a NUL-padded C string."""
    return raw.split(b"\0", 1)[0].decode()


def init_primary_context(ordinal: int = 0):
    """cuInit, then retain device `ordinal`'s primary context and make it current."""
    check(driver.cuInit(0))
    dev = check(driver.cuDeviceGet(ordinal))
    ctx = check(driver.cuDevicePrimaryCtxRetain(dev))
    check(driver.cuCtxSetCurrent(ctx))
    return dev, ctx


def device_arch(dev) -> bytes:
    """NVRTC --gpu-architecture option (virtual, so NVRTC emits PTX) for a device."""
    attr = driver.CUdevice_attribute
    major = check(
        driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
    )
    minor = check(
        driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
    )
    return f"--gpu-architecture=compute_{major}{minor}".encode()


def compile_ptx(
    source: str,
    dev,
    options: Iterable[bytes] = (),
    name_expressions: Iterable[str] = (),
) -> tuple[bytes, dict[str, bytes]]:
    """Compile CUDA C++ to NUL-terminated PTX; also return the lowered name of each expression."""
    prog = check(nvrtc.nvrtcCreateProgram(source.encode(), b"program.cu", 0, [], []))
    try:
        for expr in name_expressions:
            check(nvrtc.nvrtcAddNameExpression(prog, expr.encode()))
        opts = [device_arch(dev), *options]
        compiled = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        if compiled[0] != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            log = b" " * check(nvrtc.nvrtcGetProgramLogSize(prog))
            check(nvrtc.nvrtcGetProgramLog(prog, log))
            raise CudaError(f"{compiled[0].name}:\n{c_str(log)}")
        ptx = b" " * check(nvrtc.nvrtcGetPTXSize(prog))
        check(nvrtc.nvrtcGetPTX(prog, ptx))
        lowered = {
            expr: check(nvrtc.nvrtcGetLoweredName(prog, expr.encode())) for expr in name_expressions
        }
    finally:
        check(nvrtc.nvrtcDestroyProgram(prog))
    return ptx, lowered


def grid_for(n: int, block: int) -> int:
    """Number of blocks of `block` threads needed to cover n elements."""
    return (n + block - 1) // block


def expect(condition: bool, message: str) -> None:
    """Exit with status 1 and a message when a result check fails."""
    if not condition:
        raise SystemExit(f"FAILED: {message}")
