"""Launch scheduling policies as pure logic over a virtual clock: FIFO, strict priority, FIKIT.

A policy sees every kernel launch of every task and decides when each may go to the GPU.
Times are floats in microseconds given by the caller; a policy never reads a clock, starts a
thread or touches CUDA. The caller drives it with events:

- ``add_task`` / ``remove_task`` when a task (a client session) comes and goes;
- ``arrive`` when a task wants to launch a kernel;
- ``take_issuable`` after any event, to get the launches that may go to the GPU now, in the
  order to issue them; a launch counts as in flight from the moment it is handed out;
- ``issued`` once a launch is on the GPU, ``completed`` once the GPU finished it (also when
  issuing it failed, so that it stops counting as in flight);
- ``next_event`` to learn when to call ``take_issuable`` again if nothing else happens;
- ``call_started`` / ``call_finished`` around a task's synchronizing work other than
  kernels (a copy, a synchronization): the task is busy meanwhile, so its idle gap opens
  only when its result is on its way back, not while it is still being produced. Its
  kernels may all be done before the call is (a result copy): the SMs are free then, and
  FIKIT fills that time as part of the gap the call ends in.

A task's *gap* after a kernel is its idle time from that kernel's completion to its next
launch, not counting the time its calls ran in between: a request's tail (copy the result
back, synchronize) and the next request's head (copy the input in) split one gap into
stretches, and lower-priority work may fill each stretch against what is left of the whole.

Every policy keeps each task's launches in arrival order: a held launch blocks all later
launches of its task. Priorities go from 0 (lowest) to 9 (highest).

A task is *busy* while it has a launch held or in flight or a call under way. It is *active*
from its first launch until it has not been busy for ``quiet_after_us`` (under FIKIT, or for
longer than the gaps of that kind it came back from); only active tasks hold back lower
priorities. A task that is not active is *quiet*.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

LOWEST_PRIORITY = 0
HIGHEST_PRIORITY = 9
#: Marks the key of a gap in which a synchronizing call ended (see ``_Task.gap_key``).
GAP_AFTER_CALL = "+call"
#: Under FIKIT a task goes quiet only once idle this many times the longest recent gap of
#: the kind it is in (``FikitPolicy._quiet_after``).
QUIET_GAP_MARGIN = 1.25
#: How many of a kernel's recent launches must each have been a task's last before a gap
#: for lower work to be placed behind the next one before it finishes (``arm_behind``).
OPENS_KEPT = 8


class PendingLaunch(NamedTuple):
    """A kernel launch that a task wants to make (a tuple: made on every launch)."""

    #: Global arrival order, unique.
    seq: int
    task_id: int
    #: Stable kernel identity (content digest + name + launch geometry).
    kernel_id: str
    #: Predicted duration from the profile; None when the kernel was never measured.
    predicted_us: float | None
    #: Host time (microseconds) at which it reached the scheduler.
    arrived_us: float = 0.0


class Credit(NamedTuple):
    """A window in which a task may issue launches of one kernel ID without asking.

    The task keeps at most ``count`` launches in flight at once (by its own count of those
    not yet finished, the launch that got the credit included), and issues one only if,
    queued behind those, it is predicted to finish by ``until``: ``now + (in_flight + 1) *
    cost_us <= until``. Of its bound on lower-priority work in flight, the policy reserves
    for the task meanwhile what the window may still put in flight. Whoever issues can check this
    against its own completions, as they happen, instead of asking for each launch.
    """

    kernel_id: str
    count: int
    #: The predicted duration of one launch of ``kernel_id`` (microseconds).
    cost_us: float
    #: Host time (microseconds) by which the task's launches must be predicted to finish;
    #: ``math.inf`` for a credit that lasts until the policy revokes it (``revoked``).
    until: float

    def allows(self, kernel_id: str, in_flight: int, now: float) -> bool:
        """Whether a launch of ``kernel_id`` may go unasked at ``now``, with ``in_flight``
        launches of the task not yet finished."""
        return (
            kernel_id == self.kernel_id
            and in_flight < self.count
            and now + (in_flight + 1) * self.cost_us <= self.until
        )


NO_CREDIT = Credit("", 0, 0.0, 0.0)


class Policy(Protocol):
    """Decides when each task's launches may go to the GPU."""

    name: str

    def add_task(self, task_id: int, priority: int, now: float) -> None:
        """A task with ``priority`` (0 lowest .. 9 highest) starts."""

    def remove_task(self, task_id: int, now: float) -> tuple[PendingLaunch, ...]:
        """A task ends; its held launches are dropped and returned."""

    def arrive(self, launch: PendingLaunch, now: float) -> None:
        """A task wants to launch a kernel."""

    def take_issuable(self, now: float) -> list[PendingLaunch]:
        """The launches allowed to go to the GPU now, in issue order, no longer held."""

    def issue_now(self, launch: PendingLaunch, now: float) -> None:
        """A launch that went to the GPU without being held (a task with a lease, see
        ``leased``): it arrives and is in flight at once."""

    def joined(self, task_id: int, kernel_ids: Sequence[str], now: float) -> None:
        """Launches of ``kernel_ids``, in order, went to the GPU without arriving on their
        own: the caller counts them with the task's launch in flight before them on their
        stream (one record, completed once, with the newest kernel's ID). The last is the
        task's newest."""

    def behind(self, seq: int) -> int | None:
        """For a launch just handed out by ``take_issuable``: the task whose newest launch
        it must follow on the GPU (it starts once that one has finished), or None."""

    def opens_gap(self, task_id: int) -> bool:
        """Whether the task's newest launch, in flight, will open a gap that lower launches
        may be placed behind now: worth a ``take_issuable`` after it went out unasked or
        the task began a call, though nothing completed."""

    def leased(self) -> set[int]:
        """The tasks whose launches this policy issues at arrival whatever else happens,
        until a task is added or removed: they may launch without asking."""

    def credit(self, task_id: int, kernel_id: str, cost_us: float, now: float) -> Credit:
        """After a launch of the task went out: the window in which it may issue launches
        of ``kernel_id`` (``cost_us`` each) without asking (``Credit``); each, once issued,
        arrives with ``issue_now``."""

    def revoked(self) -> list[int]:
        """The tasks whose credit without a deadline ended since the last call (a higher
        task became active): they must ask again before their next launch."""

    def issued(self, launch: PendingLaunch, now: float) -> None:
        """A launch handed out by ``take_issuable`` went to the GPU."""

    def completed(self, launch: PendingLaunch, now: float) -> None:
        """The GPU finished a launch (or issuing it failed); ``now`` may be the caller's
        estimate of when, earlier than events it reported since."""

    def next_event(self, now: float) -> float | None:
        """The next time ``take_issuable`` may return more with no other event, or None."""

    def call_started(self, task_id: int, now: float) -> None:
        """The task began synchronizing work other than a kernel: it is busy."""

    def call_finished(self, task_id: int, now: float) -> None:
        """That work ended."""

    def describe(self, now: float) -> dict[str, Any]:
        """The policy's view at ``now`` for a log line: per task, why it is busy or idle."""


