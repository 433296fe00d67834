"""Where a session's CUDA work runs: a dedicated thread per session, off the event loop.

The service only talks to ``SessionRunner``: batches in, replies out, in order. Moving
sessions into worker processes later replaces this class, not the service.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gpu_server.session import Session


class SessionRunner:
    """Executes one session's call batches in arrival order on its own thread."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"session-{session.id}")

    def _run_batch(self, calls: list[Any]) -> list[list[Any]]:
        replies = []
        for call in calls:
            reply = self.session.execute(call)
            if reply is not None:
                replies.append(reply)
        return replies

    def submit(self, calls: list[Any]) -> asyncio.Future[list[list[Any]]]:
        """Queue a batch; the future resolves to the replies of the calls that want one."""
        return asyncio.get_running_loop().run_in_executor(self._thread, self._run_batch, calls)

    async def close(self) -> None:
        """Run the session's cleanup after all queued batches, then stop the thread."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self.session.close)
        self._thread.shutdown(wait=False)
