"""Opening and closing sessions, whichever transport a client came by.

The gRPC service (TCP, any host) and the socket transport (a unix socket, this host) both
turn a client's Hello into a ``Session`` here: the same checks, the same session and handle
numbering, one dispatcher, one set of live sessions.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

from fikit_wire import calls as wire
from gpu_server.auth import TokenBook
from gpu_server.backends.base import Backend
from gpu_server.ownership import DeviceOwnership
from gpu_server.session import Session, handle_counter
from gpu_server.staging import map_staging
from scheduler.dispatcher import Dispatcher
from scheduler.policy import HIGHEST_PRIORITY, LOWEST_PRIORITY

log = logging.getLogger(__name__)

SERVER_VERSION = "0.1.0"
DEFAULT_MAX_SESSIONS = 256


@dataclass(frozen=True)
class Hello:
    """What a client says when it opens a session."""

    protocol_version: int
    client_name: str
    priority: int
    staging_path: str
    token: str = ""


class HelloRefused(Exception):
    """A Hello the server cannot accept. ``kind`` is "version", "unauthenticated", "full"
    or "invalid", for the transport's status code."""

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
    """Creates sessions for all transports and knows which are live."""

    def __init__(
        self, backend: Backend, dispatcher: Dispatcher, admission: Admission | None = None
    ) -> None:
        self.backend = backend
        self.dispatcher = dispatcher
        admission = admission or Admission()
        self.tokens = admission.tokens
        self.memory_quota = admission.memory_quota
        self.max_sessions = admission.max_sessions
        self.ownership = DeviceOwnership()
        self._session_ids = itertools.count(1)
        self._handle_ids = handle_counter()
        self.active_sessions: set[int] = set()

    def open(self, hello: Hello, peer: str) -> Session:
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
        staging = map_staging(hello.staging_path) if hello.staging_path else None
        session = Session(
            next(self._session_ids),
            self.backend,
            self.dispatcher,
            self._handle_ids,
            priority,
            hello.client_name,
            None if staging is None else memoryview(staging),
            self.memory_quota if tenant is None else tenant.memory_quota,
            self.ownership,
        )
        self.active_sessions.add(session.id)
        log.info(
            "session %d opened by %s (%s)%s, priority %d",
            session.id,
            peer,
            hello.client_name,
            "" if tenant is None else f" for tenant {tenant.name}",
            priority,
        )
        return session

    def welcome(self, session: Session) -> dict[str, object]:
        """The Welcome's fields for a session just opened."""
        return {
            "protocol_version": wire.PROTOCOL_VERSION,
            "server_version": SERVER_VERSION,
            "backend": self.backend.name,
            "session_id": session.id,
            "staging": session.staging is not None,
        }

    def close(self, session: Session) -> None:
        """Free everything the session held and unmap its staging area (session thread)."""
        session.close()
        staging = session.staging
        if staging is not None:
            mapping = staging.obj
            staging.release()
            mapping.close()
        self.active_sessions.discard(session.id)
        log.info("session %d closed", session.id)