@dataclass(eq=False)
class _Task:
    """What a policy knows about one task (compared by identity: two tasks may look alike)."""

    task_id: int
    priority: int
    held: deque[PendingLaunch] = field(default_factory=deque)
    in_flight: int = 0
    in_call: bool = False
    launched: bool = False
    #: The kernel ID of its newest launch (kept by ``FikitPolicy`` with ``arm_behind``).
    newest_kernel: str = ""
    #: When the task last stopped being busy; None while busy or before its first launch.
    idle_since: float | None = None
    #: When its last synchronizing call ended: a completion reported at an earlier time (the
    #: caller's estimate of when the launch ended) opens no idle time before it.
    call_ended: float = float("-inf")
    #: Idle time of the current gap before its current stretch (calls split a gap).
    idle_before: float = 0.0
    #: The kernel whose completion opened the current gap, until the next launch.
    idle_after_kernel: str = ""
    #: Whether a synchronizing call ended since the task's last launch (a request's result
    #: copy): the long gap between requests then stands apart from the short ones after
    #: the same kernel within a request.
    called_since_launch: bool = False

    @property
    def gap_key(self) -> str:
        """The current gap's key: the kernel that opened it, and whether a call ended in it."""
        kernel = self.idle_after_kernel
        return f"{kernel}{GAP_AFTER_CALL}" if self.called_since_launch else kernel

    @property
    def busy(self) -> bool:
        return self.launching or self.in_call

    @property
    def launching(self) -> bool:
        """Whether the task has launches held or on the GPU."""
        return bool(self.held) or self.in_flight > 0

    def went_idle(self, now: float) -> None:
        """Open an idle gap now, unless the task is busy or never launched."""
        if not self.busy and self.launched:
            self.idle_since = now

    def idle_for(self, now: float) -> float:
        """Idle time of the current gap so far, its calls not counted."""
        stretch = 0.0 if self.idle_since is None else now - self.idle_since
        return self.idle_before + stretch

    def quiet_at(self, quiet_after_us: float) -> float | None:
        """When an idle task stops being active; None if it is busy or never launched."""
        return None if self.idle_since is None else self.idle_since + quiet_after_us


