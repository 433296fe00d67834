"""Shared code of the workload programs: one context and stream, NVRTC, and the kernels.

Plain cuda-python, so the programs run natively or, unchanged, through the FIKIT stub.
Every kernel works on row-major float32 arrays.
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable, Iterable
from typing import Any, Self

import numpy as np
from cuda.bindings import driver, nvrtc

KERNELS = r"""
#define TILE 64           // a GEMM block computes a TILE x TILE tile of C
#define TILE_K 16         // ... stepping through K by TILE_K
#define GEMM_THREADS 256  // 16 x 16 threads, each owning 4 x 4 outputs
#define ROW_THREADS 256   // threads of a row kernel (a power of two)
#define ACT_RELU 1
#define ACT_GELU 2

__device__ __forceinline__ float activate(float v, int act)
{
    if (act == ACT_RELU) return fmaxf(v, 0.0f);
    if (act == ACT_GELU) {
        const float u = 0.7978845608f * (v + 0.044715f * v * v * v);
        return 0.5f * v * (1.0f + tanhf(u));
    }
    return v;
}

// One tile of C = act(alpha * A @ op(B) + bias): A is M x K (row stride lda), op(B) is K x N,
// read from B[k * ldb + n], or from B[n * ldb + k] when trans_b. bias (N floats) may be null.
// Thread (ty, tx) of the 16 x 16 block owns rows ty + 16 i and columns tx + 16 j of the tile.
__device__ __forceinline__ void gemm_tile(
    const float* __restrict__ A, const float* __restrict__ B, const float* __restrict__ bias,
    float* __restrict__ C, int M, int N, int K, int lda, int ldb, int ldc, int trans_b,
    float alpha, int act)
{
    __shared__ float As[TILE_K][TILE + 1];  // As[k][m]; the padding spreads stores over banks
    __shared__ float Bs[TILE_K][TILE + 1];  // Bs[k][n]
    const int t = threadIdx.x, tx = t % 16, ty = t / 16;
    const int row0 = blockIdx.y * TILE, col0 = blockIdx.x * TILE;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += TILE_K) {
        for (int i = t; i < TILE * TILE_K; i += GEMM_THREADS) {
            const int ar = i / TILE_K, ak = i % TILE_K;  // consecutive threads walk along k
            const int gr = row0 + ar, gak = k0 + ak;
            As[ak][ar] = (gr < M && gak < K) ? A[gr * lda + gak] : 0.0f;
            const int bk = trans_b ? i % TILE_K : i / TILE;  // ... along B's contiguous axis
            const int bn = trans_b ? i / TILE_K : i % TILE;
            const int gn = col0 + bn, gbk = k0 + bk;
            float b = 0.0f;
            if (gn < N && gbk < K) b = trans_b ? B[gn * ldb + gbk] : B[gbk * ldb + gn];
            Bs[bk][bn] = b;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < TILE_K; ++k) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = As[k][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = Bs[k][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int gr = row0 + ty + 16 * i;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int gn = col0 + tx + 16 * j;
            if (gr < M && gn < N) {
                float v = alpha * acc[i][j];
                if (bias) v += bias[gn];
                C[gr * ldc + gn] = activate(v, act);
            }
        }
    }
}

// C[M,N] = act(A[M,K] @ B[K,N] + bias[N]); grid (ceil(N/TILE), ceil(M/TILE)), GEMM_THREADS.
extern "C" __global__ void sgemm(const float* A, const float* B, const float* bias, float* C,
                                 int M, int N, int K, int act)
{
    gemm_tile(A, B, bias, C, M, N, K, K, N, N, 0, 1.0f, act);
}

// For each z < gridDim.z: C_z = alpha * A_z @ op(B_z), X_z = X + z * stride_x, with leading
// dimensions lda, ldb, ldc; grid (ceil(N/TILE), ceil(M/TILE), batch), GEMM_THREADS.
extern "C" __global__ void bgemm(const float* A, const float* B, float* C, int M, int N, int K,
                                 int lda, int ldb, int ldc, int stride_a, int stride_b,
                                 int stride_c, int trans_b, float alpha)
{
    const int z = blockIdx.z;
    gemm_tile(A + z * stride_a, B + z * stride_b, nullptr, C + z * stride_c, M, N, K, lda, ldb,
              ldc, trans_b, alpha, 0);
}

