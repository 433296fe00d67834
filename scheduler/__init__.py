"""Launch scheduling: the policy that decides when each task's kernel launches reach the GPU.

The server hands every kernel launch to one ``LaunchScheduler``. A scheduler is pure logic
over tasks and queued launches; it never touches CUDA or gRPC itself, it only calls the
``issue`` callable of a launch when that launch may go to the GPU.
"""

from scheduler.base import Launch, LaunchScheduler
from scheduler.fifo import FifoScheduler

__all__ = ["FifoScheduler", "Launch", "LaunchScheduler"]
