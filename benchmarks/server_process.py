"""Start, wait for and stop a local gpu-server for the benchmarks; run driver_calls.py."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVER_START_S = 30
SERVER_STOP_S = 10
ENV = {key: value for key, value in os.environ.items() if key != "FIKIT_SERVER"}
DRIVER_CALLS = Path(__file__).resolve().parent / "driver_calls.py"
RUN_TIMEOUT_S = 600


def console_script(name: str, module: str) -> list[str]:
    """The installed console script, else `python -m module`."""
    script = shutil.which(name)
    return [script] if script else [sys.executable, "-m", module]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
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


@contextmanager
def gpu_server(args: Sequence[str], log: Path) -> Iterator[str]:
    """Run `gpu-server --backend cuda` plus `args` on a free local port, output to `log`.

    Yields the address (host:port) once it listens; on exit sends SIGTERM and waits for the
    process to end, so files it writes on shutdown (a trace) are complete afterwards.
    """
    port = free_port()
    addr = f"127.0.0.1:{port}"
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            [
                *console_script("gpu-server", "gpu_server"),
                "--backend",
                "cuda",
                "--listen",
                addr,
                *args,
            ],
            cwd=REPO,
            env=ENV,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_listening(server, port, log)
        yield addr
    finally:
        stop(server)


def run_benchmark(
    label: str, prefix: list[str], env: dict[str, str] | None = None
) -> dict[str, float]:
    """Run driver_calls.py behind `prefix` (nothing: natively; fikit-run ...: remotely),
    with `env` added to the environment; return the JSON object on its last stdout line."""
    result = subprocess.run(
        [*prefix, sys.executable, str(DRIVER_CALLS)],
        cwd=REPO,
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    if result.returncode != 0:
        sys.exit(f"{label} run failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    print(f"{label} run:\n{result.stdout}", file=sys.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])
