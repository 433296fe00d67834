"""Run driver_calls.py natively and through a local gpu-server; print a markdown comparison.

Usage: python benchmarks/compare_native_remote.py
Starts `gpu-server --backend cuda --listen 127.0.0.1:PORT` (or `python -m gpu_server`), runs the
benchmark under `fikit-run --server` (or `python -m client_stub.run`), then stops the server.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from server_process import ENV, REPO, console_script, gpu_server

BENCHMARK = Path(__file__).resolve().parent / "driver_calls.py"
RUN_TIMEOUT_S = 600


def run_benchmark(label: str, prefix: list[str]) -> dict[str, float]:
    """Run driver_calls.py behind `prefix`; return the JSON object on its last stdout line."""
    result = subprocess.run(
        [*prefix, sys.executable, str(BENCHMARK)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    if result.returncode != 0:
        sys.exit(f"{label} run failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    print(f"{label} run:\n{result.stdout}", file=sys.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def slowdown(metric: str, native: float, remote: float) -> float:
    """How many times worse remote is: remote/native for times (_us), native/remote for GB/s."""
    return remote / native if metric.endswith("_us") else native / remote


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, gpu_server([], Path(tmp) / "server.log") as addr:
        native = run_benchmark("native", [])
        remote_prefix = [*console_script("fikit-run", "client_stub.run"), "--server", addr]
        remote = run_benchmark("remote", remote_prefix)

    print("Slowdown = how many times worse remote is than native (>1: remote slower).")
    print("Latencies (_us): remote/native. Bandwidths (_GBps): native/remote.\n")
    print("| metric | native | remote | slowdown (remote vs native) |")
    print("|---|---:|---:|---:|")
    for metric, native_value in native.items():
        remote_value = remote[metric]
        factor = slowdown(metric, native_value, remote_value)
        print(f"| {metric} | {native_value:.3f} | {remote_value:.3f} | {factor:.2f}x |")


if __name__ == "__main__":
    main()
