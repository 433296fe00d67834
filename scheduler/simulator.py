"""A deterministic discrete-event model of tasks sharing one GPU under a scheduling policy.

Pure Python on a virtual clock in microseconds: no wall clock, no threads, and randomness
only from a seeded generator (host-gap jitter).

Tasks are closed loops. A task makes its launches one by one, in the order of its kernels,
and keeps at most ``depth`` of them outstanding (arrived, not yet completed). Its next launch
arrives a host gap after it may make it: after the previous launch when fewer than ``depth``
are outstanding, otherwise after the completion that frees a slot. With ``depth=1`` this is
an inference step that synchronizes on every kernel and does host work between kernels; with
a larger depth and no gaps it is a saturating training-like stream; with
``sync_per_request`` it is a batch job that launches a request's kernels, waits for them all
and only then starts the next request. With ``held_resume_us`` a task makes no launch while
one of its launches is held by the policy, as a server session whose one thread a held
launch blocks: the policy then sees at most one held launch of it at a time.

The GPU runs issued kernels one at a time in issue order (one hardware queue, no
preemption). A real GPU can overlap kernels of different streams; this model is the
pessimistic bound, where every lower-priority kernel issued ahead of a high-priority one
delays it by its whole duration.

A server learns of a completion only when it polls for it: with ``report_delay_us`` the
policy hears of each completion that much after it happened, dated when it happened (the
task itself, whose synchronization returns at once, does not wait for the report).
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum, auto

from scheduler.policy import FifoPolicy, PendingLaunch, Policy


@dataclass(frozen=True)
class Kernel:
    """A kernel as the GPU runs it."""

    kernel_id: str
    duration_us: float


@dataclass(frozen=True)
class TaskSpec:
    """A closed-loop task; see the module docstring."""

    task_id: int
    priority: int
    #: One request: the kernels launched in order, repeated for every request.
    kernels: tuple[Kernel, ...]
    #: Host gap after kernel ``i`` of a request before the next one, cycled over ``i``.
    host_gaps_us: tuple[float, ...] = (0.0,)
    #: Host gap after a request's last kernel before the next request's first.
    request_gap_us: float = 0.0
    #: Number of requests; None for an endless stream (stops when the simulation ends).
    requests: int | None = 1
    #: Launches kept outstanding.
    depth: int = 1
    #: Whether a request's first launch waits until the previous request's kernels all
    #: completed (the task synchronizes at the end of each request, as a batch job that
    #: launches a few kernels and then waits for them); ``request_gap_us`` follows that.
    sync_per_request: bool = False
    #: When set, a request ends with a synchronizing call, as an inference server's result
    #: copy: it begins when the request's last launch arrives and ends this long after that
    #: launch completed. The policy sees the task busy meanwhile (``Policy.call_started``,
    #: ``call_finished``), and the next request's gap follows the call's end.
    result_copy_us: float | None = None
    #: When set, the task makes no launch while one of its launches is held, and its next
    #: comes this long after the held one was issued (plus its host gap): the server's
    #: sessions read their calls on one thread, which a held launch blocks until released.
    held_resume_us: float | None = None
    #: Every gap is scaled by a factor drawn uniformly from [1 - jitter, 1 + jitter].
    gap_jitter: float = 0.0
    start_us: float = 0.0
    #: When the task leaves (``remove_task``) if it has not finished; None to run to the end.
    stop_us: float | None = None

    def __post_init__(self) -> None:
        if not self.kernels or not self.host_gaps_us:
            raise ValueError("a task needs kernels and host gaps")
        if any(kernel.duration_us <= 0 for kernel in self.kernels):
            raise ValueError("kernel durations must be > 0")
        if self.depth < 1 or (self.requests is not None and self.requests < 1):
            raise ValueError("need depth >= 1 and requests >= 1")
        if not 0.0 <= self.gap_jitter < 1.0:
            raise ValueError("need 0 <= gap_jitter < 1")
        if self.stop_us is not None and self.stop_us <= self.start_us:
            raise ValueError("a task must stop after it starts")

    @property
    def launches(self) -> int | None:
        """The number of launches the task makes; None when endless."""
        return None if self.requests is None else self.requests * len(self.kernels)

    def gap_before_us(self, n: int) -> float:
        """The host gap (without jitter) before launch number ``n`` of the task."""
        if n == 0:
            return 0.0
        index = n % len(self.kernels)
        if index == 0:
            return self.request_gap_us
        return self.host_gaps_us[(index - 1) % len(self.host_gaps_us)]


@dataclass(frozen=True)
class KernelRun:
    """One kernel's life: arrival at the policy, issue to the GPU, execution."""

    task_id: int
    kernel_id: str
    seq: int
    request: int
    arrive_us: float
    issue_us: float
    start_us: float
    end_us: float

    @property
    def wait_us(self) -> float:
        """From arrival to the start of execution."""
        return self.start_us - self.arrive_us


