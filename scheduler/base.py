"""The interface between the server's launch path and a scheduling policy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Launch:
    """One kernel launch waiting to be issued to the GPU."""

    task_id: int
    kernel_name: str
    #: Puts the launch on its CUDA stream; raises CudaError when the driver refuses it.
    issue: Callable[[], None]


class LaunchScheduler(Protocol):
    """Decides when each submitted launch is issued."""

    def add_task(self, task_id: int, priority: int) -> None:
        """A session started: it submits launches as task ``task_id``."""

    def remove_task(self, task_id: int) -> None:
        """A session ended: it submits nothing more."""

    def submit(self, launch: Launch) -> None:
        """Accept a launch; issue it now or hold it until the policy allows."""

    def drain(self, task_id: int) -> None:
        """Issue every launch the task still has held, before it synchronizes."""
