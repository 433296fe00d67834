"""The sim backend: real memory and error codes, recorded launches, a virtual timeline."""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from cuda.bindings.driver import (
    CUdevice_attribute,
    CUevent_flags,
    CUfunction_attribute,
    CUjit_option,
    CUresult,
    CUstream_flags,
)

from gpu_server.backends.base import LaunchConfig, ParamLayout
from gpu_server.backends.sim import (
    DEVICE_NAME,
    SimBackend,
    SimContext,
    SimLaunch,
    modelled_duration_us,
)
from gpu_server.errors import CudaError

A = CUdevice_attribute
F = CUfunction_attribute
MAX_DYNAMIC_SHARED = F.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
NON_BLOCKING = int(CUstream_flags.CU_STREAM_NON_BLOCKING)

PTX = b"""
.version 9.0
.target sm_90
.address_size 64

.global .align 4 .b8 table[64];
.visible .global .align 8 .u64 counter;
.global .align 4 .u32 seed = 5;

.visible .entry k10(
	.param .u64 .ptr .global .align 4 k10_param_0,
	.param .u32 k10_param_1
)
{
	ret;
}

.visible .entry k20()
{
	ret;
}
"""


@contextmanager
def cuda_error(code: CUresult) -> Iterator[None]:
    """Expect a CudaError with exactly ``code``."""
    with pytest.raises(CudaError) as info:
        yield
    assert info.value.code == int(code), info.value


@pytest.fixture
def sim() -> SimBackend:
    backend = SimBackend()
    backend.set_kernel_duration("k10", 10)
    backend.set_kernel_duration("k20", 20)
    return backend


@pytest.fixture
def ctx(sim: SimBackend) -> SimContext:
    return sim.primary_context(0)


Dim3 = tuple[int, int, int]


def dtoh(sim: SimBackend, ctx: SimContext, src: int, size: int, stream: object) -> bytes:
    """Device bytes read back through ``memcpy_dtoh``."""
    out = bytearray(size)
    sim.memcpy_dtoh(ctx, src, memoryview(out), stream)
    return bytes(out)


def config(
    stream: object = 0, grid: Dim3 = (1, 1, 1), block: Dim3 = (1, 1, 1), smem: int = 0
) -> LaunchConfig:
    return LaunchConfig(grid, block, smem, stream)


def launch(
    sim: SimBackend, ctx: SimContext, module: object, name: str, stream: object = 0
) -> SimLaunch:
    """Launch kernel ``name`` of ``module`` with zeroed parameters; its record."""
    function = sim.module_function(ctx, module, name)
    layout = sim.function_param_layout(function)
    sim.launch(ctx, [(function, config(stream), bytes(layout.total_size), layout)], False)
    return sim.launches[-1]


# -- devices -----------------------------------------------------------------------------
def test_device_identity(sim: SimBackend) -> None:
    assert sim.name == "sim"
    assert sim.driver_version() == 13000
    assert sim.device_count() == 1
    assert sim.device_name(0) == DEVICE_NAME == "FIKIT CPU test double (kernels do not compute)"
    assert sim.device_total_mem(0) == 80 << 30
    assert SimBackend(total_memory=1 << 30).device_total_mem(0) == 1 << 30
    uuid = sim.device_uuid(0)
    assert len(uuid) == 16
    assert SimBackend().device_uuid(0) == uuid


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        (A.CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, 1024),
        (A.CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z, 64),
        (A.CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X, 2147483647),
        (A.CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y, 65535),
        (A.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK, 49152),
        (A.CU_DEVICE_ATTRIBUTE_WARP_SIZE, 32),
        (A.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 132),
        (A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, 9),
        (A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, 0),
        (A.CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, 2048),
        (A.CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING, 1),
        (A.CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS, 1),
        (int(A.CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE), 50 << 20),
        (A.CU_DEVICE_ATTRIBUTE_TCC_DRIVER, 0),
    ],
)
def test_device_attributes(sim: SimBackend, attribute: int, value: int) -> None:
    assert sim.device_attribute(attribute, 0) == value


