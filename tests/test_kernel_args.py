"""Kernel arguments packed by the layout: the struct fast path gives ctypes' bytes."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from cuda.bindings import driver

from client_stub.kernel_args import ParamCountMismatch, pack_kernel_params


def by_ctypes(values: tuple, types: tuple, offsets: tuple, sizes: tuple) -> bytes:
    """The parameter buffer as cuda-python builds it: each argument through ctypes."""
    buffer = bytearray(max(o + s for o, s in zip(offsets, sizes)))
    for value, ctype, offset, size in zip(values, types, offsets, sizes):
        if ctype is None and isinstance(value, ctypes.Structure):
            data = bytes(value)
        elif ctype is None and not hasattr(value, "getPtr"):
            data = int(value).to_bytes(4, "little", signed=True)
        elif ctype is None or ctype is ctypes.c_void_p:
            data = (value.value if isinstance(value, ctypes.c_void_p) else int(value)).to_bytes(
                8, "little"
            )
        else:
            data = bytes(value if isinstance(value, ctype) else ctype(value))
        buffer[offset : offset + size] = data[:size]
    return bytes(buffer)


class Pair(ctypes.Structure):
    _fields_ = [("a", ctypes.c_int), ("b", ctypes.c_float)]


CASES = [
    pytest.param(
        (1024, 2.5, driver.CUdeviceptr(0x7F00_0000_1000), driver.CUdeviceptr(8)),
        (ctypes.c_int, ctypes.c_float, None, None),
        (0, 4, 8, 16),
        (4, 4, 8, 8),
        id="saxpy",
    ),
    pytest.param(
        (3, 7, 2**40, True, 1.5, 9),
        (
            ctypes.c_short,
            ctypes.c_ubyte,
            ctypes.c_void_p,
            ctypes.c_bool,
            ctypes.c_double,
            ctypes.c_size_t,
        ),
        (0, 2, 8, 16, 24, 32),
        (2, 1, 8, 1, 8, 8),
        id="widths-and-padding",
    ),
    pytest.param((-1,), (ctypes.c_uint,), (0,), (4,), id="ctypes-wraps-what-struct-refuses"),
    pytest.param((2**33,), (ctypes.c_int,), (0,), (4,), id="int-wider-than-the-type"),
    pytest.param((ctypes.c_float(0.5),), (ctypes.c_float,), (0,), (4,), id="ctypes-instance"),
    pytest.param((ctypes.c_void_p(0x10),), (ctypes.c_void_p,), (0,), (8,), id="c-void-p"),
    pytest.param((5,), (None,), (0,), (4,), id="enum-as-int"),
    pytest.param((Pair(1, 2.0),), (None,), (0,), (8,), id="struct-by-value"),
    pytest.param(
        (np.float32(1.25), np.int64(7)),
        (ctypes.c_float, ctypes.c_longlong),
        (0, 8),
        (4, 8),
        id="numpy-scalars",
    ),
]


@pytest.mark.parametrize(("values", "types", "offsets", "sizes"), CASES)
def test_packed_bytes_are_those_ctypes_would_pass(values, types, offsets, sizes) -> None:
    expected = by_ctypes(values, types, offsets, sizes)
    assert pack_kernel_params((values, types), offsets, sizes) == expected
    assert pack_kernel_params((values, types), offsets, sizes) == expected  # cached packer


def test_values_ctypes_refuses_are_refused() -> None:
    with pytest.raises(TypeError):
        pack_kernel_params(((1.5,), (ctypes.c_int,)), (0,), (4,))
    with pytest.raises(ParamCountMismatch):
        pack_kernel_params(((1, 2), (ctypes.c_int, ctypes.c_int)), (0,), (4,))
