"""How far the GPU's event clock and the host's monotonic clock drift apart.

Usage: python benchmarks/gpu_clock_drift.py [--seconds 60] [--every 0.5]

The server places a traced launch's GPU start and end on the host clock through one epoch
event per context, timed once (``gpu_server/backends/cuda.py``). This records an event on
an otherwise idle stream every ``--every`` seconds, polls it until done, and takes the host
time then; it prints, for each sample, the host time since the first event minus the GPU
time since it (``cuEventElapsedTime``), and the drift in parts per million. An offset that
grows with time means traces placed through a single epoch stray by that much over a
server's life. Needs a GPU; no server.
"""

import argparse
import time

from cuda.bindings import driver


def check(result: tuple) -> object:
    """The call's value; raises on a CUDA error."""
    err, *values = result
    if err != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"CUDA call failed: {err.name}")
    return values[0] if values else None


def completed_at_us(event: object, stream: object) -> float:
    """Record ``event`` on ``stream`` and return the host time (us) at which a poll first
    finds it done, halfway between that poll and the one before."""
    check(driver.cuEventRecord(event, stream))
    before = time.perf_counter()
    while True:
        now = time.perf_counter()
        if driver.cuEventQuery(event)[0] == driver.CUresult.CUDA_SUCCESS:
            return (before + now) / 2 * 1e6
        before = now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=0.5)
    args = parser.parse_args()
    check(driver.cuInit(0))
    ctx = check(driver.cuDevicePrimaryCtxRetain(check(driver.cuDeviceGet(0))))
    check(driver.cuCtxSetCurrent(ctx))
    stream = check(driver.cuStreamCreate(driver.CUstream_flags.CU_STREAM_NON_BLOCKING))
    epoch = check(driver.cuEventCreate(0))
    epoch_host = completed_at_us(epoch, stream)
    sample = check(driver.cuEventCreate(0))
    print("| host s | host - GPU since the first event, us | drift, ppm |\n|---:|---:|---:|")
    deadline = time.perf_counter() + args.seconds
    while time.perf_counter() < deadline:
        time.sleep(args.every)
        host = completed_at_us(sample, stream) - epoch_host
        gpu = check(driver.cuEventElapsedTime(epoch, sample)) * 1e3
        print(f"| {host / 1e6:.1f} | {host - gpu:.1f} | {(host - gpu) / host * 1e6:.1f} |")
    for event in (epoch, sample):
        check(driver.cuEventDestroy(event))
    check(driver.cuStreamDestroy(stream))
    check(driver.cuDevicePrimaryCtxRelease(check(driver.cuDeviceGet(0))))


if __name__ == "__main__":
    main()
