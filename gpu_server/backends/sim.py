"""The ``sim`` backend: a CPU test double of one H100-like GPU. Kernels do NOT compute.

What is real: device memory (bounds-checked allocations whose bytes copies and memsets
really move), PTX module loading (entries, parameter layouts and module globals parsed from
the text), launch validation, and the driver's error codes. What is modelled: time. Each
stream has a virtual timeline; a launch or copy occupies its stream for a modelled duration
and nothing sleeps. The virtual clock ``SimBackend.now`` only moves when the host waits
(synchronize calls, synchronous copies) or polls (a query that answers "not done" moves it
one small step, so programs that poll always finish). Every launch is recorded in
``SimBackend.launches`` for tests to inspect.

Simplifications: streams run concurrently without contending for the device; module
variables start zero-filled even when the PTX gives an initializer; allocation addresses
are never reused, so a use after free is always caught.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from cuda.bindings import driver

from gpu_server.backends.base import (
    Backend,
    Context,
    Event,
    Function,
    Kernel,
    KernelLaunch,
    LaunchConfig,
    Library,
    Module,
    ParamLayout,
    Stream,
)
from gpu_server.backends.ptx import PtxError, PtxModule, parse_ptx
from gpu_server.errors import CudaError, invalid_handle, invalid_value

_R = driver.CUresult
_A = driver.CUdevice_attribute
_F = driver.CUfunction_attribute

DEVICE_NAME = "FIKIT CPU test double (kernels do not compute)"
DRIVER_VERSION = 13000
#: The newest PTX ISA a 13.0 driver accepts.
MAX_PTX_VERSION = (9, 0)
DEFAULT_TOTAL_MEMORY = 80 << 30
#: A kernel whose name starts with this writes to an illegal address: as on a GPU, every
#: context of the backend is lost from then on (how tests make a tenant's kernel fault).
FAULT_KERNEL_PREFIX = "fikit_sim_illegal_address"

# An H100 SXM5 80GB as a local process sees it; attributes not listed are 0.
_DEVICE_ATTRIBUTES: dict[driver.CUdevice_attribute, int] = {
    _A.CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY: 1,
    _A.CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS: 1,
    _A.CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY: 1,
    _A.CU_DEVICE_ATTRIBUTE_CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM: 1,
    _A.CU_DEVICE_ATTRIBUTE_IPC_EVENT_SUPPORTED: 1,
    _A.CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED: 1,
    _A.CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED: 1,
    _A.CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: 1024,
    _A.CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: 1024,
    _A.CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: 1024,
    _A.CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: 64,
    _A.CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: 2147483647,
    _A.CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: 65535,
    _A.CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: 65535,
    _A.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: 49152,
    _A.CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY: 65536,
    _A.CU_DEVICE_ATTRIBUTE_WARP_SIZE: 32,
    _A.CU_DEVICE_ATTRIBUTE_MAX_PITCH: 2147483647,
    _A.CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK: 65536,
    _A.CU_DEVICE_ATTRIBUTE_CLOCK_RATE: 1980000,
    _A.CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT: 512,
    _A.CU_DEVICE_ATTRIBUTE_GPU_OVERLAP: 1,
    _A.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: 132,
    _A.CU_DEVICE_ATTRIBUTE_SURFACE_ALIGNMENT: 512,
    _A.CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS: 1,
    _A.CU_DEVICE_ATTRIBUTE_ECC_ENABLED: 1,
    _A.CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE: 2619000,
    _A.CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: 5120,
    _A.CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: 52428800,
    _A.CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: 2048,
    _A.CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT: 2,
    _A.CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: 1,
    _A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: 9,
    _A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: 0,
    _A.CU_DEVICE_ATTRIBUTE_STREAM_PRIORITIES_SUPPORTED: 1,
    _A.CU_DEVICE_ATTRIBUTE_GLOBAL_L1_CACHE_SUPPORTED: 1,
    _A.CU_DEVICE_ATTRIBUTE_LOCAL_L1_CACHE_SUPPORTED: 1,
    _A.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: 233472,
    _A.CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR: 65536,
    _A.CU_DEVICE_ATTRIBUTE_SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO: 2,
    _A.CU_DEVICE_ATTRIBUTE_COMPUTE_PREEMPTION_SUPPORTED: 1,
    _A.CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH: 1,
    _A.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: 232448,
    _A.CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR: 32,
    _A.CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK: 1024,
}
_MAX_GRID = (
    _DEVICE_ATTRIBUTES[_A.CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X],
    _DEVICE_ATTRIBUTES[_A.CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y],
    _DEVICE_ATTRIBUTES[_A.CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z],
)
_MAX_BLOCK = (
    _DEVICE_ATTRIBUTES[_A.CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X],
    _DEVICE_ATTRIBUTES[_A.CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y],
    _DEVICE_ATTRIBUTES[_A.CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z],
)
_MAX_THREADS_PER_BLOCK = _DEVICE_ATTRIBUTES[_A.CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK]
_THREADS_PER_SM = _DEVICE_ATTRIBUTES[_A.CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR]
_BLOCKS_PER_SM = _DEVICE_ATTRIBUTES[_A.CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR]
_SHARED_PER_SM = _DEVICE_ATTRIBUTES[_A.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR]
_SHARED_RESERVED = _DEVICE_ATTRIBUTES[_A.CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK]
_SHARED_OPTIN = _DEVICE_ATTRIBUTES[_A.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN]
_SHARED_DEFAULT = _DEVICE_ATTRIBUTES[_A.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK]

# Fixed function attributes; those not listed are 0.
_FUNCTION_ATTRIBUTES: dict[driver.CUfunction_attribute, int] = {
    _F.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: _MAX_THREADS_PER_BLOCK,
    _F.CU_FUNC_ATTRIBUTE_NUM_REGS: 32,
    _F.CU_FUNC_ATTRIBUTE_PTX_VERSION: 90,
    _F.CU_FUNC_ATTRIBUTE_BINARY_VERSION: 90,
}
# Settable function attributes: (default, least, greatest).
_SETTABLE_FUNCTION_ATTRIBUTES: dict[driver.CUfunction_attribute, tuple[int, int, int]] = {
    _F.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: (_SHARED_DEFAULT, 0, _SHARED_OPTIN),
    _F.CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT: (-1, -1, 100),
}

_DEVICE_UUID = b"FIKIT sim GPU #0"
_STREAM_PRIORITY_LEAST = 0
_STREAM_PRIORITY_GREATEST = -5
_NON_BLOCKING = int(driver.CUstream_flags.CU_STREAM_NON_BLOCKING)
_DISABLE_TIMING = int(driver.CUevent_flags.CU_EVENT_DISABLE_TIMING)
_EVENT_FLAGS = sum(int(flag) for flag in driver.CUevent_flags)
_EVENT_WAIT_FLAGS = sum(int(flag) for flag in driver.CUevent_wait_flags)

_ADDRESS_BASE = 0x7F00_0000_0000
_ALIGNMENT = 512
_PAGE = 1 << 20
_COPY_BYTES_PER_NS = 50
_COPY_LATENCY_NS = 1_000
#: Control characters that never occur in PTX text, and do in cubin and fatbin images.
_BINARY = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")

_E = TypeVar("_E", driver.CUdevice_attribute, driver.CUfunction_attribute, driver.CUjit_option)


def modelled_duration_us(
    name: str, grid: tuple[int, int, int], block: tuple[int, int, int]
) -> float:
    """Default modelled run time of kernel ``name``: 2 us plus 1 us per 100,000 threads.

    The default model ignores the name; ``SimBackend.set_kernel_duration`` overrides it.
    """
    return 2.0 + math.prod(grid) * math.prod(block) / 1e5


@dataclass(frozen=True)
class SimLaunch:
    """One recorded kernel launch; times are virtual nanoseconds."""

    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem_bytes: int
    params: bytes
    context: SimContext
    stream: Stream
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class SimProbe:
    """The completion probe of one modelled launch; times are virtual microseconds."""

    stream_key: int
    backend: SimBackend
    launch: SimLaunch

    def done(self) -> bool:
        """True once the virtual clock passed the launch's end; else the clock moves a step."""
        with self.backend._lock:
            return self.backend._poll(self.launch.end_ns)

    def times_us(self) -> tuple[float, float]:
        """The modelled (start, end) of the launch."""
        return self.launch.start_ns / 1e3, self.launch.end_ns / 1e3

    def release(self) -> None:
        """Nothing is held."""