@pytest.mark.parametrize("attribute", [99999, -1, int(A.CU_DEVICE_ATTRIBUTE_MAX)])
def test_unknown_device_attribute(sim: SimBackend, attribute: int) -> None:
    with cuda_error(CUresult.CUDA_ERROR_INVALID_VALUE):
        sim.device_attribute(attribute, 0)


@pytest.mark.parametrize(
    "call",
    [
        lambda sim: sim.device_name(1),
        lambda sim: sim.device_attribute(A.CU_DEVICE_ATTRIBUTE_WARP_SIZE, 1),
        lambda sim: sim.device_total_mem(-1),
        lambda sim: sim.device_uuid(1),
        lambda sim: sim.primary_context(1),
        lambda sim: sim.context_create(0, 1),
    ],
)
def test_bad_device_ordinal(sim: SimBackend, call: Callable[[SimBackend], object]) -> None:
    with cuda_error(CUresult.CUDA_ERROR_INVALID_DEVICE):
        call(sim)


# -- contexts ----------------------------------------------------------------------------
def test_contexts(sim: SimBackend, ctx: SimContext) -> None:
    assert sim.primary_context(0) is ctx
    created = sim.context_create(0, 0)
    assert created is not ctx
    assert sim.context_create(0, 0) is not created
    assert sim.stream_priority_range(created) == (0, -5)
    sim.context_destroy(created)
    with cuda_error(CUresult.CUDA_ERROR_INVALID_CONTEXT):
        sim.context_destroy(ctx)
    for call in (
        lambda: sim.mem_alloc(created, 16),
        lambda: sim.stream_create(created, 0, 0),
        lambda: sim.event_create(created, 0),
        lambda: sim.module_load(created, PTX, {}),
        lambda: sim.stream_synchronize(created, 0),
        lambda: sim.stream_priority_range(created),
        lambda: sim.context_destroy(created),
    ):
        with cuda_error(CUresult.CUDA_ERROR_INVALID_CONTEXT):
            call()
    assert sim.mem_alloc(ctx, 16)


# -- memory ------------------------------------------------------------------------------
def test_alloc_accounting_and_errors() -> None:
    sim = SimBackend(total_memory=1 << 20)
    ctx = sim.primary_context(0)
    with cuda_error(CUresult.CUDA_ERROR_INVALID_VALUE):
        sim.mem_alloc(ctx, 0)
    a = sim.mem_alloc(ctx, 1000)
    assert a % 512 == 0
    assert sim.mem_get_info(ctx) == ((1 << 20) - 1024, 1 << 20)
    b = sim.mem_alloc(ctx, (1 << 20) - 1024)
    assert sim.mem_get_info(ctx) == (0, 1 << 20)
    with cuda_error(CUresult.CUDA_ERROR_OUT_OF_MEMORY):
        sim.mem_alloc(ctx, 1)
    with cuda_error(CUresult.CUDA_ERROR_INVALID_VALUE):
        sim.mem_free(ctx, a + 512)
    sim.mem_free(ctx, a)
    assert sim.mem_get_info(ctx) == (1024, 1 << 20)
    with cuda_error(CUresult.CUDA_ERROR_INVALID_VALUE):
        sim.mem_free(ctx, a)
    c = sim.mem_alloc(ctx, 1024)
    assert len({a, b, c}) == 3
    sim.mem_free(ctx, b)
    sim.mem_free(ctx, c)
    assert sim.mem_get_info(ctx) == (1 << 20, 1 << 20)


def test_copies_move_bytes(sim: SimBackend, ctx: SimContext) -> None:
    a = sim.mem_alloc(ctx, 4096)
    b = sim.mem_alloc(ctx, 4096)
    assert dtoh(sim, ctx, a, 16, None) == bytes(16)
    sim.memcpy_htod(ctx, a + 100, b"hello, device", None)
    assert dtoh(sim, ctx, a + 100, 13, None) == b"hello, device"
    sim.memcpy_dtod(ctx, b + 4000, a + 100, 13, 0)
    assert dtoh(sim, ctx, b + 3999, 15, 0) == b"\0hello, device\0"
    # Overlapping device-to-device copies behave like memmove.
    sim.memcpy_dtod(ctx, a + 102, a + 100, 13, None)
    assert dtoh(sim, ctx, a + 100, 15, None) == b"hehello, device"