class _QueuedPolicy:
    """Bookkeeping shared by all policies: per-task held queues, launches in flight, activity.

    Launches of tasks at or above ``_free_floor`` are issued at once, in arrival order across
    tasks; a subclass may then release launches from below the floor with ``_fill``.
    """

    name: str

    def __init__(self, quiet_after_us: float = 2000.0) -> None:
        if quiet_after_us < 0:
            raise ValueError("quiet_after_us must be >= 0")
        self.quiet_after_us = quiet_after_us
        self._tasks: dict[int, _Task] = {}
        #: The tasks, highest priority first (in order of arrival within a level).
        self._ordered: list[_Task] = []
        #: Launches held, over all tasks.
        self._held_count = 0
        #: seq -> (priority of its task, the launch), from hand-out to completion.
        self._in_flight: dict[int, tuple[int, PendingLaunch]] = {}

    def add_task(self, task_id: int, priority: int, now: float) -> None:
        """Start tracking a task; it becomes active with its first launch."""
        if not LOWEST_PRIORITY <= priority <= HIGHEST_PRIORITY:
            raise ValueError(
                f"priority {priority} is outside {LOWEST_PRIORITY}..{HIGHEST_PRIORITY}"
            )
        if task_id in self._tasks:
            raise ValueError(f"task {task_id} was already added")
        task = self._tasks[task_id] = _Task(task_id, priority)
        self._ordered.append(task)
        self._ordered.sort(key=lambda t: -t.priority)

    def remove_task(self, task_id: int, now: float) -> tuple[PendingLaunch, ...]:
        """Forget a task at once; its held launches are dropped and returned.

        Its launches already in flight still count as in flight until they complete.
        """
        task = self._tasks.pop(task_id, None)
        if task is None:
            return ()
        self._ordered.remove(task)
        self._held_count -= len(task.held)
        return tuple(task.held)

    def arrive(self, launch: PendingLaunch, now: float) -> None:
        """Queue a launch behind the task's earlier ones; the task must have been added."""
        task = self._arrived(launch, now)
        task.held.append(launch)
        self._held_count += 1

    def issue_now(self, launch: PendingLaunch, now: float) -> None:
        """A launch issued without being held: it arrives and counts in flight at once."""
        self._count_in_flight(self._arrived(launch, now), launch)

    def joined(self, task_id: int, kernel_ids: Sequence[str], now: float) -> None:
        """Nothing to do: only ``FikitPolicy`` with ``arm_behind`` needs a task's newest
        kernel."""

    def behind(self, seq: int) -> int | None:
        """None: launches go to the GPU unordered against other tasks'."""
        return None

    def opens_gap(self, task_id: int) -> bool:
        """False: no launch is placed behind another task's."""
        return False

    def leased(self) -> set[int]:
        """Every task: launches of tasks at or above the free floor go at arrival, and
        the floor is the lowest priority unless a subclass raises it."""
        return set(self._tasks)

    def credit(self, task_id: int, kernel_id: str, cost_us: float, now: float) -> Credit:
        """None: a launch either goes at arrival or waits for the policy."""
        return NO_CREDIT

    def revoked(self) -> list[int]:
        """None: no credit is given."""
        return []

    def take_issuable(self, now: float) -> list[PendingLaunch]:
        """Hand out every launch at or above the free floor, then what ``_fill`` releases."""
        floor = self._free_floor(now)
        free: list[PendingLaunch] = []
        for task in self._ordered:
            if task.priority < floor:
                break
            while task.held:
                free.append(self._hand_out(task))
        if len(free) > 1:
            free.sort(key=lambda launch: launch.seq)
        if self._held_count:
            free += self._fill(floor, now)
        return free

    def issued(self, launch: PendingLaunch, now: float) -> None:
        """Nothing to do: a launch counts as in flight from the moment it is handed out."""

    def completed(self, launch: PendingLaunch, now: float) -> None:
        """Stop counting the launch; its task goes idle if that was its last one."""
        if self._in_flight.pop(launch.seq, None) is None:
            raise ValueError(f"launch {launch.seq} is not in flight")
        task = self._tasks.get(launch.task_id)
        if task is None:
            return
        task.in_flight -= 1
        task.idle_after_kernel = launch.kernel_id
        task.idle_before = 0.0
        task.went_idle(max(now, task.call_ended))

    def call_started(self, task_id: int, now: float) -> None:
        """The task is busy until ``call_finished``; its current idle stretch ends here.
        The gap it is in, or the one its launches in flight open, ends after a call."""
        task = self._tasks.get(task_id)
        if task is not None:
            task.idle_before = task.idle_for(now)
            task.idle_since = None
            task.in_call = True
            task.called_since_launch = True

    def call_finished(self, task_id: int, now: float) -> None:
        """The task's call ended: its idle gap opens unless launches keep it busy."""
        task = self._tasks.get(task_id)
        if task is not None:
            task.in_call = False
            task.call_ended = now
            task.went_idle(now)

    def next_event(self, now: float) -> float | None:
        """While launches are held, the earliest time an idle active task goes quiet."""
        if not self._held_count:
            return None
        times = [
            at
            for task in self._tasks.values()
            if (at := task.quiet_at(self._quiet_after(task))) is not None and at > now
        ]
        return min(times, default=None)

    def active_priority(self, now: float) -> int | None:
        """The highest priority among active tasks, or None when every task is quiet."""
        for task in self._ordered:
            if self._active(task, now):
                return task.priority
        return None

    def describe(self, now: float) -> dict[str, Any]:
        """Per task: priority, held and in-flight launches, whether in a call, idle time,
        whether active; with the free floor."""
        return {
            "floor": self._free_floor(now),
            "tasks": {task.task_id: self._describe_task(task, now) for task in self._ordered},
        }

    def _describe_task(self, task: _Task, now: float) -> dict[str, Any]:
        return {
            "priority": task.priority,
            "held": len(task.held),
            "in_flight": task.in_flight,
            "in_call": task.in_call,
            "idle_us": None if task.idle_since is None else round(task.idle_for(now), 1),
            "active": self._active(task, now),
        }

    def _active(self, task: _Task, now: float) -> bool:
        """Busy, or idle for less than its quiet threshold."""
        if task.busy:
            return True
        return task.idle_since is not None and now - task.idle_since < self._quiet_after(task)

    def _quiet_after(self, task: _Task) -> float:
        """How long the task may stay idle and still hold lower priorities back."""
        return self.quiet_after_us

    def _free_floor(self, now: float) -> int:
        """Tasks at or above this priority have all their launches issued at once."""
        return LOWEST_PRIORITY

    def _fill(self, floor: int, now: float) -> list[PendingLaunch]:
        """Head launches from below ``floor`` released now, handed out with ``_hand_out``;
        asked only while some are held."""
        return []

    def _arrived(self, launch: PendingLaunch, now: float) -> _Task:
        """The launch's task launches again: report the gap a kernel's completion opened,
        if any; the task is launching from now on."""
        task = self._tasks[launch.task_id]
        task.launched = True
        self._launched_again(task, launch.kernel_id)
        if task.idle_after_kernel and (task.idle_since is not None or task.idle_before):
            # An arrival stamped before a completion placed by a later poll: no gap.
            self._gap_ended(task.task_id, task.gap_key, max(0.0, task.idle_for(now)))
        task.idle_since = None
        task.idle_before = 0.0
        task.idle_after_kernel = ""
        task.called_since_launch = False
        return task

    def _gap_ended(self, task_id: int, key: str, gap_us: float) -> None:
        """A task launched again after ``gap_us`` of idle time in the gap ``key``
        (``_Task.gap_key``)."""

    def _launched_again(self, task: _Task, kernel_id: str) -> None:
        """The task launches ``kernel_id`` (call before its gap bookkeeping changes)."""

    def _hand_out(self, task: _Task) -> PendingLaunch:
        """Take the task's head launch out of its queue and count it in flight."""
        launch = task.held.popleft()
        self._held_count -= 1
        self._count_in_flight(task, launch)
        return launch

    def _count_in_flight(self, task: _Task, launch: PendingLaunch) -> None:
        task.in_flight += 1
        self._in_flight[launch.seq] = (task.priority, launch)


