"""Assembling the gRPC server: the session service, health checking, and shutdown."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fikit_wire import calls as wire
from fikit_wire import session_pb2_grpc
from gpu_server.backends.base import Backend
from gpu_server.service import GpuSessionService
from scheduler.dispatcher import Dispatcher

SERVICE_NAME = "fikit.v1.GpuSession"


@dataclass
class RunningServer:
    """A started server and the address it listens on."""

    grpc_server: grpc.aio.Server
    service: GpuSessionService
    health: health.aio.HealthServicer
    address: str

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, refuse new sessions, and give running ones ``grace`` seconds."""
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.grpc_server.stop(grace)


async def start_server(backend: Backend, dispatcher: Dispatcher, listen: str) -> RunningServer:
    """Start serving ``backend`` on ``listen`` (host:port, port 0 picking a free one, or
    unix:PATH for clients on this host), every kernel launch going through ``dispatcher``."""
    service = GpuSessionService(backend, dispatcher)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", wire.MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", wire.MAX_MESSAGE_BYTES),
        ]
    )
    session_pb2_grpc.add_GpuSessionServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as err:
        raise OSError(f"cannot listen on {listen}: {err}") from None
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if listen.startswith("unix:"):
        return RunningServer(server, service, health_servicer, listen)
    host = listen.rsplit(":", 1)[0]
    return RunningServer(server, service, health_servicer, f"{host}:{port}")
