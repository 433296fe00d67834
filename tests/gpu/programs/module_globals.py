"""Module globals, mangled template kernels, the library API and function attributes."""

import ctypes

import numpy as np
from common import check, compile_ptx, err_name, expect, grid_for, init_primary_context, sha256
from cuda.bindings import driver

SOURCE = r"""
extern "C" {
__device__ int table[16];
__device__ unsigned long long counter;

__global__ void bump(int factor)
{
    int i = threadIdx.x;
    if (i < 16) {
        table[i] = table[i] * factor + i;
        atomicAdd(&counter, (unsigned long long)(long long)table[i]);
    }
}
}

template <typename T>
__global__ void scale(T* data, T factor, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) data[i] *= factor;
}
"""
SCALE = "scale<double>"
N = 10_000
BLOCK = 128
FUNC_ATTRIBUTES = [
    "CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK",
    "CU_FUNC_ATTRIBUTE_NUM_REGS",
    "CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES",
    "CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES",
    "CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES",
    "CU_FUNC_ATTRIBUTE_PTX_VERSION",
    "CU_FUNC_ATTRIBUTE_BINARY_VERSION",
]


def read_global(module, name: bytes, dtype) -> np.ndarray:
    """Copy a module global into a new numpy array."""
    d_ptr, size = check(driver.cuModuleGetGlobal(module, name))
    out = np.empty(size // np.dtype(dtype).itemsize, dtype=dtype)
    check(driver.cuMemcpyDtoH(out, d_ptr, size))
    return out


def check_globals(module) -> None:
    """Write the globals with HtoD, let a kernel update them, read them back."""
    d_table, table_size = check(driver.cuModuleGetGlobal(module, b"table"))
    d_counter, counter_size = check(driver.cuModuleGetGlobal(module, b"counter"))
    print(f"globals table_size={table_size} counter_size={counter_size}")
    table = np.arange(16, dtype=np.int32) * 3 - 7
    counter = np.array([100], dtype=np.uint64)
    check(driver.cuMemcpyHtoD(d_table, table, table_size))
    check(driver.cuMemcpyHtoD(d_counter, counter, counter_size))

    bump = check(driver.cuModuleGetFunction(module, b"bump"))
    check(driver.cuLaunchKernel(bump, 1, 1, 1, 32, 1, 1, 0, 0, ((5,), (ctypes.c_int,)), 0))
    check(driver.cuCtxSynchronize())

    expected_table = table * 5 + np.arange(16, dtype=np.int32)
    expected_counter = (100 + int(expected_table.astype(np.int64).sum())) % 2**64
    got_table = read_global(module, b"table", np.int32)
    got_counter = int(read_global(module, b"counter", np.uint64)[0])
    expect(np.array_equal(got_table, expected_table), f"table is {got_table.tolist()}")
    expect(got_counter == expected_counter, f"counter is {got_counter}, not {expected_counter}")
    print(f"globals table={got_table.tolist()} counter={got_counter}")


def run_scale(function, label: str, factor: float) -> None:
    """Scale a random vector with `function` (a scale<double> kernel) and check it."""
    data = np.random.default_rng(5).standard_normal(N)
    d_data = check(driver.cuMemAlloc(data.nbytes))
    check(driver.cuMemcpyHtoD(d_data, data, data.nbytes))
    args = ((d_data, factor, N), (None, ctypes.c_double, ctypes.c_int))
    check(driver.cuLaunchKernel(function, grid_for(N, BLOCK), 1, 1, BLOCK, 1, 1, 0, 0, args, 0))
    out = np.empty_like(data)
    check(driver.cuMemcpyDtoH(out, d_data, data.nbytes))
    expect(np.array_equal(out, data * factor), f"{label}: scaled data differs")
    print(f"{label} factor={factor!r} sha256={sha256(out)} first={float(out[0])!r}")
    check(driver.cuMemFree(d_data))


def describe(function, label: str, n_params: int) -> None:
    """Print function attributes, parameter layout and occupancy."""
    for name in FUNC_ATTRIBUTES:
        attribute = getattr(driver.CUfunction_attribute, name)
        print(f"{label} {name}={check(driver.cuFuncGetAttribute(attribute, function))}")
    for index in range(n_params):
        offset, size = check(driver.cuFuncGetParamInfo(function, index))
        print(f"{label} param[{index}] offset={offset} size={size}")
    print(f"{label} param[{n_params}] {err_name(driver.cuFuncGetParamInfo(function, n_params))}")
    blocks = check(driver.cuOccupancyMaxActiveBlocksPerMultiprocessor(function, 256, 0))
    print(f"{label} occupancy_blocks_per_sm(256 threads)={blocks}")


def main() -> None:
    dev, _ = init_primary_context()
    ptx, lowered = compile_ptx(SOURCE, dev, name_expressions=[SCALE])
    print(f"lowered {SCALE} -> {lowered[SCALE].decode()}")

    module = check(driver.cuModuleLoadData(ptx))
    check_globals(module)
    scale = check(driver.cuModuleGetFunction(module, lowered[SCALE]))
    run_scale(scale, "module_scale", 1.5)
    describe(scale, "module_scale", 3)
    describe(check(driver.cuModuleGetFunction(module, b"bump")), "module_bump", 1)

    library = check(driver.cuLibraryLoadData(ptx, None, None, 0, None, None, 0))
    kernel = check(driver.cuLibraryGetKernel(library, lowered[SCALE]))
    library_scale = check(driver.cuKernelGetFunction(kernel))
    run_scale(library_scale, "library_scale", -0.75)
    describe(library_scale, "library_scale", 3)
    print(f"missing_kernel {err_name(driver.cuLibraryGetKernel(library, b'no_such_kernel'))}")

    check(driver.cuLibraryUnload(library))
    check(driver.cuModuleUnload(module))
    check(driver.cuDevicePrimaryCtxRelease(dev))
    print("module_globals: OK")


if __name__ == "__main__":
    main()
