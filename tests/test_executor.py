"""The session runner's backpressure: received bytes waiting to run stay bounded."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gpu_server import executor
from gpu_server.executor import ReceiveBudget, SessionRunner
from gpu_server.ports import Emit, End, SessionPort


class SlowPort(SessionPort):
    """Runs each frame only once the test lets it."""

    def __init__(self) -> None:
        super().__init__(1, staging=False)
        self.go = threading.Event()
        self.ran: list[bytes] = []

    def start(self, emit: Emit, end: End) -> None:
        pass

    def submit(self, payloads: list[bytes]) -> None:
        self.go.wait(10)
        self.ran.extend(payloads)

    def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


async def queued_until_blocked(runner: SessionRunner, sizes: list[int]) -> int:
    """Submit batches of the given sizes; how many were accepted before one had to wait."""
    for accepted, size in enumerate(sizes):
        try:
            await asyncio.wait_for(runner.submit(bytes(size)), 0.2)
        except TimeoutError:
            return accepted
    return len(sizes)


@pytest.mark.parametrize(
    ("session_limit", "total_limit", "accepted"),
    [(1000, 10_000, 3), (10_000, 1000, 3), (100, 10_000, 1)],
    ids=["session share", "server total", "one oversized frame always fits"],
)
def test_a_session_stops_being_read_once_its_bytes_are_queued(
    monkeypatch: pytest.MonkeyPatch, session_limit: int, total_limit: int, accepted: int
) -> None:
    monkeypatch.setattr(executor, "MAX_SESSION_QUEUED_BYTES", session_limit)

    async def scenario() -> None:
        session = SlowPort()
        budget = ReceiveBudget(total_limit)
        runner = SessionRunner(session, budget)
        assert await queued_until_blocked(runner, [300] * 5) == accepted
        assert budget.in_use == 300 * accepted
        session.go.set()  # the runner drains; reading goes on
        for _ in range(5 - accepted):
            await asyncio.wait_for(runner.submit(bytes(300)), 5)
        runner.finish()
        while await runner.frames.get() is not executor.FINISHED:
            pass
        await runner.close(lambda session: None)
        assert len(session.ran) == 5  # a batch that had to wait was not taken
        assert budget.in_use == 0

    asyncio.run(scenario())