def test_copy_bounds(sim: SimBackend, ctx: SimContext) -> None:
    a = sim.mem_alloc(ctx, 1000)
    b = sim.mem_alloc(ctx, 1000)
    for call in (
        lambda: sim.memcpy_htod(ctx, a + 999, b"ab", None),
        lambda: sim.memcpy_htod(ctx, a + 1000, b"a", None),
        lambda: sim.memcpy_htod(ctx, a - 1, b"a", None),
        lambda: dtoh(sim, ctx, a, 1001, None),
        lambda: dtoh(sim, ctx, b + 1000, 1, None),
        lambda: sim.memcpy_dtod(ctx, b, a, 1001, None),
        lambda: sim.memcpy_dtod(ctx, b + 1, a, 1000, None),
        lambda: sim.memset(ctx, a, 0, 1, 1001, None),
        lambda: dtoh(sim, ctx, 0x1000, 1, None),
    ):
        with cuda_error(CUresult.CUDA_ERROR_INVALID_VALUE):
            call()
    with cuda_error(CUresult.CUDA_ERROR_INVALID_HANDLE):
        sim.memcpy_htod(ctx, a, b"x", 7)
    assert dtoh(sim, ctx, a, 1, None) == b"\0", "a refused copy moves nothing"
    # A copy may span from the start to the very end of one allocation.
    sim.memcpy_htod(ctx, a, bytes(range(200)) * 5, None)
    sim.mem_free(ctx, a)
    with cuda_error(CUresult.CUDA_ERROR_INVALID_VALUE):
        dtoh(sim, ctx, a, 1, None)


def test_memset_widths(sim: SimBackend, ctx: SimContext) -> None:
    a = sim.mem_alloc(ctx, 64)
    sim.memset(ctx, a, 0xAB, 1, 3, None)
    sim.memset(ctx, a + 4, 0x1234, 2, 2, 0)
    sim.memset(ctx, a + 8, 0xDEADBEEF, 4, 2, None)
    assert dtoh(sim, ctx, a, 17, None) == (
        b"\xab\xab\xab\0" + b"\x34\x12" * 2 + struct.pack("<2I", 0xDEADBEEF, 0xDEADBEEF) + b"\0"
    )
    for width, value, dst in ((3, 0, a), (2, 0x10000, a), (1, -1, a), (2, 0, a + 1), (4, 0, a + 2)):
        with cuda_error(CUresult.CUDA_ERROR_INVALID_VALUE):
            sim.memset(ctx, dst, value, width, 1, None)


def test_large_memset_crosses_pages(sim: SimBackend, ctx: SimContext) -> None:
    size = (3 << 20) + 12
    count = (size - 8) // 4
    a = sim.mem_alloc(ctx, size)
    sim.memset(ctx, a + 4, 0x01020304, 4, count, None)
    data = dtoh(sim, ctx, a, size, None)
    assert data == bytes(4) + b"\x04\x03\x02\x01" * count + bytes(4)


def test_huge_allocations_are_lazy() -> None:
    sim = SimBackend()
    ctx = sim.primary_context(0)
    big = sim.mem_alloc(ctx, 70 << 30)
    sim.memcpy_htod(ctx, big + (70 << 30) - 4, b"last", None)
    assert dtoh(sim, ctx, big + (70 << 30) - 8, 8, None) == b"\0\0\0\0last"
    with cuda_error(CUresult.CUDA_ERROR_OUT_OF_MEMORY):
        sim.mem_alloc(ctx, 11 << 30)


def test_concurrent_allocations(sim: SimBackend, ctx: SimContext) -> None:
    pointers: list[int] = []

    def work() -> None:
        mine = [sim.mem_alloc(ctx, 4096) for _ in range(200)]
        for ptr in mine[::2]:
            sim.mem_free(ctx, ptr)
        pointers.extend(mine[1::2])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(pointers)) == 800
    free, total = sim.mem_get_info(ctx)
    assert total - free == 800 * 4096


