"""One tenant of a shared GPU server, in plain cuda-python (run it with fikit-run).

tenant.py fault      a kernel writes to an illegal address; prints the sync's CUresult
tenant.py bystander  keeps data on the GPU, prints "ready", waits for a line on stdin,
                     then prints whether its data and a kernel still work
tenant.py fresh      a new session: a copy round trip and a kernel; prints "ok"
tenant.py hold       allocates HOLD_BYTES, prints "ready", then waits to be killed
"""

import sys
from pathlib import Path

import numpy as np
from cuda.bindings import driver

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "programs"))
from common import check, compile_ptx, init_primary_context

SOURCE = r"""
extern "C" __global__ void poke(int *unused) { *(volatile int *)16 = 1; }
extern "C" __global__ void add_one(int *data, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) data[i] += 1;
}
"""
N = 1 << 20
HOLD_BYTES = 4 << 30


def kernels(dev):
    ptx, _ = compile_ptx(SOURCE, dev)
    module = check(driver.cuModuleLoadData(ptx))
    names = ("poke", "add_one")
    return {name: check(driver.cuModuleGetFunction(module, name.encode())) for name in names}


def add_one(function, ptr) -> driver.CUresult:
    """Launch add_one over N ints at ptr and synchronize; the first error met."""
    args = (np.array([int(ptr)], np.uint64), np.array([N], np.int32))
    params = np.array([a.ctypes.data for a in args], np.uint64)
    (err,) = driver.cuLaunchKernel(function, N // 256, 1, 1, 256, 1, 1, 0, 0, params.ctypes.data, 0)
    if err != driver.CUresult.CUDA_SUCCESS:
        return err
    return driver.cuCtxSynchronize()[0]


def main(role: str) -> None:
    dev, _ = init_primary_context()
    functions = kernels(dev)
    if role == "fault":
        params = np.array([np.zeros(1, np.uint64).ctypes.data], np.uint64)
        poke = functions["poke"]
        check(driver.cuLaunchKernel(poke, 1, 1, 1, 1, 1, 1, 0, 0, params.ctypes.data, 0))
        print(driver.cuCtxSynchronize()[0].name, flush=True)
        return
    if role == "hold":
        check(driver.cuMemAlloc(HOLD_BYTES))
        check(driver.cuCtxSynchronize())
        print("ready", flush=True)
        sys.stdin.readline()
        return
    data = np.arange(N, dtype=np.int32)
    ptr = check(driver.cuMemAlloc(data.nbytes))
    check(driver.cuMemcpyHtoD(ptr, data, data.nbytes))
    if role == "bystander":
        print("ready", flush=True)
        sys.stdin.readline()
    err = add_one(functions["add_one"], ptr)
    if err != driver.CUresult.CUDA_SUCCESS:
        print(err.name, flush=True)
        return
    back = np.empty_like(data)
    (err,) = driver.cuMemcpyDtoH(back, ptr, back.nbytes)
    if err != driver.CUresult.CUDA_SUCCESS:
        print(err.name, flush=True)
        return
    print("ok" if np.array_equal(back, data + 1) else "WRONG RESULT", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