@dataclass
class SimResult:
    """What happened in one simulation."""

    policy: str
    #: Kernels that started executing, in start order.
    timeline: list[KernelRun]
    #: When each finite task's last kernel completed, or when a task was removed.
    finish_us: dict[int, float]
    start_us: dict[int, float]
    priority: dict[int, int]
    #: Per task, each completed request's time from its first arrival to its last completion.
    request_latencies_us: dict[int, list[float]]
    #: Launches dropped because their task was removed while they were held.
    dropped: list[PendingLaunch]
    #: When the simulation stopped.
    end_us: float

    def runs(self, task_id: int) -> list[KernelRun]:
        """The task's kernels in arrival order."""
        return sorted((r for r in self.timeline if r.task_id == task_id), key=lambda r: r.seq)

    def makespan_us(self, task_id: int) -> float:
        """From the task's start to its finish (or removal)."""
        return self.finish_us[task_id] - self.start_us[task_id]

    def idle_gaps_us(self, task_id: int) -> list[float]:
        """Within the task's makespan, the lengths of the intervals with none of its kernels
        executing."""
        gaps = []
        cursor = self.start_us[task_id]
        for run in sorted(self.runs(task_id), key=lambda r: r.start_us):
            if run.start_us > cursor:
                gaps.append(run.start_us - cursor)
            cursor = max(cursor, run.end_us)
        if self.finish_us[task_id] > cursor:
            gaps.append(self.finish_us[task_id] - cursor)
        return gaps

    def idle_fraction(self, task_id: int) -> float:
        """The share of the task's makespan with none of its kernels executing."""
        return sum(self.idle_gaps_us(task_id)) / self.makespan_us(task_id)

    def work_us(self, task_ids: Iterable[int], begin: float, end: float) -> tuple[int, float]:
        """How many kernels of ``task_ids`` executed within [begin, end], and for how long."""
        wanted = set(task_ids)
        count, total = 0, 0.0
        for run in self.timeline:
            overlap = min(run.end_us, end) - max(run.start_us, begin)
            if run.task_id in wanted and overlap > 0:
                count += 1
                total += overlap
        return count, total

    def lower_priority_work_us(self, task_id: int) -> tuple[int, float]:
        """Kernels of lower-priority tasks executed during the task's makespan: count, time."""
        lower = [t for t, p in self.priority.items() if p < self.priority[task_id]]
        return self.work_us(lower, self.start_us[task_id], self.finish_us[task_id])


class SimulationStalled(RuntimeError):
    """Launches are held but no event is left that could release them."""


class _Event(Enum):
    START = auto()
    STOP = auto()
    COMPLETE = auto()
    #: The policy hears of a completion (``report_delay_us`` after it).
    REPORT = auto()
    ARRIVE = auto()
    #: Nothing happens; the policy is asked again (``Policy.next_event``).
    WAKE = auto()
    #: A task's result copy ends (``TaskSpec.result_copy_us``).
    CALL_END = auto()


@dataclass
class _TaskRun:
    """A task's progress in the simulation."""

    spec: TaskSpec
    rng: random.Random
    launched: int = 0
    outstanding: int = 0
    #: Arrived and not yet issued.
    held: int = 0
    arrival_pending: bool = False
    #: In its result copy (``TaskSpec.result_copy_us``).
    in_call: bool = False
    gone: bool = False
    request_start: dict[int, float] = field(default_factory=dict)


@dataclass
class _Launch:
    """A launch from its arrival to its completion."""

    launch: PendingLaunch
    kernel: Kernel
    #: The launch's number within its task.
    number: int
    request: int
    arrive_us: float
    issue_us: float = 0.0


