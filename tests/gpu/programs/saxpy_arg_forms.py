"""Launch one saxpy kernel with every kernel-argument form cuda-python accepts."""

import ctypes
import struct

import numpy as np
from common import check, compile_ptx, expect, grid_for, init_primary_context, sha256
from cuda.bindings import driver

SOURCE = r"""
extern "C" {
__device__ unsigned int marks;

__global__ void saxpy(float a, const float* x, const float* y, float* out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a * x[i] + y[i];
}

__global__ void mark()
{
    if (blockIdx.x == 0 && threadIdx.x == 0) marks += 1;
}
}
"""
N = 1_000_003
BLOCK = 256
PTR = ctypes.c_void_p


def ctypes_types(f, a, x, y, out, n):
    """(values, types): Python numbers and int addresses with ctypes types."""
    return (
        ((a, int(x), int(y), int(out), n), (ctypes.c_float, PTR, PTR, PTR, ctypes.c_int)),
        0,
        None,
    )


def ctypes_values(f, a, x, y, out, n):
    """(values, types): ctypes instances as values."""
    values = (ctypes.c_float(a), PTR(int(x)), PTR(int(y)), PTR(int(out)), ctypes.c_int(n))
    return (values, (ctypes.c_float, PTR, PTR, PTR, ctypes.c_int)), 0, None


def none_types(f, a, x, y, out, n):
    """(values, types): CUdeviceptr objects with type None."""
    return ((a, x, y, out, n), (ctypes.c_float, None, None, None, ctypes.c_int)), 0, None


def _void_ptr_array(a, x, y, out, n):
    """A hand-built void*[] pointing at ctypes values; returns (array, values to keep alive)."""
    values = [ctypes.c_float(a), PTR(int(x)), PTR(int(y)), PTR(int(out)), ctypes.c_int(n)]
    return (PTR * len(values))(*(ctypes.addressof(v) for v in values)), values


def int_address(f, a, x, y, out, n):
    """The int address of a void*[]."""
    array, values = _void_ptr_array(a, x, y, out, n)
    return ctypes.addressof(array), 0, (array, values)


def ctypes_array(f, a, x, y, out, n):
    """A ctypes array of c_void_p, passed directly (buffer protocol)."""
    array, values = _void_ptr_array(a, x, y, out, n)
    return array, 0, values


def numpy_pointers(f, a, x, y, out, n):
    """A numpy uint64 array of pointers to numpy-held values."""
    values = [
        np.array([a], dtype=np.float32),
        np.array([int(x), int(y), int(out)], dtype=np.uint64),
        np.array([n], dtype=np.int32),
    ]
    ptr_base = values[1].ctypes.data
    addresses = [
        values[0].ctypes.data,
        ptr_base,
        ptr_base + 8,
        ptr_base + 16,
        values[2].ctypes.data,
    ]
    return np.array(addresses, dtype=np.uint64), 0, values


def extra_buffer(f, a, x, y, out, n):
    """kernelParams None; arguments packed in one buffer passed through `extra`."""
    layout = [check(driver.cuFuncGetParamInfo(f, i)) for i in range(5)]
    size = layout[-1][0] + layout[-1][1]
    packed = ctypes.create_string_buffer(size)
    for (offset, _), fmt, value in zip(
        layout, "fQQQi", (a, int(x), int(y), int(out), n), strict=True
    ):
        struct.pack_into(fmt, packed, offset, value)
    size_t = ctypes.c_size_t(size)
    extra = (PTR * 5)(
        driver.CU_LAUNCH_PARAM_BUFFER_POINTER,
        ctypes.addressof(packed),
        driver.CU_LAUNCH_PARAM_BUFFER_SIZE,
        ctypes.addressof(size_t),
        driver.CU_LAUNCH_PARAM_END,
    )
    return None, ctypes.addressof(extra), (packed, size_t, extra)


FORMS = [ctypes_types, ctypes_values, none_types, int_address, ctypes_array, numpy_pointers]


def launch(f, stream, params, extra):
    """cuLaunchKernel over N elements."""
    grid = grid_for(N, BLOCK)
    check(driver.cuLaunchKernel(f, grid, 1, 1, BLOCK, 1, 1, 0, stream, params, extra))


def launch_ex(f, stream, params, extra):
    """cuLaunchKernelEx with a CUlaunchConfig over N elements."""
    config = driver.CUlaunchConfig()
    config.gridDimX, config.gridDimY, config.gridDimZ = grid_for(N, BLOCK), 1, 1
    config.blockDimX, config.blockDimY, config.blockDimZ = BLOCK, 1, 1
    config.sharedMemBytes = 0
    config.hStream = stream
    config.numAttrs = 0
    check(driver.cuLaunchKernelEx(config, f, params, extra))


def main() -> None:
    dev, _ = init_primary_context()
    ptx, _ = compile_ptx(SOURCE, dev, options=[b"--fmad=false"])
    module = check(driver.cuModuleLoadData(ptx))
    saxpy = check(driver.cuModuleGetFunction(module, b"saxpy"))
    mark = check(driver.cuModuleGetFunction(module, b"mark"))
    stream = check(driver.cuStreamCreate(0))

    rng = np.random.default_rng(1234)
    x = rng.standard_normal(N, dtype=np.float32)
    y = rng.standard_normal(N, dtype=np.float32)
    nbytes = x.nbytes
    d_x, d_y, d_out = (check(driver.cuMemAlloc(nbytes)) for _ in range(3))
    check(driver.cuMemcpyHtoD(d_x, x, nbytes))
    check(driver.cuMemcpyHtoD(d_y, y, nbytes))
    print(f"n {N} x_sha256 {sha256(x)} y_sha256 {sha256(y)}")

    cases = [(launch, form) for form in [*FORMS, extra_buffer]]
    cases += [(launch_ex, form) for form in FORMS]
    out = np.empty_like(x)
    for index, (launcher, form) in enumerate(cases):
        a = 0.5 + 0.25 * index
        check(driver.cuMemsetD32Async(d_out, 0, N, stream))
        params, extra, _keepalive = form(saxpy, a, d_x, d_y, d_out, N)
        launcher(saxpy, stream, params, extra)
        check(driver.cuStreamSynchronize(stream))
        check(driver.cuMemcpyDtoH(out, d_out, nbytes))
        name = f"{launcher.__name__}/{form.__name__}"
        expect(np.array_equal(out, np.float32(a) * x + y), f"{name}: result differs from numpy")
        print(f"{name} a={a} sha256={sha256(out)} first={float(out[0])!r} last={float(out[-1])!r}")

    d_marks, marks_size = check(driver.cuModuleGetGlobal(module, b"marks"))
    check(driver.cuMemsetD32(d_marks, 0, 1))
    for _ in range(3):
        check(driver.cuLaunchKernel(mark, 1, 1, 1, 32, 1, 1, 0, stream, None, 0))
    check(driver.cuStreamSynchronize(stream))
    marks = np.zeros(1, dtype=np.uint32)
    check(driver.cuMemcpyDtoH(marks, d_marks, marks_size))
    expect(int(marks[0]) == 3, f"zero-argument kernel ran {marks[0]} times, expected 3")
    print(f"zero_args marks={int(marks[0])} size={marks_size}")

    for ptr in (d_x, d_y, d_out):
        check(driver.cuMemFree(ptr))
    check(driver.cuStreamDestroy(stream))
    check(driver.cuModuleUnload(module))
    check(driver.cuDevicePrimaryCtxRelease(dev))
    print("saxpy_arg_forms: OK")


if __name__ == "__main__":
    main()
