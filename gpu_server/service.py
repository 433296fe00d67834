"""The gRPC transport: one bidirectional stream per session."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator

import grpc

from fikit_wire import calls as wire
from fikit_wire import session_pb2, session_pb2_grpc
from gpu_server.backends.base import Backend
from gpu_server.executor import FINISHED, SessionRunner
from gpu_server.session import Session, handle_counter
from gpu_server.staging import map_staging
from scheduler.dispatcher import Dispatcher
from scheduler.policy import HIGHEST_PRIORITY, LOWEST_PRIORITY

log = logging.getLogger(__name__)

SERVER_VERSION = "0.1.0"


class GpuSessionService(session_pb2_grpc.GpuSessionServicer):
    """Accepts client sessions and runs their calls on the backend."""

    def __init__(self, backend: Backend, dispatcher: Dispatcher) -> None:
        self.backend = backend
        self.dispatcher = dispatcher
        self._session_ids = itertools.count(1)
        self._handle_ids = handle_counter()
        self.active_sessions: set[int] = set()
        self._closing: set[asyncio.Future[None]] = set()

    async def Open(
        self,
        request_iterator: AsyncIterator[session_pb2.ClientFrame],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[session_pb2.ServerFrame]:
        """Run one session: a Hello, then call batches until the client goes away."""
        hello = await self._read_hello(request_iterator, context)
        staging = map_staging(hello.staging_path) if hello.staging_path else None
        session = Session(
            next(self._session_ids),
            self.backend,
            self.dispatcher,
            self._handle_ids,
            hello.priority,
            hello.client_name,
            None if staging is None else memoryview(staging),
        )
        runner = SessionRunner(session)
        self.active_sessions.add(session.id)
        log.info(
            "session %d opened by %s (%s), priority %d",
            session.id,
            context.peer(),
            hello.client_name,
            hello.priority,
        )
        reader = asyncio.create_task(self._read_batches(request_iterator, runner))
        try:
            yield session_pb2.ServerFrame(
                welcome=session_pb2.Welcome(
                    protocol_version=wire.PROTOCOL_VERSION,
                    server_version=SERVER_VERSION,
                    backend=self.backend.name,
                    session_id=session.id,
                    staging=staging is not None,
                )
            )
            while (frame := await runner.frames.get()) is not FINISHED:
                if isinstance(frame, Exception):
                    log.error("session %d failed", session.id, exc_info=frame)
                    await context.abort(grpc.StatusCode.INTERNAL, f"server error: {frame!r}")
                yield frame
            try:
                await reader
            except ValueError as err:
                log.warning("session %d: %s", session.id, err)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        finally:
            reader.cancel()
            # gRPC may cancel this handler more than once; the cleanup must finish anyway.
            closing = asyncio.ensure_future(self._close(runner))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
            await asyncio.shield(closing)

    async def _close(self, runner: SessionRunner) -> None:
        await runner.close()
        staging = runner.session.staging
        if staging is not None:
            mapping = staging.obj
            staging.release()
            mapping.close()
        self.active_sessions.discard(runner.session.id)
        log.info("session %d closed", runner.session.id)

    @staticmethod
    async def _read_hello(
        request_iterator: AsyncIterator[session_pb2.ClientFrame],
        context: grpc.aio.ServicerContext,
    ) -> session_pb2.Hello:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("body") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first frame must be a Hello")
        hello = first.hello
        if hello.protocol_version != wire.PROTOCOL_VERSION:
            log.warning(
                "refused client %s: protocol version %d, server speaks %d",
                context.peer(),
                hello.protocol_version,
                wire.PROTOCOL_VERSION,
            )
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"protocol version mismatch: client speaks {hello.protocol_version}, "
                f"server speaks {wire.PROTOCOL_VERSION}",
            )
        if not LOWEST_PRIORITY <= hello.priority <= HIGHEST_PRIORITY:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"priority {hello.priority} is outside {LOWEST_PRIORITY}..{HIGHEST_PRIORITY}",
            )
        return hello

    @staticmethod
    async def _read_batches(
        request_iterator: AsyncIterator[session_pb2.ClientFrame], runner: SessionRunner
    ) -> None:
        """Feed the runner until the client half-closes; a bad frame ends the session."""
        try:
            async for frame in request_iterator:
                if frame.WhichOneof("body") != "calls":
                    raise ValueError("expected a frame of calls")
                await runner.submit(wire.unpack(frame.calls))
        finally:
            runner.finish()
