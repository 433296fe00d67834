"""Run driver_calls.py natively and through a local gpu-server; print a markdown comparison.

Usage: python benchmarks/compare_native_remote.py
Starts `gpu-server --backend cuda --listen 127.0.0.1:PORT` (or `python -m gpu_server`), runs the
benchmark under `fikit-run --server` (or `python -m client_stub.run`), then stops the server.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = Path(__file__).resolve().parent / "driver_calls.py"
RUN_TIMEOUT_S = 600
SERVER_START_S = 30
SERVER_STOP_S = 10
ENV = {key: value for key, value in os.environ.items() if key != "FIKIT_SERVER"}


def console_script(name: str, module: str) -> list[str]:
    """The installed console script, else `python -m module`."""
    script = shutil.which(name)
    return [script] if script else [sys.executable, "-m", module]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(proc: subprocess.Popen, port: int, log: Path) -> None:
    """Poll the port until the server accepts connections; exit if it dies or never listens."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(
                f"gpu-server exited with {proc.returncode}:\n{log.read_text(errors='replace')}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"gpu-server did not listen on port {port} within {SERVER_START_S} s")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then kill after SERVER_STOP_S."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=SERVER_STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
    port = free_port()
    addr = f"127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with log.open("wb") as log_file:
            server = subprocess.Popen(
                [
                    *console_script("gpu-server", "gpu_server"),
                    "--backend",
                    "cuda",
                    "--listen",
                    addr,
                ],
                cwd=REPO,
                env=ENV,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_listening(server, port, log)
            native = run_benchmark("native", [])
            remote_prefix = [*console_script("fikit-run", "client_stub.run"), "--server", addr]
            remote = run_benchmark("remote", remote_prefix)
        finally:
            stop(server)

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