@dataclass(eq=False)
class SimStream:
    """A stream: the virtual time at which all work submitted to it so far is done."""

    context: SimContext
    blocking: bool
    priority: int
    ready_at: int = 0


@dataclass(eq=False)
class SimContext:
    """A context with its legacy NULL stream and per-thread default stream."""

    device: int
    flags: int
    destroyed: bool = False
    legacy: SimStream = field(init=False)
    per_thread: SimStream = field(init=False)
    #: Live streams that can run work: the per-thread stream and created streams.
    streams: set[SimStream] = field(default_factory=set)
    #: When the work left on destroyed blocking streams is done.
    retired_blocking_at: int = 0

    def __post_init__(self) -> None:
        self.legacy = SimStream(self, blocking=True, priority=0)
        self.per_thread = SimStream(self, blocking=True, priority=0)
        self.streams.add(self.per_thread)


@dataclass(eq=False)
class SimEvent:
    """An event: the virtual time of the work its last record captured."""

    flags: int
    recorded_at: int | None = None


@dataclass(eq=False)
class SimFunction:
    """A kernel entry point in one context, with its settable attributes."""

    name: str
    layout: ParamLayout
    attributes: dict[driver.CUfunction_attribute, int] = field(
        default_factory=lambda: {a: d for a, (d, _, _) in _SETTABLE_FUNCTION_ATTRIBUTES.items()}
    )


