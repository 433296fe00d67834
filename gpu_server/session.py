"""Session state: one client's contexts, modules, streams, events and allocations.

A session turns the calls of one client stream into backend operations. Every handle a
client sends is looked up in this session's own tables, so a handle that belongs to
another session, was freed, or was made up is refused with the error the driver gives
for an invalid handle. Device pointers given to copies and memsets must lie inside one of
the session's own allocations or module globals. Closing a session frees everything it
still holds.

Calls are dispatched by name through ``HANDLERS``. Each handler takes the call's wire
arguments and returns the reply values (see ``fikit_wire.calls``). Calls sent without
asking for a reply keep their first error, which the next synchronizing call returns.

Streams. Sessions share the device's primary context, whose legacy NULL stream would order
every tenant's work against every other's (and ``cuCtxSynchronize`` would wait for them
all). So each session gets its own NULL stream per context, and every stream the server
creates is non-blocking at the driver; the session itself keeps CUDA's legacy ordering
between its NULL stream and its blocking streams (``_order``), with events, only when work
actually alternates between them. Synchronizing a context waits for the session's streams
in it, never for another tenant's work.

Kernel launches go through the ``Dispatcher`` (the scheduler's single dispatch point) with
their kernel ID: the module's content digest, the function name and the launch geometry.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cuda.bindings.driver import CUdevice_attribute, CUevent_flags, CUresult, CUstream_flags

from fikit_wire import calls as wire
from fikit_wire.calls import CLIENT_HANDLE_BIT
from gpu_server.backends.base import Backend, KernelLaunch, LaunchConfig, ParamLayout
from gpu_server.errors import CONTEXT_LOST_ERRORS, CudaError, invalid_handle, invalid_value
from gpu_server.ownership import DeviceOwnership
from scheduler.dispatcher import Dispatcher, IssueFn, LaunchProbe
from scheduler.kernel_id import kernel_id, module_digest

log = logging.getLogger(__name__)

#: Stream values with a meaning of their own: NULL, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD.
SPECIAL_STREAMS = (0, 1, 2)
_NON_BLOCKING = int(CUstream_flags.CU_STREAM_NON_BLOCKING)
_MARKER_FLAGS = int(CUevent_flags.CU_EVENT_DISABLE_TIMING)
_UINT64_MAX = (1 << 64) - 1
_A = CUdevice_attribute
#: Device attributes that read 0 for every client: they describe what the GPU can do with
#: memory of the process that runs the driver (managed, mapped or registered host memory,
#: host page tables, host atomics, IPC handles), which a remote client never shares.
REMOTE_UNSUPPORTED_ATTRIBUTES = frozenset(
    int(attribute)
    for attribute in (
        _A.CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY,
        _A.CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS,
        _A.CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY,
        _A.CU_DEVICE_ATTRIBUTE_PAGEABLE_MEMORY_ACCESS,
        _A.CU_DEVICE_ATTRIBUTE_PAGEABLE_MEMORY_ACCESS_USES_HOST_PAGE_TABLES,
        _A.CU_DEVICE_ATTRIBUTE_HOST_NATIVE_ATOMIC_SUPPORTED,
        _A.CU_DEVICE_ATTRIBUTE_CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM,
        _A.CU_DEVICE_ATTRIBUTE_IPC_EVENT_SUPPORTED,
        _A.CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED,
        _A.CU_DEVICE_ATTRIBUTE_DIRECT_MANAGED_MEM_ACCESS_FROM_HOST,
        _A.CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED,
    )
)

_T = TypeVar("_T")
Handler = Callable[..., tuple[Any, ...]]
#: name -> (handler, synchronizing); synchronizing calls report deferred errors.
HANDLERS: dict[str, tuple[Handler, bool]] = {}


def handler(name: str, *, synchronizing: bool = False) -> Callable[[Handler], Handler]:
    """Register a session method as the handler of the driver call ``name``."""

    def register(fn: Handler) -> Handler:
        HANDLERS[name] = (fn, synchronizing)
        return fn

    return register


@dataclass
class ContextEntry:
    """A context the session may use: its own, or its view of a primary context."""

    backend_ctx: Any
    device: int
    primary: bool
    retain_count: int = 1

    @property
    def alive(self) -> bool:
        return self.retain_count > 0


@dataclass
class Owned:
    """A backend object owned by the session, with the context it lives in (or None)."""

    obj: Any
    ctx: int | None
    #: For modules and libraries: the content digest of the image (see scheduler.kernel_id).
    digest: str = ""


@dataclass(eq=False)
class StreamEntry:
    """A stream of the session: one it created, or its own NULL stream in a context."""

    obj: Any
    ctx: int
    #: Ordered against the session's NULL stream (created without CU_STREAM_NON_BLOCKING).
    blocking: bool
    #: What cuStreamGetPriority reports: the client's requested priority, clamped.
    priority: int
    #: The NULL stream's work count this stream last waited for.
    seen_null_work: int = 0
    #: Work was queued here since the NULL stream last waited for this stream.
    unjoined: bool = False
    #: The NULL stream only: how many times work was queued on it.
    work: int = 0
    #: An event marking this stream's latest work for another stream to wait on, and the
    #: work count it was recorded at (NULL stream only).
    marker: Any = None
    marked_work: int = -1


#: Parameter buffers a function remembers as checked (``FunctionEntry.checked``).
CHECKED_PARAMS_KEPT = 8


@dataclass
class FunctionEntry:
    """A kernel handle: the backend function, its name and its parameter layout."""

    obj: Any
    ctx: int | None
    name: str
    layout: ParamLayout
    #: The module or library handle the function came from.
    parent: int
    #: The content digest of that module or library's image.
    module_digest: str
    #: For library kernels: the function made for each context it was launched in.
    per_context: dict[int, Any] = field(default_factory=dict)
    #: Parameter buffers whose pointers were checked, while the ownership generation is
    #: ``checked_generation``: a launch loop passes the same few buffers (a ping-pong
    #: stencil alternates two), each checked once.
    checked: set[bytes] = field(default_factory=set)
    checked_generation: int = -1


#: Launch plans a session keeps (``Session._launch_plans``); more distinct launches than
#: this start the memo afresh.
LAUNCH_PLANS_KEPT = 256
#: Frames of one posted launch a session keeps checked (``Session._checked_frames``), up to
#: this many bytes each (the client stub keeps the same frames, ``KEPT_LAUNCHES``).
CHECKED_FRAMES_KEPT = 1024
CHECKED_FRAME_BYTES = 1280


@dataclass(slots=True)
class LaunchPlan:
    """What launches of one function, geometry and stream resolve to: looked up once, kept
    until a stream, context or function of the session goes away."""

    function: Any
    entry: FunctionEntry
    #: (kernel ID, function name), as the dispatcher takes them.
    kernel: tuple[str, str]
    stream: StreamEntry
    context: ContextEntry
    config: LaunchConfig


#: A posted cuLaunchKernel call, its plan (None: it failed its checks) and the ownership
#: generation its parameters were checked in.
PostedLaunch = tuple[list[Any], "LaunchPlan | None", int]


class LaunchRun:
    """Posted launches of a session in a row on one stream, as the dispatcher issues them:
    together (``issue``) or one at a time (``one``). The first failure is kept."""

    __slots__ = ("backend", "ctx", "failure", "kernels", "launches", "stream")

    def __init__(self, backend: Backend, plan: LaunchPlan) -> None:
        self.backend = backend
        self.ctx = plan.context.backend_ctx
        self.stream = plan.stream
        self.kernels: list[tuple[str, str]] = []
        self.launches: list[KernelLaunch] = []
        self.failure: CudaError | None = None

    def add(self, plan: LaunchPlan, params: bytes) -> None:
        """One more launch, of ``plan`` (on the run's stream) with ``params``."""
        self.kernels.append(plan.kernel)
        self.launches.append((plan.function, plan.config, params, plan.entry.layout))

    def issue(self, first: int, stop: int, timed: bool) -> LaunchProbe | None:
        """Put launches ``first`` to ``stop`` on the GPU with one probe (``RunIssueFn``)."""
        try:
            probe, failure = self.backend.launch(self.ctx, self.launches[first:stop], timed)
        except CudaError as err:
            probe, failure = None, err
        if self.failure is None:
            self.failure = failure
        return probe

    def one(self, index: int) -> IssueFn:
        """What issues launch ``index`` alone, when the policy releases it."""
        launch = self.launches[index : index + 1]

        def issue(timed: bool, after: LaunchProbe | None = None) -> LaunchProbe:
            return self.backend.launch(self.ctx, launch, timed, after)[0]

        return issue


@dataclass
class DeviceRegion:
    """Device memory the session may touch: an allocation or a module global."""

    base: int
    size: int
    ctx: int
    freeable: bool
    module: int | None = None


class Session:
    """One client's view of the GPU, executing its calls in order."""

    def __init__(
        self,
        session_id: int,
        backend: Backend,
        dispatcher: Dispatcher,
        handle_ids: Iterator[int],
        priority: int,
        client_name: str = "",
        staging: memoryview | None = None,
        memory_quota: int | None = None,
        ownership: DeviceOwnership | None = None,
    ) -> None:
        self.id = session_id
        self.priority = priority
        #: Bytes of device memory the session may allocate (None: no limit), and in use.
        self.memory_quota = memory_quota
        self.memory_in_use = 0
        #: Who owns which device memory, across sessions (kernel arguments are checked).
        self.ownership = DeviceOwnership() if ownership is None else ownership
        #: The client's staging area for bulk copies, when it is on this host.
        self.staging = staging
        #: The staging area's page-locked registration, made at its first copy (None: not
        #: yet, or refused); ``_unpinned`` once refused, so it is asked only once.
        self._pinned: object | None = None
        self._unpinned = False
        self.backend = backend
        self.dispatcher = dispatcher
        self._ids = handle_ids
        self.deferred_error = 0
        #: Calls run so far (``run_frames``), and whether the last one wanted a reply.
        self.calls_run = 0
        self.replied_last = False
        #: The error, once a call of this session saw the GPU state of the process lost.
        self.fault = 0
        self.contexts: dict[int, ContextEntry] = {}
        self.primary_handles: dict[int, int] = {}
        self.modules: dict[int, Owned] = {}
        self.libraries: dict[int, Owned] = {}
        self.functions: dict[int, FunctionEntry] = {}
        self.streams: dict[int, StreamEntry] = {}
        #: The session's own NULL stream of each context it used one in.
        self.null_streams: dict[int, StreamEntry] = {}
        #: Blocking streams with work the NULL stream has not waited for.
        self._unjoined: list[StreamEntry] = []
        self.events: dict[int, Owned] = {}
        #: Launches resolved so far (``LaunchPlan``), forgotten whenever a stream, context
        #: or function of the session goes away.
        self._launch_plans: dict[tuple[Any, ...], LaunchPlan] = {}
        #: A frame that held one posted launch which passed its checks -> (the call, its
        #: plan, the ownership generation then): programs post the same few launches over
        #: and over, and the same bytes need neither unpacking nor checking again while
        #: their plan is kept and no device memory changed hands.
        self._checked_frames: dict[bytes, PostedLaunch] = {}
        self.regions: dict[int, DeviceRegion] = {}
        self._region_bases: list[int] = []
        dispatcher.add_task(session_id, priority, client_name)

    # -- execution -----------------------------------------------------------------------
    def run_frames(self, payloads: list[wire.Payload], emit: Callable[[bytes], None]) -> None:
        """Execute frames of calls in order, as one turn of the session; ``emit`` gets each
        frame's packed replies, in frames of about FRAME_SOFT_LIMIT_BYTES. A payload that
        is not a list of calls raises ValueError (the frames before it ran)."""
        dispatcher, priority = self.dispatcher, self.priority
        reply: list[Any] | None = [] if self.replied_last else None
        posted: list[PostedLaunch] = []  # launches in a row that want no reply
        checked_frames, ownership = self._checked_frames, self.ownership
        with dispatcher.running(priority):
            for payload in payloads:
                known = checked_frames.get(payload) if type(payload) is bytes else None
                if known is not None and known[2] == ownership.generation:
                    posted.append(known)
                    self.calls_run += 1
                    reply = None
                    continue
                replies: list[list[Any]] = []
                size = 0
                calls = wire.unpack(payload)
                self.calls_run += len(calls)
                for call in calls:
                    if (
                        type(call) is list
                        and len(call) == 9
                        and call[1] is False
                        and call[0] == "cuLaunchKernel"
                    ):
                        launch = self._posted_launch(call)
                        posted.append(launch)
                        if launch[1] is not None and len(calls) == 1:
                            self._keep_checked(payload, launch)
                        reply = None
                        continue
                    if posted:
                        self._launch_posted(posted)
                        posted = []
                    dispatcher.wait_turn(priority)
                    reply = self.execute(call)
                    if reply is None:
                        continue
                    replies.append(reply)
                    if len(reply) == 1:  # a status alone: most replies
                        continue
                    size += sum(
                        len(v) for v in reply if isinstance(v, (bytes, bytearray, memoryview))
                    )
                    if size >= wire.FRAME_SOFT_LIMIT_BYTES:
                        emit(wire.pack(replies))
                        replies, size = [], 0
                if replies:
                    emit(wire.pack(replies))
            if posted:
                self._launch_posted(posted)
        self.replied_last = reply is not None

    def execute(self, call: Any) -> list[Any] | None:
        """Run one wire call; return its reply, or None when it asked for none."""
        wants_reply = False
        synchronizing = False
        name = "a malformed call"
        try:
            if not isinstance(call, list) or len(call) < 2 or not isinstance(call[0], str):
                raise invalid_value("malformed call")
            name, wants_reply, args = call[0], bool(call[1]), call[2:]
            entry = HANDLERS.get(name)
            if entry is None:
                raise CudaError(CUresult.CUDA_ERROR_NOT_SUPPORTED, f"unknown call {name!r}")
            fn, synchronizing = entry
            if synchronizing:
                # The task is busy until its result exists: no idle gap to fill meanwhile.
                self.dispatcher.call_started(self.id)
                try:
                    values = fn(self, *args)
                finally:
                    self.dispatcher.call_finished(self.id)
            else:
                values = fn(self, *args)
            status = 0
        except CudaError as err:
            status, values = err.code, ()
            log.debug("session %d: %s", self.id, err)
        except (TypeError, ValueError, OverflowError, KeyError, IndexError) as err:
            status, values = int(CUresult.CUDA_ERROR_INVALID_VALUE), ()
            log.info("session %d: bad arguments in %.60r: %s", self.id, call, err)
        except Exception:  # a server bug must cost this call, not the session or the server
            status, values = int(CUresult.CUDA_ERROR_UNKNOWN), ()
            log.exception("session %d: internal error in %.60r", self.id, call)
        if status:
            self._failed(status, name, posted=not wants_reply)
        if not wants_reply:
            return None
        if synchronizing and self.deferred_error:
            status, values, self.deferred_error = self.deferred_error, (), 0
        return [status, *values]

    def _failed(self, status: int, name: str, *, posted: bool) -> None:
        """A call failed with ``status``: a lost GPU state marks the session; a posted
        call's failure waits for the next synchronizing call unless one already does."""
        if status in CONTEXT_LOST_ERRORS and not self.fault:
            self.fault = status
            log.error("session %d: the GPU state of this process is lost: %s", self.id, name)
        if posted and not self.deferred_error:
            self.deferred_error = status

    def _posted_launch(self, call: list[Any]) -> PostedLaunch:
        """A posted cuLaunchKernel call with its plan, or None for the plan when it fails
        its checks."""
        generation = self.ownership.generation
        try:
            return call, self._checked_launch(*call[2:]), generation
        except Exception:  # it fails in ``execute``, as it does alone
            return call, None, generation

    def _keep_checked(self, payload: wire.Payload, launch: PostedLaunch) -> None:
        """Keep the frame of a posted launch that passed its checks (``_checked_frames``)."""
        if type(payload) is not bytes or len(payload) > CHECKED_FRAME_BYTES:
            return
        if len(self._checked_frames) >= CHECKED_FRAMES_KEPT:
            self._checked_frames.clear()
        self._checked_frames[payload] = launch

    def _forget_plans(self) -> None:
        """A stream, context or function went away: resolve every launch afresh."""
        self._launch_plans.clear()
        self._checked_frames.clear()

    def _launch_posted(self, launches: list[PostedLaunch]) -> None:
        """Run posted cuLaunchKernel calls in order: those in a row on one stream go to the
        dispatcher as one run (``LaunchRun``). A call that failed its checks fails as it
        does alone (``execute``)."""
        self.dispatcher.wait_turn(self.priority)
        run: LaunchRun | None = None
        for call, plan, _ in launches:
            if run is not None and (plan is None or plan.stream is not run.stream):
                self._issue_run(run)
                run = None
            if plan is None:
                self.execute(call)  # it fails its checks again, as it does alone
                continue
            if run is None:
                try:
                    if plan.stream.blocking:  # once per run: nothing else comes between
                        self._order(plan.stream, plan.context)
                except Exception:
                    self.execute(call)  # fails in the same place, as it does alone
                    continue
                run = LaunchRun(self.backend, plan)
            run.add(plan, call[8])
        if run is not None:
            self._issue_run(run)

    def _issue_run(self, run: LaunchRun) -> None:
        """Hand a run to the dispatcher: at once under the task's lease, else one launch at
        a time; its first failure waits for the next synchronizing call."""
        dispatcher = self.dispatcher
        try:
            if not dispatcher.launch_run(self.id, run.kernels, run.issue):
                for index, (kernel_id, name) in enumerate(run.kernels):
                    try:
                        dispatcher.launch(self.id, kernel_id, name, run.one(index))
                    except CudaError as err:
                        run.failure = run.failure or err
        except CudaError as err:
            run.failure = run.failure or err
        except Exception:  # a server bug, or the server closing: the launches fail
            log.exception("session %d: launching a run of %d", self.id, len(run.kernels))
            run.failure = run.failure or CudaError(CUresult.CUDA_ERROR_UNKNOWN)
        if run.failure is not None:
            log.debug("session %d: %s", self.id, run.failure)
            self._failed(run.failure.code, "cuLaunchKernel", posted=True)

    def work_done(self) -> bool:
        """Whether the GPU finished all work queued on the session's streams, and no error
        of a call waits for the client's next synchronizing call."""
        if self.deferred_error or self.fault:
            return False
        query = self.backend.stream_query
        try:
            for stream in (*self.null_streams.values(), *self.streams.values()):
                entry = self.contexts.get(stream.ctx)
                if entry is None or not entry.alive or not query(entry.backend_ctx, stream.obj):
                    return False
        except CudaError:
            return False
        return True

    def close(self) -> None:
        """Free everything the session still holds; errors are logged, never raised."""
        if self._pinned is not None:
            self._quietly(self.backend.host_unregister, self._pinned)
            self._pinned = None
        for handle in list(self.contexts):
            self._release_context(handle, destroy=True)
        for handle, lib in list(self.libraries.items()):
            self._quietly(self.backend.library_unload, lib.obj)
            del self.libraries[handle]
        self.dispatcher.remove_task(self.id)

    # -- lookups -------------------------------------------------------------------------
    def _new_handle(self) -> int:
        return next(self._ids)

    def _claim(self, chosen: int | None) -> int:
        """The handle for a new stream or event: the client's choice if it made one."""
        if chosen is None:
            return self._new_handle()
        if not chosen & CLIENT_HANDLE_BIT or chosen in self.streams or chosen in self.events:
            raise invalid_value(f"handle {chosen:#x} cannot be chosen by the client")
        return chosen

    def context(self, handle: int) -> ContextEntry:
        """The live context ``handle`` or CUDA_ERROR_INVALID_CONTEXT."""
        entry = self.contexts.get(handle)
        if entry is None or not entry.alive:
            raise CudaError(CUresult.CUDA_ERROR_INVALID_CONTEXT, f"context {handle:#x}")
        return entry

    def _stream(self, handle: int | None, ctx: int) -> tuple[StreamEntry, ContextEntry]:
        """(stream, its context) for a stream handle; a special value or None (a synchronous
        call) means the session's NULL stream in context ``ctx``."""
        if handle is None or handle in SPECIAL_STREAMS:
            entry = self.context(ctx)
            stream = self.null_streams.get(ctx)
            if stream is None:
                least, greatest = self.backend.stream_priority_range(entry.backend_ctx)
                priority = self.dispatcher.stream_priority(self.id, 0, least, greatest)
                obj = self.backend.stream_create(entry.backend_ctx, _NON_BLOCKING, priority)
                stream = self.null_streams[ctx] = StreamEntry(obj, ctx, True, 0)
            return stream, entry
        stream = self._owned(self.streams, handle, "stream")
        return stream, self.context(stream.ctx)

    def _order(self, stream: StreamEntry, entry: ContextEntry) -> Any:
        """Keep legacy NULL-stream order before new work on ``stream``; its backend stream.

        Work on the NULL stream waits for earlier work on the session's blocking streams of
        the context; work on a blocking stream waits for earlier NULL-stream work.
        """
        if not stream.blocking:
            return stream.obj
        null = self.null_streams.get(stream.ctx)
        if stream is null:
            if self._unjoined:
                for other in [s for s in self._unjoined if s.ctx == stream.ctx]:
                    self._wait_for(stream, other, entry)
                    other.unjoined = False
                    self._unjoined.remove(other)
            stream.work += 1
        else:
            if null is not None and stream.seen_null_work != null.work:
                if null.marked_work != null.work:
                    self._mark(null, entry)
                    null.marked_work = null.work
                self.backend.stream_wait_event(entry.backend_ctx, stream.obj, null.marker, 0)
                stream.seen_null_work = null.work
            if not stream.unjoined:
                stream.unjoined = True
                self._unjoined.append(stream)
        return stream.obj

    def _mark(self, stream: StreamEntry, entry: ContextEntry) -> None:
        """Record the stream's marker event after its latest work."""
        if stream.marker is None:
            stream.marker = self.backend.event_create(entry.backend_ctx, _MARKER_FLAGS)
        self.backend.event_record(entry.backend_ctx, stream.marker, stream.obj)

    def _wait_for(self, waiter: StreamEntry, other: StreamEntry, entry: ContextEntry) -> None:
        """Make later work on ``waiter`` wait for the work queued on ``other`` so far."""
        self._mark(other, entry)
        self.backend.stream_wait_event(entry.backend_ctx, waiter.obj, other.marker, 0)

    def _work_stream(self, handle: int | None, ctx: int) -> tuple[ContextEntry, Any]:
        """(context, backend stream) to queue new work on, in legacy order (``_order``)."""
        stream, entry = self._stream(handle, ctx)
        return entry, self._order(stream, entry)

    def _covering_stream(self, handle: int | None, ctx: int) -> tuple[ContextEntry, Any]:
        """(context, backend stream) whose completion covers all work a synchronization on
        ``handle`` must see: the NULL stream first waits for the blocking streams' work."""
        stream, entry = self._stream(handle, ctx)
        if stream.blocking and stream is self.null_streams.get(stream.ctx):
            return entry, self._order(stream, entry)
        return entry, stream.obj

    def _session_streams(self, ctx: int) -> list[StreamEntry]:
        """The session's streams in context ``ctx``, its NULL stream included."""
        streams = [s for s in self.streams.values() if s.ctx == ctx]
        null = self.null_streams.get(ctx)
        return streams if null is None else [null, *streams]

    def _drop_stream(self, stream: StreamEntry, entry: ContextEntry) -> None:
        """Destroy a stream and its marker; the NULL stream still orders after its work."""
        self._forget_plans()
        ctx = entry.backend_ctx
        if stream.unjoined:
            null, _ = self._stream(None, stream.ctx)
            self._wait_for(null, stream, entry)
            stream.unjoined = False
            self._unjoined.remove(stream)
        if stream.marker is not None:
            self._quietly(self.backend.event_destroy, ctx, stream.marker)
        self._quietly(self.backend.stream_destroy, ctx, stream.obj)

    def _owned(self, table: dict[int, _T], handle: int, what: str) -> _T:
        owned = table.get(handle)
        if owned is None:
            raise invalid_handle(f"{what} {handle:#x}")
        return owned

    def _function(self, handle: int, ctx: int | None) -> tuple[Any, FunctionEntry]:
        """The backend function for a CUfunction, or a CUkernel in context ``ctx``."""
        entry = self.functions.get(handle)
        if entry is None:
            raise invalid_handle(f"function {handle:#x}")
        if entry.ctx is not None:
            return entry.obj, entry
        if ctx is None:
            raise CudaError(CUresult.CUDA_ERROR_INVALID_CONTEXT, "kernel needs a context")
        fn = entry.per_context.get(ctx)
        if fn is None:
            fn = self.backend.kernel_function(self.context(ctx).backend_ctx, entry.obj)
            entry.per_context[ctx] = fn
        return fn, entry

    def _region(self, ptr: int, size: int) -> DeviceRegion:
        """The region holding [ptr, ptr+size), or CUDA_ERROR_INVALID_VALUE."""
        if size < 0 or not 0 <= ptr <= _UINT64_MAX:
            raise invalid_value("bad pointer or size")
        i = bisect.bisect_right(self._region_bases, ptr) - 1
        if i >= 0:
            region = self.regions[self._region_bases[i]]
            if ptr + size <= region.base + region.size:
                return region
        raise invalid_value(f"[{ptr:#x}, +{size}) is not inside an allocation of this session")

    def _add_region(self, region: DeviceRegion) -> None:
        self.regions[region.base] = region
        bisect.insort(self._region_bases, region.base)
        self.ownership.add(region.base, region.size, self.id)
        if region.freeable:
            self.memory_in_use += region.size

    def _drop_region(self, base: int) -> None:
        region = self.regions.pop(base)
        self._region_bases.remove(base)
        self.ownership.remove(base)
        if region.freeable:
            self.memory_in_use -= region.size

    @staticmethod
    def _quietly(fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except CudaError as err:
            log.debug("cleanup %s: %s", getattr(fn, "__name__", fn), err)

    def _release_context(self, handle: int, *, destroy: bool) -> None:
        """Free what the session made in a context; destroy the context if it owns it."""
        self._forget_plans()
        entry = self.contexts[handle]
        ctx = entry.backend_ctx
        streams = self._session_streams(handle)
        for stream in streams:
            self._quietly(self.backend.stream_synchronize, ctx, stream.obj)
        for h, owned in list(self.events.items()):
            if owned.ctx == handle:
                self._quietly(self.backend.event_destroy, ctx, owned.obj)
                del self.events[h]
        for stream in streams:
            stream.unjoined = False
            if stream.marker is not None:
                self._quietly(self.backend.event_destroy, ctx, stream.marker)
            self._quietly(self.backend.stream_destroy, ctx, stream.obj)
        self._unjoined = [s for s in self._unjoined if s.ctx != handle]
        self.streams = {h: s for h, s in self.streams.items() if s.ctx != handle}
        self.null_streams.pop(handle, None)
        for base, region in list(self.regions.items()):
            if region.ctx == handle:
                if region.freeable:
                    self._quietly(self.backend.mem_free, ctx, base)
                self._drop_region(base)
        for h, fn in list(self.functions.items()):
            fn.per_context.pop(handle, None)
            if fn.ctx == handle:
                del self.functions[h]
        for h, owned in list(self.modules.items()):
            if owned.ctx == handle:
                self._quietly(self.backend.module_unload, ctx, owned.obj)
                del self.modules[h]
        if entry.primary:
            entry.retain_count = 0
        elif destroy:
            self._quietly(self.backend.context_destroy, ctx)
            del self.contexts[handle]

    # -- driver and devices --------------------------------------------------------------
    @handler("cuInit")
    def cu_init(self, flags: int) -> tuple[()]:
        if flags != 0:
            raise invalid_value("cuInit flags must be 0")
        return ()

    @handler("cuDriverGetVersion")
    def cu_driver_get_version(self) -> tuple[int]:
        return (self.backend.driver_version(),)

    @handler("cuDeviceGetCount")
    def cu_device_get_count(self) -> tuple[int]:
        return (self.backend.device_count(),)

    def _device(self, ordinal: int) -> int:
        if not isinstance(ordinal, int) or not 0 <= ordinal < self.backend.device_count():
            raise CudaError(CUresult.CUDA_ERROR_INVALID_DEVICE, f"device {ordinal!r}")
        return ordinal

    @handler("cuDeviceGet")
    def cu_device_get(self, ordinal: int) -> tuple[int]:
        return (self._device(ordinal),)

    @handler("cuDeviceGetName")
    def cu_device_get_name(self, device: int) -> tuple[str]:
        return (self.backend.device_name(self._device(device)),)

    @handler("cuDeviceGetAttribute")
    def cu_device_get_attribute(self, attribute: int, device: int) -> tuple[int]:
        value = self.backend.device_attribute(attribute, self._device(device))
        return (0 if attribute in REMOTE_UNSUPPORTED_ATTRIBUTES else value,)

    @handler("cuDeviceTotalMem")
    def cu_device_total_mem(self, device: int) -> tuple[int]:
        return (self.backend.device_total_mem(self._device(device)),)

    @handler("cuDeviceGetUuid")
    def cu_device_get_uuid(self, device: int) -> tuple[bytes]:
        return (self.backend.device_uuid(self._device(device)),)

    # -- contexts ------------------------------------------------------------------------
    @handler("cuDevicePrimaryCtxRetain")
    def cu_device_primary_ctx_retain(self, device: int) -> tuple[int]:
        device = self._device(device)
        handle = self.primary_handles.get(device)
        if handle is None:
            handle = self._new_handle()
            self.primary_handles[device] = handle
            self.contexts[handle] = ContextEntry(
                self.backend.primary_context(device),
                device,
                primary=True,
                retain_count=0,
            )
        self.contexts[handle].retain_count += 1
        return (handle,)

    def _primary(self, device: int) -> tuple[int, ContextEntry]:
        handle = self.primary_handles.get(self._device(device))
        entry = self.contexts.get(handle) if handle is not None else None
        if entry is None or not entry.alive:
            raise CudaError(CUresult.CUDA_ERROR_INVALID_CONTEXT, "primary context not retained")
        return handle, entry

    @handler("cuDevicePrimaryCtxRelease")
    def cu_device_primary_ctx_release(self, device: int) -> tuple[()]:
        handle, entry = self._primary(device)
        if entry.retain_count == 1:
            self._release_context(handle, destroy=False)
        else:
            entry.retain_count -= 1
        return ()

    @handler("cuDevicePrimaryCtxGetState")
    def cu_device_primary_ctx_get_state(self, device: int) -> tuple[int, int]:
        handle = self.primary_handles.get(self._device(device))
        active = handle is not None and self.contexts[handle].alive
        return (0, int(active))

    @handler("cuDevicePrimaryCtxReset")
    def cu_device_primary_ctx_reset(self, device: int) -> tuple[()]:
        handle = self.primary_handles.get(self._device(device))
        if handle is not None and self.contexts[handle].alive:
            count = self.contexts[handle].retain_count
            self._release_context(handle, destroy=False)
            self.contexts[handle].retain_count = count
        return ()

    @handler("cuCtxCreate")
    def cu_ctx_create(self, flags: int, device: int) -> tuple[int]:
        ctx = self.backend.context_create(flags, self._device(device))
        handle = self._new_handle()
        self.contexts[handle] = ContextEntry(ctx, device, primary=False)
        return (handle,)

    @handler("cuCtxDestroy")
    def cu_ctx_destroy(self, handle: int) -> tuple[()]:
        entry = self.context(handle)
        if entry.primary:
            raise CudaError(CUresult.CUDA_ERROR_INVALID_CONTEXT, "cannot destroy a primary context")
        self._release_context(handle, destroy=True)
        return ()

    @handler("cuCtxSynchronize", synchronizing=True)
    def cu_ctx_synchronize(self, ctx: int) -> tuple[()]:
        entry = self.context(ctx)
        for stream in self._session_streams(ctx):
            self.backend.stream_synchronize(entry.backend_ctx, stream.obj)
        return ()

    @handler("cuCtxGetStreamPriorityRange")
    def cu_ctx_get_stream_priority_range(self, ctx: int) -> tuple[int, int]:
        return self.backend.stream_priority_range(self.context(ctx).backend_ctx)

    # -- memory --------------------------------------------------------------------------
    @handler("cuMemGetInfo")
    def cu_mem_get_info(self, ctx: int) -> tuple[int, int]:
        return self.backend.mem_get_info(self.context(ctx).backend_ctx)

    @handler("cuMemAlloc")
    def cu_mem_alloc(self, ctx: int, size: int) -> tuple[int]:
        if size <= 0:
            raise invalid_value("cuMemAlloc of 0 bytes")
        if self.memory_quota is not None and self.memory_in_use + size > self.memory_quota:
            raise CudaError(
                CUresult.CUDA_ERROR_OUT_OF_MEMORY,
                f"{size} B more would pass the session's quota of {self.memory_quota} B",
            )
        ptr = self.backend.mem_alloc(self.context(ctx).backend_ctx, size)
        self._add_region(DeviceRegion(ptr, size, ctx, freeable=True))
        return (ptr,)

    @handler("cuMemFree")
    def cu_mem_free(self, ptr: int) -> tuple[()]:
        region = self.regions.get(ptr)
        if region is None or not region.freeable:
            raise invalid_value(f"{ptr:#x} is not an allocation of this session")
        self.backend.mem_free(self.context(region.ctx).backend_ctx, ptr)
        self._drop_region(ptr)
        return ()

    @handler("cuMemGetAddressRange")
    def cu_mem_get_address_range(self, ptr: int) -> tuple[int, int]:
        try:
            region = self._region(ptr, 0)
        except CudaError:
            raise CudaError(CUresult.CUDA_ERROR_NOT_FOUND, f"{ptr:#x}") from None
        return (region.base, region.size)

    def _copy_range(self, base: int, offset: int, size: int, whole: int) -> int:
        """Check a chunk of a copy of ``whole`` bytes at ``base``; return the chunk's address."""
        if not 0 <= offset <= offset + size <= whole:
            raise invalid_value("copy chunk outside its copy")
        self._region(base, whole)
        return base + offset

    @handler("cuMemcpyHtoD", synchronizing=True)
    def cu_memcpy_htod(
        self,
        ctx: int,
        dst: int,
        offset: int,
        data: bytes | memoryview,
        whole: int,
        stream: int | None,
    ) -> tuple[()]:
        self._copy_in(ctx, self._copy_range(dst, offset, len(data), whole), data, stream, False)
        return ()

    @handler("cuMemcpyDtoH", synchronizing=True)
    def cu_memcpy_dtoh(
        self, ctx: int, src: int, offset: int, size: int, whole: int, stream: int | None
    ) -> tuple[bytes]:
        source = self._copy_range(src, offset, size, whole)
        out = bytearray(size)
        self._copy_out(ctx, source, memoryview(out), stream)
        return (out,)

    @handler("cuMemcpyHtoDStaged", synchronizing=True)
    def cu_memcpy_htod_staged(
        self,
        ctx: int,
        dst: int,
        offset: int,
        staged_at: int,
        size: int,
        whole: int,
        stream: int | None,
    ) -> tuple[()]:
        data = self._staged(staged_at, size)
        target = self._copy_range(dst, offset, size, whole)
        # From page-locked staging the DMA reads on after an asynchronous copy returns, and
        # the client reuses the space once this call is done: wait for it.
        self._copy_in(ctx, target, data, stream, self._pinned is not None)
        return ()

    def _copy_in(
        self, ctx: int, target: int, data: bytes | memoryview, stream: int | None, wait: bool
    ) -> None:
        """Copy ``data`` to ``target`` (a checked range) in stream order; a synchronous copy
        (``stream`` None), or ``wait``, returns once it is done."""
        entry, backend_stream = self._work_stream(stream, ctx)
        self.backend.memcpy_htod(entry.backend_ctx, target, data, backend_stream)
        if stream is None or wait:
            self.backend.stream_synchronize(entry.backend_ctx, backend_stream)

    @handler("cuMemcpyDtoHStaged", synchronizing=True)
    def cu_memcpy_dtoh_staged(
        self,
        ctx: int,
        src: int,
        offset: int,
        size: int,
        whole: int,
        stream: int | None,
        staged_at: int,
    ) -> tuple[()]:
        source = self._copy_range(src, offset, size, whole)
        self._copy_out(ctx, source, self._staged(staged_at, size), stream)
        return ()

    def _staged(self, at: int, size: int) -> memoryview:
        """``size`` bytes of the session's staging area at offset ``at``."""
        if self.staging is None:
            raise CudaError(CUresult.CUDA_ERROR_NOT_SUPPORTED, "this session has no staging")
        if not 0 <= at <= at + size <= len(self.staging):
            raise invalid_value(f"staging range [{at}, +{size}) outside the staging area")
        if self._pinned is None and not self._unpinned:
            self._pinned = self.backend.host_register(self.staging)
            self._unpinned = self._pinned is None
        return self.staging[at : at + size]

    def _copy_out(self, ctx: int, source: int, out: memoryview, stream: int | None) -> None:
        """Copy device bytes at ``source`` (a checked range) into ``out``, in stream order."""
        entry, backend_stream = self._work_stream(stream, ctx)
        self.backend.memcpy_dtoh(entry.backend_ctx, source, out, backend_stream)

    @handler("cuMemcpyDtoD", synchronizing=True)
    def cu_memcpy_dtod(
        self, ctx: int, dst: int, src: int, size: int, stream: int | None
    ) -> tuple[()]:
        self._region(dst, size)
        self._region(src, size)
        entry, backend_stream = self._work_stream(stream, ctx)
        self.backend.memcpy_dtod(entry.backend_ctx, dst, src, size, backend_stream)
        if stream is None:
            self.backend.stream_synchronize(entry.backend_ctx, backend_stream)
        return ()

    @handler("cuMemset")
    def cu_memset(
        self, ctx: int, dst: int, value: int, width: int, count: int, stream: int | None
    ) -> tuple[()]:
        if width not in (1, 2, 4) or not 0 <= value < (1 << (8 * width)):
            raise invalid_value("memset value does not fit its width")
        self._region(dst, width * count)
        entry, backend_stream = self._work_stream(stream, ctx)
        self.backend.memset(entry.backend_ctx, dst, value, width, count, backend_stream)
        if stream is None:
            self.backend.stream_synchronize(entry.backend_ctx, backend_stream)
        return ()

    # -- modules, libraries, functions ---------------------------------------------------
    @handler("cuModuleLoadData")
    def cu_module_load_data(
        self, ctx: int, image: bytes, jit_options: dict[int, int]
    ) -> tuple[int]:
        module = self.backend.module_load(self.context(ctx).backend_ctx, image, jit_options)
        handle = self._new_handle()
        self.modules[handle] = Owned(module, ctx, module_digest(image))
        return (handle,)

    @handler("cuModuleUnload")
    def cu_module_unload(self, handle: int) -> tuple[()]:
        owned = self._owned(self.modules, handle, "module")
        for base, region in list(self.regions.items()):
            if region.module == handle:
                self._drop_region(base)
        self._drop_functions(handle)
        self.backend.module_unload(self.context(owned.ctx).backend_ctx, owned.obj)
        del self.modules[handle]
        return ()

    def _add_function(
        self, obj: Any, ctx: int | None, parent: int, digest: str
    ) -> tuple[int, list[int], list[int]]:
        layout = self.backend.function_param_layout(obj)
        handle = self._new_handle()
        name = self.backend.function_name(obj)
        self.functions[handle] = FunctionEntry(obj, ctx, name, layout, parent, digest)
        return (handle, list(layout.offsets), list(layout.sizes))

    def _drop_functions(self, parent: int) -> None:
        self._forget_plans()
        for handle in [h for h, fn in self.functions.items() if fn.parent == parent]:
            del self.functions[handle]

    @handler("cuModuleGetFunction")
    def cu_module_get_function(self, handle: int, name: str) -> tuple[int, list[int], list[int]]:
        owned = self._owned(self.modules, handle, "module")
        entry = self.context(owned.ctx)
        return self._add_function(
            self.backend.module_function(entry.backend_ctx, owned.obj, name),
            owned.ctx,
            handle,
            owned.digest,
        )

    @handler("cuModuleGetGlobal")
    def cu_module_get_global(self, handle: int, name: str) -> tuple[int, int]:
        owned = self._owned(self.modules, handle, "module")
        ptr, size = self.backend.module_global(self.context(owned.ctx).backend_ctx, owned.obj, name)
        if ptr not in self.regions:
            self._add_region(DeviceRegion(ptr, size, owned.ctx, freeable=False, module=handle))
        return (ptr, size)

    @handler("cuLibraryLoadData")
    def cu_library_load_data(self, image: bytes, jit_options: dict[int, int]) -> tuple[int]:
        library = self.backend.library_load(image, jit_options)
        handle = self._new_handle()
        self.libraries[handle] = Owned(library, None, module_digest(image))
        return (handle,)

    @handler("cuLibraryUnload")
    def cu_library_unload(self, handle: int) -> tuple[()]:
        owned = self._owned(self.libraries, handle, "library")
        self._drop_functions(handle)
        self.backend.library_unload(owned.obj)
        del self.libraries[handle]
        return ()

    @handler("cuLibraryGetKernel")
    def cu_library_get_kernel(self, handle: int, name: str) -> tuple[int, list[int], list[int]]:
        owned = self._owned(self.libraries, handle, "library")
        return self._add_function(
            self.backend.library_kernel(owned.obj, name), None, handle, owned.digest
        )

    @handler("cuKernelGetFunction")
    def cu_kernel_get_function(self, ctx: int, kernel: int) -> tuple[int, list[int], list[int]]:
        entry = self.functions.get(kernel)
        if entry is None or entry.ctx is not None:
            raise invalid_handle(f"kernel {kernel:#x}")
        fn, _ = self._function(kernel, ctx)
        return self._add_function(fn, ctx, entry.parent, entry.module_digest)

    @handler("cuFuncGetAttribute")
    def cu_func_get_attribute(self, attribute: int, handle: int, ctx: int) -> tuple[int]:
        fn, entry = self._function(handle, ctx)
        return (
            self.backend.function_attribute(
                self.context(entry.ctx if entry.ctx is not None else ctx).backend_ctx,
                fn,
                attribute,
            ),
        )

    @handler("cuFuncSetAttribute")
    def cu_func_set_attribute(self, handle: int, attribute: int, value: int, ctx: int) -> tuple[()]:
        fn, entry = self._function(handle, ctx)
        owner = entry.ctx if entry.ctx is not None else ctx
        self.backend.function_set_attribute(self.context(owner).backend_ctx, fn, attribute, value)
        return ()

    @handler("cuOccupancyMaxActiveBlocksPerMultiprocessor")
    def cu_occupancy(self, handle: int, block_size: int, dynamic_smem: int, ctx: int) -> tuple[int]:
        fn, entry = self._function(handle, ctx)
        owner = entry.ctx if entry.ctx is not None else ctx
        return (
            self.backend.occupancy_max_active_blocks(
                self.context(owner).backend_ctx, fn, block_size, dynamic_smem
            ),
        )

    @handler("cuLaunchKernel")
    def cu_launch_kernel(self, *launch: Any) -> tuple[()]:
        """One launch on its own (a call that wants a reply; posted launches go through
        ``_launch_posted``); ``launch``: the arguments ``_checked_launch`` takes."""
        plan = self._checked_launch(*launch)
        if plan.stream.blocking:
            self._order(plan.stream, plan.context)
        run = LaunchRun(self.backend, plan)
        run.add(plan, launch[-1])
        kernel_id, name = plan.kernel
        self.dispatcher.launch(self.id, kernel_id, name, run.one(0))
        return ()

    def _checked_launch(
        self,
        ctx: int,
        handle: int,
        grid: list[int],
        block: list[int],
        shared_mem_bytes: int,
        stream: int,
        params: bytes,
    ) -> LaunchPlan:
        """The plan of a launch whose function, geometry, stream and parameters passed
        the checks (pointer arguments into other sessions' memory are refused)."""
        key = (handle, ctx, stream, shared_mem_bytes, tuple(grid), tuple(block))
        plan = self._launch_plans.get(key)
        if plan is None:
            plan = self._plan_launch(key)
        entry = plan.entry
        layout = entry.layout
        if type(params) is not bytes:
            raise invalid_value("kernel parameters are not bytes")
        if len(params) < layout.total_size:
            raise invalid_value("kernel parameters shorter than the kernel's layout")
        generation = self.ownership.generation
        if entry.checked_generation != generation:
            entry.checked, entry.checked_generation = set(), generation
        if params not in entry.checked:
            self._check_pointers(layout, params)
            if len(entry.checked) >= CHECKED_PARAMS_KEPT:
                entry.checked.clear()
            entry.checked.add(params)
        return plan

    def _plan_launch(self, key: tuple[Any, ...]) -> LaunchPlan:
        """Resolve a launch's function, kernel ID, stream and configuration, and keep the
        plan under ``key``: (function, context, stream, dynamic shared memory, grid, block).
        A grid or block of other than three dimensions fails in ``kernel_id``."""
        handle, ctx, stream, shared_mem_bytes, grid, block = key
        fn, entry = self._function(handle, ctx)
        stream_entry, context = self._stream(stream, ctx if entry.ctx is None else entry.ctx)
        plan = LaunchPlan(
            fn,
            entry,
            (kernel_id(entry.module_digest, entry.name, grid, block, shared_mem_bytes), entry.name),
            stream_entry,
            context,
            LaunchConfig(grid, block, shared_mem_bytes, stream_entry.obj),
        )
        if len(self._launch_plans) >= LAUNCH_PLANS_KEPT:
            self._launch_plans.clear()
        self._launch_plans[key] = plan
        return plan

    def _check_pointers(self, layout: ParamLayout, params: bytes) -> None:
        """Refuse a pointer-sized argument into another session's memory."""
        owner = self.ownership.owner
        for offset in layout.pointer_offsets:
            found = owner(int.from_bytes(params[offset : offset + 8], "little"))
            if found is not None and found != self.id:
                raise invalid_value(f"argument at {offset} points into another session")

    # -- streams and events --------------------------------------------------------------
    @handler("cuStreamCreate")
    def cu_stream_create(
        self, ctx: int, flags: int, priority: int, chosen: int | None = None
    ) -> tuple[int]:
        entry = self.context(ctx)
        if flags & ~_NON_BLOCKING:
            raise invalid_value(f"stream flags {flags:#x}")
        handle = self._claim(chosen)
        least, greatest = self.backend.stream_priority_range(entry.backend_ctx)
        actual = self.dispatcher.stream_priority(self.id, priority, least, greatest)
        stream = self.backend.stream_create(entry.backend_ctx, _NON_BLOCKING, actual)
        blocking = not flags & _NON_BLOCKING
        self.streams[handle] = StreamEntry(
            stream, ctx, blocking, min(max(priority, greatest), least)
        )
        return (handle,)

    @handler("cuStreamDestroy")
    def cu_stream_destroy(self, handle: int) -> tuple[()]:
        stream = self._owned(self.streams, handle, "stream")
        self._drop_stream(stream, self.context(stream.ctx))
        del self.streams[handle]
        return ()

    @handler("cuStreamSynchronize", synchronizing=True)
    def cu_stream_synchronize(self, ctx: int, handle: int) -> tuple[()]:
        entry, stream = self._covering_stream(handle, ctx)
        self.backend.stream_synchronize(entry.backend_ctx, stream)
        return ()

    @handler("cuStreamQuery", synchronizing=True)
    def cu_stream_query(self, ctx: int, handle: int) -> tuple[()]:
        entry, stream = self._covering_stream(handle, ctx)
        if not self.backend.stream_query(entry.backend_ctx, stream):
            raise CudaError(CUresult.CUDA_ERROR_NOT_READY)
        return ()

    @handler("cuStreamWaitEvent")
    def cu_stream_wait_event(self, ctx: int, handle: int, event: int, flags: int) -> tuple[()]:
        owned = self._owned(self.events, event, "event")
        entry, stream = self._work_stream(handle, ctx)
        self.backend.stream_wait_event(entry.backend_ctx, stream, owned.obj, flags)
        return ()

    @handler("cuStreamGetPriority")
    def cu_stream_get_priority(self, ctx: int, handle: int) -> tuple[int]:
        if handle in SPECIAL_STREAMS:
            return (self.backend.stream_priority(self.context(ctx).backend_ctx, handle),)
        return (self._owned(self.streams, handle, "stream").priority,)

    @handler("cuEventCreate")
    def cu_event_create(self, ctx: int, flags: int, chosen: int | None = None) -> tuple[int]:
        entry = self.context(ctx)
        handle = self._claim(chosen)
        self.events[handle] = Owned(self.backend.event_create(entry.backend_ctx, flags), ctx)
        return (handle,)

    @handler("cuEventRecord")
    def cu_event_record(self, ctx: int, handle: int, stream: int) -> tuple[()]:
        owned = self._owned(self.events, handle, "event")
        entry, backend_stream = self._work_stream(
            stream, owned.ctx if stream in SPECIAL_STREAMS else ctx
        )
        self.backend.event_record(entry.backend_ctx, owned.obj, backend_stream)
        return ()

    @handler("cuEventSynchronize", synchronizing=True)
    def cu_event_synchronize(self, handle: int) -> tuple[()]:
        owned = self._owned(self.events, handle, "event")
        self.backend.event_synchronize(self.context(owned.ctx).backend_ctx, owned.obj)
        return ()

    @handler("cuEventQuery", synchronizing=True)
    def cu_event_query(self, handle: int) -> tuple[()]:
        owned = self._owned(self.events, handle, "event")
        if not self.backend.event_query(self.context(owned.ctx).backend_ctx, owned.obj):
            raise CudaError(CUresult.CUDA_ERROR_NOT_READY)
        return ()

    @handler("cuEventElapsedTime")
    def cu_event_elapsed_time(self, start: int, end: int) -> tuple[float]:
        first = self._owned(self.events, start, "event")
        last = self._owned(self.events, end, "event")
        ctx = self.context(first.ctx).backend_ctx
        return (self.backend.event_elapsed_ms(ctx, first.obj, last.obj),)

    @handler("cuEventDestroy")
    def cu_event_destroy(self, handle: int) -> tuple[()]:
        owned = self._owned(self.events, handle, "event")
        self.backend.event_destroy(self.context(owned.ctx).backend_ctx, owned.obj)
        del self.events[handle]
        return ()


def handle_counter() -> Iterator[int]:
    """Server-wide handle values: never 0-2 (special streams), unique across sessions."""
    return itertools.count(0x1000, 0x10)