# -- modules, libraries, functions ------------------------------------------------------
def test_module_functions_and_globals(sim: SimBackend, ctx: SimContext) -> None:
    free_before, _ = sim.mem_get_info(ctx)
    module = sim.module_load(ctx, PTX + b"\0", {int(CUjit_option.CU_JIT_MAX_REGISTERS): 64})
    function = sim.module_function(ctx, module, "k10")
    assert sim.module_function(ctx, module, "k10") is function
    assert sim.function_name(function) == "k10"
    assert sim.function_param_layout(function) == ParamLayout((0, 8), (8, 4))
    with cuda_error(CUresult.CUDA_ERROR_NOT_FOUND):
        sim.module_function(ctx, module, "k30")
    with cuda_error(CUresult.CUDA_ERROR_NOT_FOUND):
        sim.module_global(ctx, module, "missing")

    table, table_size = sim.module_global(ctx, module, "table")
    counter, counter_size = sim.module_global(ctx, module, "counter")
    seed, seed_size = sim.module_global(ctx, module, "seed")
    assert (table_size, counter_size, seed_size) == (64, 8, 4)
    # Initializers are not applied: variables start zero-filled.
    assert dtoh(sim, ctx, seed, 4, None) == bytes(4)
    sim.memcpy_htod(ctx, counter, struct.pack("<Q", 41), None)
    sim.memcpy_dtod(ctx, table + 8, counter, 8, None)
    assert dtoh(sim, ctx, table, 16, None) == bytes(8) + struct.pack("<Q", 41)
    with cuda_error(CUresult.CUDA_ERROR_INVALID_VALUE):
        dtoh(sim, ctx, table, 65, None)
    with cuda_error(CUresult.CUDA_ERROR_INVALID_VALUE):
        sim.mem_free(ctx, table)
    assert sim.mem_get_info(ctx)[0] < free_before

    sim.module_unload(ctx, module)
    assert sim.mem_get_info(ctx)[0] == free_before
    with cuda_error(CUresult.CUDA_ERROR_INVALID_VALUE):
        dtoh(sim, ctx, counter, 8, None)


def test_module_without_room_for_its_globals_frees_what_it_took() -> None:
    sim = SimBackend(total_memory=1024)
    ctx = sim.primary_context(0)
    with cuda_error(CUresult.CUDA_ERROR_OUT_OF_MEMORY):
        sim.module_load(ctx, PTX, {})
    assert sim.mem_get_info(ctx) == (1024, 1024)


@pytest.mark.parametrize(
    ("image", "code"),
    [
        (b"\x7fELF\x02\x01\x01\x00" + bytes(56), CUresult.CUDA_ERROR_INVALID_IMAGE),
        (b"\x50\xed\x55\xba\x01\x00\x10\x00" + bytes(32), CUresult.CUDA_ERROR_INVALID_IMAGE),
        (b"", CUresult.CUDA_ERROR_INVALID_IMAGE),
        (b"\xff\xfe.version 9.0", CUresult.CUDA_ERROR_INVALID_IMAGE),
        (b"int main() { return 0; }", CUresult.CUDA_ERROR_INVALID_PTX),
        (PTX.replace(b"{\n\tret;\n}\n\n.visible", b".visible"), CUresult.CUDA_ERROR_INVALID_PTX),
        (
            PTX.replace(b".version 9.0", b".version 9.5"),
            CUresult.CUDA_ERROR_UNSUPPORTED_PTX_VERSION,
        ),
    ],
)
def test_bad_images(sim: SimBackend, ctx: SimContext, image: bytes, code: CUresult) -> None:
    with cuda_error(code):
        sim.module_load(ctx, image, {})
    with cuda_error(code):
        sim.library_load(image, {})


def test_unknown_jit_option(sim: SimBackend, ctx: SimContext) -> None:
    with cuda_error(CUresult.CUDA_ERROR_INVALID_VALUE):
        sim.module_load(ctx, PTX, {9999: 1})


