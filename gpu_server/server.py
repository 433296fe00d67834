"""Assembling the server: transports, health checking, and shutdown.

Clients on any host come over gRPC (``host:port``); clients on this host may use the unix
socket transport (``unix:PATH``, see ``socket_transport.py``). Both open their sessions
through one ``SessionHub``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fikit_wire import calls as wire
from fikit_wire.stream_frames import SERVICE_NAME
from gpu_server.hub import Admission, SessionHub
from gpu_server.ports import Placement
from gpu_server.service import GpuSessionService, session_handler
from gpu_server.socket_transport import SocketListener

#: gRPC cancels calls this long after the grace period, once sessions were told to end.
GRPC_CANCEL_AFTER_S = 1.0


@dataclass
class RunningServer:
    """A started server and the addresses it listens on, in the order given."""

    grpc_server: grpc.aio.Server
    service: GpuSessionService
    hub: SessionHub
    health: health.aio.HealthServicer
    sockets: list[SocketListener]
    addresses: list[str]

    @property
    def address(self) -> str:
        """The first address listened on."""
        return self.addresses[0]

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, refuse new sessions, and give running ones ``grace`` seconds."""
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await asyncio.gather(
            self.grpc_server.stop(grace + GRPC_CANCEL_AFTER_S),
            self.service.end_sessions(grace),
            *(asyncio.to_thread(listener.stop, grace) for listener in self.sockets),
        )


async def start_server(
    placement: Placement,
    listen: str | Sequence[str],
    admission: Admission | None = None,
    tls: tuple[bytes, bytes] | None = None,
) -> RunningServer:
    """Serve sessions run where ``placement`` puts them on each ``listen`` address
    (host:port for gRPC, port 0 picking a free one; unix:PATH for the same-host socket);
    ``admission`` says who may open sessions; ``tls``: (certificate chain, private key) in
    PEM, to serve gRPC over TLS only."""
    hub = SessionHub(placement, admission)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", wire.MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", wire.MAX_MESSAGE_BYTES),
        ]
    )
    service = GpuSessionService(hub)
    server.add_generic_rpc_handlers((session_handler(service),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    sockets: list[SocketListener] = []
    addresses: list[str] = []
    try:
        for address in [listen] if isinstance(listen, str) else listen:
            if address.startswith("unix:"):
                sockets.append(SocketListener(hub, address.removeprefix("unix:")))
                addresses.append(address)
                continue
            try:
                if tls is None:
                    port = server.add_insecure_port(address)
                else:
                    credentials = grpc.ssl_server_credentials([(tls[1], tls[0])])
                    port = server.add_secure_port(address, credentials)
            except RuntimeError as err:
                raise OSError(f"cannot listen on {address}: {err}") from None
            addresses.append(f"{address.rsplit(':', 1)[0]}:{port}")
    except OSError:
        for listener in sockets:
            listener.stop(0)
        raise
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, service, hub, health_servicer, sockets, addresses)