class FifoPolicy(_QueuedPolicy):
    """First come, first served: every launch is issuable as soon as it arrives."""

    name = "fifo"


class PriorityPolicy(_QueuedPolicy):
    """Strict priority at kernel boundaries: a launch waits while any higher task is active."""

    name = "priority"

    def _free_floor(self, now: float) -> int:
        top = self.active_priority(now)
        return LOWEST_PRIORITY if top is None else top

    def leased(self) -> set[int]:
        """The tasks at the highest priority there is: the floor never rises above them."""
        top = self._ordered[0].priority if self._ordered else LOWEST_PRIORITY
        return {task.task_id for task in self._ordered if task.priority == top}


class GapPredictor:
    """Learns tasks' idle gaps online and predicts them conservatively.

    A gap is keyed by its task and by the kernel whose completion opened it: an inference
    step repeats the same kernels with the same host work after each, so the gap after a given
    kernel is much more regular than the task's gaps overall (the FIKIT paper predicts gaps per
    kernel too). The key also says whether a synchronizing call ended in the gap: a model
    often ends a request with the same kernel it uses inside it (a layer norm), and the long
    pause after the request's result copy must not share samples with the short host work
    after that kernel mid-request. Each key keeps its last ``window`` samples; the
    prediction is their ``percentile`` (low, so that mistakes protect the high-priority
    task), and 0 (nothing fits) for a key without samples.
    """

    def __init__(self, window: int = 64, percentile: float = 0.25) -> None:
        if window < 1 or not 0.0 <= percentile <= 1.0:
            raise ValueError("need window >= 1 and 0 <= percentile <= 1")
        self.window = window
        self.percentile = percentile
        self._samples: dict[int, dict[str, deque[float]]] = {}
        #: By (task, kernel): whether each of its last OPENS_KEPT launches that no call
        #: followed was the task's last before an idle gap (False: the task launched again
        #: while it ran).
        self._opens: dict[tuple[int, str], deque[bool]] = {}
        #: (prediction, longest sample) already computed since the last sample of their key.
        self._stats: dict[tuple[int, str], tuple[float, float]] = {}

    def record(self, task_id: int, after_kernel: str, gap_us: float) -> None:
        """Add one observed gap."""
        by_kernel = self._samples.setdefault(task_id, {})
        by_kernel.setdefault(after_kernel, deque(maxlen=self.window)).append(gap_us)
        self._stats.pop((task_id, after_kernel), None)

    def predict(self, task_id: int, after_kernel: str) -> float:
        """The predicted length of the gap opened by ``after_kernel``'s completion."""
        return self._stats_of(task_id, after_kernel)[0]

    def record_opening(self, task_id: int, kernel: str, opened: bool) -> None:
        """Whether the task's launch of ``kernel`` was its last before an idle gap."""
        kept = self._opens.get((task_id, kernel))
        if kept is None:
            kept = self._opens[(task_id, kernel)] = deque(maxlen=OPENS_KEPT)
        kept.append(opened)

    def always_opens(self, task_id: int, kernel: str) -> bool:
        """Whether each of the task's last OPENS_KEPT launches of ``kernel`` (no call
        after it) was its last before an idle gap."""
        kept = self._opens.get((task_id, kernel))
        return kept is not None and len(kept) == OPENS_KEPT and all(kept)

    def longest(self, task_id: int, after_kernel: str) -> float:
        """The longest kept gap opened by ``after_kernel``'s completion (0 without any)."""
        return self._stats_of(task_id, after_kernel)[1]

    def _stats_of(self, task_id: int, after_kernel: str) -> tuple[float, float]:
        stats = self._stats.get((task_id, after_kernel))
        if stats is not None:
            return stats
        samples = self._samples.get(task_id, {}).get(after_kernel)
        if not samples:
            return (0.0, 0.0)
        ordered = sorted(samples)
        stats = self._stats[(task_id, after_kernel)] = (
            ordered[int(self.percentile * (len(ordered) - 1))],
            ordered[-1],
        )
        return stats

    def samples(self, task_id: int) -> dict[str, tuple[float, ...]]:
        """The task's kept samples, oldest first, by the kernel that opened the gap."""
        return {k: tuple(v) for k, v in self._samples.get(task_id, {}).items()}

    def forget(self, task_id: int) -> None:
        """Drop a task's samples."""
        self._samples.pop(task_id, None)
        self._stats = {k: v for k, v in self._stats.items() if k[0] != task_id}
        self._opens = {k: v for k, v in self._opens.items() if k[0] != task_id}