def test_library_path(sim: SimBackend, ctx: SimContext) -> None:
    library = sim.library_load(PTX, {})
    kernel = sim.library_kernel(library, "k10")
    with cuda_error(CUresult.CUDA_ERROR_NOT_FOUND):
        sim.library_kernel(library, "nope")
    function = sim.kernel_function(ctx, kernel)
    assert sim.kernel_function(ctx, kernel) is function
    other = sim.context_create(0, 0)
    assert sim.kernel_function(other, kernel) is not function
    assert sim.function_name(function) == "k10"
    assert sim.function_param_layout(function) == ParamLayout((0, 8), (8, 4))
    layout = sim.function_param_layout(function)
    sim.launch(ctx, [(function, config(), bytes(12), layout)], False)
    assert sim.launches[-1].kernel == "k10"
    sim.library_unload(library)


def test_function_attributes(sim: SimBackend, ctx: SimContext) -> None:
    module = sim.module_load(ctx, PTX, {})
    function = sim.module_function(ctx, module, "k20")
    expected = {
        F.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: 1024,
        F.CU_FUNC_ATTRIBUTE_NUM_REGS: 32,
        F.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES: 0,
        F.CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES: 0,
        F.CU_FUNC_ATTRIBUTE_PTX_VERSION: 90,
        F.CU_FUNC_ATTRIBUTE_BINARY_VERSION: 90,
        MAX_DYNAMIC_SHARED: 48 * 1024,
    }
    for attribute, value in expected.items():
        assert sim.function_attribute(ctx, function, int(attribute)) == value, attribute.name
    with cuda_error(CUresult.CUDA_ERROR_INVALID_VALUE):
        sim.function_attribute(ctx, function, 12345)
    sim.function_set_attribute(ctx, function, int(MAX_DYNAMIC_SHARED), 100 * 1024)
    assert sim.function_attribute(ctx, function, int(MAX_DYNAMIC_SHARED)) == 100 * 1024
    for attribute, value in (
        (MAX_DYNAMIC_SHARED, 232448 + 1),
        (MAX_DYNAMIC_SHARED, -1),
        (F.CU_FUNC_ATTRIBUTE_NUM_REGS, 16),
        (12345, 0),
    ):
        with cuda_error(CUresult.CUDA_ERROR_INVALID_VALUE):
            sim.function_set_attribute(ctx, function, int(attribute), value)
    assert sim.function_attribute(ctx, function, int(MAX_DYNAMIC_SHARED)) == 100 * 1024


def test_occupancy(sim: SimBackend, ctx: SimContext) -> None:
    function = sim.module_function(ctx, sim.module_load(ctx, PTX, {}), "k20")
    assert sim.occupancy_max_active_blocks(ctx, function, 1024, 0) == 2
    assert sim.occupancy_max_active_blocks(ctx, function, 256, 0) == 8
    assert sim.occupancy_max_active_blocks(ctx, function, 32, 0) == 32
    assert sim.occupancy_max_active_blocks(ctx, function, 1, 0) == 32
    assert sim.occupancy_max_active_blocks(ctx, function, 32, 48 * 1024) == 4
    assert sim.occupancy_max_active_blocks(ctx, function, 32, 48 * 1024 + 1) == 0
    for block_size, smem in ((0, 0), (-32, 0), (1025, 0), (32, -1)):
        with cuda_error(CUresult.CUDA_ERROR_INVALID_VALUE):
            sim.occupancy_max_active_blocks(ctx, function, block_size, smem)


# -- launches ----------------------------------------------------------------------------
def test_launch_is_recorded(sim: SimBackend, ctx: SimContext) -> None:
    module = sim.module_load(ctx, PTX, {})
    function = sim.module_function(ctx, module, "k10")
    stream = sim.stream_create(ctx, 0, 0)
    params = struct.pack("<QI", 0x7F00_0000_0000, 7)
    layout = sim.function_param_layout(function)
    sim.launch(
        ctx, [(function, config(stream, (4, 2, 1), (128, 2, 1), 1024), params, layout)], False
    )
    (record,) = sim.launches
    assert record.kernel == "k10"
    assert (record.grid, record.block, record.shared_mem_bytes) == ((4, 2, 1), (128, 2, 1), 1024)
    assert record.params == params
    assert record.context is ctx
    assert record.stream is stream
    assert (record.start_ns, record.end_ns) == (0, 10_000)
    assert sim.now == 0, "launches do not move the host's clock"


