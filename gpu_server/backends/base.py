"""The interface every execution backend implements.

A backend executes driver operations on backend objects (contexts, modules, streams...)
that it creates and the session layer keeps in per-session tables; it knows nothing of
clients, handles or sessions. Every method raises ``CudaError`` on failure. Methods that
act inside a context take it as their first argument: a backend makes it current itself.

A stream argument is either a stream object the backend created, or one of the ints
``0`` (the context's NULL stream), ``1`` (``CU_STREAM_LEGACY``), ``2``
(``CU_STREAM_PER_THREAD``).

Calls for one session arrive from one thread, in order; calls of different sessions may
arrive from different threads at once.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from gpu_server.errors import CudaError
from scheduler.dispatcher import LaunchProbe

Context = Any
Module = Any
Library = Any
Kernel = Any
Function = Any
Stream = Any
Event = Any


@dataclass(frozen=True)
class ParamLayout:
    """Where each kernel parameter sits in the kernel's parameter buffer."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]

    def __hash__(self) -> int:
        return self._hash

    @functools.cached_property
    def _hash(self) -> int:
        """Computed once: the CUDA backend looks its parameter pointers up by layout at
        every launch."""
        return hash((self.offsets, self.sizes))

    @functools.cached_property
    def total_size(self) -> int:
        """Bytes spanned by all parameters."""
        return max((o + s for o, s in zip(self.offsets, self.sizes)), default=0)

    @functools.cached_property
    def pointer_offsets(self) -> tuple[int, ...]:
        """Offsets of the pointer-sized (8-byte) parameters."""
        return tuple(o for o, s in zip(self.offsets, self.sizes) if s == 8)


class LaunchConfig(NamedTuple):
    """Grid, block, dynamic shared memory and stream of one kernel launch (a tuple: one is
    made per launch)."""

    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem_bytes: int
    stream: Stream


#: One kernel launch: (function, configuration, parameter buffer, the layout it is packed
#: by). A plain tuple: one is made per launch on the hot path.
KernelLaunch = tuple[Function, LaunchConfig, bytes, ParamLayout]


