"""Round-trip copies and memsets of many sizes through every host-memory form."""

import ctypes
from contextlib import contextmanager

import numpy as np
from common import check, err_name, expect, init_primary_context, sha256
from cuda.bindings import driver

SIZES = [1, 3, 4096 + 1, 1 << 20, 64 << 20, 256 << 20]
HOST_FORMS = ["numpy", "bytes", "ctypes", "int_address", "cuMemAllocHost", "cuMemHostAlloc"]
MEMSETS = [
    (driver.cuMemsetD8, driver.cuMemsetD8Async, np.uint8, 0xA5),
    (driver.cuMemsetD16, driver.cuMemsetD16Async, np.uint16, 0xBEEF),
    (driver.cuMemsetD32, driver.cuMemsetD32Async, np.uint32, 0xDEADBEEF),
]


def _pinned(form: str, n: int) -> int:
    """A pinned host buffer of n bytes from cuMemAllocHost or cuMemHostAlloc(n, 0)."""
    if form == "cuMemAllocHost":
        return check(driver.cuMemAllocHost(n))
    return check(driver.cuMemHostAlloc(n, 0))


@contextmanager
def host_buffers(form: str, data: np.ndarray):
    """Yield (source holding `data`, zeroed destination, function reading the destination)."""
    n = data.nbytes
    if form == "numpy":
        dst = np.zeros(n, dtype=np.uint8)
        yield data, dst, dst.tobytes
    elif form == "bytes":
        dst = bytearray(n)
        yield data.tobytes(), dst, lambda: bytes(dst)
    elif form == "ctypes":
        dst = (ctypes.c_ubyte * n)()
        yield (ctypes.c_ubyte * n).from_buffer_copy(data), dst, lambda: bytes(dst)
    elif form == "int_address":
        src, dst = data.copy(), np.zeros(n, dtype=np.uint8)
        yield src.ctypes.data, dst.ctypes.data, dst.tobytes
    else:
        src, dst = _pinned(form, n), _pinned(form, n)
        ctypes.memmove(src, data.ctypes.data, n)
        ctypes.memset(dst, 0, n)
        try:
            yield src, dst, lambda: ctypes.string_at(dst, n)
        finally:
            check(driver.cuMemFreeHost(src))
            check(driver.cuMemFreeHost(dst))


def round_trip(form, data, d_a, d_b, stream) -> None:
    """HtoD, DtoD, DtoH synchronously, then with the Async forms; check the bytes each time."""
    n = data.nbytes
    expected = data.tobytes()
    for mode in ("sync", "async"):
        check(driver.cuMemsetD8(d_a, 0, n))
        check(driver.cuMemsetD8(d_b, 0, n))
        with host_buffers(form, data) as (src, dst, read):
            if mode == "sync":
                check(driver.cuMemcpyHtoD(d_a, src, n))
                check(driver.cuMemcpyDtoD(d_b, d_a, n))
                check(driver.cuMemcpyDtoH(dst, d_b, n))
            else:
                check(driver.cuMemcpyHtoDAsync(d_a, src, n, stream))
                check(driver.cuMemcpyDtoDAsync(d_b, d_a, n, stream))
                check(driver.cuMemcpyDtoHAsync(dst, d_b, n, stream))
                check(driver.cuStreamSynchronize(stream))
            expect(read() == expected, f"size {n} form {form} {mode}: round trip differs")
        print(f"copy size={n} form={form} mode={mode} ok")


def memsets(data, d_a, stream) -> None:
    """cuMemsetD8/D16/D32 and their Async forms over random contents; tail bytes stay intact."""
    n = data.nbytes
    out = np.empty(n, dtype=np.uint8)
    for memset, memset_async, dtype, value in MEMSETS:
        width = np.dtype(dtype).itemsize
        count = n // width
        expected = data.copy()
        expected[: count * width] = np.full(count, value, dtype=dtype).view(np.uint8)
        for mode in ("sync", "async"):
            check(driver.cuMemcpyHtoD(d_a, data, n))
            if count and mode == "sync":
                check(memset(d_a, value, count))
            if count and mode == "async":
                check(memset_async(d_a, value, count, stream))
                check(driver.cuStreamSynchronize(stream))
            check(driver.cuMemcpyDtoH(out, d_a, n))
            expect(np.array_equal(out, expected), f"size {n} {memset.__name__} {mode} differs")
            print(f"memset size={n} fn={memset.__name__} mode={mode} sha256={sha256(out)}")


def main() -> None:
    dev, _ = init_primary_context()
    stream = check(driver.cuStreamCreate(0))
    rng = np.random.default_rng(2024)

    for n in SIZES:
        data = np.frombuffer(rng.bytes(n), dtype=np.uint8)
        d_a = check(driver.cuMemAlloc(n))
        d_b = check(driver.cuMemAlloc(n))
        print(f"size={n} data_sha256={sha256(data)}")
        base, range_size = check(driver.cuMemGetAddressRange(driver.CUdeviceptr(int(d_a) + n // 2)))
        print(f"size={n} address_range base_ok={int(base) == int(d_a)} size_ok={range_size >= n}")
        for form in HOST_FORMS:
            round_trip(form, data, d_a, d_b, stream)
        memsets(data, d_a, stream)
        check(driver.cuMemFree(d_a))
        check(driver.cuMemFree(d_b))

    free, total = check(driver.cuMemGetInfo())
    print(f"mem_info total_positive={total > 0} free_le_total={free <= total}")

    small = 1 << 20
    d_small = check(driver.cuMemAlloc(small))
    beyond = np.empty(2 * small, dtype=np.uint8)
    print(f"out_of_bounds_dtoh {err_name(driver.cuMemcpyDtoH(beyond, d_small, beyond.nbytes))}")
    check(driver.cuMemFree(d_small))

    check(driver.cuStreamDestroy(stream))
    check(driver.cuDevicePrimaryCtxRelease(dev))
    print("copies: OK")


if __name__ == "__main__":
    main()