def test_a_launch_after_another_context_launch_starts_when_that_one_ends(
    sim: SimBackend, ctx: SimContext
) -> None:
    other = sim.context_create(0, 0)
    function = sim.module_function(ctx, sim.module_load(ctx, PTX, {}), "k10")
    first = sim.module_function(other, sim.module_load(other, PTX, {}), "k20")
    layout = sim.function_param_layout(function)
    first_layout = sim.function_param_layout(first)
    before, _ = sim.launch(
        other, [(first, config(), bytes(layout.total_size), first_layout)], False
    )
    stream = sim.stream_create(ctx, 0, 0)
    sim.launch(ctx, [(function, config(stream), bytes(layout.total_size), layout)], False, before)
    assert (sim.launches[-1].start_ns, sim.launches[-1].end_ns) == (20_000, 30_000)


def test_default_modelled_duration(sim: SimBackend, ctx: SimContext) -> None:
    assert modelled_duration_us("any", (1000, 1, 1), (100, 1, 1)) == pytest.approx(3.0)
    assert modelled_duration_us("any", (1, 1, 1), (1, 1, 1)) == pytest.approx(2.00001)
    module = sim.module_load(ctx, PTX.replace(b"k20", b"plain"), {})
    function = sim.module_function(ctx, module, "plain")
    layout = ParamLayout((), ())
    sim.launch(ctx, [(function, config(0, (4000, 1, 1), (250, 1, 1)), b"", layout)], False)
    assert sim.launches[-1].end_ns - sim.launches[-1].start_ns == 12_000


@pytest.mark.parametrize(
    ("grid", "block", "smem"),
    [
        ((0, 1, 1), (1, 1, 1), 0),
        ((1, 0, 1), (1, 1, 1), 0),
        ((1, 65536, 1), (1, 1, 1), 0),
        ((1, 1, 65536), (1, 1, 1), 0),
        ((2**31, 1, 1), (1, 1, 1), 0),
        ((1, 1, 1), (0, 1, 1), 0),
        ((1, 1, 1), (1025, 1, 1), 0),
        ((1, 1, 1), (64, 32, 1), 0),
        ((1, 1, 1), (1, 1, 65), 0),
        ((1, 1, 1), (1, 1, 1), 48 * 1024 + 1),
        ((1, 1, 1), (1, 1, 1), -1),
    ],
)
def test_launch_validation(
    sim: SimBackend, ctx: SimContext, grid: Dim3, block: Dim3, smem: int
) -> None:
    function = sim.module_function(ctx, sim.module_load(ctx, PTX, {}), "k20")
    with cuda_error(CUresult.CUDA_ERROR_INVALID_VALUE):
        sim.launch(ctx, [(function, config(0, grid, block, smem), b"", ParamLayout((), ()))], False)
    assert sim.launches == []


def test_launch_limits_that_pass(sim: SimBackend, ctx: SimContext) -> None:
    function = sim.module_function(ctx, sim.module_load(ctx, PTX, {}), "k20")
    layout = ParamLayout((), ())
    largest = config(0, (2**31 - 1, 65535, 65535), (1024, 1, 1))
    sim.launch(ctx, [(function, largest, b"", layout)], False)
    sim.launch(ctx, [(function, config(0, (1, 1, 1), (16, 1, 64), 48 * 1024), b"", layout)], False)
    sim.function_set_attribute(ctx, function, int(MAX_DYNAMIC_SHARED), 200 * 1024)
    sim.launch(ctx, [(function, config(0, (1, 1, 1), (1, 1, 1), 200 * 1024), b"", layout)], False)
    assert len(sim.launches) == 3


def test_launch_needs_all_parameter_bytes(sim: SimBackend, ctx: SimContext) -> None:
    function = sim.module_function(ctx, sim.module_load(ctx, PTX, {}), "k10")
    layout = sim.function_param_layout(function)
    with cuda_error(CUresult.CUDA_ERROR_INVALID_VALUE):
        sim.launch(ctx, [(function, config(), bytes(11), layout)], False)
    sim.launch(ctx, [(function, config(), bytes(12), layout)], False)
    assert len(sim.launches) == 1


