"""Device query and a memory round trip with plain cuda-python (no kernels, no NVRTC).

Runs natively (`python examples/device_info.py`) or, unchanged, on a remote GPU
(`fikit-run python examples/device_info.py`), including a server on the CPU test double.
"""

import sys

import numpy as np
from cuda.bindings import driver


def check(result):
    """Raise on a CUDA error; return the call's value(s) without the error code."""
    err, *values = result
    if err != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"CUDA call failed: {err.name}")
    return values[0] if len(values) == 1 else tuple(values) or None


def main() -> int:
    check(driver.cuInit(0))
    print(f"driver version {check(driver.cuDriverGetVersion())}")
    for ordinal in range(check(driver.cuDeviceGetCount())):
        dev = check(driver.cuDeviceGet(ordinal))
        name = check(driver.cuDeviceGetName(256, dev)).split(b"\0")[0].decode()
        attr = driver.CUdevice_attribute
        major = check(
            driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
        )
        minor = check(
            driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
        )
        sms = check(driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev))
        total = check(driver.cuDeviceTotalMem(dev))
        print(f"device {ordinal}: {name}, compute {major}.{minor}, {sms} SMs, {total >> 20} MiB")

    ctx = check(driver.cuDevicePrimaryCtxRetain(check(driver.cuDeviceGet(0))))
    check(driver.cuCtxSetCurrent(ctx))
    data = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)
    dptr = check(driver.cuMemAlloc(data.nbytes))
    check(driver.cuMemcpyHtoD(dptr, data, data.nbytes))
    back = np.empty_like(data)
    check(driver.cuMemcpyDtoH(back, dptr, data.nbytes))
    check(driver.cuMemFree(dptr))
    check(driver.cuDevicePrimaryCtxRelease(check(driver.cuDeviceGet(0))))
    if not np.array_equal(back, data):
        print("device_info: memory round trip MISMATCH")
        return 1
    print(f"device_info: {data.nbytes >> 20} MiB round trip OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
