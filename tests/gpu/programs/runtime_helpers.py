"""Runtime-API device selection mixed with driver calls on the runtime's primary context."""

import ctypes

import numpy as np
from common import c_str, check, compile_ptx, expect, grid_for, sha256
from cuda.bindings import driver, runtime

SOURCE = r"""
extern "C" __global__ void squares(long long* out, long long offset, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = (long long)i * i + offset;
}
"""
N = 123_457
BLOCK = 256
OFFSET = -(10**12)
ATTRIBUTES = [
    ("cudaDevAttrMultiProcessorCount", "CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT"),
    ("cudaDevAttrComputeCapabilityMajor", "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR"),
    ("cudaDevAttrComputeCapabilityMinor", "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR"),
    ("cudaDevAttrMaxThreadsPerBlock", "CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK"),
]


def main() -> None:
    check(runtime.cudaFree(0))
    check(runtime.cudaSetDevice(0))
    print(f"runtime_device {check(runtime.cudaGetDevice())}")
    print(f"runtime_device_count {check(runtime.cudaGetDeviceCount())}")
    props = check(runtime.cudaGetDeviceProperties(0))
    print(f"props name={c_str(props.name)} major={props.major} minor={props.minor}")
    print(f"props multiProcessorCount={props.multiProcessorCount}")

    ctx = check(driver.cuCtxGetCurrent())
    dev = check(driver.cuCtxGetDevice())
    primary = check(driver.cuDevicePrimaryCtxRetain(dev))
    print(f"driver_ctx_device {int(dev)}")
    print(f"current_is_primary {int(ctx) != 0 and int(ctx) == int(primary)}")
    for rt_name, drv_name in ATTRIBUTES:
        value = check(runtime.cudaDeviceGetAttribute(getattr(runtime.cudaDeviceAttr, rt_name), 0))
        drv_value = check(
            driver.cuDeviceGetAttribute(getattr(driver.CUdevice_attribute, drv_name), dev)
        )
        expect(value == drv_value, f"{rt_name}={value} but driver says {drv_value}")
        print(f"attribute {rt_name}={value} matches_driver True")

    ptx, _ = compile_ptx(SOURCE, dev)
    module = check(driver.cuModuleLoadData(ptx))
    squares = check(driver.cuModuleGetFunction(module, b"squares"))
    out = np.empty(N, dtype=np.int64)
    d_out = check(driver.cuMemAlloc(out.nbytes))
    args = ((d_out, OFFSET, N), (None, ctypes.c_longlong, ctypes.c_int))
    check(driver.cuLaunchKernel(squares, grid_for(N, BLOCK), 1, 1, BLOCK, 1, 1, 0, 0, args, 0))
    check(runtime.cudaDeviceSynchronize())
    check(driver.cuMemcpyDtoH(out, d_out, out.nbytes))
    index = np.arange(N, dtype=np.int64)
    expect(np.array_equal(out, index * index + OFFSET), "squares kernel result differs")
    print(f"squares sha256={sha256(out)} last={int(out[-1])}")

    check(driver.cuMemFree(d_out))
    check(driver.cuModuleUnload(module))
    check(driver.cuDevicePrimaryCtxRelease(dev))
    print("runtime_helpers: OK")


if __name__ == "__main__":
    main()
