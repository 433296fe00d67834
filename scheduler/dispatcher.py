"""The server's single launch dispatch point: a scheduling policy driven by real events.

``Dispatcher`` connects the pure policies of ``policy.py`` to the server. Every session
thread hands each kernel launch to ``launch``; the policy decides whether it goes to the GPU
at once or is held:

- a launch the policy releases at arrival is issued by the calling session thread, with no
  other thread involved (the hot path: one lock, a few dictionary updates);
- a held launch blocks its session thread, so that every later call of that session (its
  synchronizations included) waits behind it: per-stream order and synchronization semantics
  stay those of CUDA, and a client that synchronizes on held work waits for it to be issued,
  never deadlocks. The tracker thread issues it the moment the policy releases it.

Every issued launch comes back as a ``LaunchProbe`` (a completion marker the backend put on
the launch's stream). The tracker thread polls the oldest probe of each stream and tells the
policy about completions, records measured durations and idle gaps in the ``ProfileStore``,
and writes the optional trace. Kernels of new kernel IDs are timed on every launch
(measurement stage), known ones on a sample (sharing stage); see ``profiles.py``. A probe
is not asked before its launch is predicted to finish (its profile's duration after those
ahead of it on its stream): every poll takes the interpreter from the sessions' threads.
While launches are held, a session whose client went quiet with the session's GPU work
seen done (``idle``) does the tracker's work for its own task's launches: it holds the
interpreter already, so a held launch that fits the gap the task just opened goes out
without waiting for the tracker's next turn.

The priority policies also order the CPU of the process that runs the sessions: sessions
of many tasks share one Python interpreter (a GPU worker under ``--isolation shared``), so
a lower task's calls would take the interpreter from a higher task's. While a session of
some task runs a frame of calls (``running``), sessions of lower tasks wait before each
call (``wait_turn``): the higher task's calls never queue behind their Python work.

Nothing here touches CUDA or gRPC: the backend is reached only through the ``issue``
callables and the probes they return, so the dispatcher runs the same over the CPU test
double and the real GPU.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, TypeVar

from scheduler.policy import (
    HIGHEST_PRIORITY,
    LOWEST_PRIORITY,
    NO_CREDIT,
    Credit,
    FifoPolicy,
    PendingLaunch,
    Policy,
)
from scheduler.profiles import ProfileStore

log = logging.getLogger(__name__)


class LaunchProbe(Protocol):
    """Completion marker of one issued launch, given by the backend."""

    #: Launches with the same key complete in issue order (one CUDA stream).
    stream_key: Hashable

    def done(self) -> bool:
        """Whether the GPU finished the launch."""

    def times_us(self) -> tuple[float, float] | None:
        """(start, end) in microseconds, for a timed probe once done; else None. The CUDA
        backend places them on ``clock_us``'s time line, aligned at the context's first
        launch (a trace then compares them with arrival and issue times)."""

    def release(self) -> None:
        """Give back what the probe holds (events); called once, after the last query."""


class IssueFn(Protocol):
    """Puts a launch on its stream and returns its probe, timed or not; raises on failure.
    With ``after``, the launch starts on the GPU only once the launch of that probe (of
    any task of this process) has finished."""

    def __call__(self, timed: bool, after: LaunchProbe | None = None, /) -> LaunchProbe: ...


class RunIssueFn(Protocol):
    """Puts launches ``first`` to ``stop`` (exclusive) of a run, one stream's, on it, with
    one probe after them, timed or not (only a run of one is timed); None when none of them
    went out (each failure is the caller's to report)."""

    def __call__(self, first: int, stop: int, timed: bool, /) -> LaunchProbe | None: ...


class DispatcherClosed(RuntimeError):
    """A held launch will never be issued: the server is shutting down, or its task ended."""


@dataclass
class _Held:
    """A launch waiting for the policy, and the session thread waiting for it."""

    launch: PendingLaunch
    name: str
    issue: IssueFn
    timed: bool
    issued: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    #: The task whose newest launch it must follow on the GPU (``Policy.behind``).
    behind: int | None = None
    #: When the policy released it (host microseconds); NaN while held.
    released_us: float = math.nan


class _InFlight:
    """Issued launches until their probe says they finished: one launch, or a run of
    untimed launches of one leased task on one stream (``join``), which finishes with its
    newest launch, whose probe ``probe`` then is."""

    __slots__ = (
        "due_us",
        "issued_us",
        "last_kernel_id",
        "launch",
        "name",
        "probe",
        "released_us",
        "replaced",
        "timed",
    )

    def __init__(
        self,
        launch: PendingLaunch,
        name: str,
        probe: LaunchProbe,
        timed: bool,
        issued_us: float,
        due_us: float,
        released_us: float,
    ) -> None:
        self.launch = launch
        self.name = name
        self.probe = probe
        self.timed = timed
        #: When the first launch was on its stream, and when the policy let it go (host
        #: microseconds; its arrival for a launch the policy never held).
        self.issued_us = issued_us
        self.released_us = released_us
        #: When the newest launch should finish (host microseconds): the predicted
        #: durations after those ahead of it on its stream; the tracker checks no sooner.
        self.due_us = due_us
        #: The kernel ID of the run's newest launch.
        self.last_kernel_id = launch.kernel_id
        #: Probes of the run's earlier launches, released with the record.
        self.replaced: list[LaunchProbe] = []

    def join(self, kernel_id: str, probe: LaunchProbe, predicted_us: float, now: float) -> None:
        """The task's next launch on the stream, issued before the run was seen done."""
        self.replaced.append(self.probe)
        self.probe = probe
        self.last_kernel_id = kernel_id
        self.due_us = max(self.due_us, now) + predicted_us

    def release_through(self, probe: LaunchProbe) -> None:
        """Give back the probes of the run's launches up to ``probe``, one of the earlier
        ones, seen done: a run that keeps growing never holds more than one poll's worth."""
        replaced = self.replaced
        done = replaced.index(probe) + 1
        for finished in replaced[:done]:
            finished.release()
        del replaced[:done]

    def release(self) -> None:
        """Give back every probe of the run."""
        for probe in self.replaced:
            probe.release()
        self.probe.release()


#: A record and the probe it had when the tracker looked at it.
_Seen = tuple[_InFlight, LaunchProbe]


@dataclass
class _TaskState:
    priority: int
    client: str
    in_flight: int = 0
    #: (when, kernel ID) of the completion that left the task with nothing in flight.
    idle_since: tuple[float, str] | None = None
    #: The record of its newest launch while that is in flight.
    newest: _InFlight | None = None


#: Longest a session waits for its turn before one call while higher tasks run frames: a
#: higher task's client that stops reading its replies cannot stall lower tasks for good.
TURN_WAIT_S = 0.01
#: What ``running`` gives when no session has to wait for another.
NOTHING_TO_ORDER = contextlib.nullcontext()
#: How many of a stream's oldest launches the tracker checks per poll.
POLL_DEPTH = 64
#: How long the tracker waits at least between polls while no launch is held: completions
#: then only feed the accounting (in flight, idle gaps, durations), so a poll gathers
#: several, and the tracker takes the interpreter from launching sessions less often. Each
#: completion is placed at its predicted end within the time it can have happened
#: (``_finished_at``), not when a poll saw it: idle gaps stay measured to the prediction's
#: accuracy, not the interval's.
IDLE_POLL_INTERVAL_S = 100e-6
#: The same while no launch can be held at all (every task leased: FIFO, a task alone, one
#: priority level): nothing waits for a completion then (on the H200, a session's launch
#: cost 20.3 us with polls 100 us apart, 13.8 with 2 ms).
UNCONTENDED_POLL_INTERVAL_S = 1e-3
#: Longest the tracker waits for a launch predicted to run long before asking its probe.
MAX_POLL_WAIT_S = 0.002
#: A launch held this long is logged once, with the policy's view of every task.
HELD_WARNING_US = 100_000.0


#: Something in flight paired with its probe: launches of one stream, oldest first.
_Tracked = TypeVar("_Tracked", bound=tuple[Any, LaunchProbe])


def done_prefix(tracked: list[_Tracked]) -> list[_Tracked]:
    """The leading entries of one stream whose launches finished (a stream completes in
    order): when the newest is done, all are, for one query instead of one per launch."""
    if tracked[-1][1].done():
        return tracked
    for i, (_, probe) in enumerate(tracked[:-1]):  # the newest was just asked
        if not probe.done():
            return tracked[:i]
    return tracked[:-1]


def _through_task(queue: deque[_InFlight], task_id: int) -> list[_Seen]:
    """A stream's launches in flight up to the newest of task ``task_id`` (none if it has
    none there), each with its probe now: once the task's are done, so are those before."""
    last = -1
    for i, record in enumerate(queue):
        if record.launch.task_id == task_id:
            last = i
    return [(record, record.probe) for record in itertools.islice(queue, last + 1)]


def _finished_at(record: _InFlight, looked_before: float, now: float) -> float:
    """When a launch seen done now most likely finished: its predicted end, within the time
    since it was issued or the tracker looked before, whichever is later."""
    return min(now, max(looked_before, record.issued_us, record.due_us))


def stretches(timed: Sequence[bool]) -> list[tuple[int, int]]:
    """How a run of launches goes out, (first, stop) each: a launch to time alone, those
    between such launches together."""
    if True not in timed:  # most runs: one stretch
        return [(0, len(timed))]
    parts = []
    first = 0
    for i in [i for i, timing in enumerate(timed) if timing]:
        if first < i:
            parts.append((first, i))
        parts.append((i, i + 1))
        first = i + 1
    if first < len(timed):
        parts.append((first, len(timed)))
    return parts


def clock_us() -> float:
    """Host monotonic time in microseconds, the clock policies run on."""
    return time.perf_counter() * 1e6


class Dispatcher:
    """Runs one policy over the launches of all sessions; thread-safe.

    ``trace``: an open text file that receives one JSON line per completed launch (all
    launches are then timed) and one per start and end of a synchronizing call.
    ``poll_interval_s``: how long the tracker waits at least between polls while launches
    are in flight (longer while the oldest unfinished launch of every stream is predicted
    to run on).
    """

    def __init__(
        self,
        policy: Policy,
        profiles: ProfileStore | None = None,
        *,
        trace: IO[str] | None = None,
        poll_interval_s: float = 20e-6,
        clock: Callable[[], float] = clock_us,
    ) -> None:
        self.policy = policy
        self.profiles = profiles
        self.trace = trace
        #: Kernel lines (the tracker) and call lines (sessions' threads) share the file.
        self._trace_lock = threading.Lock()
        self.poll_interval_s = poll_interval_s
        self.clock = clock
        #: Whether launches can be held; FIFO never holds, so it needs no tracker wake-ups.
        self.holds = not isinstance(policy, FifoPolicy)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._seq = itertools.count()
        self._tasks: dict[int, _TaskState] = {}
        #: The tasks the policy leases (``Policy.leased``), renewed as tasks come and go.
        self._leased: frozenset[int] = frozenset()
        #: The tracker's least wait between polls while nothing is held (see ``_lease``).
        self._idle_poll_s = UNCONTENDED_POLL_INTERVAL_S
        self._held: dict[int, _Held] = {}
        self._to_issue: deque[_Held] = deque()
        self._streams: dict[Hashable, deque[_InFlight]] = {}
        self._closed = False
        #: When the policy's next timed event is due (host microseconds), if any.
        self._due: float | None = None
        self.launches = 0
        self.timed_launches = 0
        #: How many times the tracker looked at launches in flight.
        self.polls = 0
        self._cpu = threading.Condition()
        #: Sessions running a frame now, by task priority; the highest such priority.
        self._running: Counter[int] = Counter()
        self._top_running = LOWEST_PRIORITY - 1
        #: How much sooner than the tracker's next poll a new launch must be due to wake it.
        self._poll_slack_us = poll_interval_s * 1e6
        #: When the tracker will poll next: -inf while it polls, inf while nothing is in
        #: flight (a launch that should finish sooner wakes it).
        self._poll_at = math.inf
        #: The held launch last logged for waiting HELD_WARNING_US.
        self._warned_seq = -1
        #: When the tracker last looked at the oldest launches in flight (host microseconds).
        self._looked_us = -math.inf
        #: Told of each task whose credit the policy revoked (``Policy.revoked``): set by
        #: whoever passed the credit on (a front end's GPU workers of one session).
        self.on_credit_revoked: Callable[[int], None] = lambda task_id: None
        self._tracker = threading.Thread(target=self._track, name="fikit-tracker", daemon=True)
        self._tracker.start()

    # -- tasks ---------------------------------------------------------------------------
    def add_task(self, task_id: int, priority: int, client: str = "") -> None:
        """A session starts as task ``task_id`` with ``priority`` (0 lowest .. 9 highest)."""
        with self._lock:
            self.policy.add_task(task_id, priority, self.clock())
            self._tasks[task_id] = _TaskState(priority, client)
            self._lease()

    def remove_task(self, task_id: int) -> None:
        """A session ended; launches it still has in flight are tracked until done."""
        with self._lock:
            dropped = self.policy.remove_task(task_id, self.clock())
            self._tasks.pop(task_id, None)
            self._lease()
            held = [self._held.pop(launch.seq) for launch in dropped if launch.seq in self._held]
            if self._held:
                self._due = self.clock()  # what the task held back may go now
            self._wake.notify()
        for waiting in held:  # their sessions are gone (a GPU worker lost): never issued
            waiting.error = DispatcherClosed("the task ended")
            waiting.issued.set()

    def _lease(self) -> None:
        """Renew the leased tasks, and how often the tracker polls while nothing is held
        (call with the lock held)."""
        self._leased = frozenset(self.policy.leased())
        uncontended = self._tasks.keys() <= self._leased
        self._idle_poll_s = UNCONTENDED_POLL_INTERVAL_S if uncontended else IDLE_POLL_INTERVAL_S

    def stream_priority(self, task_id: int, requested: int, least: int, greatest: int) -> int:
        """The CUDA stream priority to give a stream of the task.

        Under FIFO, what the client asked for. Under the priority policies, the task's
        priority mapped onto the device's range (task 9 gets the greatest): a kernel already
        running when a higher task launches then yields SMs to it block by block, and no
        client can raise its own work above another task's.
        """
        if not self.holds:
            return min(max(requested, greatest), least)
        with self._lock:
            priority = self._tasks[task_id].priority
        span = HIGHEST_PRIORITY - LOWEST_PRIORITY
        return least + round((greatest - least) * (priority - LOWEST_PRIORITY) / span)

    # -- the CPU of the sessions' process --------------------------------------------
    def running(self, priority: int) -> contextlib.AbstractContextManager[object]:
        """A session of a task at ``priority`` runs a frame of calls inside this block
        (entered for every frame: a shared no-op while there is nobody to keep waiting)."""
        if not self.holds or len(self._tasks) < 2:
            return NOTHING_TO_ORDER
        return self._ordered_frame(priority)

    @contextlib.contextmanager
    def _ordered_frame(self, priority: int) -> Iterator[None]:
        with self._cpu:
            self._running[priority] += 1
            self._top_running = max(self._top_running, priority)
        try:
            yield
        finally:
            with self._cpu:
                self._running[priority] -= 1
                if not self._running[priority]:
                    del self._running[priority]
                    self._top_running = max(self._running, default=LOWEST_PRIORITY - 1)
                    self._cpu.notify_all()

    def wait_turn(self, priority: int) -> None:
        """Before each call of a session at ``priority``: wait while a session of a higher
        task runs a frame, for up to TURN_WAIT_S (priority policies only; under FIFO the
        sessions share the CPU as it comes)."""
        if self._top_running <= priority:
            return
        with self._cpu:
            self._cpu.wait_for(lambda: self._top_running <= priority, TURN_WAIT_S)

    def idle(self, task_id: int, work_done: bool) -> None:
        """The task's session waits for its client (``work_done``: it saw all its GPU work
        done). When it saw that while launches are held, its thread, which has the
        interpreter now, does for the task what the tracker would: takes the task's
        launches as finished and issues what the policy releases for that, where the
        tracker would have to win the interpreter first. Not having seen it, the thread
        leaves the looking to the tracker: asking probes here, after every frame, cost the
        high-priority task more than it won (``docs/scheduling-history.md``)."""
        if not (work_done and self._held):
            return
        with self._lock:
            looked_before = self._looked_us
            seen = [s for q in self._streams.values() if (s := _through_task(q, task_id))]
        if seen:
            self._finish(seen, looked_before)
        self._issue_released()

    # -- launches ------------------------------------------------------------------------
    def launch(self, task_id: int, kernel_id: str, name: str, issue: IssueFn) -> None:
        """Issue a launch of ``kernel_id`` now, or block until the policy releases it.

        A task the policy leases issues at once (``launch_run``). Errors of ``issue`` (a
        ``CudaError``) propagate to the caller either way.
        """
        if self.launch_run(task_id, ((kernel_id, name),), lambda _, __, timed: issue(timed)):
            return
        profiles = self.profiles
        timed, predicted = (False, None) if profiles is None else profiles.launch_plan(kernel_id)
        timed = timed or self.trace is not None
        with self._lock:
            if self._closed:
                raise DispatcherClosed("the server is shutting down")
            now = self.clock()
            task, launch = self._arriving(task_id, kernel_id, predicted, now)
            self.policy.arrive(launch, now)
            mine = False
            behind = None
            for released in self.policy.take_issuable(now):
                if released is launch:
                    mine, behind = True, self.policy.behind(launch.seq)
                else:
                    self._queue_released(released, now)
            if mine:
                task.in_flight += 1
            else:
                held = self._held[launch.seq] = _Held(launch, name, issue, timed)
            self._due = self.policy.next_event(now) if self._held else None
            if self._to_issue or not mine:
                self._wake.notify()  # issue what was released; time the held launch's release
            revoked = self.policy.revoked()
        self._tell_revoked(revoked)
        if mine:
            self._issue(launch, name, issue, timed, launch.arrived_us, behind)
            return
        held.issued.wait()
        if held.error is not None:
            raise held.error

    def launch_run(
        self, task_id: int, kernels: Sequence[tuple[str, str]], issue: RunIssueFn
    ) -> bool:
        """Under the task's lease, issue a run of its launches, one stream's, in order:
        ``kernels`` gives each one's (kernel ID, name). Returns False, issuing nothing, when
        the task holds no lease: the caller then launches them one at a time.

        A task the policy leases (``Policy.leased``) issues at once and is counted after,
        under one lock, without asking the policy: the launch path of a task alone, of
        every task under FIFO and of the top level under the priority policies. Its own
        earlier launches cannot be held meanwhile, since each call of a session waits
        until its launch went out. The launches the profiles want measured go out alone,
        timed; those between them go out together, with one probe, and count as one
        launch to the policy (the launches after the first ``joined`` to it).
        """
        if task_id not in self._leased or self._closed:
            return False
        plans = self._plans(kernels)
        for first, stop in stretches([timed for timed, _ in plans]):
            self._issue_leased(task_id, kernels, plans, first, stop, issue)
        return True

    def _plans(self, kernels: Sequence[tuple[str, str]]) -> list[tuple[bool, float | None]]:
        """Whether the profiles want each launch of a run timed, and its predicted duration
        (every launch is timed while a trace is written)."""
        profiles = self.profiles
        if profiles is None:
            plans = [(False, None)] * len(kernels)
        else:
            plans = profiles.launch_plans(kernel_id for kernel_id, _ in kernels)
        if self.trace is not None:
            plans = [(True, predicted) for _, predicted in plans]
        return plans

    def _issue_leased(
        self,
        task_id: int,
        kernels: Sequence[tuple[str, str]],
        plans: list[tuple[bool, float | None]],
        first: int,
        stop: int,
        issue: RunIssueFn,
    ) -> None:
        """Issue launches ``first`` to ``stop`` of a leased task's run, and count them."""
        timed = plans[first][0]
        # Arrived now: the lock may be busy after the issue, and a late stamp would lengthen
        # the task's measured gap by the wait.
        now = self.clock()
        probe = issue(first, stop, timed)
        if probe is None:
            return
        with self._lock:
            if task_id not in self._tasks:
                probe.release()  # the task ended meanwhile: nobody is left to tell
                return
            self._count_run(task_id, kernels, plans, first, stop, probe, timed, now)

    def _count_run(
        self,
        task_id: int,
        kernels: Sequence[tuple[str, str]],
        plans: Sequence[tuple[bool, float | None]],
        first: int,
        stop: int,
        probe: LaunchProbe,
        timed: bool,
        now: float,
    ) -> None:
        """Launches ``first`` to ``stop`` of a run of the task's, issued without asking with
        one probe after them, arrive, count in flight and are tracked (call with the lock
        held). A leased task's launches are one record to the policy and the tracker while
        they follow one another on a stream: they join the stream's last record when that
        is the task's, untimed and not seen done yet (a launch on credit counts in flight on
        its own)."""
        predictions = [predicted for _, predicted in plans[first:stop] if predicted is not None]
        predicted = sum(predictions) if predictions else None
        queue = self._streams.get(probe.stream_key)
        last = queue[-1] if queue and not timed else None
        if (
            last is not None
            and last.launch.task_id == task_id
            and not last.timed
            and task_id in self._leased
        ):
            last.join(kernels[stop - 1][0], probe, predicted or 0.0, now)
            joined = kernels[first:stop]
        else:
            kernel_id, name = kernels[first]
            record = self._count_unasked(task_id, kernel_id, name, probe, timed, predicted, now)
            record.last_kernel_id = kernels[stop - 1][0]
            joined = kernels[first + 1 : stop]
        if joined:
            self.policy.joined(task_id, [kernel_id for kernel_id, _ in joined], now)
            self.launches += len(joined)
        if self._held and self.policy.opens_gap(task_id):
            self._release_behind(now)

    def leased_tasks(self) -> set[int]:
        """Tasks whose launches the policy issues at arrival until a task comes or goes:
        a worker of one such session may issue without asking, then report ``launched``."""
        return set(self._leased)

    def launched(
        self,
        task_id: int,
        kernels: Sequence[tuple[str, str]],
        probe: LaunchProbe,
        timed: bool,
        arrived_us: float | None = None,
    ) -> set[str]:
        """A run of launches that a task issued without asking, one stream's, with one probe
        after them (``kernels``: each one's kernel ID and name), under a lease
        (``leased_tasks``) or, a run of one, on credit (``credit``), at ``arrived_us`` on
        this clock (default: now): it counts and is tracked as a run issued here is.
        Returns the kernel IDs whose next launch by the task the profiles want timed."""
        plans = self._plans(kernels)
        with self._lock:
            if self._closed or task_id not in self._tasks:  # the report outran the task's end
                return set()
            now = self.clock() if arrived_us is None else arrived_us
            self._count_run(task_id, kernels, plans, 0, len(kernels), probe, timed, now)
            revoked = self.policy.revoked()
        self._tell_revoked(revoked)
        return {kernel_id for (kernel_id, _), (measure, _) in zip(kernels, plans) if measure}

    def _count_unasked(
        self,
        task_id: int,
        kernel_id: str,
        name: str,
        probe: LaunchProbe,
        timed: bool,
        predicted: float | None,
        now: float,
    ) -> _InFlight:
        """A launch that went out without asking the policy arrives, counts in flight and
        is tracked (call with the lock held); its record."""
        task, launch = self._arriving(task_id, kernel_id, predicted, now)
        self.policy.issue_now(launch, now)
        task.in_flight += 1
        return self._follow_locked(launch, name, probe, timed, now, now)

    def credit(self, task_id: int, kernel_id: str) -> Credit:
        """After a launch of ``kernel_id`` by the task went out: how many more of it the
        task may issue without asking, and until when (``Policy.credit``); each reported
        with ``launched``."""
        profiles = self.profiles
        predicted = None if profiles is None else profiles.predicted_duration_us(kernel_id)
        if predicted is None:
            return NO_CREDIT
        with self._lock:
            if task_id not in self._tasks:
                return NO_CREDIT
            return self.policy.credit(task_id, kernel_id, predicted, self.clock())

    def _arriving(
        self, task_id: int, kernel_id: str, predicted: float | None, now: float
    ) -> tuple[_TaskState, PendingLaunch]:
        """A launch of the task arrives now: its gap ends (call with the lock held)."""
        task = self._tasks[task_id]
        if task.idle_since is not None:
            since, after = task.idle_since
            task.idle_since = None
            if self.profiles is not None:
                self.profiles.record_gap(after, now - since)
        return task, PendingLaunch(next(self._seq), task_id, kernel_id, predicted, now)

    def call_started(self, task_id: int) -> None:
        """The task's session began a synchronizing call (a copy, a synchronization)."""
        with self._lock:
            now = self.clock()
            self.policy.call_started(task_id, now)
            self._trace_call(task_id, "started", now)
            if self._held and self.policy.opens_gap(task_id):
                self._release_behind(now)
            revoked = self.policy.revoked()
        self._tell_revoked(revoked)

    def _tell_revoked(self, revoked: list[int]) -> None:
        """Pass on the credits the policy revoked (outside the lock: it may send)."""
        for task_id in revoked:
            self.on_credit_revoked(task_id)

    def call_finished(self, task_id: int) -> None:
        """That call ended; the tracker asks the policy what this frees."""
        with self._lock:
            now = self.clock()
            self.policy.call_finished(task_id, now)
            self._trace_call(task_id, "finished", now)
            if self._held:
                self._due = now
                self._wake.notify()

    def _trace_call(self, task_id: int, event: str, now: float) -> None:
        """A trace line for a synchronizing call's start or end, on the host clock (call
        with the lock held): the report times what follows a task's calls with it."""
        if self.trace is None:
            return
        task = self._tasks.get(task_id)
        line = {
            "task": task_id,
            "priority": None if task is None else task.priority,
            "call": event,
            "at_us": round(now, 3),
        }
        with self._trace_lock:
            self.trace.write(json.dumps(line) + "\n")

    def close(self) -> None:
        """Stop the tracker; launches still held fail with ``DispatcherClosed``."""
        with self._lock:
            self._closed = True
            self._wake.notify()
        self._tracker.join()
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for waiting in held:
            waiting.error = DispatcherClosed("the server is shutting down")
            waiting.issued.set()

    def _issue(
        self,
        launch: PendingLaunch,
        name: str,
        issue: IssueFn,
        timed: bool,
        released_us: float,
        behind: int | None = None,
    ) -> None:
        """Put a launch the policy released at ``released_us`` on the GPU, after the newest
        launch of task ``behind`` if that is still in flight, and start tracking it (the
        task already counts it)."""
        try:
            if behind is None:
                probe = issue(timed)
            else:
                with self._lock:  # the tracker gives back no probe meanwhile
                    newest = self._tasks[behind].newest if behind in self._tasks else None
                    probe = issue(timed) if newest is None else issue(timed, newest.probe)
        except BaseException:
            with self._lock:
                self._complete(launch, self.clock())
            raise
        with self._lock:
            self._follow_locked(launch, name, probe, timed, self.clock(), released_us)

    def _follow_locked(
        self,
        launch: PendingLaunch,
        name: str,
        probe: LaunchProbe,
        timed: bool,
        now: float,
        released_us: float,
    ) -> _InFlight:
        """Track an issued launch's probe until it says the launch finished (call with the
        lock held): issued at ``now``, released by the policy at ``released_us``; its
        record."""
        self.launches += 1
        self.timed_launches += timed
        queue = self._streams.get(probe.stream_key)
        if queue is None:
            queue = self._streams[probe.stream_key] = deque()
        starts = max(queue[-1].due_us, now) if queue else now
        due = starts + (launch.predicted_us or 0.0)
        record = _InFlight(launch, name, probe, timed, now, due, released_us)
        queue.append(record)
        task = self._tasks.get(launch.task_id)
        if task is not None:
            task.newest = record
        slack, poll_at = self._poll_slack_us, self._poll_at
        if due + slack < poll_at and self.clock() + slack < poll_at:
            # The tracker would ask too late. A launch that arrived before the tracker's
            # wait began is due from now on: otherwise a session whose short kernels the
            # tracker saw done while it issued the next one woke it for every launch.
            self._wake.notify()
        return record

    def _complete(self, launch: PendingLaunch, now: float, last_kernel_id: str = "") -> None:
        """Tell the policy and the task that a launch (and the run that joined it, whose
        newest kernel was ``last_kernel_id``) finished; call with the lock held."""
        if last_kernel_id and last_kernel_id != launch.kernel_id:
            launch = launch._replace(kernel_id=last_kernel_id)  # the gap follows the newest
        self.policy.completed(launch, now)
        task = self._tasks.get(launch.task_id)
        if task is not None:
            task.in_flight -= 1
            if task.in_flight == 0:
                task.idle_since = (now, launch.kernel_id)

    # -- the tracker thread --------------------------------------------------------------
    def _track(self) -> None:
        """Poll probes, feed completions to the policy, issue what it releases."""
        while True:
            with self._lock:
                while not (self._closed or self._streams or self._to_issue):
                    self._poll_at = math.inf
                    self._wake.wait(self._timer())
                    self._poll_at = -math.inf
                    self._release_if_due()
                self._release_if_due()
                self._warn_if_held_long()
                if self._closed:
                    remaining = [record for queue in self._streams.values() for record in queue]
                    self._streams.clear()
                    break
                looked_before, self._looked_us = self._looked_us, self.clock()
                self.polls += 1
                oldest = [
                    [(record, record.probe) for record in itertools.islice(q, POLL_DEPTH)]
                    for q in self._streams.values()
                ]
            issued = self._issue_released()
            finished = [done for seen in oldest if (done := done_prefix(seen))]
            if finished:
                self._finish(finished, looked_before)
            if not issued:
                # Also after completions: they are then handled in batches, and the tracker
                # does not contend for the lock (or the interpreter) with every launch of a
                # busy session. A short wait sleeps (cheaper); a long one, until launches
                # predicted to run long should be done, is cut short by a launch that
                # should finish sooner.
                with self._lock:
                    wait = 0.0 if self._to_issue or self._closed else self._poll_wait()
                    if wait > self.poll_interval_s:
                        self._poll_at = self.clock() + wait * 1e6
                        self._wake.wait(wait)
                        self._poll_at = -math.inf
                        wait = 0.0
                if wait:
                    time.sleep(wait)
        for record in remaining:
            record.release()

    def _poll_wait(self) -> float:
        """Seconds until the next poll: ``poll_interval_s`` while a launch is held (else
        IDLE_POLL_INTERVAL_S, or UNCONTENDED_POLL_INTERVAL_S while none can be), or longer
        until the oldest launch of every stream is due, at most until the policy's next
        timed event (call with the lock held)."""
        now = self.clock()
        wait = self.poll_interval_s if self._held else max(self.poll_interval_s, self._idle_poll_s)
        self._poll_slack_us = wait * 1e6
        next_due = min((queue[0].due_us for queue in self._streams.values()), default=now)
        if next_due > now:
            wait = min(max(wait, (next_due - now) / 1e6), MAX_POLL_WAIT_S)
        if self._due is not None:
            wait = min(wait, max(0.0, (self._due - now) / 1e6))
        return wait

    def _timer(self) -> float | None:
        """Seconds until the policy's next timed event; None when none is due."""
        return None if self._due is None else max(0.0, (self._due - self.clock()) / 1e6)

    def _release_if_due(self) -> None:
        """Ask the policy again once its next timed event (a task going quiet) is due."""
        if self._due is not None and self.clock() >= self._due:
            self._release(self.clock())

    def _release(self, now: float) -> None:
        """Queue for issue what the policy releases now; call with the lock held.

        The policy is asked only after events (arrivals, completions, its timer) and only
        while launches are held: the tracker never re-evaluates it on a mere poll."""
        if not self._held:
            return
        for released in self.policy.take_issuable(now):
            self._queue_released(released, now)
        self._due = self.policy.next_event(now) if self._held else None

    def _release_behind(self, now: float) -> None:
        """A task's newest launch will open a gap (``Policy.opens_gap``): what the policy
        places behind it goes to the tracker to issue now (call with the lock held)."""
        self._release(now)
        if self._to_issue:
            self._wake.notify()

    def _queue_released(self, launch: PendingLaunch, now: float) -> None:
        """A held launch the policy released now goes to the tracker to issue (call with
        the lock held)."""
        waiting = self._held.pop(launch.seq)
        waiting.released_us = now
        waiting.behind = self.policy.behind(launch.seq)
        self._to_issue.append(waiting)

    def _warn_if_held_long(self) -> None:
        """Log the oldest held launch once it waited HELD_WARNING_US, with the policy's view
        and what is in flight on each stream (call with the lock held)."""
        if not self._held:
            return
        seq, oldest = next(iter(self._held.items()))
        now = self.clock()
        if seq == self._warned_seq or now - oldest.launch.arrived_us < HELD_WARNING_US:
            return
        self._warned_seq = seq
        in_flight = {
            str(key): (len(queue), queue[0].launch.task_id, round(now - queue[0].issued_us))
            for key, queue in self._streams.items()
        }
        log.warning(
            "task %d's launch of %s held for %.0f ms; policy: %s; in flight by stream "
            "(launches, task of the oldest, its age in us): %s",
            oldest.launch.task_id,
            oldest.name,
            (now - oldest.launch.arrived_us) / 1e3,
            self.policy.describe(now),
            in_flight,
        )

    def _issue_released(self) -> bool:
        """Issue the launches the policy released (``_to_issue``); whether there were any.
        A session has at most one launch held, so threads issuing at once keep each
        stream's order."""
        with self._lock:
            to_issue, self._to_issue = self._to_issue, deque()
        for waiting in to_issue:
            self._issue_held(waiting)
        return bool(to_issue)

    def _issue_held(self, waiting: _Held) -> None:
        with self._lock:
            task = self._tasks.get(waiting.launch.task_id)
            if task is not None:
                task.in_flight += 1
        try:
            self._issue(
                waiting.launch,
                waiting.name,
                waiting.issue,
                waiting.timed,
                waiting.released_us,
                waiting.behind,
            )
        except BaseException as err:
            waiting.error = err
        waiting.issued.set()

    def _finish(self, finished: list[list[_Seen]], looked_before: float) -> None:
        """Account for completed launches (the done prefix of each stream looked at):
        policy, profiles, trace; then release more. A run that grew after the look is not
        done, nor is anything after it on its stream; a launch another look finished
        meanwhile (the tracker's, or an idle session's) is not finished twice."""
        lines = []
        done: list[_InFlight] = []
        with self._lock:
            now = seen_us = self.clock()
            for seen in finished:
                key = seen[0][1].stream_key
                queue = self._streams.get(key)
                if queue is None:
                    continue
                for record, probe in seen:
                    if not queue or queue[0] is not record:  # finished by another look
                        break
                    if record.probe is not probe:  # the run grew since the look
                        record.release_through(probe)
                        break
                    queue.popleft()
                    task = self._tasks.get(record.launch.task_id)
                    if task is not None and task.newest is record:
                        task.newest = None  # its probe goes back to the backend below
                    at = _finished_at(record, looked_before, now)
                    self._complete(record.launch, at, record.last_kernel_id)
                    done.append(record)
                if not queue:
                    del self._streams[key]
            self._release(now)
        for record in done:
            times = record.probe.times_us() if record.timed else None
            record.release()
            if times is None:
                continue
            start, end = times
            if self.profiles is not None:
                self.profiles.record_duration(record.launch.kernel_id, record.name, end - start)
            if self.trace is not None:
                task = self._tasks.get(record.launch.task_id)
                lines.append(
                    json.dumps(
                        {
                            "task": record.launch.task_id,
                            "priority": None if task is None else task.priority,
                            "client": "" if task is None else task.client,
                            "kernel": record.name,
                            "kernel_id": record.launch.kernel_id,
                            "predicted_us": record.launch.predicted_us,
                            "arrived_us": round(record.launch.arrived_us, 3),
                            "released_us": round(record.released_us, 3),
                            "issued_us": round(record.issued_us, 3),
                            "start_us": round(start, 3),
                            "end_us": round(end, 3),
                            "seen_us": round(seen_us, 3),
                        }
                    )
                )
        if lines:
            with self._trace_lock:
                self.trace.write("\n".join(lines) + "\n")
