"""Pass scalars of every C width, a struct by value and pointers; check what the kernel saw."""

import ctypes

import numpy as np
from common import check, compile_ptx, expect, init_primary_context, sha256
from cuda.bindings import driver

SOURCE = r"""
struct Mixed { int a; double b; char c; };

struct Captured {
    long long ll;
    double d;
    double mb;
    unsigned long long in_ptr;
    int i;
    int ma;
    float f;
    int deref;
    short s;
    signed char c;
    char mc;
};

extern "C" __global__ void capture(signed char c, short s, int i, long long ll, float f,
                                   double d, Mixed m, const int* in, Captured* out)
{
    out->ll = ll;
    out->d = d;
    out->mb = m.b;
    out->in_ptr = (unsigned long long)in;
    out->i = i;
    out->ma = m.a;
    out->f = f;
    out->deref = in[3];
    out->s = s;
    out->c = c;
    out->mc = m.c;
}
"""


class Mixed(ctypes.Structure):
    """Mirror of the kernel's by-value struct."""

    _fields_ = [("a", ctypes.c_int), ("b", ctypes.c_double), ("c", ctypes.c_char)]


class Captured(ctypes.Structure):
    """Mirror of the kernel's output record."""

    _fields_ = [
        ("ll", ctypes.c_longlong),
        ("d", ctypes.c_double),
        ("mb", ctypes.c_double),
        ("in_ptr", ctypes.c_uint64),
        ("i", ctypes.c_int),
        ("ma", ctypes.c_int),
        ("f", ctypes.c_float),
        ("deref", ctypes.c_int),
        ("s", ctypes.c_short),
        ("c", ctypes.c_byte),
        ("mc", ctypes.c_char),
    ]


# name: (char, short, int, long long, float, double, (Mixed.a, Mixed.b, Mixed.c))
CASES = {
    "minimum": (
        -128,
        -32768,
        -(2**31),
        -(2**63),
        -3.4028234663852886e38,
        -1e300,
        (-(2**31), -1e-300, b"\x80"),
    ),
    "maximum": (
        127,
        32767,
        2**31 - 1,
        2**63 - 1,
        3.4028234663852886e38,
        1e300,
        (2**31 - 1, 1.7976931348623157e308, b"\x7f"),
    ),
    "ordinary": (
        -7,
        1234,
        -123456,
        9_007_199_254_740_993,
        0.1,
        -2.5e-12,
        (42, 3.141592653589793, b"z"),
    ),
    "zeros": (0, 0, 0, 0, -0.0, -0.0, (0, -0.0, b"\x00")),
    "tiny": (1, -1, 1, -1, 1.1754943508222875e-38, 5e-324, (-1, 2.2250738585072014e-308, b"\x01")),
}
TYPES = (
    ctypes.c_byte,
    ctypes.c_short,
    ctypes.c_int,
    ctypes.c_longlong,
    ctypes.c_float,
    ctypes.c_double,
    None,
    None,
    ctypes.c_void_p,
)


def main() -> None:
    dev, _ = init_primary_context()
    ptx, _ = compile_ptx(SOURCE, dev)
    module = check(driver.cuModuleLoadData(ptx))
    kernel = check(driver.cuModuleGetFunction(module, b"capture"))

    rng = np.random.default_rng(77)
    host_in = rng.integers(-(2**31), 2**31, 8, dtype=np.int32)
    d_in = check(driver.cuMemAlloc(host_in.nbytes))
    check(driver.cuMemcpyHtoD(d_in, host_in, host_in.nbytes))
    size = ctypes.sizeof(Captured)
    d_out = check(driver.cuMemAlloc(size))

    for name, (c, s, i, ll, f, d, (ma, mb, mc)) in CASES.items():
        check(driver.cuMemsetD8(d_out, 0, size))
        mixed = Mixed(ma, mb, mc)
        values = (c, s, i, ll, f, d, mixed, d_in, int(d_out))
        check(driver.cuLaunchKernel(kernel, 1, 1, 1, 1, 1, 1, 0, 0, (values, TYPES), 0))
        check(driver.cuCtxSynchronize())
        got = Captured()
        check(driver.cuMemcpyDtoH(got, d_out, size))

        expected = Captured(
            ll=ll,
            d=d,
            mb=mb,
            in_ptr=int(d_in),
            i=i,
            ma=ma,
            f=f,
            deref=int(host_in[3]),
            s=s,
            c=c,
            mc=mc,
        )
        expect(bytes(got) == bytes(expected), f"{name}: kernel saw {bytes(got).hex()}")
        print(
            f"{name}: c={got.c} s={got.s} i={got.i} ll={got.ll} f={got.f!r} d={got.d!r} "
            f"m=({got.ma}, {got.mb!r}, {got.mc!r}) deref={got.deref} "
            f"pointer_roundtrip={got.in_ptr == int(d_in)}"
        )
        record = bytes(got)
        ptr_at = Captured.in_ptr.offset
        without_pointer = record[:ptr_at] + record[ptr_at + 8 :]
        print(f"{name}: record_sha256_without_pointer={sha256(without_pointer)}")

    check(driver.cuMemFree(d_in))
    check(driver.cuMemFree(d_out))
    check(driver.cuModuleUnload(module))
    check(driver.cuDevicePrimaryCtxRelease(dev))
    print("arg_types: OK")


if __name__ == "__main__":
    main()
