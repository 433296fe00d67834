"""First come, first served: every launch is issued the moment it arrives."""

from __future__ import annotations

from scheduler.base import Launch


class FifoScheduler:
    """The default GPU-sharing baseline: no reordering, nothing held."""

    def add_task(self, task_id: int, priority: int) -> None:
        """Nothing to track."""

    def remove_task(self, task_id: int) -> None:
        """Nothing to track."""

    def submit(self, launch: Launch) -> None:
        """Issue at once; driver errors propagate to the submitting session."""
        launch.issue()

    def drain(self, task_id: int) -> None:
        """Nothing is ever held."""