# -- streams, events and time ------------------------------------------------------------
def test_event_timing_on_one_stream(sim: SimBackend, ctx: SimContext) -> None:
    module = sim.module_load(ctx, PTX, {})
    stream = sim.stream_create(ctx, 0, 0)
    start, end = sim.event_create(ctx, 0), sim.event_create(ctx, 0)
    sim.event_record(ctx, start, stream)
    first = launch(sim, ctx, module, "k10", stream)
    second = launch(sim, ctx, module, "k20", stream)
    sim.event_record(ctx, end, stream)
    assert second.start_ns == first.end_ns == 10_000
    with cuda_error(CUresult.CUDA_ERROR_NOT_READY):
        sim.event_elapsed_ms(ctx, start, end)
    sim.event_synchronize(ctx, end)
    assert sim.now == 30_000
    assert sim.event_elapsed_ms(ctx, start, end) == pytest.approx(0.030)
    assert sim.event_elapsed_ms(ctx, end, start) == pytest.approx(-0.030)


def test_elapsed_needs_recorded_timing_events(sim: SimBackend, ctx: SimContext) -> None:
    timed, never = sim.event_create(ctx, 0), sim.event_create(ctx, 0)
    untimed = sim.event_create(ctx, int(CUevent_flags.CU_EVENT_DISABLE_TIMING))
    sim.event_record(ctx, timed, 0)
    sim.event_record(ctx, untimed, 0)
    for first, second in ((timed, never), (never, timed), (timed, untimed), (untimed, timed)):
        with cuda_error(CUresult.CUDA_ERROR_INVALID_HANDLE):
            sim.event_elapsed_ms(ctx, first, second)
    assert sim.event_elapsed_ms(ctx, timed, timed) == 0.0
    assert sim.event_query(ctx, never)
    with cuda_error(CUresult.CUDA_ERROR_INVALID_VALUE):
        sim.event_create(ctx, 0x80)


def test_wait_event_orders_two_streams(sim: SimBackend, ctx: SimContext) -> None:
    module = sim.module_load(ctx, PTX, {})
    producer = sim.stream_create(ctx, NON_BLOCKING, 0)
    consumer = sim.stream_create(ctx, NON_BLOCKING, 0)
    independent = sim.stream_create(ctx, NON_BLOCKING, 0)
    done = sim.event_create(ctx, 0)
    produced = launch(sim, ctx, module, "k20", producer)
    sim.event_record(ctx, done, producer)
    sim.stream_wait_event(ctx, consumer, done, 0)
    consumed = launch(sim, ctx, module, "k10", consumer)
    alone = launch(sim, ctx, module, "k10", independent)
    assert (produced.start_ns, produced.end_ns) == (0, 20_000)
    assert (consumed.start_ns, consumed.end_ns) == (20_000, 30_000)
    assert alone.start_ns == 0
    with cuda_error(CUresult.CUDA_ERROR_INVALID_VALUE):
        sim.stream_wait_event(ctx, consumer, done, 2)


def test_legacy_stream_orders_blocking_streams(sim: SimBackend, ctx: SimContext) -> None:
    module = sim.module_load(ctx, PTX, {})
    blocking = sim.stream_create(ctx, 0, 0)
    non_blocking = sim.stream_create(ctx, NON_BLOCKING, 0)
    first = launch(sim, ctx, module, "k20", blocking)
    on_null = launch(sim, ctx, module, "k10", 0)
    after = launch(sim, ctx, module, "k10", blocking)
    free = launch(sim, ctx, module, "k10", non_blocking)
    on_legacy = launch(sim, ctx, module, "k10", 1)
    per_thread = launch(sim, ctx, module, "k10", 2)
    assert first.end_ns == on_null.start_ns == 20_000
    assert after.start_ns == on_null.end_ns == 30_000
    assert free.start_ns == 0
    assert on_legacy.start_ns == after.end_ns == 40_000
    assert per_thread.start_ns == on_legacy.end_ns == 50_000
    sim.stream_synchronize(ctx, non_blocking)
    assert sim.now == 10_000
    sim.stream_synchronize(ctx, 2)
    assert sim.now == 60_000


