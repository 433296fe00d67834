"""``gpu-server``: serve the GPU of this machine to FIKIT clients."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import signal

import uvloop

from gpu_server.backends import BackendUnavailable, open_backend
from gpu_server.server import start_server
from scheduler import FifoScheduler

log = logging.getLogger("gpu_server")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gpu-server", description="Serve this machine's GPU to FIKIT clients over gRPC."
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:50051",
        help="address to listen on, host:port (default 127.0.0.1:50051; port 0 picks one)",
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "cuda", "sim"),
        default="auto",
        help="cuda: the real GPU; sim: the CPU test double (kernels do not compute); "
        "auto: cuda when a driver and GPU are present, otherwise refuse",
    )
    parser.add_argument("--grace", type=float, default=5.0, help="seconds to drain on SIGTERM")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    """Run the server until SIGINT or SIGTERM."""
    backend = open_backend(args.backend)
    server = await start_server(backend, FifoScheduler(), args.listen)
    device = backend.device_name(0) if backend.device_count() else "no device"
    log.info("listening on %s (backend %s: %s)", server.address, backend.name, device)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining sessions for up to %.1f s", args.grace)
    await server.stop(args.grace)


def main(argv: list[str] | None = None) -> None:
    """Console entry point of ``gpu-server``; SIGUSR1 prints every thread's stack."""
    args = parse_args(argv)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        uvloop.run(serve(args))
    except (BackendUnavailable, OSError) as err:
        raise SystemExit(f"gpu-server: {err}") from None
