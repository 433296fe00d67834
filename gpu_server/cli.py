"""``gpu-server``: serve the GPU of this machine to FIKIT clients."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import gc
import logging
import math
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import uvloop

from gpu_server.auth import TokenBook, parse_bytes
from gpu_server.backends import BackendUnavailable, open_backend
from gpu_server.hub import DEFAULT_MAX_SESSIONS, Admission
from gpu_server.ports import RECEIVE_SPIN_S, InProcess, Placement, PlacementFailed
from gpu_server.server import start_server
from gpu_server.workers import SharedWorker, WorkerPerSession, WorkerSettings
from scheduler.dispatcher import Dispatcher
from scheduler.policy import POLICIES, FifoPolicy, FikitPolicy, Policy, PriorityPolicy
from scheduler.profiles import ProfileStore, default_profile_path

log = logging.getLogger("gpu_server")

#: Longest one server thread keeps the GIL while another waits for it, in seconds: the
#: event loop, the session threads and the completion tracker take turns at this grain
#: (Python's default, 5 ms, would let one tenant's busy thread stall another's calls).
GIL_SWITCH_INTERVAL_S = 0.0002
#: Tracked allocations between collections of the youngest generation (Python's default
#: is 700; a launch makes about a hundred): every collection holds the GIL.
GC_YOUNG_THRESHOLD = 20_000
DEFAULT_LISTEN = "127.0.0.1:50051"
ISOLATION_MODES = ("shared", "process", "none")
#: Seconds past ``--grace`` after which a shutdown stops GPU work still holding sessions.
CUT_OFF_AFTER_S = 1.0


def tokens_file(path: str) -> TokenBook:
    """The ``--tokens`` argument: the tokens file read, or a usage error naming what is wrong."""
    try:
        return TokenBook.load(Path(path))
    except (OSError, ValueError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def non_negative(text: str) -> float:
    """A finite number of microseconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number 0 or more")
    return value


def memory_size(text: str) -> int:
    """The ``--memory-quota`` argument."""
    try:
        return parse_bytes(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gpu-server", description="Serve this machine's GPU to FIKIT clients over gRPC."
    )
    parser.add_argument(
        "--listen",
        action="append",
        help="an address to listen on, repeatable: host:port for gRPC from any host (default "
        "127.0.0.1:50051; port 0 picks one), or unix:PATH for the faster same-host socket "
        "(containers mount its directory)",
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "cuda", "sim"),
        default="auto",
        help="cuda: the real GPU; sim: the CPU test double (kernels do not compute); "
        "auto: cuda when a driver and GPU are present, otherwise refuse",
    )
    parser.add_argument(
        "--isolation",
        choices=ISOLATION_MODES,
        default="shared",
        help="where CUDA runs: shared (default): one GPU worker process for all sessions, "
        "replaced after a kernel fault (the faulting session gets its error, the others are "
        "told their GPU state was lost); process: a worker per session, so a fault reaches "
        "only its session; none: in the server process (fastest; a fault ends every session "
        "until the server restarts)",
    )
    parser.add_argument(
        "--policy",
        choices=sorted(POLICIES),
        default=FikitPolicy.name,
        help="fifo: launches issued as they arrive (plain GPU sharing); priority: a launch "
        "waits while a higher-priority task is active; fikit (default): priority, plus "
        "lower-priority kernels fitted into the idle gaps of the highest active task",
    )
    parser.add_argument(
        "--profile-db",
        type=Path,
        default=None,
        help=f"kernel profile database (default $FIKIT_PROFILE_DB or {default_profile_path()})",
    )
    parser.add_argument(
        "--trace",
        type=Path,
        default=None,
        help="write one JSON line per completed kernel (task, kernel, GPU start and end in "
        "us); every launch is then timed",
    )
    parser.add_argument(
        "--max-lp-inflight-us",
        type=non_negative,
        default=500.0,
        help="fikit: most predicted lower-priority kernel time in flight during a gap (500; "
        "the server gives higher tasks higher CUDA stream priorities, so work in flight "
        "delays them only until running blocks finish, not by its whole length)",
    )
    parser.add_argument(
        "--arm-behind",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="fikit, isolation shared or none: issue lower-priority kernels that fit a "
        "coming gap before it begins, to start on the GPU as the higher task's last kernel "
        "ends (default off: on the H200 it slowed the higher task's kernels)",
    )
    parser.add_argument(
        "--min-gap-us",
        type=non_negative,
        default=0.0,
        help="fikit: fill only idle gaps of the higher task predicted at least this long "
        "(0: every gap)",
    )
    parser.add_argument(
        "--quiet-after-us",
        type=non_negative,
        default=2000.0,
        help="priority, fikit: a task idle this long stops holding back lower ones (fikit: "
        "and 1.25x longer than its recent gaps of the same kind) (2000)",
    )
    parser.add_argument(
        "--tokens",
        type=tokens_file,
        help="accept only clients presenting a token from this file (lines: token tenant "
        "highest-priority device-memory; see gpu_server/auth.py)",
    )
    parser.add_argument(
        "--memory-quota",
        type=memory_size,
        help="device memory a session may allocate unless its tenant says otherwise "
        "(bytes, or with K, M, G, T; default: no limit)",
    )
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=DEFAULT_MAX_SESSIONS,
        help=f"sessions open at once; more are refused (default {DEFAULT_MAX_SESSIONS})",
    )
    parser.add_argument(
        "--tls-cert", type=Path, help="PEM certificate chain: serve gRPC over TLS only"
    )
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument(
        "--receive-spin-us",
        type=non_negative,
        default=RECEIVE_SPIN_S * 1e6,
        help="how long a session's thread polls for its client's next calls before it "
        f"blocks ({RECEIVE_SPIN_S * 1e6:.0f}; 0: at once): polling costs a CPU core while the "
        "client keeps calling, waking a blocked thread makes the next call slower; a GPU "
        "process with more sessions than half the cores does not poll",
    )
    parser.add_argument("--grace", type=float, default=5.0, help="seconds to drain on SIGTERM")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    return parser.parse_args(argv)


