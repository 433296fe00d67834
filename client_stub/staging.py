"""The client's staging area: a shared-memory ring that bulk copy data moves through.

A client on the server's host creates a file in ``fikit_wire.calls.STAGING_DIR``, maps it
and offers it in its Hello; once the server has mapped it too, the file is unlinked (the
mappings stay, nothing is left behind if either side dies). Copies then put their bytes in
the ring and send only offsets.

Space is handed out in ring order, each reservation tagged with the number of the call that
uses it. The server executes calls in order, so once a reply arrives for call ``n`` every
call up to ``n`` has run and its space is free again (``release_through``).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import secrets
from collections import deque

from fikit_wire import calls as wire

log = logging.getLogger("fikit.client")

#: Size of a client's staging file; pages are only backed once written.
DEFAULT_STAGING_BYTES = 64 * 1024 * 1024


class StagingArea:
    """A mapped staging file and the ring bookkeeping of its space."""

    def __init__(self, path: str, mapping: mmap.mmap) -> None:
        self.path = path
        self.size = len(mapping)
        self._mapping = mapping
        self.view = memoryview(mapping)
        self._head = 0
        #: (call number, start, end) of live reservations, oldest first.
        self._live: deque[tuple[int, int, int]] = deque()

    @classmethod
    def create(cls, size: int | None = None) -> StagingArea | None:
        """A new staging file (``DEFAULT_STAGING_BYTES`` unless ``size``), or None (logged)
        when the directory cannot hold one."""
        size = DEFAULT_STAGING_BYTES if size is None else size
        path = os.path.join(wire.STAGING_DIR, f"fikit-{secrets.token_hex(16)}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            log.debug("fikit: no staging file in %s: %s", wire.STAGING_DIR, err)
            return None
        try:
            os.ftruncate(fd, size)
            mapping = mmap.mmap(fd, size)
        except OSError as err:
            os.unlink(path)
            log.debug("fikit: no staging file in %s: %s", wire.STAGING_DIR, err)
            return None
        finally:
            os.close(fd)
        return cls(path, mapping)

    def unlink(self) -> None:
        """Remove the file's name; both mappings stay valid."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def close(self) -> None:
        """Unmap (and unlink) the staging area."""
        self.unlink()
        self.view.release()
        self._mapping.close()

    def reserve(self, sizes: list[int], first_call: int) -> list[int] | None:
        """Offsets of free space for consecutive calls numbered from ``first_call``, one size
        each; None (and nothing reserved) when they do not all fit now."""
        head, live = self._head, len(self._live)
        offsets = []
        for call, nbytes in enumerate(sizes, first_call):
            if not self._live:
                self._head = 0
            start = self._fit(nbytes)
            if start is None:
                while len(self._live) > live:
                    self._live.pop()
                self._head = head
                return None
            self._live.append((call, start, start + nbytes))
            self._head = start + nbytes
            offsets.append(start)
        return offsets

    def release_through(self, call: int) -> None:
        """Calls up to number ``call`` have run: their space is free."""
        while self._live and self._live[0][0] <= call:
            self._live.popleft()

    def _fit(self, nbytes: int) -> int | None:
        """Where ``nbytes`` fit after the newest reservation without reaching the oldest."""
        if nbytes > self.size:
            return None
        if not self._live:
            return 0
        tail = self._live[0][1]
        if self._head > tail:  # live space is [tail, head): free after it, then before it
            if self._head + nbytes <= self.size:
                return self._head
            return 0 if nbytes <= tail else None
        return self._head if self._head + nbytes <= tail else None  # wrapped: [head, tail)
