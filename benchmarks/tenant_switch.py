"""Switching between tenants: one vs two tenants doing launch+sync on one GPU, per mode.

Usage: python benchmarks/tenant_switch.py
Each tenant is a plain cuda-python process (this file with --tenant) that launches an empty
kernel and synchronizes, in a loop; two tenants start together and alternate on the GPU as
their calls interleave. Runs natively (two processes, two contexts, time-sliced by the
driver), then through `gpu-server --isolation none|shared|process` over the same-host
socket. Prints the mean launch+sync time of one tenant alone and of each of two at once.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from driver_calls import check, compile_kernels, open_device
from server_process import ENV, REPO, console_script, gpu_server

ITERATIONS = 3_000
WARMUP = 300
MODES = ("none", "shared", "process")


def tenant() -> None:
    """One tenant: mean launch+sync microseconds after a start signal on stdin."""
    from cuda.bindings import driver

    _, kernel, _ = compile_kernels(open_device())

    def launch_and_sync() -> None:
        check(driver.cuLaunchKernel(kernel, 1, 1, 1, 1, 1, 1, 0, 0, None, 0))
        check(driver.cuCtxSynchronize())

    for _ in range(WARMUP):
        launch_and_sync()
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    for _ in range(ITERATIONS):
        launch_and_sync()
    print((time.perf_counter() - started) / ITERATIONS * 1e6, flush=True)


def run_tenants(count: int, prefix: list[str]) -> list[float]:
    """Start ``count`` tenants behind ``prefix``, let them go together; their means (us)."""
    command = [*prefix, sys.executable, str(Path(__file__).resolve()), "--tenant"]
    tenants = [
        subprocess.Popen(
            command, cwd=REPO, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(count)
    ]
    for process in tenants:
        if process.stdout.readline().strip() != "ready":
            sys.exit(f"a tenant failed to start ({' '.join(command)})")
    for process in tenants:
        process.stdin.write("go\n")
        process.stdin.flush()
    means = [float(process.communicate(timeout=600)[0].strip()) for process in tenants]
    if any(process.returncode for process in tenants):
        sys.exit("a tenant failed")
    return means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tenant", action="store_true", help=argparse.SUPPRESS)
    if parser.parse_args().tenant:
        tenant()
        return
    fikit_run = console_script("fikit-run", "client_stub.run")
    rows = {"native": (run_tenants(1, []), run_tenants(2, []))}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in MODES:
            address = f"unix:{Path(tmp) / f'{mode}.sock'}"
            options = ["--listen", address, "--isolation", mode, "--policy", "fifo"]
            with gpu_server(options, Path(tmp) / f"{mode}.log"):
                prefix = [*fikit_run, "--server", address]
                rows[mode] = (run_tenants(1, prefix), run_tenants(2, prefix))
    print("| mode | one tenant, launch+sync us | two tenants, each us | two / one |")
    print("|---|---:|---:|---:|")
    for mode, (alone, together) in rows.items():
        pair = statistics.mean(together)
        print(f"| {mode} | {alone[0]:.1f} | {pair:.1f} | {pair / alone[0]:.2f}x |")
    print(f"\nCommand: `{' '.join(sys.orig_argv)}`")


if __name__ == "__main__":
    main()