class FikitPolicy(PriorityPolicy):
    """FIKIT: strict priority, plus lower-priority kernels fitted into the top task's idle gaps.

    Let H be the highest priority among active tasks. Launches at H are issued at once. While
    every active task at H is in an idle gap (nothing held, nothing in flight, perhaps in a
    call such as a result copy), held launches
    from below H are released by BestPrioFit: highest level first, and within a level the
    task head launch with the largest predicted duration that fits, ties to the earliest. A
    launch fits when the predicted duration of all lower-priority work in flight, itself
    included, is at most both ``gap_margin`` times the remaining predicted gap and
    ``max_lp_inflight_us``. On a GPU that runs kernels in issue order, that bound is the most
    a correct duration prediction lets lower-priority work delay an H launch that arrives
    early; a duration ``k`` times too short raises it to ``k * max_lp_inflight_us``. The bound
    does not cover work issued while no task at H was active (before its first launch, or
    after it went quiet), when lower levels run freely. So a task goes quiet only once idle
    for ``quiet_after_us`` and for ``QUIET_GAP_MARGIN`` times the longest kept gap of the
    kind it is in: within pauses it has come back from, lower levels stay bounded.

    Gaps predicted shorter than ``min_gap_us`` are not filled: where the sessions share one
    Python interpreter, releasing and issuing lower work takes it from the top task's
    session, whose next call comes within such a gap.

    Launches never measured (``predicted_us`` None) count as ``default_unknown_us``, by
    default ``max_lp_inflight_us``: they fit only a gap of at least
    ``max_lp_inflight_us / gap_margin`` with no other lower-priority work in flight.

    Gaps are learnt by a ``GapPredictor`` from the events the policy sees: a sample is the
    time from the completion that left a task idle to that task's next arrival.

    With ``arm_behind``, the gap need not have begun: while the task at H has launches in
    flight and none held, and its newest launch will open a gap (it is in a synchronizing
    call, or that kernel's last ``OPENS_KEPT`` launches each opened one), lower launches
    are fitted into that gap's whole prediction and handed out to follow the task's newest
    launch on the GPU (``behind``): they start as it ends, not once a poll has seen it
    end. Only for a caller that can order launches of different tasks on the GPU (CUDA
    events, one process); a launch that comes sooner than predicted runs beside them,
    within the same bound.
    """

    name = "fikit"

    def __init__(
        self,
        max_lp_inflight_us: float = 200.0,
        gap_margin: float = 0.9,
        quiet_after_us: float = 2000.0,
        default_unknown_us: float | None = None,
        gap_window: int = 64,
        gap_percentile: float = 0.25,
        arm_behind: bool = False,
        min_gap_us: float = 0.0,
    ) -> None:
        super().__init__(quiet_after_us)
        self.arm_behind = arm_behind
        self.min_gap_us = min_gap_us
        #: Launches handed out to follow a task's newest launch: seq -> that task.
        self._behind: dict[int, int] = {}
        if max_lp_inflight_us < 0 or min_gap_us < 0 or not 0.0 <= gap_margin <= 1.0:
            raise ValueError(
                "need max_lp_inflight_us >= 0, min_gap_us >= 0 and 0 <= gap_margin <= 1"
            )
        self.max_lp_inflight_us = max_lp_inflight_us
        self.gap_margin = gap_margin
        self.default_unknown_us = (
            max_lp_inflight_us if default_unknown_us is None else default_unknown_us
        )
        self.gaps = GapPredictor(gap_window, gap_percentile)
        #: Credits granted to lower tasks (``credit``), by task, until void, replaced, or the
        #: task asks again (a synchronizing call keeps it: a batch job's next iteration uses it).
        self._credits: dict[int, Credit] = {}
        #: Tasks whose credit without a deadline a higher task's activity ended (``revoked``).
        self._revoked: list[int] = []

    def gap_samples(self, task_id: int) -> dict[str, tuple[float, ...]]:
        """The task's learnt gap samples, by the kernel that opened the gap."""
        return self.gaps.samples(task_id)

    def describe(self, now: float) -> dict[str, Any]:
        """Adds, per task, its gap's key, predicted length and quiet threshold and its
        credit; and the room below the floor (None while a task at the floor launches)."""
        view = super().describe(now)
        view["room_us"] = self._room(view["floor"], now)
        return view

    def _describe_task(self, task: _Task, now: float) -> dict[str, Any]:
        key = task.gap_key
        credit = self._credits.get(task.task_id)
        return {
            **super()._describe_task(task, now),
            "gap": key,
            "gap_predicted_us": round(self.gaps.predict(task.task_id, key), 1),
            "quiet_after_us": round(self._quiet_after(task), 1),
            "credit": None if credit is None else (credit.count, round(credit.until - now, 1)),
        }

    def remove_task(self, task_id: int, now: float) -> tuple[PendingLaunch, ...]:
        """Forget the task and its gap samples; its held launches are dropped and returned."""
        self.gaps.forget(task_id)
        self._credits.pop(task_id, None)
        return super().remove_task(task_id, now)

    def arrive(self, launch: PendingLaunch, now: float) -> None:
        """A task that asks again has no use for what is left of its credit: it goes."""
        self._credits.pop(launch.task_id, None)
        self._end_free_credits_below(launch.task_id)
        super().arrive(launch, now)

    def issue_now(self, launch: PendingLaunch, now: float) -> None:
        self._end_free_credits_below(launch.task_id)
        super().issue_now(launch, now)

    def call_started(self, task_id: int, now: float) -> None:
        self._end_free_credits_below(task_id)
        super().call_started(task_id, now)

    def revoked(self) -> list[int]:
        revoked, self._revoked = self._revoked, []
        return revoked

    def _end_free_credits_below(self, task_id: int) -> None:
        """The task is busy, so active: the credits without a deadline of tasks below it,
        given while nothing above them was active, end (``revoked``)."""
        if not self._credits:
            return
        task = self._tasks.get(task_id)
        if task is None:
            return
        for other, credit in list(self._credits.items()):
            if credit.until == math.inf and self._tasks[other].priority < task.priority:
                del self._credits[other]
                self._revoked.append(other)

    def credit(self, task_id: int, kernel_id: str, cost_us: float, now: float) -> Credit:
        """While the top level sits in a gap and the task is below it: a window of as many
        launches of ``kernel_id`` in flight at once as the room left in the gap holds, the
        task's own launches in flight included, until the predicted rest of the gap (times
        ``gap_margin``) is over. While no higher task is active, the task's launches go at
        arrival anyway: a window of ``max_lp_inflight_us`` of them in flight, with no
        deadline, until a higher task is busy (``revoked``); that is also what it may have
        in flight when one comes back. Else none."""
        task = self._tasks.get(task_id)
        self._credits.pop(task_id, None)  # a new credit replaces the old
        if task is None or cost_us <= 0:
            return NO_CREDIT
        floor = self._free_floor(now)
        if task.priority >= floor:
            count = max(1, int(self.max_lp_inflight_us // cost_us))
            free = Credit(kernel_id, count, cost_us, math.inf)
            self._credits[task_id] = free
            return free
        fit = self._room(floor, now)
        if fit is None or fit[2] is not None:
            return NO_CREDIT  # a launch on credit could not follow the top task's
        room, remaining, _ = fit
        own_count, own_cost = self._own_in_flight(task_id)
        count = int((room + own_cost) // cost_us)
        if count <= own_count:
            return NO_CREDIT
        credit = Credit(kernel_id, count, cost_us, now + remaining * self.gap_margin)
        self._credits[task_id] = credit
        return credit

    def cost_us(self, launch: PendingLaunch) -> float:
        """The duration used for fitting: the prediction, or ``default_unknown_us``."""
        return self.default_unknown_us if launch.predicted_us is None else launch.predicted_us

    def behind(self, seq: int) -> int | None:
        """The task whose newest launch a launch handed out to fill its coming gap must
        follow on the GPU (``arm_behind``), or None."""
        return self._behind.pop(seq, None) if self._behind else None

    def _gap_ended(self, task_id: int, key: str, gap_us: float) -> None:
        self.gaps.record(task_id, key, gap_us)

    def joined(self, task_id: int, kernel_ids: Sequence[str], now: float) -> None:
        """With ``arm_behind``: each launch in turn is the task's newest
        (``_launched_again``)."""
        if self.arm_behind and (task := self._tasks.get(task_id)) is not None:
            for kernel_id in kernel_ids:
                self._launched_again(task, kernel_id)

    def _launched_again(self, task: _Task, kernel_id: str) -> None:
        """With ``arm_behind``: learn whether the task's newest launch opened a gap (no
        call since it); ``kernel_id`` is its newest now. Else nothing: the launch path
        pays for none of it."""
        if not self.arm_behind:
            return
        if task.newest_kernel and not task.called_since_launch:
            self.gaps.record_opening(task.task_id, task.newest_kernel, not task.launching)
        task.newest_kernel = kernel_id

    def opens_gap(self, task_id: int) -> bool:
        """Whether lower launches may now be placed behind the task's newest (see
        ``_coming_gap``)."""
        task = self._tasks.get(task_id)
        return task is not None and task.launching and self._coming_gap(task) is not None

    def _coming_gap(self, task: _Task) -> str | None:
        """For a task with launches in flight and none held, with ``arm_behind``: the key
        of the gap its newest launch will open, if it surely opens one; else None."""
        if not self.arm_behind or task.held or not task.newest_kernel:
            return None
        if task.in_call:
            return f"{task.newest_kernel}{GAP_AFTER_CALL}"
        if task.called_since_launch or not self.gaps.always_opens(task.task_id, task.newest_kernel):
            return None
        return task.newest_kernel

    def _quiet_after(self, task: _Task) -> float:
        """``quiet_after_us``, or longer for a task in a gap of a kind it has come back
        from after longer (``QUIET_GAP_MARGIN`` times the longest kept): a server whose
        requests come 3 ms apart is not quiet 2 ms into each pause, and lower priorities,
        fitted into the pause by prediction, do not run unbounded into its next request."""
        longest = self.gaps.longest(task.task_id, task.gap_key)
        return max(self.quiet_after_us, QUIET_GAP_MARGIN * longest)

    def _room(self, floor: int, now: float) -> tuple[float, float, int | None] | None:
        """While no active task at ``floor`` has a launch held or in flight (each is idle
        or in a call its kernels are done for), or one has launches in flight whose newest
        surely opens a gap (``_coming_gap``): (predicted work below the floor that may
        still go, in microseconds; the predicted rest of the gap; the task whose newest
        launch that work must follow, or None). Else None.

        A call's time does not count against the gap (``_Task.idle_for``), but the task
        makes no launch before the call returns: filling it costs the task nothing. A gap
        predicted shorter than ``min_gap_us`` has no room."""
        remaining = math.inf
        behind: int | None = None
        top = False
        for task_id, task in self._tasks.items():
            if task.priority != floor or not self._active(task, now):
                continue
            top = True
            if not task.launching:
                predicted = self.gaps.predict(task_id, task.gap_key)
                left = predicted - task.idle_for(now)
            elif behind is None and (key := self._coming_gap(task)) is not None:
                behind, predicted = task_id, self.gaps.predict(task_id, key)
                left = predicted
            else:
                return None
            if predicted < self.min_gap_us:
                return None
            remaining = min(remaining, left)
        if not top:
            return None
        by_task: dict[int, float] = {}
        for priority, launch in self._in_flight.values():
            if priority < floor:
                by_task[launch.task_id] = by_task.get(launch.task_id, 0.0) + self.cost_us(launch)
        lp_in_flight = sum(by_task.values())
        for task_id, credit in list(self._credits.items()):
            if credit.until <= now:
                del self._credits[task_id]
            elif self._tasks[task_id].priority < floor:
                # What the window may still put in flight (what it has counts above).
                usable = math.floor(min(credit.count, (credit.until - now) / credit.cost_us))
                lp_in_flight += max(0.0, usable * credit.cost_us - by_task.get(task_id, 0.0))
        room = min(remaining * self.gap_margin, self.max_lp_inflight_us) - lp_in_flight
        return room, remaining, behind

    def _own_in_flight(self, task_id: int) -> tuple[int, float]:
        """How many launches of the task are in flight, and their predicted duration."""
        own = [launch for _, launch in self._in_flight.values() if launch.task_id == task_id]
        return len(own), sum(self.cost_us(launch) for launch in own)

    def _fill(self, floor: int, now: float) -> list[PendingLaunch]:
        fit = self._room(floor, now)
        if fit is None:
            return []
        room, _, behind = fit
        released: list[PendingLaunch] = []
        waiting = (task for task in self._ordered if task.priority < floor and task.held)
        for _, level in itertools.groupby(waiting, key=lambda task: task.priority):
            tasks = list(level)  # highest level first: ``_ordered`` is by priority
            while (best := self._best_fit(tasks, room)) is not None:
                launch = self._hand_out(best)
                room -= self.cost_us(launch)
                released.append(launch)
                if behind is not None:
                    self._behind[launch.seq] = behind
        return released

    def _best_fit(self, tasks: list[_Task], room: float) -> _Task | None:
        """The task whose head launch is the largest to fit in ``room``; earliest on ties."""
        fitting = [task for task in tasks if task.held and self.cost_us(task.held[0]) <= room]
        return max(
            fitting, key=lambda task: (self.cost_us(task.held[0]), -task.held[0].seq), default=None
        )


#: The policies by name, for configuration.
POLICIES: dict[str, Callable[..., Policy]] = {
    policy.name: policy for policy in (FifoPolicy, PriorityPolicy, FikitPolicy)
}
