"""The front end's dispatcher as the worker of one session (``--isolation process``) uses
it: over the control socket, with a lease or a credit to launch without asking, and a
tracker that reports the session's completions."""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

from cuda.bindings.driver import CUresult

from gpu_server.control import ControlSocket
from gpu_server.errors import CudaError
from scheduler.dispatcher import (
    HELD_WARNING_US,
    DispatcherClosed,
    IssueFn,
    LaunchProbe,
    RunIssueFn,
    clock_us,
    done_prefix,
    stretches,
)
from scheduler.policy import NO_CREDIT, Credit

log = logging.getLogger(__name__)

#: How long the probe tracker of a one-session worker sleeps between polls.
POLL_INTERVAL_S = 20e-6


def stream_key(key: Hashable) -> int:
    """A probe's stream key as an int that can cross the control socket."""
    return key if isinstance(key, int) else hash(key)


class DispatcherLink:
    """The front end's dispatcher as a worker of one session uses it (same methods as
    ``scheduler.dispatcher.Dispatcher``).

    A launch waits for the front end's go, unless the session holds a lease: while no other
    task has a higher priority (any task under FIFO), the policy would issue every launch
    of it at arrival, so the worker issues at once and reports the launch afterwards, with
    no round trip (launches read together go as a run, one probe and one report for
    them). The front end grants and revokes the lease as tasks come and go; a
    launch issued just before a revocation arrives counts as already in flight. A go may
    carry a credit (``Credit``): launches of the same kernel ID go unasked while the
    session has fewer than its count in flight and each is predicted to finish by its
    deadline (the policy reserved room for them in a higher task's gap; the deadline is on
    the host's monotonic clock, which worker and front end share), or, for a credit given
    while no higher task was active, until the front end revokes it. The worker checks
    that against its own completions, which it sees first. A worker launching unasked times
    the first launch of each kernel ID, then those the front end asks for.
    """

    def __init__(self, control: ControlSocket) -> None:
        self.control = control
        self.profiles = None
        self.leased = False
        #: The last go's credit: a window for launches of one kernel ID to go unasked.
        self._credit = NO_CREDIT
        #: Replies taken so far, and how many had been read when the front end last revoked
        #: a credit: the go of a credit revoked may still wait to be taken.
        self._replies_taken = 0
        self._revoked_through = 0
        self._credit_lock = threading.Lock()
        #: Kernel IDs launched here, and those whose next launch the front end wants timed.
        self._seen: set[str] = set()
        self._to_time_next: set[str] = set()
        control.on_notice = self._notice
        self._ids = itertools.count(1)
        #: Launches in flight, oldest first, by stream (each stream completes in order).
        self._probes: dict[Hashable, deque[tuple[int, LaunchProbe]]] = {}
        self._in_flight = 0
        #: Whether the session's thread waits for its client (``idle``) or for a go, and
        #: whether the tracker waits for either: a tracker taking the interpreter at the
        #: driver calls of the session's frames doubled a one-session worker's launch+sync.
        self._idle = True
        self._asking = False
        self._tracker_waiting = False
        self._wake = threading.Condition()
        #: Held while completions are asked for and reported, by the tracker or by the
        #: session's thread: each launch is reported once, its probe released once.
        self._reporting = threading.Lock()
        self._closed = False
        #: How the session's launches went (counts, and waits in microseconds), logged at
        #: its end: under the lease, on credit, or asked for; why a credit did not serve.
        self.stats: Counter[str] = Counter()
        self._tracker = threading.Thread(target=self._track, name="fikit-probes", daemon=True)
        self._tracker.start()

    def _reply(self) -> list[Any]:
        reply = self.control.replies.get()
        if reply is None:
            raise DispatcherClosed("the server is shutting down")
        self._replies_taken += 1
        return reply

    def add_task(self, task_id: int, priority: int, client: str = "") -> None:
        self.control.send("add", task_id, priority, client)

    def remove_task(self, task_id: int) -> None:
        self.control.send("remove", task_id)

    def stream_priority(self, task_id: int, requested: int, least: int, greatest: int) -> int:
        self.control.send("priority", task_id, requested, least, greatest)
        return int(self._reply()[1])

    def call_started(self, task_id: int) -> None:
        self.control.send("started", task_id)

    def call_finished(self, task_id: int) -> None:
        """The call ended; the completions it waited for leave with the report of its end
        (the tracker does not look while the session runs its frames)."""
        self._report_done(self.control.hold)
        self.control.send("finished", task_id)

    def idle(self, task_id: int, work_done: bool) -> None:
        """The session's thread waits for its client: report the launches done when it saw
        the session's work done, else let the tracker follow them from now."""
        if work_done:
            self._report_done(self.control.send)
        with self._wake:
            self._idle = True
            self._let_tracker_look()

    def running(self, priority: int) -> contextlib.AbstractContextManager[object]:
        """The worker's one session has its CPU to itself: nothing to order; the reports of
        launches made under the lease or on credit leave together when its frames ran.
        From here until the session is ``idle`` the tracker leaves the interpreter to the
        session's thread."""
        self._idle = False
        return self._report_after()

    @contextlib.contextmanager
    def _report_after(self) -> Iterator[None]:
        try:
            yield
        finally:
            self.control.flush()

    def wait_turn(self, priority: int) -> None:
        """Never waits (see ``running``)."""

    def _notice(self, message: list[Any]) -> None:
        if message[0] == "lease":
            self.leased = bool(message[1])
        elif message[0] == "revoke":
            with self._credit_lock:
                self._revoked_through = self.control.replies_read
                self._credit = NO_CREDIT
            self.stats["credits revoked"] += 1
        else:
            self._to_time_next.add(message[1])

    def launch(self, task_id: int, kernel_id: str, name: str, issue: IssueFn) -> None:
        """Issue the launch at once under a lease or on credit, else once the front end's
        policy releases it; either way the front end learns of it."""
        kernels = ((kernel_id, name),)

        def issue_run(first: int, stop: int, timed: bool) -> LaunchProbe:
            return issue(timed)

        if self.launch_run(task_id, kernels, issue_run):
            return
        if self._on_credit(kernel_id):
            self.stats["on credit"] += 1
            self._issue_unasked(task_id, kernels, 0, 1, self._to_time(kernel_id), issue_run)
            return
        self.control.send("launch", task_id, kernel_id, name)
        asked = clock_us()
        with self._wake:
            self._asking = True
            self._let_tracker_look()
        try:
            grant = self._reply()
        finally:
            self._asking = False
        waited = clock_us() - asked
        self.stats["asked"] += 1
        self.stats["us waiting for a go"] += round(waited)
        if waited >= HELD_WARNING_US:
            log.warning(
                "task %d: the front end released a launch of %s after %.0f ms (%d of the "
                "session's launches in flight)",
                task_id,
                name,
                waited / 1e3,
                self._in_flight,
            )
        if grant[0] != "issue":
            raise DispatcherClosed(str(grant[1]))
        _, timed, count, cost_us, until = grant
        with self._credit_lock:  # a go read before a revocation carries no credit
            revoked = self._replies_taken <= self._revoked_through
            self._credit = NO_CREDIT if revoked else Credit(kernel_id, count, cost_us, until)
        try:
            probe = issue(bool(timed))
        except CudaError as err:
            self.control.send("issued", 0, 0, err.code)
            raise
        except Exception:
            self.control.send("issued", 0, 0, int(CUresult.CUDA_ERROR_UNKNOWN))
            raise
        probe_id = next(self._ids)
        self.control.send("issued", probe_id, stream_key(probe.stream_key), 0)
        self._follow(probe_id, probe)

    def launch_run(
        self, task_id: int, kernels: Sequence[tuple[str, str]], issue: RunIssueFn
    ) -> bool:
        """Under the lease, issue a run of the session's launches at once, as the
        dispatcher does (``Dispatcher.launch_run``): the launches to time alone (the first
        of each kernel ID, and those the front end asks for), those between them together
        with one probe, each such stretch reported once. False, issuing nothing, without
        the lease."""
        if not self.leased:
            return False
        timed = [self._to_time(kernel_id) for kernel_id, _ in kernels]
        for first, stop in stretches(timed):
            self._issue_unasked(task_id, kernels, first, stop, timed[first], issue)
        self.stats["leased"] += len(kernels)
        return True

    def _to_time(self, kernel_id: str) -> bool:
        """Whether the session's launch of ``kernel_id`` about to go unasked is timed: its
        first, and the next after the front end asked for one."""
        timed = kernel_id in self._to_time_next or kernel_id not in self._seen
        self._seen.add(kernel_id)
        self._to_time_next.discard(kernel_id)
        return timed

    def _issue_unasked(
        self,
        task_id: int,
        kernels: Sequence[tuple[str, str]],
        first: int,
        stop: int,
        timed: bool,
        issue: RunIssueFn,
    ) -> None:
        """Issue launches ``first`` to ``stop`` of a run with one probe, and report them."""
        arrived = clock_us()  # the front end's clock too (CLOCK_MONOTONIC)
        probe = issue(first, stop, timed)
        if probe is None:
            return
        probe_id = next(self._ids)
        key = stream_key(probe.stream_key)
        # A launch that ends an idle gap leaves at once: until the front end hears of it,
        # the policy counts the task idle and may fill the gap it has left.
        report = self.control.send if self._in_flight == 0 else self.control.hold
        report("leased", task_id, kernels[first:stop], probe_id, key, timed, arrived)
        self._follow(probe_id, probe)

    def _on_credit(self, kernel_id: str) -> bool:
        """Whether the last go's credit lets a launch of ``kernel_id`` go unasked; while
        its window is full but the next completion would let the launch go in time,
        waits for that completion, unless the front end revokes the credit meanwhile."""
        credit = self._credit
        if credit.kernel_id != kernel_id:
            self.stats["credit for another kernel"] += 1
            return False
        latest = credit.until - credit.count * credit.cost_us  # a full window's last chance
        waited_since = None
        while True:
            in_flight, now = self._in_flight, clock_us()
            revoked = self._credit is not credit
            allowed = not revoked and credit.allows(kernel_id, in_flight, now)
            if allowed or revoked or in_flight < credit.count or now >= latest or self._closed:
                break
            if waited_since is None:
                self.stats["waits for room"] += 1
                waited_since = now
                self.control.flush()  # the front end counts what is in flight meanwhile
            if not self._report_done(self.control.send):  # the tracker does not look now
                time.sleep(POLL_INTERVAL_S)
        if waited_since is not None:
            self.stats["us waiting for room"] += round(now - waited_since)
        if allowed:
            return True
        self.stats["credit ran out"] += 1
        return False

    def _follow(self, probe_id: int, probe: LaunchProbe) -> None:
        """Report the probe's completion once it is done."""
        with self._wake:
            queue = self._probes.get(probe.stream_key)
            if queue is None:
                queue = self._probes[probe.stream_key] = deque()
            queue.append((probe_id, probe))
            self._in_flight += 1
            self._let_tracker_look()  # a launch outside a frame

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._tracker.join()

    def _track(self) -> None:
        """Report each launch's completion (and its GPU times when timed) as it happens,
        while the session's thread waits for its client or for the front end's go. (A
        synchronizing call reports what it waited for as it ends, ``call_finished``; a
        launch waiting for room in its credit looks itself, ``_on_credit``.)"""
        while True:
            with self._wake:
                while not (self._tracker_may_look() or self._closed):
                    self._tracker_waiting = True
                    self._wake.wait()
                    self._tracker_waiting = False
                if self._closed:
                    return
            if not self._report_done(self.control.send):
                time.sleep(POLL_INTERVAL_S)

    def _tracker_may_look(self) -> bool:
        """Whether there are launches to follow and the session's thread leaves the
        interpreter to the tracker (it waits for its client or for a go)."""
        return bool(self._probes) and (self._idle or self._asking)

    def _let_tracker_look(self) -> None:
        """Wake the waiting tracker when it may look now (call with ``_wake`` held)."""
        if self._tracker_waiting and self._tracker_may_look():
            self._wake.notify()

    def _report_done(self, report: Callable[..., None]) -> bool:
        """Report the launches found done through ``report``; whether there were any. Each
        stream's newest launch is asked first, and only when that one is not done its
        oldest ones until one is not: a burst costs a query or a few, not one per launch."""
        with self._reporting:
            with self._wake:
                streams = [list(queue) for queue in self._probes.values()]
            finished = [probe for launches in streams for probe in done_prefix(launches)]
            if not finished:
                return False
            reports: list[int | float | None] = []
            for probe_id, probe in finished:
                times = probe.times_us()
                probe.release()
                reports += (probe_id, *(times or (None, None)))
            report("done", *reports)  # one message: (probe ID, start, end) per launch
            with self._wake:
                for _, probe in finished:
                    queue = self._probes[probe.stream_key]
                    queue.popleft()
                    if not queue:
                        del self._probes[probe.stream_key]
                self._in_flight -= len(finished)
            return True
