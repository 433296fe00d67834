"""Forwarding cost: native cuda-python vs the server over TCP (gRPC) and the same-host socket.

Usage: python benchmarks/forwarding.py [--isolation shared|process|none]
Runs driver_calls.py natively, then through `gpu-server --backend cuda` listening on a
local TCP port and on a unix socket, and measures the transport floors (transport_floors.py)
in the same run. The TCP client copies through gRPC (FIKIT_STAGING=off), as a client on
another host does. Prints a table with ratios to native and the forwarding targets for the
server's isolation mode (default: the server's default, shared), then what each isolation
mode costs over the same-host socket.
"""

import argparse
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
    tcp_copy = min(
        tcp["htod_64MiB_GBps"] / floors["grpc_stream_GBps"],
        tcp["dtoh_64MiB_GBps"] / floors["grpc_stream_down_GBps"],
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
        line("TCP 64 MiB copies / gRPC streaming the same way (>= 0.8)", tcp_copy, tcp_copy >= 0.8),
        line("same-host request / native request (<= 1.1)", request, request <= 1.1),
    ]


ISOLATION_MODES = ("none", "shared", "process")
ISOLATION_METRICS = ("launch_async_us", "launch_4arg_async_us", "launch_sync_us", "sync_call_us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--isolation", choices=ISOLATION_MODES, default="shared")
    args = parser.parse_args()
    fikit_run = console_script("fikit-run", "client_stub.run")
    native = run_benchmark("native", [])
    same_host: dict[str, Results] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for isolation in ISOLATION_MODES:
            socket_address = f"unix:{Path(tmp) / f'{isolation}.sock'}"
            options = ["--listen", socket_address, "--isolation", isolation]
            with gpu_server(options, Path(tmp) / f"{isolation}.log") as tcp_address:
                same_host[isolation] = run_benchmark(
                    f"unix, isolation {isolation}", [*fikit_run, "--server", socket_address]
                )
                if isolation == args.isolation:
                    tcp = run_benchmark(
                        "tcp", [*fikit_run, "--server", tcp_address], {"FIKIT_STAGING": "off"}
                    )
    unix = same_host[args.isolation]
    floors = measure()
    print(f"Server isolation: {args.isolation}\n")
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
    print("\nIsolation modes over the same-host socket (us):")
    print("| metric | native | " + " | ".join(ISOLATION_MODES) + " |")
    print("|---|---:|" + "---:|" * len(ISOLATION_MODES))
    for metric in ISOLATION_METRICS:
        cells = [f"{same_host[mode][metric]:.3f}" for mode in ISOLATION_MODES]
        print(f"| {metric} | {native[metric]:.3f} | " + " | ".join(cells) + " |")
    print(f"\nCommand: `{' '.join(sys.orig_argv)}`")


if __name__ == "__main__":
    main()
