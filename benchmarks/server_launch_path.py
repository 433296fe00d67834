"""The server's own cost per kernel launch, without transport or GPU: the launch hot path.

Usage: python benchmarks/server_launch_path.py [--backend sim|cuda] [--profile N | --layers]
Drives Session.run_frames directly with batches of frames of one posted cuLaunchKernel
call each (an empty 5-argument kernel with three pointers), as a client's burst reaches a
session, and prints microseconds per launch (fastest of 5 rounds) for each policy, with
profile sampling (and how often the completion tracker looked meanwhile) and with every
launch timed. Run it before and after
touching the launch path: over the CPU test double (the default) it needs no GPU; with
``--backend cuda`` it measures the server's whole launch path on the GPU, driver calls
and completion tracking included; a second table varies how often the completion tracker
polls. ``--profile N`` then lists the N functions of the
session's thread with the most own time in one more run (fikit, sampled). ``--layers``
(CUDA backend only) times each layer of the launch path instead: the driver call alone,
with the probe's event, the backend's launch of one and of a run, ``Session.execute`` of
one launch, ``Session.run_frames`` of a frame of one launch (what a launch followed by host
work or a synchronization costs) and of a batch of them (fifo).
"""

import argparse
import contextlib
import cProfile
import io
import itertools
import pstats
import tempfile
import time
from collections.abc import Callable, Iterator

from fikit_wire import calls as wire
from gpu_server.backends import open_backend
from gpu_server.backends.base import Backend, LaunchConfig
from gpu_server.session import Session
from scheduler.dispatcher import Dispatcher
from scheduler.policy import POLICIES
from scheduler.profiles import ProfileStore

#: Rounds of ROUND_LAUNCHES each; the fastest round counts (the others met interference).
ROUNDS = 5
ROUND_LAUNCHES = 4_000
#: Frames of one posted launch each that one ``Session.run_frames`` call runs: what a
#: socket read brings while a client's burst outruns the server.
BATCH_FRAMES = 64
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


@contextlib.contextmanager
def launching_session(
    backend: Backend, dispatcher: Dispatcher
) -> Iterator[tuple[Session, list[object]]]:
    """A session that has loaded the empty kernel, warmed up, and the posted launch call."""
    session = Session(1, backend, dispatcher, itertools.count(0x1000, 0x10), 5)
    ctx = session.execute(["cuDevicePrimaryCtxRetain", True, 0])[1]
    module = session.execute(["cuModuleLoadData", True, ctx, PTX, {}])[1]
    function = session.execute(["cuModuleGetFunction", True, module, "saxpy"])[1]
    x = session.execute(["cuMemAlloc", True, ctx, 4096])[1]
    params = bytes(8) + x.to_bytes(8, "little") * 3 + bytes(4)
    call = ["cuLaunchKernel", False, ctx, function, [4, 1, 1], [256, 1, 1], 0, 0, params]
    for _ in range(500):
        session.execute(call)
    assert session.execute(["cuCtxSynchronize", True, ctx]) == [0]
    try:
        yield session, call
    finally:
        session.close()


