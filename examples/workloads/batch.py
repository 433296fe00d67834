"""Low-priority throughput job: the same kernel over and over, in iterations of a few launches.

An iteration queues --kernels-per-iter launches on the stream and waits for them. After
one warm-up iteration the job writes --ready-file and runs until --seconds pass, the
--stop-file exists at the end of an iteration, or SIGTERM arrives (it finishes the
iteration first).

    python examples/workloads/batch.py --job stencil --out batch.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import gpu

SEED = 0
DEFAULT_N = {"gemm": 1024, "stencil": 4096}
#: Side of the grid of the stencil's correctness check.
CHECK_N = 64


def sweeps(
    kernels: gpu.Kernels, a: gpu.DevicePtr, b: gpu.DevicePtr, n: int
) -> Iterator[gpu.Launch]:
    """Jacobi sweeps on the n x n grid in ``a``, ping-ponging a -> b -> a -> ..."""
    return itertools.cycle([kernels.jacobi(a, b, n), kernels.jacobi(b, a, n)])


def jacobi_reference(grid: np.ndarray, count: int) -> np.ndarray:
    """``count`` sweeps in numpy, adding the neighbours in the kernel's order."""
    for _ in range(count):
        out = grid.copy()
        out[1:-1, 1:-1] = np.float32(0.25) * (
            grid[:-2, 1:-1] + grid[2:, 1:-1] + grid[1:-1, :-2] + grid[1:-1, 2:]
        )
        grid = out
    return grid


def check_stencil(kernels: gpu.Kernels, rng: np.random.Generator, count: int) -> bool:
    """Run ``count`` sweeps on a small grid of its own and compare it with numpy."""
    dev = kernels.gpu
    grid = rng.random((CHECK_N, CHECK_N), dtype=np.float32)
    a, b = dev.to_device(grid), dev.alloc(grid.nbytes)
    launches = sweeps(kernels, a, b, CHECK_N)
    for _ in range(count):
        next(launches)()
    result = np.empty_like(grid)
    dev.download(b if count % 2 else a, result)
    return bool(np.allclose(result, jacobi_reference(grid, count), rtol=1e-5, atol=1e-6))


def check_gemm(dev: gpu.Gpu, a: np.ndarray, b: np.ndarray, c: gpu.DevicePtr) -> bool:
    """Compare a few rows of the device's C = A @ B with numpy."""
    n = a.shape[0]
    rows = sorted({0, n // 2, n - 1})
    got = np.empty((len(rows), n), np.float32)
    for i, row in enumerate(rows):
        dev.download(gpu.offset(c, row * n), got[i])
    expected = a[rows].astype(np.float64) @ b.astype(np.float64)
    return bool(np.allclose(got, expected, rtol=1e-3, atol=1e-3))


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", choices=("gemm", "stencil"), default="stencil")
    parser.add_argument(
        "--n", type=int, help="gemm: M = N = K (default 1024); stencil: grid side (default 4096)"
    )
    parser.add_argument("--kernels-per-iter", type=int, default=8, help="launches per iteration")
    parser.add_argument("--seconds", type=float, default=30.0, help="longest run after warm-up")
    parser.add_argument("--stop-file", type=Path, help="stop after the iteration that sees it")
    parser.add_argument("--ready-file", type=Path, help="written once warmed up")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    args.n = args.n or DEFAULT_N[args.job]
    if args.n < 3 or args.kernels_per_iter < 1:
        parser.error("--n must be at least 3 and --kernels-per-iter at least 1")
    return args


def main() -> int:
    args = parse_args()
    stopping = False

    def on_sigterm(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_sigterm)
    rng = np.random.default_rng(SEED)
    n, per_iter = args.n, args.kernels_per_iter
    with gpu.Gpu() as dev:
        kernels = gpu.Kernels(dev)
        if args.job == "stencil":
            checked = check_stencil(kernels, rng, per_iter)
            grid = rng.random((n, n), dtype=np.float32)
            launches = sweeps(kernels, dev.to_device(grid), dev.alloc(grid.nbytes), n)
        else:
            a = rng.uniform(-1.0, 1.0, (n, n)).astype(np.float32)
            b = rng.uniform(-1.0, 1.0, (n, n)).astype(np.float32)
            c = dev.alloc(a.nbytes)
            launches = itertools.repeat(
                kernels.gemm(dev.to_device(a), dev.to_device(b), None, c, n, n, n)
            )

        def iteration() -> None:
            for _ in range(per_iter):
                next(launches)()
            dev.sync()

        iteration()  # warm-up
        if args.ready_file:
            args.ready_file.write_text(f"{time.time()}\n")
        progress = [[time.time(), 0]]
        deadline = time.perf_counter() + args.seconds
        done = 0
        iterations = 0
        while not stopping:
            iteration()
            done += per_iter
            iterations += 1
            progress.append([time.time(), done])
            if time.perf_counter() >= deadline or (args.stop_file and args.stop_file.exists()):
                break
        if args.job == "gemm":
            checked = check_gemm(dev, a, b, c)
    result = {
        "program": "batch",
        "job": args.job,
        "n": n,
        "kernels": done,
        "iterations": iterations,
        "progress": progress,
        "checked": checked,
    }
    if args.out:
        args.out.write_text(json.dumps(result) + "\n")
    seconds = progress[-1][0] - progress[0][0]
    rate = done / seconds if seconds > 0 else 0.0
    print(
        f"batch {args.job} n={n}: {done} kernels in {iterations} iterations, {seconds:.2f} s, "
        f"{rate:.1f} kernels/s, check {'OK' if checked else 'FAILED'}"
    )
    if not checked:
        print("batch: device results do not match numpy", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
