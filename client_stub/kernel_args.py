"""Marshalling of ``kernelParams`` into one parameter buffer, by the kernel's real layout.

cuda-python accepts kernel arguments as ``None``/``0`` (no arguments), a
``(values, types)`` pair of tuples, an int address of a ``void*[]``, or any buffer
(a ctypes array, a numpy array) holding the ``void*[]`` itself. The server reports each
kernel's parameter offsets and sizes (``cuFuncGetParamInfo``); every argument's bytes
are placed at its offset, so scalars of any width, structs by value and pointers arrive
exactly as the driver would copy them.
"""

from __future__ import annotations

import ctypes
import functools
import struct
from typing import Any

import numpy as np

#: The ctypes types cuda-python accepts in the (values, types) form, besides c_void_p.
_SCALAR_TYPES = frozenset(
    {
        ctypes.c_bool,
        ctypes.c_char,
        ctypes.c_wchar,
        ctypes.c_byte,
        ctypes.c_ubyte,
        ctypes.c_short,
        ctypes.c_ushort,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_long,
        ctypes.c_ulong,
        ctypes.c_longlong,
        ctypes.c_ulonglong,
        ctypes.c_size_t,
        ctypes.c_float,
        ctypes.c_double,
    }
)


#: struct codes of the ctypes scalar types whose values ``struct`` packs exactly as ctypes
#: does (a value it refuses, such as an int out of range that ctypes would wrap, falls
#: back to ctypes).
_STRUCT_CODES = {
    ctypes.c_bool: "?",
    ctypes.c_byte: "b",
    ctypes.c_ubyte: "B",
    ctypes.c_short: "h",
    ctypes.c_ushort: "H",
    ctypes.c_int: "i",
    ctypes.c_uint: "I",
    ctypes.c_long: "l" if ctypes.sizeof(ctypes.c_long) == 4 else "q",
    ctypes.c_ulong: "L" if ctypes.sizeof(ctypes.c_ulong) == 4 else "Q",
    ctypes.c_longlong: "q",
    ctypes.c_ulonglong: "Q",
    ctypes.c_size_t: "Q" if ctypes.sizeof(ctypes.c_size_t) == 8 else "I",
    ctypes.c_float: "f",
    ctypes.c_double: "d",
}
#: Python value types ``struct`` takes as they are for a scalar code.
_PLAIN_VALUES = (int, float, bool)

#: Keys of the ``extra`` launch array (CU_LAUNCH_PARAM_END, _BUFFER_POINTER, _BUFFER_SIZE).
_EXTRA_END, _EXTRA_BUFFER_POINTER, _EXTRA_BUFFER_SIZE = 0, 1, 2


class ParamCountMismatch(ValueError):
    """The arguments given do not match the kernel's parameter count."""


def _typed_value_bytes(value: Any, ctype: Any) -> bytes:
    """Bytes of one argument of the (values, types) form, as cuda-python would pass it."""
    if ctype is None:
        if callable(getattr(value, "getPtr", None)):
            return int(value).to_bytes(8, "little")
        if isinstance(value, ctypes.Structure):
            return bytes(value)
        if isinstance(value, int):  # cuda-python enums
            return int(value).to_bytes(4, "little", signed=True)
        raise TypeError(
            f"Provided argument is of type {type(value)} but expected a ctypes Structure "
            "or a CUDA binding object with getPtr()"
        )
    if ctype is ctypes.c_void_p:
        if isinstance(value, ctypes.c_void_p):
            return (value.value or 0).to_bytes(8, "little")
        if isinstance(value, int) or callable(getattr(value, "getPtr", None)):
            return int(value).to_bytes(8, "little")
        raise TypeError(f"Provided argument is of type {type(value)} but expected int or c_void_p")
    if ctype in _SCALAR_TYPES:
        if ctype is ctypes.c_double and isinstance(value, ctypes.c_float):
            value = value.value
        return bytes(value if isinstance(value, ctype) else ctype(value))
    raise TypeError(f"Unsupported type: {type(ctype)}")