// The max (take_max) or sum of v over a block of ROW_THREADS threads, given to every thread.
__device__ __forceinline__ float block_reduce(float v, float* buf, bool take_max)
{
    const int t = threadIdx.x;
    buf[t] = v;
    __syncthreads();
    for (int s = ROW_THREADS / 2; s > 0; s >>= 1) {
        if (t < s) buf[t] = take_max ? fmaxf(buf[t], buf[t + s]) : buf[t] + buf[t + s];
        __syncthreads();
    }
    const float r = buf[0];
    __syncthreads();  // buf is reused by the next reduction
    return r;
}

// In-place softmax of each row of x[rows, cols]; grid rows, ROW_THREADS.
extern "C" __global__ void softmax_rows(float* x, int cols)
{
    __shared__ float buf[ROW_THREADS];
    float* row = x + blockIdx.x * cols;
    float m = -3.0e38f;
    for (int c = threadIdx.x; c < cols; c += ROW_THREADS) m = fmaxf(m, row[c]);
    m = block_reduce(m, buf, true);
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += ROW_THREADS) {
        const float e = expf(row[c] - m);
        row[c] = e;
        s += e;
    }
    const float inv = 1.0f / block_reduce(s, buf, false);
    for (int c = threadIdx.x; c < cols; c += ROW_THREADS) row[c] *= inv;
}

// y = (x - mean) / sqrt(var + eps) * gamma + beta over each row of x[rows, cols]; grid rows,
// ROW_THREADS. y may be x.
extern "C" __global__ void layernorm_rows(const float* x, const float* gamma, const float* beta,
                                          float* y, int cols, float eps)
{
    __shared__ float buf[ROW_THREADS];
    const float* in = x + blockIdx.x * cols;
    float* out = y + blockIdx.x * cols;
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += ROW_THREADS) s += in[c];
    const float mean = block_reduce(s, buf, false) / cols;
    float q = 0.0f;
    for (int c = threadIdx.x; c < cols; c += ROW_THREADS) {
        const float d = in[c] - mean;
        q += d * d;
    }
    const float rstd = rsqrtf(block_reduce(q, buf, false) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += ROW_THREADS)
        out[c] = (in[c] - mean) * rstd * gamma[c] + beta[c];
}

