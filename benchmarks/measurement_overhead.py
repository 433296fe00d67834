"""What measuring kernels costs the launch path: driver_calls.py through differently set servers.

Usage: python benchmarks/measurement_overhead.py
Runs the call-cost benchmark through three fresh gpu-servers: fifo policy with the profile
store's sampling (every launch of a new kernel timed until it has 10 samples, then one in
16), fifo with every launch timed (--trace), and the fikit policy with sampling. The
difference between the first two is the cost of timing a launch (two events and their
readout); between the first and the last, the cost of the fikit policy for a task alone.
"""

import sys
import tempfile
from pathlib import Path

from server_process import console_script, gpu_server, run_benchmark

SETUPS = {
    "fifo, sampled": ["--policy", "fifo"],
    "fifo, all timed": ["--policy", "fifo", "--trace", "{tmp}/trace.jsonl"],
    "fikit, sampled": ["--policy", "fikit"],
}
METRICS = ("launch_async_us", "launch_sync_us", "sync_call_us")


def main() -> None:
    results = {}
    for label, server_args in SETUPS.items():
        with tempfile.TemporaryDirectory() as tmp:
            args = [arg.format(tmp=tmp) for arg in server_args]
            args += ["--profile-db", f"{tmp}/profiles.sqlite3"]
            with gpu_server(args, Path(tmp) / "server.log") as addr:
                prefix = [*console_script("fikit-run", "client_stub.run"), "--server", addr]
                results[label] = run_benchmark(label, prefix)
    base = results["fifo, sampled"]
    print("| server | " + " | ".join(METRICS) + " |")
    print("|---|" + "---:|" * len(METRICS))
    for label, result in results.items():
        cells = [f"{result[m]:.2f} ({result[m] / base[m]:.3f}x)" for m in METRICS]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"\nCommand: `{' '.join(sys.orig_argv)}`")


if __name__ == "__main__":
    main()
