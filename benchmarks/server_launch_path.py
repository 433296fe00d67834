"""The server's own cost per kernel launch, without transport or GPU: the launch hot path.

Usage: python benchmarks/server_launch_path.py [--backend sim|cuda] [--profile N]
Drives Session.execute directly with posted cuLaunchKernel calls (an empty 5-argument
kernel with three pointers) and prints microseconds per launch (fastest of 5 rounds) for
each policy, with profile sampling and with every launch timed. Run it before and after
touching the launch path: over the CPU test double (the default) it needs no GPU; with
``--backend cuda`` it measures the server's whole launch path on the GPU, driver calls
and completion tracking included; a second table varies how often the completion tracker
polls. ``--profile N`` then lists the N functions of the
session's thread with the most own time in one more run (fikit, sampled).
"""

import argparse
import cProfile
import io
import itertools
import pstats
import tempfile
import time

from gpu_server.backends import open_backend
from gpu_server.session import Session
from scheduler.dispatcher import Dispatcher
from scheduler.policy import POLICIES
from scheduler.profiles import ProfileStore

#: Rounds of ROUND_LAUNCHES each; the fastest round counts (the others met interference).
ROUNDS = 5
ROUND_LAUNCHES = 4_000
#: Tracker poll intervals compared (the first is the server's): how much the thread that
#: watches for completions costs the thread that launches.
POLL_INTERVALS_S = (20e-6, 200e-6, 2e-3)
PTX = b"""
.version 8.0
.target sm_90
.address_size 64
.visible .entry saxpy(.param .f32 a, .param .u64 x, .param .u64 y, .param .u64 out,
                      .param .u32 n)
{
    ret;
}
"""


def per_launch_us(
    backend_name: str,
    policy: str,
    timed_all: bool,
    profile_path: str,
    profiler: cProfile.Profile | None = None,
    poll_interval_s: float = POLL_INTERVALS_S[0],
) -> float:
    """Microseconds per posted launch through one session; ``profiler`` runs meanwhile;
    the dispatcher's tracker polls every ``poll_interval_s``."""
    backend = open_backend(backend_name)
    with ProfileStore(profile_path) as profiles:
        trace = io.StringIO() if timed_all else None
        dispatcher = Dispatcher(
            POLICIES[policy](), profiles, trace=trace, poll_interval_s=poll_interval_s
        )
        session = Session(1, backend, dispatcher, itertools.count(0x1000, 0x10), 5)
        ctx = session.execute(["cuDevicePrimaryCtxRetain", True, 0])[1]
        module = session.execute(["cuModuleLoadData", True, ctx, PTX, {}])[1]
        function = session.execute(["cuModuleGetFunction", True, module, "saxpy"])[1]
        x = session.execute(["cuMemAlloc", True, ctx, 4096])[1]
        params = bytes(8) + x.to_bytes(8, "little") * 3 + bytes(4)
        call = ["cuLaunchKernel", False, ctx, function, [4, 1, 1], [256, 1, 1], 0, 0, params]
        for _ in range(500):
            session.execute(call)
        fastest = float("inf")
        if profiler is not None:
            profiler.enable()
        for _ in range(ROUNDS):
            start = time.perf_counter()
            for _ in range(ROUND_LAUNCHES):
                session.execute(call)
            fastest = min(fastest, time.perf_counter() - start)
            assert session.execute(["cuCtxSynchronize", True, ctx]) == [0]
        if profiler is not None:
            profiler.disable()
        session.close()
        dispatcher.close()
    return fastest / ROUND_LAUNCHES * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sim", "cuda"), default="sim")
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    args = parser.parse_args()
    backend = args.backend
    with tempfile.TemporaryDirectory() as tmp:
        print(f"backend: {backend}")
        print("| policy | sampled µs/launch | every launch timed µs/launch |")
        print("|---|---:|---:|")
        for i, policy in enumerate(sorted(POLICIES)):
            sampled = per_launch_us(backend, policy, False, f"{tmp}/{i}a.sqlite3")
            timed = per_launch_us(backend, policy, True, f"{tmp}/{i}b.sqlite3")
            print(f"| {policy} | {sampled:.2f} | {timed:.2f} |")
        print("\n| tracker poll interval | fifo, sampled µs/launch |\n|---|---:|")
        for i, interval in enumerate(POLL_INTERVALS_S):
            cost = per_launch_us(backend, "fifo", False, f"{tmp}/poll{i}.sqlite3", None, interval)
            print(f"| {interval * 1e6:.0f} µs | {cost:.2f} |")
        if args.profile:
            profiler = cProfile.Profile()
            per_launch_us(backend, "fikit", False, f"{tmp}/profiled.sqlite3", profiler)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
