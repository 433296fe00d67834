"""The runtime stub's device-selection calls share the driver stub's session and context."""

from __future__ import annotations

from types import ModuleType

import pytest
from cuda.bindings import runtime as real_runtime
from cuda.bindings.driver import CUresult
from cuda.bindings.runtime import cudaError_t

from client_stub.activation import make_runtime_stub


@pytest.fixture
def runtime(remote: ModuleType) -> ModuleType:
    return make_runtime_stub(real_runtime)


def test_cudafree_zero_makes_the_primary_context_current(
    runtime: ModuleType, remote: ModuleType
) -> None:
    assert runtime.cudaFree(0) == (cudaError_t.cudaSuccess,)
    status, ctx = remote.cuCtxGetCurrent()
    assert status == CUresult.CUDA_SUCCESS and int(ctx) != 0
    assert int(remote.cuCtxGetDevice()[1]) == 0
    status, ptr = remote.cuMemAlloc(256)
    assert status == CUresult.CUDA_SUCCESS
    assert runtime.cudaFree(ptr) == (cudaError_t.cudaSuccess,)
    assert runtime.cudaFree(ptr) == (cudaError_t.cudaErrorInvalidValue,)


def test_device_selection_and_properties(runtime: ModuleType, remote: ModuleType) -> None:
    assert runtime.cudaGetDeviceCount() == (cudaError_t.cudaSuccess, 1)
    assert runtime.cudaSetDevice(1) == (cudaError_t.cudaErrorInvalidDevice,)
    assert runtime.cudaSetDevice(0) == (cudaError_t.cudaSuccess,)
    assert runtime.cudaGetDevice() == (cudaError_t.cudaSuccess, 0)
    warp = runtime.cudaDeviceAttr.cudaDevAttrWarpSize
    assert runtime.cudaDeviceGetAttribute(warp, 0) == (cudaError_t.cudaSuccess, 32)
    status, prop = runtime.cudaGetDeviceProperties(0)
    assert status == cudaError_t.cudaSuccess
    assert b"test double" in prop.name and prop.warpSize == 32
    assert (prop.major, prop.minor) == (9, 0)
    assert list(prop.maxThreadsDim) == [1024, 1024, 64]
    assert prop.totalGlobalMem == remote.cuDeviceTotalMem(0)[1]
    assert runtime.cudaDeviceSynchronize() == (cudaError_t.cudaSuccess,)


def test_other_runtime_calls_are_not_supported(runtime: ModuleType) -> None:
    assert runtime.cudaMalloc(16) == (cudaError_t.cudaErrorNotSupported, None)
    assert runtime.cudaStreamCreate() == (cudaError_t.cudaErrorNotSupported, None)