// out = a + b over n floats.
extern "C" __global__ void add(const float* a, const float* b, float* out, int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

// One Jacobi sweep on an n x n grid: the 5-point average inside, the boundary copied.
extern "C" __global__ void jacobi(const float* in, float* out, int n)
{
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const int i = blockIdx.y * blockDim.y + threadIdx.y;
    if (i >= n || j >= n) return;
    const int p = i * n + j;
    if (i == 0 || j == 0 || i == n - 1 || j == n - 1)
        out[p] = in[p];
    else
        out[p] = 0.25f * (in[p - n] + in[p + n] + in[p - 1] + in[p + 1]);
}
"""
KERNEL_NAMES = ("sgemm", "bgemm", "softmax_rows", "layernorm_rows", "add", "jacobi")

#: Activation flags of sgemm.
ACT_NONE, ACT_RELU, ACT_GELU = 0, 1, 2
GEMM_TILE = 64
GEMM_THREADS = 256
ROW_THREADS = 256
ADD_THREADS = 256
STENCIL_BLOCK = (32, 8)

DevicePtr = driver.CUdeviceptr
#: A kernel launch with all its arguments bound.
Launch = Callable[[], None]

_SUCCESS = (driver.CUresult.CUDA_SUCCESS, nvrtc.nvrtcResult.NVRTC_SUCCESS)


def call(fn: Callable[..., tuple[Any, ...]], *args: Any) -> Any:
    """Call a cuda-python function; return its value (a tuple if several, None if none).

    Raises RuntimeError naming the call and the error when it does not succeed.
    """
    err, *values = fn(*args)
    if err not in _SUCCESS:
        raise RuntimeError(f"{fn.__name__} failed: {getattr(err, 'name', err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def offset(ptr: DevicePtr, floats: int) -> DevicePtr:
    """The device address ``floats`` float32 elements past ``ptr``."""
    return driver.CUdeviceptr(int(ptr) + 4 * floats)


class Gpu:
    """Device 0's primary context, one stream, and the memory and modules made in them."""

    def __init__(self) -> None:
        call(driver.cuInit, 0)
        self.device = call(driver.cuDeviceGet, 0)
        self.context = call(driver.cuDevicePrimaryCtxRetain, self.device)
        call(driver.cuCtxSetCurrent, self.context)
        self.stream = call(driver.cuStreamCreate, 0)
        self._allocations: list[DevicePtr] = []
        self._modules: list[driver.CUmodule] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def compile(self, source: str, names: Iterable[str]) -> dict[str, driver.CUfunction]:
        """Compile CUDA C with NVRTC for this device, load it, and return the named kernels."""
        attr = driver.CUdevice_attribute
        major = call(
            driver.cuDeviceGetAttribute,
            attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
            self.device,
        )
        minor = call(
            driver.cuDeviceGetAttribute,
            attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
            self.device,
        )
        prog = call(nvrtc.nvrtcCreateProgram, source.encode(), b"workloads.cu", 0, [], [])
        try:
            options = [f"--gpu-architecture=compute_{major}{minor}".encode()]
            (err,) = nvrtc.nvrtcCompileProgram(prog, len(options), options)
            if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
                log = b" " * call(nvrtc.nvrtcGetProgramLogSize, prog)
                call(nvrtc.nvrtcGetProgramLog, prog, log)
                raise RuntimeError(
                    f"nvrtcCompileProgram failed: {err.name}\n{log.decode(errors='replace')}"
                )
            ptx = b" " * call(nvrtc.nvrtcGetPTXSize, prog)
            call(nvrtc.nvrtcGetPTX, prog, ptx)
        finally:
            call(nvrtc.nvrtcDestroyProgram, prog)
        module = call(driver.cuModuleLoadData, ptx)
        self._modules.append(module)
        return {name: call(driver.cuModuleGetFunction, module, name.encode()) for name in names}

    def alloc(self, nbytes: int) -> DevicePtr:
        """Device memory of ``nbytes``, freed by close()."""
        ptr = call(driver.cuMemAlloc, nbytes)
        self._allocations.append(ptr)
        return ptr

    def upload(self, ptr: DevicePtr, array: np.ndarray) -> None:
        """Copy a C-contiguous host array to ``ptr``, asynchronously on the stream."""
        call(driver.cuMemcpyHtoDAsync, ptr, array.ctypes.data, array.nbytes, self.stream)

    def to_device(self, array: np.ndarray) -> DevicePtr:
        """A new allocation holding a copy of ``array``."""
        ptr = self.alloc(array.nbytes)
        self.upload(ptr, np.ascontiguousarray(array))
        return ptr

    def download(self, ptr: DevicePtr, array: np.ndarray) -> None:
        """Fill a C-contiguous host array from ``ptr`` after the stream's earlier work."""
        call(driver.cuMemcpyDtoHAsync, array.ctypes.data, ptr, array.nbytes, self.stream)
        self.sync()

    def launch(
        self,
        fn: driver.CUfunction,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        args: tuple[Any, ...],
        types: tuple[Any, ...],
        smem: int = 0,
    ) -> None:
        """Launch ``fn`` on the stream; pointers go in ``args`` with type None in ``types``."""
        call(driver.cuLaunchKernel, fn, *grid, *block, smem, self.stream, (args, types), 0)

    def sync(self) -> None:
        """Wait for all work queued on the stream."""
        call(driver.cuStreamSynchronize, self.stream)

    def close(self) -> None:
        """Free the allocations, unload the modules, destroy the stream, release the context."""
        for ptr in self._allocations:
            call(driver.cuMemFree, ptr)
        for module in self._modules:
            call(driver.cuModuleUnload, module)
        self._allocations.clear()
        self._modules.clear()
        call(driver.cuStreamDestroy, self.stream)
        call(driver.cuDevicePrimaryCtxRelease, self.device)


def _blocks(n: int, size: int) -> int:
    return math.ceil(n / size)


class Kernels:
    """The KERNELS compiled on a Gpu; each method binds one launch to call later."""

    def __init__(self, gpu: Gpu) -> None:
        self.gpu = gpu
        self.fn = gpu.compile(KERNELS, KERNEL_NAMES)

    def _bind(
        self,
        name: str,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        args: tuple[Any, ...],
        types: tuple[Any, ...],
    ) -> Launch:
        return functools.partial(self.gpu.launch, self.fn[name], grid, block, args, types)

    def gemm(
        self,
        a: DevicePtr,
        b: DevicePtr,
        bias: DevicePtr | None,
        c: DevicePtr,
        m: int,
        n: int,
        k: int,
        act: int = ACT_NONE,
    ) -> Launch:
        """c[m,n] = act(a[m,k] @ b[k,n] + bias[n]); no bias when ``bias`` is None."""
        grid = (_blocks(n, GEMM_TILE), _blocks(m, GEMM_TILE), 1)
        bias = driver.CUdeviceptr(0) if bias is None else bias
        args = (a, b, bias, c, m, n, k, act)
        types = (None, None, None, None, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int)
        return self._bind("sgemm", grid, (GEMM_THREADS, 1, 1), args, types)

    def bgemm(
        self,
        a: DevicePtr,
        b: DevicePtr,
        c: DevicePtr,
        m: int,
        n: int,
        k: int,
        *,
        batch: int,
        ld: tuple[int, int, int],
        strides: tuple[int, int, int],
        trans_b: bool,
        alpha: float,
    ) -> Launch:
        """For each of ``batch`` matrices: c = alpha * a @ b (b transposed when ``trans_b``).

        ``ld`` holds the row strides of a, b and c, ``strides`` the distances between
        consecutive matrices of the batch, all in floats.
        """
        grid = (_blocks(n, GEMM_TILE), _blocks(m, GEMM_TILE), batch)
        args = (a, b, c, m, n, k, *ld, *strides, int(trans_b), alpha)
        types = (None, None, None, *(ctypes.c_int,) * 10, ctypes.c_float)
        return self._bind("bgemm", grid, (GEMM_THREADS, 1, 1), args, types)

    def softmax(self, x: DevicePtr, rows: int, cols: int) -> Launch:
        """In-place softmax of each row of x[rows, cols]."""
        args, types = (x, cols), (None, ctypes.c_int)
        return self._bind("softmax_rows", (rows, 1, 1), (ROW_THREADS, 1, 1), args, types)

    def layernorm(
        self,
        x: DevicePtr,
        gamma: DevicePtr,
        beta: DevicePtr,
        y: DevicePtr,
        rows: int,
        cols: int,
        eps: float,
    ) -> Launch:
        """y = layernorm(x) * gamma + beta over each row of x[rows, cols]."""
        args = (x, gamma, beta, y, cols, eps)
        types = (None, None, None, None, ctypes.c_int, ctypes.c_float)
        return self._bind("layernorm_rows", (rows, 1, 1), (ROW_THREADS, 1, 1), args, types)

    def add(self, a: DevicePtr, b: DevicePtr, out: DevicePtr, n: int) -> Launch:
        """out = a + b over n floats."""
        grid = (_blocks(n, ADD_THREADS), 1, 1)
        args, types = (a, b, out, n), (None, None, None, ctypes.c_int)
        return self._bind("add", grid, (ADD_THREADS, 1, 1), args, types)

    def jacobi(self, src: DevicePtr, dst: DevicePtr, n: int) -> Launch:
        """One Jacobi sweep of the n x n grid src into dst."""
        bx, by = STENCIL_BLOCK
        grid = (_blocks(n, bx), _blocks(n, by), 1)
        args, types = (src, dst, n), (None, None, ctypes.c_int)
        return self._bind("jacobi", grid, (bx, by, 1), args, types)
