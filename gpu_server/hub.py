"""Opening and closing sessions, whichever transport a client came by.

The gRPC service (TCP, any host) and the socket transport (a unix socket, this host) both
turn a client's Hello into a session here: the same checks, the same session numbering,
one placement deciding where sessions run, one set of live sessions.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

from fikit_wire import calls as wire
from gpu_server.auth import TokenBook
from gpu_server.ports import Placement, PlacementFailed, SessionPort, SessionSpec
from scheduler.policy import HIGHEST_PRIORITY, LOWEST_PRIORITY

log = logging.getLogger(__name__)

SERVER_VERSION = "0.1.0"
DEFAULT_MAX_SESSIONS = 256
#: What a client still connected when the server stops is told.
SHUTTING_DOWN = "the GPU server is shutting down"


@dataclass(frozen=True)
class Hello:
    """What a client says when it opens a session."""

    protocol_version: int
    client_name: str
    priority: int
    staging_path: str
    token: str = ""
    #: Whether the client wants work-done notices (same-host sockets).
    notices: bool = False


class HelloRefused(Exception):
    """A Hello the server cannot accept. ``kind`` is "version", "unauthenticated", "full",
    "unavailable" or "invalid", for the transport's status code."""

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Admission:
    """Who may open sessions and what each may use."""

    #: The tokens accepted; None: anyone may connect.
    tokens: TokenBook | None = None
    #: Device memory a session may allocate when its tenant sets none; None: no limit.
    memory_quota: int | None = None
    #: Sessions open at once; more are refused until one ends.
    max_sessions: int = DEFAULT_MAX_SESSIONS


class SessionHub:
    """Admits sessions for all transports, places them, and knows which are live."""

    def __init__(self, placement: Placement, admission: Admission | None = None) -> None:
        self.placement = placement
        admission = admission or Admission()
        self.tokens = admission.tokens
        self.memory_quota = admission.memory_quota
        self.max_sessions = admission.max_sessions
        self._session_ids = itertools.count(1)
        self.active_sessions: set[int] = set()

    def open(self, hello: Hello, peer: str) -> SessionPort:
        """A new session for a checked Hello; raises ``HelloRefused``."""
        if hello.protocol_version != wire.PROTOCOL_VERSION:
            log.warning(
                "refused client %s: protocol version %d, server speaks %d",
                peer,
                hello.protocol_version,
                wire.PROTOCOL_VERSION,
            )
            raise HelloRefused(
                f"protocol version mismatch: client speaks {hello.protocol_version}, "
                f"server speaks {wire.PROTOCOL_VERSION}",
                "version",
            )
        tenant = None
        if self.tokens is not None:
            tenant = self.tokens.tenant(hello.token)
            if tenant is None:
                log.warning("refused client %s: no valid token", peer)
                raise HelloRefused(
                    "unauthenticated: this server needs a valid token", "unauthenticated"
                )
        if len(self.active_sessions) >= self.max_sessions:
            log.warning("refused client %s: %d sessions open", peer, self.max_sessions)
            raise HelloRefused(f"the server is full ({self.max_sessions} sessions)", "full")
        if not LOWEST_PRIORITY <= hello.priority <= HIGHEST_PRIORITY:
            raise HelloRefused(
                f"priority {hello.priority} is outside {LOWEST_PRIORITY}..{HIGHEST_PRIORITY}"
            )
        priority = hello.priority
        if tenant is not None and priority > tenant.max_priority:
            log.info(
                "tenant %s asked for priority %d: lowered to %d",
                tenant.name,
                priority,
                tenant.max_priority,
            )
            priority = tenant.max_priority
        spec = SessionSpec(
            next(self._session_ids),
            priority,
            hello.client_name,
            hello.staging_path,
            self.memory_quota if tenant is None else tenant.memory_quota,
            hello.notices,
        )
        try:
            port = self.placement.open(spec)
        except PlacementFailed as err:
            log.error("refused client %s: %s", peer, err)
            raise HelloRefused(f"no GPU available: {err}", "unavailable") from None
        self.active_sessions.add(port.id)
        log.info(
            "session %d opened by %s (%s)%s, priority %d",
            port.id,
            peer,
            hello.client_name,
            "" if tenant is None else f" for tenant {tenant.name}",
            priority,
        )
        return port

    def welcome(self, port: SessionPort) -> dict[str, object]:
        """The Welcome's fields for a session just opened."""
        return {
            "protocol_version": wire.PROTOCOL_VERSION,
            "server_version": SERVER_VERSION,
            "backend": self.placement.describe()[0],
            "session_id": port.id,
            "staging": port.staging,
        }

    def close(self, port: SessionPort) -> None:
        """End a session: everything it held is freed (the session's thread)."""
        port.close()
        self.active_sessions.discard(port.id)
        log.info("session %d closed", port.id)