def test_other_contexts_do_not_wait_for_the_legacy_stream(sim: SimBackend, ctx: SimContext) -> None:
    module = sim.module_load(ctx, PTX, {})
    other = sim.context_create(0, 0)
    other_module = sim.module_load(other, PTX, {})
    launch(sim, ctx, module, "k20", 0)
    assert launch(sim, other, other_module, "k10", 0).start_ns == 0


def test_queries_poll_forward(sim: SimBackend, ctx: SimContext) -> None:
    module = sim.module_load(ctx, PTX, {})
    stream = sim.stream_create(ctx, 0, 0)
    event = sim.event_create(ctx, 0)
    assert sim.stream_query(ctx, stream)
    launch(sim, ctx, module, "k10", stream)
    sim.event_record(ctx, event, stream)
    assert not sim.stream_query(ctx, stream)
    assert sim.now == 1_000
    polls = 1
    while not sim.event_query(ctx, event):
        polls += 1
    assert polls == 10
    assert sim.now == 10_000
    assert sim.stream_query(ctx, stream)


def test_copies_take_modelled_time(sim: SimBackend, ctx: SimContext) -> None:
    module = sim.module_load(ctx, PTX, {})
    stream = sim.stream_create(ctx, 0, 0)
    ptr = sim.mem_alloc(ctx, 1 << 20)
    sim.memcpy_htod(ctx, ptr, bytes(50_000), stream)
    kernel = launch(sim, ctx, module, "k10", stream)
    assert kernel.start_ns == 2_000  # 1 us + 50 kB at 50 GB/s
    sim.memset(ctx, ptr, 0, 4, 25_000, stream)
    assert dtoh(sim, ctx, ptr, 100_000, stream) == bytes(100_000)
    assert sim.now == 12_000 + 3_000 + 3_000
    sim.memcpy_htod(ctx, ptr, bytes(100), None)
    assert sim.now == 18_000 + 1_002


def test_stream_priorities_clamp(sim: SimBackend, ctx: SimContext) -> None:
    for asked, got in ((0, 0), (-3, -3), (-5, -5), (-100, -5), (7, 0)):
        assert sim.stream_priority(ctx, sim.stream_create(ctx, 0, asked)) == got
    assert sim.stream_priority(ctx, 0) == 0
    with cuda_error(CUresult.CUDA_ERROR_INVALID_VALUE):
        sim.stream_create(ctx, 0x4, 0)


def test_destroyed_stream_work_still_counts(sim: SimBackend, ctx: SimContext) -> None:
    module = sim.module_load(ctx, PTX, {})
    stream = sim.stream_create(ctx, 0, 0)
    launch(sim, ctx, module, "k20", stream)
    sim.stream_destroy(ctx, stream)
    assert launch(sim, ctx, module, "k10", 0).start_ns == 20_000
    with cuda_error(CUresult.CUDA_ERROR_INVALID_HANDLE):
        sim.stream_destroy(ctx, 0)
    sim.stream_synchronize(ctx, 0)
    assert sim.now == 30_000


def test_a_run_of_launches_goes_on_past_a_failed_one(sim: SimBackend, ctx: SimContext) -> None:
    function = sim.module_function(ctx, sim.module_load(ctx, PTX, {}), "k10")
    layout = sim.function_param_layout(function)
    good = (function, config(), bytes(12), layout)
    short = (function, config(), bytes(11), layout)
    probe, failure = sim.launch(ctx, [good, short, good], False)
    assert failure is not None and failure.code == CUresult.CUDA_ERROR_INVALID_VALUE
    assert len(sim.launches) == 2
    assert probe.launch is sim.launches[-1], "the probe follows the run's last launch"
    with cuda_error(CUresult.CUDA_ERROR_INVALID_VALUE):
        sim.launch(ctx, [short, short], False)
    assert len(sim.launches) == 2