@dataclass(eq=False)
class SimModule:
    """A loaded PTX module: its functions and the allocations backing its variables."""

    functions: dict[str, SimFunction]
    variables: dict[str, _Allocation]


@dataclass(eq=False)
class SimKernel:
    """A library's kernel, with the function it has in each context that asked for one."""

    name: str
    layout: ParamLayout
    functions: dict[SimContext, SimFunction] = field(default_factory=dict)


@dataclass(eq=False)
class SimLibrary:
    """A context-independent loaded PTX library."""

    kernels: dict[str, SimKernel]


class _Allocation:
    """Device bytes at [base, base + size), kept in pages created zero-filled on first write."""

    def __init__(self, base: int, size: int, charge: int, is_variable: bool) -> None:
        self.base = base
        self.size = size
        self.charge = charge
        self.is_variable = is_variable
        self._pages: dict[int, bytearray] = {}

    def read(self, offset: int, n: int) -> bytes:
        """The ``n`` bytes at ``offset``."""
        out = bytearray(n)
        for number, start, end, pos in self._spans(offset, n):
            page = self._pages.get(number)
            if page is not None:
                out[pos : pos + end - start] = page[start:end]
        return bytes(out)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Store ``data`` at ``offset``."""
        view = memoryview(data)
        for number, start, end, pos in self._spans(offset, len(view)):
            page = self._pages.get(number)
            if page is None:
                page = self._pages[number] = bytearray(min(_PAGE, self.size - number * _PAGE))
            page[start:end] = view[pos : pos + end - start]

    def fill(self, offset: int, pattern: bytes, count: int) -> None:
        """Store ``pattern`` ``count`` times from ``offset``."""
        n = len(pattern) * count
        chunk = memoryview(pattern * max(1, min(n, _PAGE) // len(pattern)))
        for pos in range(0, n, len(chunk)):
            self.write(offset + pos, chunk[: n - pos])

    @staticmethod
    def _spans(offset: int, n: int) -> Iterator[tuple[int, int, int, int]]:
        """(page number, start and end in the page, position in the range) covering it."""
        pos = 0
        while pos < n:
            number, start = divmod(offset + pos, _PAGE)
            end = min(_PAGE, start + n - pos)
            yield number, start, end, pos
            pos += end - start


class SimBackend(Backend):
    """The CPU test double: real memory and error codes, modelled time, no computation."""

    name = "sim"

    def __init__(self, total_memory: int = DEFAULT_TOTAL_MEMORY, poll_step_ns: int = 1_000) -> None:
        """``total_memory``: nominal device memory; ``poll_step_ns``: how far a failed query
        moves the virtual clock."""
        self.total_memory = total_memory
        self.poll_step_ns = poll_step_ns
        #: Virtual device time in nanoseconds, as far as the host has waited or polled.
        self.now = 0
        #: Every accepted launch, in submission order.
        self.launches: list[SimLaunch] = []
        self._lock = threading.Lock()
        self._durations: dict[str, float] = {}
        self._primary = SimContext(0, 0)
        self._allocations: dict[int, _Allocation] = {}
        self._bases: list[int] = []
        self._next_address = _ADDRESS_BASE
        self._used = 0
        #: Set once a kernel faulted: every later call in any context fails with it.
        self.fault: CudaError | None = None
        #: Host memory registered, by handle: its size.
        self.registered: dict[int, int] = {}
        self._registration_ids = itertools.count(1)

    def _live(self, ctx: SimContext) -> None:
        if self.fault is not None:
            raise self.fault
        if ctx.destroyed:
            raise CudaError(_R.CUDA_ERROR_INVALID_CONTEXT, "the context was destroyed")

    def set_kernel_duration(self, name: str, microseconds: float) -> None:
        """Model every later launch of kernel ``name`` as taking ``microseconds``."""
        if microseconds < 0:
            raise ValueError("a kernel duration cannot be negative")
        with self._lock:
            self._durations[name] = microseconds

    # -- driver and devices ------------------------------------------------------------
    def driver_version(self) -> int:
        return DRIVER_VERSION

    def device_count(self) -> int:
        return 1

    def device_name(self, device: int) -> str:
        _check_device(device)
        return DEVICE_NAME

    def device_attribute(self, attribute: int, device: int) -> int:
        _check_device(device)
        member = _enum_member(_A, attribute, _A.CU_DEVICE_ATTRIBUTE_MAX)
        return _DEVICE_ATTRIBUTES.get(member, 0)

    def device_total_mem(self, device: int) -> int:
        _check_device(device)
        return self.total_memory

    def device_uuid(self, device: int) -> bytes:
        _check_device(device)
        return _DEVICE_UUID

    # -- contexts ----------------------------------------------------------------------
    def primary_context(self, device: int) -> Context:
        _check_device(device)
        return self._primary

    def context_create(self, flags: int, device: int) -> Context:
        _check_device(device)
        return SimContext(device, flags)

    def context_destroy(self, ctx: Context) -> None:
        with self._lock:
            self._live(ctx)
            if ctx is self._primary:
                raise CudaError(_R.CUDA_ERROR_INVALID_CONTEXT, "the primary context is retained")
            ctx.destroyed = True

    def stream_priority_range(self, ctx: Context) -> tuple[int, int]:
        with self._lock:
            self._live(ctx)
        return _STREAM_PRIORITY_LEAST, _STREAM_PRIORITY_GREATEST

    # -- memory ------------------------------------------------------------------------
    def mem_get_info(self, ctx: Context) -> tuple[int, int]:
        with self._lock:
            self._live(ctx)
            return self.total_memory - self._used, self.total_memory

    def mem_alloc(self, ctx: Context, size: int) -> int:
        with self._lock:
            self._live(ctx)
            if size <= 0:
                raise invalid_value(f"allocation size {size}")
            return self._allocate(size, is_variable=False).base

    def mem_free(self, ctx: Context, ptr: int) -> None:
        with self._lock:
            self._live(ctx)
            allocation = self._allocations.get(ptr)
            if allocation is None or allocation.is_variable:
                raise invalid_value(f"{ptr:#x} is not the start of a live allocation")
            self._release(allocation)

    def host_register(self, memory: memoryview) -> object | None:
        """Count the memory as registered (nothing to pin: copies are CPU copies here)."""
        with self._lock:
            handle = next(self._registration_ids)
            self.registered[handle] = len(memory)
            return handle

    def host_unregister(self, handle: object) -> None:
        """Forget a registration; an unknown handle is CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED."""
        with self._lock:
            if self.registered.pop(handle, None) is None:
                raise CudaError(_R.CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED, str(handle))

    def memcpy_htod(
        self, ctx: Context, dst: int, data: bytes | memoryview, stream: Stream | None
    ) -> None:
        """Copy host bytes to the device; ``stream`` None waits for the copy to finish."""
        with self._lock:
            self._live(ctx)
            queue = _stream(ctx, stream)
            allocation, offset = self._locate(dst, len(data))
            allocation.write(offset, data)
            _, end = self._enqueue(queue, _copy_ns(len(data)))
            if stream is None:
                self._wait_until(end)

    def memcpy_dtoh(self, ctx: Context, src: int, out: memoryview, stream: Stream | None) -> None:
        """Copy device bytes into ``out``; the clock moves to the copy's end."""
        size = len(out)
        with self._lock:
            self._live(ctx)
            allocation, offset = self._locate(src, size)
            _, end = self._enqueue(_stream(ctx, stream), _copy_ns(size))
            self._wait_until(end)
            out[:] = allocation.read(offset, size)

    def memcpy_dtod(
        self, ctx: Context, dst: int, src: int, size: int, stream: Stream | None
    ) -> None:
        """Copy between device ranges (overlap allowed); the host does not wait for it."""
        with self._lock:
            self._live(ctx)
            queue = _stream(ctx, stream)
            source, source_offset = self._locate(src, size)
            target, target_offset = self._locate(dst, size)
            target.write(target_offset, source.read(source_offset, size))
            self._enqueue(queue, _copy_ns(size))

    def memset(
        self, ctx: Context, dst: int, value: int, width: int, count: int, stream: Stream | None
    ) -> None:
        """Set ``count`` little-endian ``width``-byte elements; the host does not wait."""
        with self._lock:
            self._live(ctx)
            queue = _stream(ctx, stream)
            if width not in (1, 2, 4) or dst % width:
                raise invalid_value(f"memset of width {width} at {dst:#x}")
            if not 0 <= value < 1 << (8 * width):
                raise invalid_value(f"memset value {value} does not fit {width} bytes")
            allocation, offset = self._locate(dst, width * count)
            allocation.fill(offset, value.to_bytes(width, "little"), count)
            self._enqueue(queue, _copy_ns(width * count))

    # -- modules, libraries, functions -------------------------------------------------
    def module_load(self, ctx: Context, image: bytes, jit_options: dict[int, int]) -> Module:
        """Load PTX text; its variables get zero-filled allocations (initializers are ignored)."""
        ptx = _load_ptx(image, jit_options)
        with self._lock:
            self._live(ctx)
            variables: dict[str, _Allocation] = {}
            try:
                for variable in ptx.globals.values():
                    variables[variable.name] = self._allocate(variable.size, is_variable=True)
            except CudaError:
                for allocation in variables.values():
                    self._release(allocation)
                raise
        functions = {name: SimFunction(name, layout) for name, layout in ptx.entries.items()}
        return SimModule(functions, variables)

    def module_unload(self, ctx: Context, module: Module) -> None:
        with self._lock:
            self._live(ctx)
            for allocation in module.variables.values():
                self._release(allocation)
            module.variables.clear()

    def module_function(self, ctx: Context, module: Module, name: str) -> Function:
        with self._lock:
            self._live(ctx)
        function = module.functions.get(name)
        if function is None:
            raise CudaError(_R.CUDA_ERROR_NOT_FOUND, f"no kernel {name!r} in the module")
        return function

    def module_global(self, ctx: Context, module: Module, name: str) -> tuple[int, int]:
        with self._lock:
            self._live(ctx)
        allocation = module.variables.get(name)
        if allocation is None:
            raise CudaError(_R.CUDA_ERROR_NOT_FOUND, f"no variable {name!r} in the module")
        return allocation.base, allocation.size

    def library_load(self, image: bytes, jit_options: dict[int, int]) -> Library:
        ptx = _load_ptx(image, jit_options)
        return SimLibrary({name: SimKernel(name, layout) for name, layout in ptx.entries.items()})

    def library_unload(self, library: Library) -> None:
        """Nothing to free: a library's variables are not backed by device memory here."""

    def library_kernel(self, library: Library, name: str) -> Kernel:
        kernel = library.kernels.get(name)
        if kernel is None:
            raise CudaError(_R.CUDA_ERROR_NOT_FOUND, f"no kernel {name!r} in the library")
        return kernel

    def kernel_function(self, ctx: Context, kernel: Kernel) -> Function:
        with self._lock:
            self._live(ctx)
            function = kernel.functions.get(ctx)
            if function is None:
                function = kernel.functions[ctx] = SimFunction(kernel.name, kernel.layout)
            return function

    def function_name(self, function: Function) -> str:
        return function.name

    def function_param_layout(self, function: Function) -> ParamLayout:
        return function.layout

    def function_attribute(self, ctx: Context, function: Function, attribute: int) -> int:
        with self._lock:
            self._live(ctx)
            member = _enum_member(_F, attribute, _F.CU_FUNC_ATTRIBUTE_MAX)
            if member in function.attributes:
                return function.attributes[member]
        return _FUNCTION_ATTRIBUTES.get(member, 0)

    def function_set_attribute(
        self, ctx: Context, function: Function, attribute: int, value: int
    ) -> None:
        with self._lock:
            self._live(ctx)
            member = _enum_member(_F, attribute, _F.CU_FUNC_ATTRIBUTE_MAX)
            if member not in _SETTABLE_FUNCTION_ATTRIBUTES:
                raise invalid_value(f"{member.name} cannot be set")
            _, least, greatest = _SETTABLE_FUNCTION_ATTRIBUTES[member]
            if not least <= value <= greatest:
                raise invalid_value(f"{member.name} = {value} is outside [{least}, {greatest}]")
            function.attributes[member] = value

    def occupancy_max_active_blocks(
        self, ctx: Context, function: Function, block_size: int, dynamic_smem: int
    ) -> int:
        """Blocks per SM, limited by threads, the per-SM block cap and shared memory."""
        with self._lock:
            self._live(ctx)
            if not 0 < block_size <= _MAX_THREADS_PER_BLOCK or dynamic_smem < 0:
                raise invalid_value(
                    f"block size {block_size}, dynamic shared memory {dynamic_smem}"
                )
            if (
                dynamic_smem
                > function.attributes[_F.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES]
            ):
                return 0
        by_shared = _SHARED_PER_SM // (dynamic_smem + _SHARED_RESERVED)
        return min(_THREADS_PER_SM // block_size, _BLOCKS_PER_SM, by_shared)

    def launch(
        self,
        ctx: Context,
        launches: Sequence[KernelLaunch],
        timed: bool,
        after: SimProbe | None = None,
    ) -> tuple[SimProbe, CudaError | None]:
        """Validate and record each launch; each occupies its stream for the modelled time.

        The probe reports completion once the virtual clock has passed the last one's end;
        polling it unfinished moves the clock one poll step, as a failed query does."""
        failure: CudaError | None = None
        record: SimLaunch | None = None
        with self._lock:
            self._live(ctx)
            target = _stream(ctx, launches[0][1].stream)
            if after is not None:
                target.ready_at = max(target.ready_at, after.launch.end_ns)
            for function, config, params, layout in launches:
                try:
                    record = self._launch_one(ctx, target, function, config, params, layout)
                except CudaError as err:
                    failure = failure or err
        if record is None:  # every launch failed
            assert failure is not None
            raise failure
        return SimProbe(id(target), self, record), failure

    def _launch_one(
        self,
        ctx: SimContext,
        target: SimStream,
        function: Function,
        config: LaunchConfig,
        params: bytes,
        layout: ParamLayout,
    ) -> SimLaunch:
        """Validate and record one launch on ``target`` of the live ``ctx`` (call with the
        lock held)."""
        _check_launch(config, len(params), layout)
        most = function.attributes[_F.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES]
        if not 0 <= config.shared_mem_bytes <= most:
            raise invalid_value(f"{config.shared_mem_bytes} B dynamic shared memory > {most}")
        duration = self._durations.get(function.name)
        if duration is None:
            duration = modelled_duration_us(function.name, config.grid, config.block)
        start, end = self._enqueue(target, round(duration * 1000))
        record = SimLaunch(
            function.name,
            config.grid,
            config.block,
            config.shared_mem_bytes,
            bytes(params),
            ctx,
            config.stream,
            start,
            end,
        )
        self.launches.append(record)
        if function.name.startswith(FAULT_KERNEL_PREFIX):
            self.fault = CudaError(_R.CUDA_ERROR_ILLEGAL_ADDRESS, f"kernel {function.name}")
        return record

    # -- streams and events ------------------------------------------------------------
    def stream_create(self, ctx: Context, flags: int, priority: int) -> Stream:
        """Create a stream; the priority is clamped into the range, as CUDA does."""
        clamped = min(max(priority, _STREAM_PRIORITY_GREATEST), _STREAM_PRIORITY_LEAST)
        with self._lock:
            self._live(ctx)
            if flags & ~_NON_BLOCKING:
                raise invalid_value(f"stream flags {flags:#x}")
            stream = SimStream(ctx, blocking=not flags & _NON_BLOCKING, priority=clamped)
            ctx.streams.add(stream)
        return stream

    def stream_destroy(self, ctx: Context, stream: Stream) -> None:
        """Forget the stream; work left on a blocking one still orders the legacy stream."""
        with self._lock:
            self._live(ctx)
            target = _stream(ctx, stream)
            if target is ctx.legacy or target is ctx.per_thread:
                raise invalid_handle("a built-in stream cannot be destroyed")
            ctx.streams.discard(target)
            if target.blocking:
                ctx.retired_blocking_at = max(ctx.retired_blocking_at, target.ready_at)

    def stream_synchronize(self, ctx: Context, stream: Stream) -> None:
        with self._lock:
            self._live(ctx)
            self._wait_until(_pending(_stream(ctx, stream)))

    def stream_query(self, ctx: Context, stream: Stream) -> bool:
        """True when the stream's work is done; False moves the clock one poll step."""
        with self._lock:
            self._live(ctx)
            return self._poll(_pending(_stream(ctx, stream)))

    def stream_wait_event(self, ctx: Context, stream: Stream, event: Event, flags: int) -> None:
        """Later work on ``stream`` waits for the event's last record (none: no wait)."""
        with self._lock:
            self._live(ctx)
            if flags & ~_EVENT_WAIT_FLAGS:
                raise invalid_value(f"stream wait flags {flags:#x}")
            target = _stream(ctx, stream)
            if event.recorded_at is not None:
                target.ready_at = max(target.ready_at, event.recorded_at)

    def stream_priority(self, ctx: Context, stream: Stream) -> int:
        with self._lock:
            self._live(ctx)
            return _stream(ctx, stream).priority

    def event_create(self, ctx: Context, flags: int) -> Event:
        with self._lock:
            self._live(ctx)
        if flags & ~_EVENT_FLAGS:
            raise invalid_value(f"event flags {flags:#x}")
        return SimEvent(flags)

    def event_record(self, ctx: Context, event: Event, stream: Stream) -> None:
        """Stamp the event with the time the stream's work submitted so far is done."""
        with self._lock:
            self._live(ctx)
            _, event.recorded_at = self._enqueue(_stream(ctx, stream), 0)

    def event_synchronize(self, ctx: Context, event: Event) -> None:
        with self._lock:
            self._live(ctx)
            if event.recorded_at is not None:
                self._wait_until(event.recorded_at)

    def event_query(self, ctx: Context, event: Event) -> bool:
        """True when the recorded work is done (or never recorded); False moves the clock."""
        with self._lock:
            self._live(ctx)
            return event.recorded_at is None or self._poll(event.recorded_at)

    def event_elapsed_ms(self, ctx: Context, start: Event, end: Event) -> float:
        """Milliseconds between two completed records, like ``cuEventElapsedTime``.

        CUDA_ERROR_INVALID_HANDLE for an event never recorded or created with
        CU_EVENT_DISABLE_TIMING; CUDA_ERROR_NOT_READY while either is not yet complete.
        """
        with self._lock:
            self._live(ctx)
            for event in (start, end):
                if event.flags & _DISABLE_TIMING:
                    raise invalid_handle("event created with CU_EVENT_DISABLE_TIMING")
                if event.recorded_at is None:
                    raise invalid_handle("event never recorded")
            if max(start.recorded_at, end.recorded_at) > self.now:
                raise CudaError(_R.CUDA_ERROR_NOT_READY, "an event has not completed")
            return (end.recorded_at - start.recorded_at) / 1e6

    def event_destroy(self, ctx: Context, event: Event) -> None:
        with self._lock:
            self._live(ctx)

    # -- internals (the caller holds the lock) -------------------------------------------
    def _allocate(self, size: int, is_variable: bool) -> _Allocation:
        charge = -(-size // _ALIGNMENT) * _ALIGNMENT
        if self._used + charge > self.total_memory:
            raise CudaError(
                _R.CUDA_ERROR_OUT_OF_MEMORY,
                f"{size} B requested, {self.total_memory - self._used} B free",
            )
        allocation = _Allocation(self._next_address, size, charge, is_variable)
        # One alignment unit of unmapped gap after each allocation.
        self._next_address += charge + _ALIGNMENT
        self._used += charge
        self._allocations[allocation.base] = allocation
        self._bases.append(allocation.base)
        return allocation

    def _release(self, allocation: _Allocation) -> None:
        del self._allocations[allocation.base]
        del self._bases[bisect_left(self._bases, allocation.base)]
        self._used -= allocation.charge

    def _locate(self, ptr: int, n: int) -> tuple[_Allocation, int]:
        """The allocation holding all of [ptr, ptr + n) and ptr's offset in it."""
        if n < 0:
            raise invalid_value(f"size {n}")
        index = bisect_right(self._bases, ptr) - 1
        if index >= 0:
            allocation = self._allocations[self._bases[index]]
            if ptr + n <= allocation.base + allocation.size:
                return allocation, ptr - allocation.base
        raise invalid_value(f"[{ptr:#x}, {ptr:#x} + {n}) is not inside one allocation")

    def _enqueue(self, stream: SimStream, duration_ns: int) -> tuple[int, int]:
        """Occupy ``stream`` for ``duration_ns`` after the work it waits for; (start, end)."""
        start = max(self.now, _pending(stream))
        stream.ready_at = start + duration_ns
        return start, stream.ready_at

    def _wait_until(self, time_ns: int) -> None:
        self.now = max(self.now, time_ns)

    def _poll(self, time_ns: int) -> bool:
        if time_ns <= self.now:
            return True
        self.now = min(time_ns, self.now + self.poll_step_ns)
        return False


def _check_device(device: int) -> None:
    if device != 0:
        raise CudaError(_R.CUDA_ERROR_INVALID_DEVICE, f"device {device}: the sim has device 0")


def _check_launch(config: LaunchConfig, params_size: int, layout: ParamLayout) -> None:
    if not all(0 < n <= most for n, most in zip(config.grid, _MAX_GRID, strict=True)):
        raise invalid_value(f"grid {config.grid}")
    block_ok = all(0 < n <= most for n, most in zip(config.block, _MAX_BLOCK, strict=True))
    if not block_ok or math.prod(config.block) > _MAX_THREADS_PER_BLOCK:
        raise invalid_value(f"block {config.block}")
    if params_size < layout.total_size:
        raise invalid_value(f"{params_size} parameter bytes, {layout.total_size} needed")


def _stream(ctx: SimContext, stream: Stream | None) -> SimStream:
    """The stream object for a stream argument; None, 0 and 1 mean the legacy stream."""
    if isinstance(stream, SimStream):
        return stream
    if stream in (None, 0, 1):
        return ctx.legacy
    if stream == 2:
        return ctx.per_thread
    raise invalid_handle(f"stream {stream!r}")


def _pending(stream: SimStream) -> int:
    """When the work that a new operation on ``stream`` must wait for is done.

    The legacy stream waits for every blocking stream of its context, and blocking streams
    wait for the legacy stream; non-blocking streams wait only for themselves.
    """
    ctx = stream.context
    if stream is ctx.legacy:
        blocking = (other.ready_at for other in ctx.streams if other.blocking)
        return max(stream.ready_at, ctx.retired_blocking_at, *blocking)
    if stream.blocking:
        return max(stream.ready_at, ctx.legacy.ready_at)
    return stream.ready_at


def _copy_ns(n: int) -> int:
    """Modelled time of moving ``n`` bytes: 1 us plus n at 50 GB/s."""
    return _COPY_LATENCY_NS + -(-n // _COPY_BYTES_PER_NS)


def _enum_member(enum: type[_E], value: int, sentinel: _E) -> _E:
    """``value`` as a member of ``enum``; CUDA_ERROR_INVALID_VALUE if it is none (or the
    sentinel that counts the members)."""
    try:
        member = enum(value)
    except ValueError:
        raise invalid_value(f"{value} is not a {enum.__name__}") from None
    if member == sentinel:
        raise invalid_value(f"{value} is not a {enum.__name__}")
    return member


def _load_ptx(image: bytes, jit_options: dict[int, int]) -> PtxModule:
    """Parse a module image: CUDA_ERROR_INVALID_IMAGE unless it is text (trailing NULs
    allowed), CUDA_ERROR_INVALID_PTX if the text is not PTX, and
    CUDA_ERROR_UNSUPPORTED_PTX_VERSION beyond what a 13.0 driver accepts."""
    for option in jit_options:
        _enum_member(driver.CUjit_option, option, driver.CUjit_option.CU_JIT_NUM_OPTIONS)
    text = bytes(image).rstrip(b"\0")
    try:
        source = text.decode()
    except UnicodeDecodeError:
        source = ""
    if not source or _BINARY.search(source):
        raise CudaError(_R.CUDA_ERROR_INVALID_IMAGE, "not PTX text: the sim backend loads PTX only")
    try:
        ptx = parse_ptx(source)
    except PtxError as error:
        raise CudaError(_R.CUDA_ERROR_INVALID_PTX, str(error)) from None
    if ptx.version > MAX_PTX_VERSION:
        raise CudaError(
            _R.CUDA_ERROR_UNSUPPORTED_PTX_VERSION,
            f"PTX ISA {ptx.version[0]}.{ptx.version[1]} is newer than the driver's "
            f"{MAX_PTX_VERSION[0]}.{MAX_PTX_VERSION[1]}",
        )
    return ptx