def fastest_us(
    launch: Callable[[], object], synchronize: Callable[[], object], launches: int = 1
) -> float:
    """Microseconds per launch over the fastest of ROUNDS rounds of ROUND_LAUNCHES, when
    each ``launch()`` makes ``launches`` of them."""
    fastest = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(ROUND_LAUNCHES // launches):
            launch()
        fastest = min(fastest, time.perf_counter() - start)
        synchronize()
    return fastest / (ROUND_LAUNCHES // launches * launches) * 1e6


def batch_of_frames(session: Session, call: list[object]) -> Callable[[], object]:
    """What runs one batch of BATCH_FRAMES frames of one posted launch each, as a burst
    of a unix-socket client reaches a session (``Session.run_frames``)."""
    payloads = [wire.pack([call])] * BATCH_FRAMES
    return lambda: session.run_frames(payloads, _unexpected_reply)


def _unexpected_reply(frame: bytes) -> None:
    raise AssertionError(f"a posted launch was answered: {wire.unpack(frame)}")


def per_launch_us(
    backend_name: str,
    policy: str,
    timed_all: bool,
    profile_path: str,
    profiler: cProfile.Profile | None = None,
    poll_interval_s: float = POLL_INTERVALS_S[0],
) -> tuple[float, float]:
    """Microseconds per posted launch through one session, and the tracker's polls per
    1000 launches meanwhile; ``profiler`` runs meanwhile; the dispatcher's tracker polls
    every ``poll_interval_s`` at least while a launch is held."""
    backend = open_backend(backend_name)
    with ProfileStore(profile_path) as profiles:
        trace = io.StringIO() if timed_all else None
        dispatcher = Dispatcher(
            POLICIES[policy](), profiles, trace=trace, poll_interval_s=poll_interval_s
        )
        with launching_session(backend, dispatcher) as (session, call):
            ctx = call[2]
            if profiler is not None:
                profiler.enable()
            polls_before = dispatcher.polls
            cost = fastest_us(
                batch_of_frames(session, call),
                lambda: session.execute(["cuCtxSynchronize", True, ctx]),
                BATCH_FRAMES,
            )
            polls = (dispatcher.polls - polls_before) / (ROUNDS * ROUND_LAUNCHES) * 1000
            if profiler is not None:
                profiler.disable()
        dispatcher.close()
    return cost, polls


def print_layers(profile_path: str) -> None:
    """Per-launch cost of each layer of the CUDA backend's launch path, same kernel."""
    from cuda.bindings import driver

    backend = open_backend("cuda")
    with ProfileStore(profile_path) as profiles:
        dispatcher = Dispatcher(POLICIES["fifo"](), profiles)
        with launching_session(backend, dispatcher) as (session, call):
            entry = session.functions[call[3]]
            function, layout, params = entry.obj, entry.layout, call[8]
            ctx = session.contexts[call[2]].backend_ctx
            stream = session._stream(0, call[2])[0].obj
            pointers = backend._tls.pointer_arrays[layout][0]
            event = driver.cuEventCreate(driver.CUevent_flags.CU_EVENT_DISABLE_TIMING)[1]
            config = LaunchConfig((4, 1, 1), (256, 1, 1), 0, stream)
            launch, record = driver.cuLaunchKernel, driver.cuEventRecord

            def bare() -> object:
                return launch(function, 4, 1, 1, 256, 1, 1, 0, stream, pointers, 0)

            one = [(function, config, params, layout)]
            lone_frame = [wire.pack([call])]  # a launch before host work or a synchronization
            run = one * BATCH_FRAMES
            layers = {
                "cuLaunchKernel, parameters by pointer": (bare, 1),
                "the same and cuEventRecord": (lambda: (bare(), record(event, stream)), 1),
                "CudaBackend.launch, probe released": (
                    lambda: backend.launch(ctx, one, False)[0].release(),
                    1,
                ),
                f"CudaBackend.launch of {BATCH_FRAMES}, probe released": (
                    lambda: backend.launch(ctx, run, False)[0].release(),
                    BATCH_FRAMES,
                ),
                "Session.execute, fifo": (lambda: session.execute(call), 1),
                "Session.run_frames, one frame, fifo": (
                    lambda: session.run_frames(lone_frame, _unexpected_reply),
                    1,
                ),
                f"Session.run_frames, {BATCH_FRAMES} frames, fifo": (
                    batch_of_frames(session, call),
                    BATCH_FRAMES,
                ),
            }
            print("| layer | µs/launch |\n|---|---:|")
            for name, (layer, launches) in layers.items():
                cost = fastest_us(layer, driver.cuCtxSynchronize, launches)
                print(f"| {name} | {cost:.2f} |")
            driver.cuEventDestroy(event)
        dispatcher.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sim", "cuda"), default="sim")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--profile", type=int, default=0, metavar="N")
    choice.add_argument("--layers", action="store_true", help="time each layer (CUDA)")
    args = parser.parse_args()
    backend = args.backend
    with tempfile.TemporaryDirectory() as tmp:
        if args.layers:
            print_layers(f"{tmp}/layers.sqlite3")
            return
        print(f"backend: {backend}")
        print(
            "| policy | sampled µs/launch | tracker polls per 1000 launches "
            "| every launch timed µs/launch |"
        )
        print("|---|---:|---:|---:|")
        for i, policy in enumerate(sorted(POLICIES)):
            sampled, polls = per_launch_us(backend, policy, False, f"{tmp}/{i}a.sqlite3")
            timed, _ = per_launch_us(backend, policy, True, f"{tmp}/{i}b.sqlite3")
            print(f"| {policy} | {sampled:.2f} | {polls:.1f} | {timed:.2f} |")
        print("\n| tracker poll interval | fifo, sampled µs/launch |\n|---|---:|")
        for i, interval in enumerate(POLL_INTERVALS_S):
            path = f"{tmp}/poll{i}.sqlite3"
            cost, _ = per_launch_us(backend, "fifo", False, path, None, interval)
            print(f"| {interval * 1e6:.0f} µs | {cost:.2f} |")
        if args.profile:
            profiler = cProfile.Profile()
            per_launch_us(backend, "fikit", False, f"{tmp}/profiled.sqlite3", profiler)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
