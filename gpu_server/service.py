"""The gRPC transport: one bidirectional stream per session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from fikit_wire import session_pb2, session_pb2_grpc
from fikit_wire.stream_frames import SERVICE_NAME, SerializedBatch, frame_parser, serialize_frame
from gpu_server.executor import FINISHED, ReceiveBudget, Runner, SessionLost, open_runner
from gpu_server.hub import SHUTTING_DOWN, Hello, HelloRefused, SessionHub

log = logging.getLogger(__name__)

#: A frame from the client as the service reads it: a batch of calls arrives as its payload.
ClientFrame = session_pb2.ClientFrame | memoryview

#: The status a refused Hello ends its stream with, by ``HelloRefused.kind``.
_STATUS = {
    "version": grpc.StatusCode.FAILED_PRECONDITION,
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "full": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
}


class GpuSessionService(session_pb2_grpc.GpuSessionServicer):
    """Accepts client sessions over gRPC and runs their calls on the backend."""

    def __init__(self, hub: SessionHub) -> None:
        self.hub = hub
        self.budget = ReceiveBudget()
        self._closing: set[asyncio.Future[None]] = set()
        self._runners: set[Runner] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    async def end_sessions(self, grace: float) -> None:
        """Give open sessions ``grace`` seconds to end, then end them, saying why."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        for runner in self._runners:
            runner.frames.put_nowait(SessionLost(SHUTTING_DOWN))

    async def Open(
        self,
        request_iterator: AsyncIterator[ClientFrame],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[session_pb2.ServerFrame | bytes | SerializedBatch]:
        """Run one session: a Hello, then call batches until the client goes away. Reply
        batches go out as their payloads (``fikit_wire.stream_frames``)."""
        hello = await self._read_hello(request_iterator, context)
        try:
            port = await asyncio.to_thread(self.hub.open, hello, context.peer())
        except HelloRefused as refused:
            await context.abort(_STATUS[refused.kind], str(refused))
        runner = open_runner(port, self.budget)
        self._runners.add(runner)
        self._idle.clear()
        reader = asyncio.create_task(self._read_batches(request_iterator, runner))
        try:
            yield session_pb2.ServerFrame(welcome=session_pb2.Welcome(**self.hub.welcome(port)))
            while (frame := await runner.frames.get()) is not FINISHED:
                if isinstance(frame, SessionLost):
                    log.warning("session %d ended: %s", port.id, frame)
                    await context.abort(grpc.StatusCode.UNAVAILABLE, str(frame))
                if isinstance(frame, ValueError):
                    log.warning("session %d: %s", port.id, frame)
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(frame))
                if isinstance(frame, Exception):
                    log.error("session %d failed", port.id, exc_info=frame)
                    await context.abort(grpc.StatusCode.INTERNAL, f"server error: {frame!r}")
                yield frame
            try:
                await reader
            except ValueError as err:
                log.warning("session %d: %s", port.id, err)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        finally:
            self._runners.discard(runner)
            if not self._runners:
                self._idle.set()
            reader.cancel()
            # gRPC may cancel this handler more than once; the cleanup must finish anyway.
            closing = asyncio.ensure_future(runner.close(self.hub.close))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
            await asyncio.shield(closing)

    @staticmethod
    async def _read_hello(
        request_iterator: AsyncIterator[ClientFrame],
        context: grpc.aio.ServicerContext,
    ) -> Hello:
        first = await anext(aiter(request_iterator), None)
        if not isinstance(first, session_pb2.ClientFrame) or first.WhichOneof("body") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first frame must be a Hello")
        hello = first.hello
        metadata = dict(context.invocation_metadata() or ())
        token = str(metadata.get("authorization", "")).removeprefix("Bearer ")
        return Hello(
            hello.protocol_version, hello.client_name, hello.priority, hello.staging_path, token
        )

    @staticmethod
    async def _read_batches(request_iterator: AsyncIterator[ClientFrame], runner: Runner) -> None:
        """Feed the runner until the client half-closes; a bad frame ends the session."""
        try:
            async for frame in request_iterator:
                if isinstance(frame, memoryview):
                    await runner.submit(frame)
                elif frame.WhichOneof("body") == "calls":
                    await runner.submit(frame.calls)
                else:
                    raise ValueError("expected a frame of calls")
        finally:
            runner.finish()


def session_handler(service: GpuSessionService) -> grpc.GenericRpcHandler:
    """The session method for a gRPC server; batch frames travel as their payloads."""
    method = grpc.stream_stream_rpc_method_handler(
        service.Open,
        request_deserializer=frame_parser(session_pb2.ClientFrame),
        response_serializer=serialize_frame,
    )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, {"Open": method})