class Backend(ABC):
    """Executes CUDA driver operations on one machine's GPUs (or a model of them)."""

    #: "cuda" or "sim"
    name: str

    # -- driver and devices ------------------------------------------------------------
    @abstractmethod
    def driver_version(self) -> int: ...

    @abstractmethod
    def device_count(self) -> int: ...

    @abstractmethod
    def device_name(self, device: int) -> str: ...

    @abstractmethod
    def device_attribute(self, attribute: int, device: int) -> int: ...

    @abstractmethod
    def device_total_mem(self, device: int) -> int: ...

    @abstractmethod
    def device_uuid(self, device: int) -> bytes: ...

    # -- contexts ----------------------------------------------------------------------
    @abstractmethod
    def primary_context(self, device: int) -> Context:
        """The device's primary context, retained once for the server's lifetime."""

    @abstractmethod
    def context_create(self, flags: int, device: int) -> Context: ...

    @abstractmethod
    def context_destroy(self, ctx: Context) -> None: ...

    @abstractmethod
    def stream_priority_range(self, ctx: Context) -> tuple[int, int]:
        """(least, greatest) stream priority."""

    # -- memory ------------------------------------------------------------------------
    @abstractmethod
    def mem_get_info(self, ctx: Context) -> tuple[int, int]:
        """(free, total) device memory in bytes."""

    @abstractmethod
    def mem_alloc(self, ctx: Context, size: int) -> int: ...

    @abstractmethod
    def mem_free(self, ctx: Context, ptr: int) -> None: ...

    @abstractmethod
    def host_register(self, memory: memoryview) -> object | None:
        """Page-lock writable host memory (a client's staging area) for every context, so
        that copies from and to it run at DMA speed; a handle for ``host_unregister``, or
        None when it cannot be done (copies then stay pageable). While registered, an
        asynchronous copy from it may still read it after returning."""

    @abstractmethod
    def host_unregister(self, handle: object) -> None:
        """Undo ``host_register`` before the memory goes away."""

    @abstractmethod
    def memcpy_htod(
        self, ctx: Context, dst: int, data: bytes | memoryview, stream: Stream | None
    ) -> None:
        """Copy host bytes to the device; ``stream`` None means a synchronous copy."""

    @abstractmethod
    def memcpy_dtoh(self, ctx: Context, src: int, out: memoryview, stream: Stream | None) -> None:
        """Copy ``len(out)`` device bytes into ``out``; returns once the copy has completed."""

    @abstractmethod
    def memcpy_dtod(
        self, ctx: Context, dst: int, src: int, size: int, stream: Stream | None
    ) -> None: ...

    @abstractmethod
    def memset(
        self, ctx: Context, dst: int, value: int, width: int, count: int, stream: Stream | None
    ) -> None:
        """Set ``count`` elements of ``width`` bytes (1, 2 or 4) to ``value``."""

    # -- modules, libraries, functions -------------------------------------------------
    @abstractmethod
    def module_load(self, ctx: Context, image: bytes, jit_options: dict[int, int]) -> Module: ...

    @abstractmethod
    def module_unload(self, ctx: Context, module: Module) -> None: ...

    @abstractmethod
    def module_function(self, ctx: Context, module: Module, name: str) -> Function: ...

    @abstractmethod
    def module_global(self, ctx: Context, module: Module, name: str) -> tuple[int, int]:
        """(device pointer, size) of a module-scope ``__device__`` variable."""

    @abstractmethod
    def library_load(self, image: bytes, jit_options: dict[int, int]) -> Library: ...

    @abstractmethod
    def library_unload(self, library: Library) -> None: ...

    @abstractmethod
    def library_kernel(self, library: Library, name: str) -> Kernel: ...

    @abstractmethod
    def kernel_function(self, ctx: Context, kernel: Kernel) -> Function: ...

    @abstractmethod
    def function_name(self, function: Function | Kernel) -> str: ...

    @abstractmethod
    def function_param_layout(self, function: Function | Kernel) -> ParamLayout: ...

    @abstractmethod
    def function_attribute(self, ctx: Context, function: Function, attribute: int) -> int: ...

    @abstractmethod
    def function_set_attribute(
        self, ctx: Context, function: Function, attribute: int, value: int
    ) -> None: ...

    @abstractmethod
    def occupancy_max_active_blocks(
        self, ctx: Context, function: Function, block_size: int, dynamic_smem: int
    ) -> int: ...

    @abstractmethod
    def launch(
        self,
        ctx: Context,
        launches: Sequence[KernelLaunch],
        timed: bool,
        after: LaunchProbe | None = None,
    ) -> tuple[LaunchProbe, CudaError | None]:
        """Put ``launches``, all on one stream, on it in order, and one completion probe
        after them: a run of launches costs one probe, not one each. With ``after`` (a
        probe this backend gave, of any context), the first starts only once that launch
        has finished. A timed probe gives the GPU start and end times of the run.

        A launch that fails does not keep the later ones from going out (as with launches
        posted to CUDA one by one): returns the probe and the first failure, or None.
        Raises that failure when no launch went out.
        """

    # -- streams and events ------------------------------------------------------------
    @abstractmethod
    def stream_create(self, ctx: Context, flags: int, priority: int) -> Stream: ...

    @abstractmethod
    def stream_destroy(self, ctx: Context, stream: Stream) -> None: ...

    @abstractmethod
    def stream_synchronize(self, ctx: Context, stream: Stream) -> None: ...

    @abstractmethod
    def stream_query(self, ctx: Context, stream: Stream) -> bool:
        """True when all work submitted to ``stream`` has completed."""

    @abstractmethod
    def stream_wait_event(self, ctx: Context, stream: Stream, event: Event, flags: int) -> None: ...

    @abstractmethod
    def stream_priority(self, ctx: Context, stream: Stream) -> int: ...

    @abstractmethod
    def event_create(self, ctx: Context, flags: int) -> Event: ...

    @abstractmethod
    def event_record(self, ctx: Context, event: Event, stream: Stream) -> None: ...

    @abstractmethod
    def event_synchronize(self, ctx: Context, event: Event) -> None: ...

    @abstractmethod
    def event_query(self, ctx: Context, event: Event) -> bool:
        """True when the work captured by the event's last record has completed."""

    @abstractmethod
    def event_elapsed_ms(self, ctx: Context, start: Event, end: Event) -> float: ...

    @abstractmethod
    def event_destroy(self, ctx: Context, event: Event) -> None: ...
