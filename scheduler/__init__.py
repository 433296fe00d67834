"""Launch scheduling: the policy that decides when each task's kernel launches reach the GPU.

The server hands every kernel launch to one ``LaunchScheduler`` (``base.py``); today that
is ``FifoScheduler``. The FIKIT policies (``policy.py``: fifo, priority, fikit) are pure
logic over a virtual clock and per-task queues, exercised on a model of a shared GPU
(``simulator.py``). ``kernel_id.py`` says what makes two launches the same kernel and
``profiles.py`` keeps what was measured of each (``fikit-profiles`` lists it). Connecting
these to the server's launch path is the next step.
"""

from scheduler.base import Launch, LaunchScheduler
from scheduler.fifo import FifoScheduler

__all__ = ["FifoScheduler", "Launch", "LaunchScheduler"]
