"""How lower-priority work fills a high-priority task's gaps, with no GPU, in real time.

Usage: python benchmarks/gap_fill_replay.py [--requests N] [gpu-server scheduling options]
(``--policy``, ``--max-lp-inflight-us``, ``--quiet-after-us``, with the server's defaults).

The server's own ``Dispatcher`` and policy, driven by two threads as sessions drive them,
over a modelled GPU: each stream runs its kernels one after another for a fixed duration,
on the wall clock, and a probe is done once its kernel's end has passed (streams do not
slow each other down). The HP thread
serves requests shaped like the scheduling benchmark's transformer (5 stages of 2 kernels
with 200 us of host work after each, a synchronizing call, 2 ms until the next request);
the LP thread runs 8 stencil-like kernels, then synchronizes, in a loop. It prints the
gap filling figures of ``scheduling.py`` (share of HP's gap time with LP work, first LP
kernel into a gap, hole between LP kernels in a gap) for short and long gaps.

Unlike ``scheduler/simulator.py`` (a virtual clock, no threads), this includes what the
threads, the interpreter and the tracker's polling cost in reaction time; the figures are
this machine's, not a GPU's.
"""

import argparse
import math
import sys
import tempfile
import threading
import time

from scheduling import GAP_MIN_US, HP_PRIORITY, gap_filling

from gpu_server.cli import GIL_SWITCH_INTERVAL_S, make_policy
from gpu_server.cli import parse_args as server_args
from scheduler.dispatcher import Dispatcher, IssueFn
from scheduler.profiles import ProfileStore

HP_TASK, LP_TASK = 1, 2
HP_KERNEL_US, LP_KERNEL_US = 50.0, 70.0
STAGES, KERNELS_PER_STAGE, HOST_WORK_S, THINK_S = 5, 2, 200e-6, 2e-3
LP_KERNELS_PER_ITER = 8
#: A gap longer than this (us) counts as a pause between requests.
LONG_GAP_US = 1000.0


def now_us() -> float:
    return time.perf_counter() * 1e6


class ModelledProbe:
    """Done once its kernel's modelled end has passed; its times measure the kernel."""

    def __init__(self, stream: str, start_us: float, end_us: float) -> None:
        self.stream_key = stream
        self.start_us = start_us
        self.end_us = end_us

    def done(self) -> bool:
        return now_us() >= self.end_us

    def times_us(self) -> tuple[float, float]:
        return self.start_us, self.end_us

    def release(self) -> None:
        """Nothing is held."""


class ModelledGpu:
    """Streams that run their kernels back to back; every kernel's (priority, start, end)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: dict[str, float] = {}
        self.kernels: list[dict[str, float]] = []

    def issuer(self, stream: str, priority: int, duration_us: float) -> IssueFn:
        def issue(timed: bool, after: ModelledProbe | None = None) -> ModelledProbe:
            with self._lock:
                start = max(now_us(), self._ready.get(stream, 0.0))
                if after is not None:
                    start = max(start, after.end_us)
                end = self._ready[stream] = start + duration_us
                self.kernels.append({"priority": priority, "start_us": start, "end_us": end})
            return ModelledProbe(stream, start, end)

        return issue

    def synchronize(self, stream: str) -> None:
        with self._lock:
            end = self._ready.get(stream, 0.0)
        time.sleep(max(0.0, end - now_us()) / 1e6)


def serve_requests(dispatcher: Dispatcher, gpu: ModelledGpu, requests: int) -> None:
    for _ in range(requests):
        for stage in range(STAGES):
            for k in range(KERNELS_PER_STAGE):
                issue = gpu.issuer("hp", HP_PRIORITY, HP_KERNEL_US)
                dispatcher.launch(HP_TASK, f"stage{stage}.{k}", "hp", issue)
            time.sleep(HOST_WORK_S)
        synchronize(dispatcher, gpu, HP_TASK, "hp")
        time.sleep(THINK_S)


def run_batch(dispatcher: Dispatcher, gpu: ModelledGpu, stop: threading.Event) -> None:
    while not stop.is_set():
        for _ in range(LP_KERNELS_PER_ITER):
            dispatcher.launch(LP_TASK, "stencil", "lp", gpu.issuer("lp", 0, LP_KERNEL_US))
        synchronize(dispatcher, gpu, LP_TASK, "lp")


def synchronize(dispatcher: Dispatcher, gpu: ModelledGpu, task: int, stream: str) -> None:
    dispatcher.call_started(task)
    gpu.synchronize(stream)
    dispatcher.call_finished(task)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=150)
    args, server_options = parser.parse_known_args()
    server = server_args(server_options)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    with tempfile.TemporaryDirectory() as tmp, ProfileStore(f"{tmp}/p.sqlite3") as profiles:
        dispatcher = Dispatcher(make_policy(server), profiles)
        gpu = ModelledGpu()
        dispatcher.add_task(HP_TASK, HP_PRIORITY)
        dispatcher.add_task(LP_TASK, 0)
        stop = threading.Event()
        batch = threading.Thread(target=run_batch, args=(dispatcher, gpu, stop))
        batch.start()
        time.sleep(0.05)  # LP's kernels measured, as in the benchmark's warm-up
        serve_requests(dispatcher, gpu, args.requests)
        stop.set()
        batch.join()
        dispatcher.close()
    print(f"{' '.join(server_options) or 'server defaults'}: {args.requests} requests")
    for label, shortest, longest in (
        ("short gaps", GAP_MIN_US, LONG_GAP_US),
        ("long gaps", LONG_GAP_US, math.inf),
    ):
        filling = gap_filling(gpu.kernels, shortest, longest)
        if filling is None:
            print(f"{label}: none")
            continue
        share, first, hole = filling
        print(
            f"{label}: LP on the GPU {share:.1%} of the time, first LP kernel {first:.0f} us "
            f"into a gap, {hole:.0f} us between LP kernels (medians)"
        )


if __name__ == "__main__":
    main()