def make_policy(args: argparse.Namespace, in_one_process: bool = True) -> Policy:
    """The scheduling policy the arguments name, for a dispatcher whose sessions issue
    their launches in its own process (``in_one_process``: launches of different tasks can
    be ordered on the GPU, see ``FikitPolicy``'s ``arm_behind``) or in GPU workers."""
    if args.policy == FikitPolicy.name:
        return FikitPolicy(
            max_lp_inflight_us=args.max_lp_inflight_us,
            quiet_after_us=args.quiet_after_us,
            arm_behind=in_one_process and args.arm_behind,
            min_gap_us=args.min_gap_us,
        )
    if args.policy == PriorityPolicy.name:
        return PriorityPolicy(quiet_after_us=args.quiet_after_us)
    return FifoPolicy(quiet_after_us=args.quiet_after_us)


@contextlib.contextmanager
def open_dispatcher(args: argparse.Namespace, in_one_process: bool) -> Iterator[Dispatcher]:
    """The dispatcher with its profile store and trace file; all closed on exit.
    ``in_one_process``: as for ``make_policy``."""
    with contextlib.ExitStack() as stack:
        try:
            profiles = stack.enter_context(
                ProfileStore(None if args.profile_db is None else Path(args.profile_db))
            )
        except (sqlite3.Error, ValueError) as err:
            raise OSError(f"cannot open the profile database: {err}") from None
        trace = stack.enter_context(Path(args.trace).open("a")) if args.trace else None
        dispatcher = Dispatcher(make_policy(args, in_one_process), profiles, trace=trace)
        stack.callback(dispatcher.close)
        log.info("policy %s, kernel profiles in %s", args.policy, profiles.path)
        yield dispatcher


async def flush_profiles(dispatcher: Dispatcher, every_s: float = 30.0) -> None:
    """Write changed kernel profiles to disk now and then, so a crash loses little."""
    while True:
        await asyncio.sleep(every_s)
        if dispatcher.profiles is not None:
            await asyncio.to_thread(dispatcher.profiles.flush)


