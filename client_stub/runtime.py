"""The device-selection part of ``cuda.bindings.runtime``, on the driver stub's session.

cuda-python's helpers call ``cudaFree(0)`` and ``cudaSetDevice`` to make a device's
primary context current; these run on the same session and per-thread context as the
driver stub. Every other runtime function returns ``cudaErrorNotSupported``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from cuda.bindings.driver import CUdevice_attribute, CUresult
from cuda.bindings.runtime import cudaDeviceProp, cudaError_t

from client_stub import driver

#: name -> implementation, filled by ``_runtime_function``.
IMPLEMENTATIONS: dict[str, Callable[..., tuple[Any, ...]]] = {}

_selected = threading.local()

#: cudaDeviceProp fields read from device attributes (CU_DEVICE_ATTRIBUTE_ + name).
_PROPERTY_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "major": ("COMPUTE_CAPABILITY_MAJOR",),
    "minor": ("COMPUTE_CAPABILITY_MINOR",),
    "multiProcessorCount": ("MULTIPROCESSOR_COUNT",),
    "warpSize": ("WARP_SIZE",),
    "maxThreadsPerBlock": ("MAX_THREADS_PER_BLOCK",),
    "maxThreadsPerMultiProcessor": ("MAX_THREADS_PER_MULTIPROCESSOR",),
    "maxBlocksPerMultiProcessor": ("MAX_BLOCKS_PER_MULTIPROCESSOR",),
    "sharedMemPerBlock": ("MAX_SHARED_MEMORY_PER_BLOCK",),
    "sharedMemPerBlockOptin": ("MAX_SHARED_MEMORY_PER_BLOCK_OPTIN",),
    "sharedMemPerMultiprocessor": ("MAX_SHARED_MEMORY_PER_MULTIPROCESSOR",),
    "regsPerBlock": ("MAX_REGISTERS_PER_BLOCK",),
    "regsPerMultiprocessor": ("MAX_REGISTERS_PER_MULTIPROCESSOR",),
    "l2CacheSize": ("L2_CACHE_SIZE",),
    "memoryBusWidth": ("GLOBAL_MEMORY_BUS_WIDTH",),
    "totalConstMem": ("TOTAL_CONSTANT_MEMORY",),
    "concurrentKernels": ("CONCURRENT_KERNELS",),
    "asyncEngineCount": ("ASYNC_ENGINE_COUNT",),
    "unifiedAddressing": ("UNIFIED_ADDRESSING",),
    "managedMemory": ("MANAGED_MEMORY",),
    "canMapHostMemory": ("CAN_MAP_HOST_MEMORY",),
    "pciBusID": ("PCI_BUS_ID",),
    "pciDeviceID": ("PCI_DEVICE_ID",),
    "pciDomainID": ("PCI_DOMAIN_ID",),
    "streamPrioritiesSupported": ("STREAM_PRIORITIES_SUPPORTED",),
    "maxThreadsDim": ("MAX_BLOCK_DIM_X", "MAX_BLOCK_DIM_Y", "MAX_BLOCK_DIM_Z"),
    "maxGridSize": ("MAX_GRID_DIM_X", "MAX_GRID_DIM_Y", "MAX_GRID_DIM_Z"),
}


class RuntimeFailure(Exception):
    """Ends a runtime stub early with a cudaError_t."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _as_runtime_error(result: CUresult) -> cudaError_t:
    """The runtime's error for a driver result (most codes are shared)."""
    if result == CUresult.CUDA_ERROR_NOT_INITIALIZED:
        return cudaError_t.cudaErrorInitializationError
    if result == CUresult.CUDA_ERROR_INVALID_CONTEXT:
        return cudaError_t.cudaErrorDeviceUninitialized
    try:
        return cudaError_t(int(result))
    except ValueError:
        return cudaError_t.cudaErrorUnknown


def _checked(result: tuple[Any, ...]) -> tuple[Any, ...]:
    """The values of a driver stub's result, or RuntimeFailure with the matching error."""
    if result[0] != CUresult.CUDA_SUCCESS:
        raise RuntimeFailure(int(_as_runtime_error(result[0])))
    return result[1:]


def _runtime_function(outputs: int) -> Callable[[Callable[..., tuple[Any, ...]]], Any]:
    def register(fn: Callable[..., tuple[Any, ...]]) -> Callable[..., tuple[Any, ...]]:
        failed = (None,) * outputs

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
            try:
                values = fn(*args, **kwargs)
            except RuntimeFailure as failure:
                return (cudaError_t(failure.code), *failed)
            return (cudaError_t.cudaSuccess, *values)

        IMPLEMENTATIONS[fn.__name__] = call
        return call

    return register


def _device() -> int:
    return getattr(_selected, "device", 0)


def _ensure_context() -> None:
    """Initialize and make the selected device's primary context current, as the runtime
    does lazily on its first call."""
    if driver.REMOTE.connection is None:
        _checked(driver.cuInit(0))
    if driver.REMOTE.current == 0:
        _make_current(_device())


def _make_current(device: int) -> None:
    (ctx,) = _checked(driver.cuDevicePrimaryCtxRetain(device))
    _checked(driver.cuCtxSetCurrent(ctx))
    _selected.device = device


@_runtime_function(0)
def cudaFree(devPtr: Any) -> tuple[()]:
    _ensure_context()
    if devPtr is not None and int(devPtr) != 0:
        _checked(driver.cuMemFree(devPtr))
    return ()


@_runtime_function(0)
def cudaSetDevice(device: int) -> tuple[()]:
    if driver.REMOTE.connection is None:
        _checked(driver.cuInit(0))
    (count,) = _checked(driver.cuDeviceGetCount())
    if not 0 <= device < count:
        raise RuntimeFailure(int(cudaError_t.cudaErrorInvalidDevice))
    _make_current(device)
    return ()


@_runtime_function(1)
def cudaGetDevice() -> tuple[int]:
    return (_device(),)


@_runtime_function(1)
def cudaGetDeviceCount() -> tuple[int]:
    if driver.REMOTE.connection is None:
        _checked(driver.cuInit(0))
    return _checked(driver.cuDeviceGetCount())


@_runtime_function(1)
def cudaDeviceGetAttribute(attr: Any, device: int) -> tuple[int]:
    if driver.REMOTE.connection is None:
        _checked(driver.cuInit(0))
    return _checked(driver.cuDeviceGetAttribute(CUdevice_attribute(int(attr)), device))


def _attribute(name: str, device: int) -> int:
    attribute = getattr(CUdevice_attribute, f"CU_DEVICE_ATTRIBUTE_{name}")
    return _checked(driver.cuDeviceGetAttribute(attribute, device))[0]


@_runtime_function(1)
def cudaGetDeviceProperties(device: int) -> tuple[cudaDeviceProp]:
    if driver.REMOTE.connection is None:
        _checked(driver.cuInit(0))
    prop = cudaDeviceProp()
    (name,) = _checked(driver.cuDeviceGetName(256, device))
    prop.name = name.split(b"\0", 1)[0].ljust(256, b"\0")
    (prop.totalGlobalMem,) = _checked(driver.cuDeviceTotalMem(device))
    for field, names in _PROPERTY_ATTRIBUTES.items():
        values = [_attribute(name, device) for name in names]
        setattr(prop, field, values if len(values) > 1 else values[0])
    return (prop,)


@_runtime_function(0)
def cudaDeviceSynchronize() -> tuple[()]:
    _ensure_context()
    _checked(driver.cuCtxSynchronize())
    return ()
