"""Launch scheduling: the policy that decides when each task's kernel launches reach the GPU.

- ``policy.py``: the policies (fifo, priority, fikit) as pure logic over a clock and
  per-task queues;
- ``dispatcher.py``: the server's single dispatch point, which runs a policy over the real
  launches of all sessions, tracks their completion, and measures them;
- ``kernel_id.py``: what makes two launches the same kernel;
- ``profiles.py``: what was measured of each kernel, persisted (``fikit-profiles`` lists it);
- ``simulator.py``: a discrete-event model of a shared GPU to study the policies on.
"""