def worker_settings(args: argparse.Namespace) -> WorkerSettings:
    """What GPU worker processes are started with."""
    scheduling = {
        "policy": args.policy,
        "profile_db": None if args.profile_db is None else str(args.profile_db),
        "trace": None if args.trace is None else str(args.trace),
        "max_lp_inflight_us": args.max_lp_inflight_us,
        "arm_behind": args.arm_behind,
        "min_gap_us": args.min_gap_us,
        "quiet_after_us": args.quiet_after_us,
    }
    return WorkerSettings(
        args.backend,
        args.log_level.upper(),
        receive_spin_s=args.receive_spin_us * 1e-6,
        scheduling=scheduling,
    )


@contextlib.asynccontextmanager
async def open_placement(
    args: argparse.Namespace,
) -> AsyncIterator[tuple[Placement, Callable[[], None]]]:
    """Where sessions run, as ``--isolation`` says, with what it needs, and what ends all
    GPU work at once (held launches fail, workers stop); all closed on exit."""
    with contextlib.ExitStack() as stack:
        if args.isolation == "shared":
            placement: Placement = await asyncio.to_thread(SharedWorker, worker_settings(args))
            cut_off = placement.close
        else:
            in_workers = args.isolation == "process"
            dispatcher = stack.enter_context(open_dispatcher(args, not in_workers))
            if in_workers:
                placement = await asyncio.to_thread(
                    WorkerPerSession, worker_settings(args), dispatcher
                )
            else:
                placement = InProcess(
                    open_backend(args.backend),
                    dispatcher,
                    receive_spin_s=args.receive_spin_us * 1e-6,
                )
            stack.enter_context(_flushing(dispatcher))
            cut_off = dispatcher.close
        stack.callback(placement.close)
        yield placement, cut_off


@contextlib.contextmanager
def _flushing(dispatcher: Dispatcher) -> Iterator[None]:
    flusher = asyncio.get_running_loop().create_task(flush_profiles(dispatcher))
    try:
        yield
    finally:
        flusher.cancel()
        log.info(
            "%d kernel launches, %d of them timed", dispatcher.launches, dispatcher.timed_launches
        )


def settle_interpreter() -> None:
    """Once a server process has started: the objects it holds now (modules, the CUDA
    bindings, gRPC) are left out of every later collection (``gc.freeze``), and young
    objects are collected less often. A full collection of a worker otherwise walks tens of
    thousands of objects with the GIL held (17 ms on the dev box), stalling every tenant's
    calls."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


async def serve(args: argparse.Namespace) -> None:
    """Run the server until SIGINT or SIGTERM."""
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise OSError("--tls-cert and --tls-key go together")
        tls = (args.tls_cert.read_bytes(), args.tls_key.read_bytes())
    if args.trace:
        args.trace.write_text("")
    async with open_placement(args) as (placement, cut_off):
        server = await start_server(
            placement,
            args.listen or [DEFAULT_LISTEN],
            Admission(args.tokens, args.memory_quota, args.max_sessions),
            tls,
        )
        backend, device = placement.describe()
        settle_interpreter()
        log.info(
            "listening on %s (backend %s: %s; isolation %s)",
            ", ".join(server.addresses),
            backend,
            device,
            args.isolation,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: draining sessions for up to %.1f s", args.grace)
        stopping = asyncio.ensure_future(server.stop(args.grace))
        await asyncio.wait([stopping], timeout=args.grace + CUT_OFF_AFTER_S)
        if not stopping.done():
            log.warning("sessions still wait for the GPU after the grace period: ending them")
            await asyncio.to_thread(cut_off)
        await stopping


def main(argv: list[str] | None = None) -> None:
    """Console entry point of ``gpu-server``; SIGUSR1 prints every thread's stack."""
    args = parse_args(argv)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        uvloop.run(serve(args))
    except (BackendUnavailable, PlacementFailed, OSError) as err:
        raise SystemExit(f"gpu-server: {err}") from None