def simulate(
    tasks: Sequence[TaskSpec],
    policy: Policy,
    profile: Mapping[str, float] | None = None,
    *,
    seed: int = 0,
    until_us: float | None = None,
    report_delay_us: float = 0.0,
) -> SimResult:
    """Run ``tasks`` on one GPU under ``policy``.

    The simulation ends when every finite task (with ``requests`` or ``stop_us``) has finished
    or left, or, with ``until_us``, at that time (or earlier if nothing is left to happen).
    ``profile`` gives the predicted duration handed to the policy for each kernel id (a kernel
    missing from it is unknown: None); without a profile, predictions are the true durations.
    ``report_delay_us``: how long after a completion the policy hears of it.
    Raises ``SimulationStalled`` if launches stay held with nothing left to release them.
    """
    return _Simulation(tasks, policy, profile, seed, until_us, report_delay_us).run()


def run_alone(task: TaskSpec, seed: int = 0) -> SimResult:
    """The baseline: the task alone on the GPU, started at time 0 and never removed."""
    return simulate([replace(task, start_us=0.0, stop_us=None)], FifoPolicy(), seed=seed)


class _Simulation:
    """The event loop behind ``simulate``."""

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        policy: Policy,
        profile: Mapping[str, float] | None,
        seed: int,
        until_us: float | None,
        report_delay_us: float = 0.0,
    ) -> None:
        if len({t.task_id for t in tasks}) != len(tasks):
            raise ValueError("task ids must be unique")
        if report_delay_us < 0:
            raise ValueError("report_delay_us must be >= 0")
        self.report_delay_us = report_delay_us
        #: Completions the policy has yet to hear of, by report number.
        self.reports: dict[int, tuple[PendingLaunch, float]] = {}
        if until_us is None and all(t.requests is None and t.stop_us is None for t in tasks):
            raise ValueError("endless tasks need until_us")
        self.policy = policy
        self.profile = profile
        self.until_us = until_us
        self.tasks = {t.task_id: _TaskRun(t, random.Random(f"{seed}/{t.task_id}")) for t in tasks}
        self.events: list[tuple[float, int, _Event, int]] = []
        self.event_count = 0
        self.seq = 0
        self.launches: dict[int, _Launch] = {}
        self.gpu_queue: deque[_Launch] = deque()
        self.running: _Launch | None = None
        self.wakes: set[float] = set()
        self.result = SimResult(
            policy=policy.name,
            timeline=[],
            finish_us={},
            start_us={t.task_id: t.start_us for t in tasks},
            priority={t.task_id: t.priority for t in tasks},
            request_latencies_us={t.task_id: [] for t in tasks},
            dropped=[],
            end_us=0.0,
        )
        for t in tasks:
            self._push(t.start_us, _Event.START, t.task_id)
            if t.stop_us is not None:
                self._push(t.stop_us, _Event.STOP, t.task_id)

    def run(self) -> SimResult:
        while self.until_us is not None or not self._finite_tasks_done():
            if not self.events:
                if self._finite_tasks_done():
                    break
                raise SimulationStalled(f"launches held forever from {self.result.end_us} us")
            now = self.events[0][0]
            if self.until_us is not None and now > self.until_us:
                self.result.end_us = self.until_us
                break
            self.result.end_us = now
            while self.events and self.events[0][0] == now:
                _, _, kind, subject = heapq.heappop(self.events)
                self._handle(kind, subject, now)
            self._schedule(now)
        return self.result

    def _finite_tasks_done(self) -> bool:
        return all(
            run.spec.task_id in self.result.finish_us
            for run in self.tasks.values()
            if run.spec.requests is not None or run.spec.stop_us is not None
        )

    def _push(self, at: float, kind: _Event, subject: int) -> None:
        heapq.heappush(self.events, (at, self.event_count, kind, subject))
        self.event_count += 1

    def _handle(self, kind: _Event, subject: int, now: float) -> None:
        if kind is _Event.START:
            spec = self.tasks[subject].spec
            self.policy.add_task(subject, spec.priority, now)
            self._next_launch(self.tasks[subject], now)
        elif kind is _Event.STOP:
            self._stop(self.tasks[subject], now)
        elif kind is _Event.COMPLETE:
            self._complete(now)
        elif kind is _Event.REPORT:
            launch, ended = self.reports.pop(subject)
            self.policy.completed(launch, ended)
        elif kind is _Event.ARRIVE:
            self._arrive(self.tasks[subject], now)
        elif kind is _Event.CALL_END:
            task = self.tasks[subject]
            task.in_call = False
            if not task.gone:
                self.policy.call_finished(subject, now)
                self._next_launch(task, now)

    def _next_launch(self, task: _TaskRun, now: float, delay_us: float = 0.0) -> None:
        """Schedule the task's next arrival if it may make one, ``delay_us`` later than its
        host gap says."""
        total = task.spec.launches
        if (
            task.gone
            or task.arrival_pending
            or task.in_call
            or task.outstanding >= task.spec.depth
            or (task.spec.held_resume_us is not None and task.held)
            or (total is not None and task.launched >= total)
            or (
                task.spec.sync_per_request
                and task.outstanding
                and task.launched % len(task.spec.kernels) == 0
            )
        ):
            return
        jitter = task.spec.gap_jitter
        gap = task.spec.gap_before_us(task.launched) * task.rng.uniform(1 - jitter, 1 + jitter)
        task.arrival_pending = True
        self._push(now + delay_us + gap, _Event.ARRIVE, task.spec.task_id)

    def _arrive(self, task: _TaskRun, now: float) -> None:
        task.arrival_pending = False
        if task.gone:
            return
        spec = task.spec
        n = task.launched
        kernel = spec.kernels[n % len(spec.kernels)]
        request = n // len(spec.kernels)
        task.request_start.setdefault(request, now)
        predicted = (
            kernel.duration_us if self.profile is None else self.profile.get(kernel.kernel_id)
        )
        launch = PendingLaunch(self.seq, spec.task_id, kernel.kernel_id, predicted)
        self.seq += 1
        self.launches[launch.seq] = _Launch(launch, kernel, n, request, now)
        task.launched += 1
        task.outstanding += 1
        task.held += 1
        self.policy.arrive(launch, now)
        if spec.result_copy_us is not None and n % len(spec.kernels) == len(spec.kernels) - 1:
            task.in_call = True
            self.policy.call_started(spec.task_id, now)
        self._next_launch(task, now)

    def _complete(self, now: float) -> None:
        done = self.running
        assert done is not None, "a completion without a running kernel"
        self.running = None
        del self.launches[done.launch.seq]
        if self.report_delay_us:
            report = self.event_count
            self.reports[report] = (done.launch, now)
            self._push(now + self.report_delay_us, _Event.REPORT, report)
        else:
            self.policy.completed(done.launch, now)
        task = self.tasks[done.launch.task_id]
        if task.gone:
            return
        task.outstanding -= 1
        spec = task.spec
        # Tasks' launches run in arrival order, so a request ends with its last kernel.
        if done.number % len(spec.kernels) == len(spec.kernels) - 1:
            ended = now
            if spec.result_copy_us is not None:  # the request ends with its result copy
                ended += spec.result_copy_us
                self._push(ended, _Event.CALL_END, spec.task_id)
            latency = ended - task.request_start.pop(done.request)
            self.result.request_latencies_us[spec.task_id].append(latency)
        if task.launched == spec.launches and task.outstanding == 0:
            self.result.finish_us[spec.task_id] = now
        self._next_launch(task, now)

    def _stop(self, task: _TaskRun, now: float) -> None:
        if task.gone or task.spec.task_id in self.result.finish_us:
            return
        task.gone = True
        dropped = self.policy.remove_task(task.spec.task_id, now)
        for launch in dropped:
            del self.launches[launch.seq]
        self.result.dropped.extend(dropped)
        self.result.finish_us[task.spec.task_id] = now

    def _schedule(self, now: float) -> None:
        """Issue what the policy allows, start the GPU if idle, and ask for a wake-up."""
        for launch in self.policy.take_issuable(now):
            # The model's GPU runs launches in issue order: one handed out to follow
            # another task's newest launch (``Policy.behind``) does.
            self.policy.behind(launch.seq)
            self.policy.issued(launch, now)
            entry = self.launches[launch.seq]
            entry.issue_us = now
            self.gpu_queue.append(entry)
            task = self.tasks[launch.task_id]
            task.held -= 1
            resume = task.spec.held_resume_us
            if resume is not None:  # a session that waited for the release wakes first
                self._next_launch(task, now, resume if entry.arrive_us < now else 0.0)
        if self.running is None and self.gpu_queue:
            entry = self.running = self.gpu_queue.popleft()
            end = now + entry.kernel.duration_us
            self.result.timeline.append(
                KernelRun(
                    entry.launch.task_id,
                    entry.launch.kernel_id,
                    entry.launch.seq,
                    entry.request,
                    entry.arrive_us,
                    entry.issue_us,
                    now,
                    end,
                )
            )
            self._push(end, _Event.COMPLETE, -1)
        wake = self.policy.next_event(now)
        if wake is not None and wake > now and wake not in self.wakes:
            self.wakes.add(wake)
            self._push(wake, _Event.WAKE, -1)
