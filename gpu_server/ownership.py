"""Which session owns each piece of device memory, server-wide.

Sessions register their allocations and module globals here; a kernel launch is refused
when one of its pointer-sized arguments points into memory another session owns. This
stops a client from handing another tenant's buffer to a kernel. It cannot stop a kernel
that computes an address, or reads one from memory, at run time: only separate GPU
processes per tenant (process isolation) contain that.
"""

from __future__ import annotations

import bisect
import threading


class DeviceOwnership:
    """Owned ranges [base, base + size) of device memory, by session; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bases: list[int] = []
        self._ranges: dict[int, tuple[int, int]] = {}
        #: Changes whenever a range is added or removed: a check made at the same
        #: generation still holds.
        self.generation = 0

    def add(self, base: int, size: int, session: int) -> None:
        """Record that ``session`` owns [base, base + size)."""
        with self._lock:
            if base not in self._ranges:
                bisect.insort(self._bases, base)
            self._ranges[base] = (base + size, session)
            self.generation += 1

    def remove(self, base: int) -> None:
        """Forget the range at ``base``."""
        with self._lock:
            if self._ranges.pop(base, None) is not None:
                del self._bases[bisect.bisect_left(self._bases, base)]
                self.generation += 1

    def owner(self, address: int) -> int | None:
        """The session owning ``address``, or None."""
        with self._lock:  # another session's alloc or free shifts the list under a search
            i = bisect.bisect_right(self._bases, address) - 1
            if i < 0:
                return None
            end, session = self._ranges[self._bases[i]]
        return session if address < end else None