@functools.lru_cache(maxsize=1024)
def _typed_packer(
    offsets: tuple[int, ...],
    sizes: tuple[int, ...],
    types: tuple[Any, ...],
    value_types: tuple[type, ...],
) -> tuple[struct.Struct, tuple[int, ...]] | None:
    """A ``struct`` that packs (values, types) arguments of these value types at the
    layout's offsets, and the positions of the values that go in as ``int(value)``
    (pointer objects); None when some argument needs ctypes (structs, ctypes instances, a
    size that differs)."""
    fmt, end, pointer_objects = ["<"], 0, []
    for index, (offset, size, ctype, value_type) in enumerate(
        zip(offsets, sizes, types, value_types)
    ):
        if ctype is None or ctype is ctypes.c_void_p:
            pointer = value_type is int or hasattr(value_type, "getPtr")
            if not pointer or (ctype is None and value_type is int) or size != 8:
                return None
            code = "Q"
            if value_type is not int:
                pointer_objects.append(index)
        else:
            code = _STRUCT_CODES.get(ctype)
            if code is None or value_type not in _PLAIN_VALUES or struct.calcsize(code) != size:
                return None
        if offset < end:
            return None
        fmt.append(f"{offset - end}x{code}")
        end = offset + size
    return struct.Struct("".join(fmt)), tuple(pointer_objects)


def _pointed_bytes(address_array: Any, sizes: tuple[int, ...]) -> list[bytes]:
    """Read each argument through a ``void*[]`` given as an address or a buffer."""
    n = len(sizes)
    if isinstance(address_array, int):
        pointers = np.ctypeslib.as_array((ctypes.c_uint64 * n).from_address(address_array))
    else:
        pointers = np.frombuffer(memoryview(address_array).cast("B"), dtype=np.uint64, count=n)
    return [ctypes.string_at(int(p), s) for p, s in zip(pointers, sizes)]


def pack_kernel_params(
    kernel_params: Any, offsets: tuple[int, ...], sizes: tuple[int, ...]
) -> bytes:
    """The kernel's parameter buffer for ``kernel_params`` in any form cuda-python accepts."""
    n = len(offsets)
    if kernel_params is None or (isinstance(kernel_params, int) and kernel_params == 0):
        if n:
            raise ParamCountMismatch(f"kernel takes {n} parameters, none given")
        return b""
    if isinstance(kernel_params, tuple) and len(kernel_params) == 2:
        values, types = kernel_params
        if not isinstance(values, tuple) or not isinstance(types, tuple):
            raise TypeError("Argument 'kernelParams' must be a tuple of two tuples")
        if len(values) != len(types):
            raise TypeError("Argument 'kernelParams' has tuples with different length")
        if len(values) != n:
            raise ParamCountMismatch(f"kernel takes {n} parameters, {len(values)} given")
        packer = _typed_packer(offsets, sizes, types, tuple(map(type, values)))
        if packer is not None:
            packed, pointer_objects = packer
            packable = list(values)
            try:
                for index in pointer_objects:
                    packable[index] = int(packable[index])
                return packed.pack(*packable)
            except (struct.error, OverflowError):
                pass  # a value struct refuses: ctypes decides (it may wrap it, or refuse)
        arguments = [_typed_value_bytes(v, t) for v, t in zip(values, types)]
    elif isinstance(kernel_params, int) or _is_buffer(kernel_params):
        arguments = _pointed_bytes(kernel_params, sizes)
    else:
        raise TypeError(
            "Argument 'kernelParams' is not a valid type: tuple[tuple[Any, ...], tuple[Any, ...]]"
            " or PyObject implimenting Buffer Protocol or Int"
        )
    buffer = bytearray(max((o + s for o, s in zip(offsets, sizes)), default=0))
    for offset, size, data in zip(offsets, sizes, arguments):
        buffer[offset : offset + min(size, len(data))] = data[:size]
    return bytes(buffer)


def pack_extra(extra: Any, offsets: tuple[int, ...], sizes: tuple[int, ...]) -> bytes:
    """The parameter buffer given through ``extra``: a ``void*[]`` of key/value pairs
    (CU_LAUNCH_PARAM_BUFFER_POINTER, CU_LAUNCH_PARAM_BUFFER_SIZE) ending with
    CU_LAUNCH_PARAM_END, as an int address or a buffer."""
    address = extra if isinstance(extra, int) else np.frombuffer(extra, np.uint8).ctypes.data
    buffer, size, i = None, None, 0
    while (key := ctypes.c_uint64.from_address(address + 8 * i).value) != _EXTRA_END:
        value = ctypes.c_uint64.from_address(address + 8 * (i + 1)).value
        if key == _EXTRA_BUFFER_POINTER:
            buffer = value
        elif key == _EXTRA_BUFFER_SIZE:
            size = ctypes.c_size_t.from_address(value).value
        else:
            raise ParamCountMismatch(f"unknown extra launch key {key:#x}")
        i += 2
    total = max((o + s for o, s in zip(offsets, sizes)), default=0)
    if buffer is None or size is None or size < total:
        raise ParamCountMismatch("extra holds no parameter buffer of the kernel's size")
    return ctypes.string_at(buffer, total)


def _is_buffer(obj: Any) -> bool:
    try:
        memoryview(obj)
    except TypeError:
        return False
    return True
