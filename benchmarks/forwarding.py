"""Forwarding cost: native cuda-python vs the server over TCP (gRPC) and the same-host socket.

Usage: python benchmarks/forwarding.py
Runs driver_calls.py natively, then through one `gpu-server --backend cuda` listening on a
local TCP port and on a unix socket, and measures the transport floors (transport_floors.py)
in the same run. Prints a table with ratios to native and the forwarding targets.
"""

import sys
import tempfile
from pathlib import Path

from server_process import console_script, gpu_server, run_benchmark
from transport_floors import measure

Results = dict[str, float]


def targets(native: Results, tcp: Results, unix: Results, floors: Results) -> list[str]:
    """The forwarding targets, each with what was measured and PASS or FAIL."""

    def line(text: str, value: float, ok: bool) -> str:
        return f"- {text}: {value:.3f} {'PASS' if ok else 'FAIL'}"

    rate = min(native["launch_async_us"] / r["launch_async_us"] for r in (tcp, unix))
    unix_floor = native["launch_sync_us"] + floors["unix_ping_pong_us"]
    same_host_sync = unix["launch_sync_us"] / unix_floor
    tcp_sync = tcp["launch_sync_us"] / floors["grpc_ping_pong_us"]
    same_host_copy = min(unix[k] / native[k] for k in ("htod_64MiB_GBps", "dtoh_64MiB_GBps"))
    tcp_copy = (
        min(tcp[k] for k in ("htod_64MiB_GBps", "dtoh_64MiB_GBps")) / floors["grpc_stream_GBps"]
    )
    request = unix["request_us"] / native["request_us"]
    return [
        line("async launch rate through the server / native (>= 0.5)", rate, rate >= 0.5),
        line(
            "same-host launch+sync / (native launch+sync + unix round trip) (<= 1.5)",
            same_host_sync,
            same_host_sync <= 1.5,
        ),
        line("TCP launch+sync / gRPC ping-pong (<= 1.2)", tcp_sync, tcp_sync <= 1.2),
        line(
            "same-host 64 MiB copies / native pageable (>= 0.5)",
            same_host_copy,
            same_host_copy >= 0.5,
        ),
        line("TCP 64 MiB copies / gRPC streaming (>= 0.8)", tcp_copy, tcp_copy >= 0.8),
        line("same-host request / native request (<= 1.1)", request, request <= 1.1),
    ]


def main() -> None:
    fikit_run = console_script("fikit-run", "client_stub.run")
    with tempfile.TemporaryDirectory() as tmp:
        socket_address = f"unix:{Path(tmp) / 'gpu.sock'}"
        log = Path(tmp) / "server.log"
        with gpu_server(["--listen", socket_address], log) as tcp_address:
            native = run_benchmark("native", [])
            tcp = run_benchmark("tcp", [*fikit_run, "--server", tcp_address])
            unix = run_benchmark("unix", [*fikit_run, "--server", socket_address])
    floors = measure()
    print("| metric | native | TCP | same host | TCP / native | same host / native |")
    print("|---|---:|---:|---:|---:|---:|")
    for metric, value in native.items():
        cells = [f"{value:.3f}", f"{tcp[metric]:.3f}", f"{unix[metric]:.3f}"]
        cells += [f"{r[metric] / value:.2f}x" for r in (tcp, unix)]
        print(f"| {metric} | " + " | ".join(cells) + " |")
    print("\nFloors in the same run (no GPU server):")
    for metric, value in floors.items():
        print(f"- {metric}: {value:.3f}")
    print("\nTargets:")
    print("\n".join(targets(native, tcp, unix, floors)))
    print(f"\nCommand: `{' '.join(sys.orig_argv)}`")


if __name__ == "__main__":
    main()
