"""Load: 64 client processes at once, over both transports, every result checked.

Each client allocates, copies random data in (synchronously and on a stream), memsets,
copies device to device, launches kernels (the test double records them), and checks every
byte that comes back. Afterwards the server holds no session and no device memory more than
before, and its Python heap has not grown with the number of sessions served (resident
memory is no measure here: the C allocator keeps what threads freed).
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

from tests.conftest import ServerThread
from tests.ptx_samples import SAXPY_PTX
from tests.test_sessions import REPO, memory_in_use, wait_until

CLIENTS = 64
CLIENT = (
    textwrap.dedent(
        """
    import sys
    import numpy as np
    from cuda.bindings import driver as d

    def ok(result):
        assert result[0] == d.CUresult.CUDA_SUCCESS, result
        return result[1] if len(result) == 2 else result[1:]

    seed = int(sys.argv[1])
    rng = np.random.default_rng(seed)
    ok(d.cuInit(0))
    ctx = ok(d.cuDevicePrimaryCtxRetain(ok(d.cuDeviceGet(0))))
    ok(d.cuCtxSetCurrent(ctx))
    module = ok(d.cuModuleLoadData(PTX))
    saxpy = ok(d.cuModuleGetFunction(module, b"saxpy"))
    stream = ok(d.cuStreamCreate(0))
    for round in range(5):
        n = int(rng.integers(1, 1 << 18))
        data = rng.integers(0, 2**32, n, dtype=np.uint32)
        a, b = ok(d.cuMemAlloc(4 * n)), ok(d.cuMemAlloc(4 * n))
        ok(d.cuMemcpyHtoDAsync(a, data, 4 * n, stream))
        ok(d.cuMemcpyDtoDAsync(b, a, 4 * n, stream))
        ok(d.cuMemsetD32Async(a, seed, n, stream))
        args = ((2.0, a, a, b, n), (ctypes.c_float, None, None, None, ctypes.c_uint))
        ok(d.cuLaunchKernel(saxpy, 1, 1, 1, 32, 1, 1, 0, stream, args, 0))
        back_a, back_b = np.zeros(n, np.uint32), np.zeros(n, np.uint32)
        ok(d.cuMemcpyDtoHAsync(back_b, b, 4 * n, stream))
        ok(d.cuStreamSynchronize(stream))
        ok(d.cuMemcpyDtoH(back_a, a, 4 * n))
        assert np.array_equal(back_b, data) and (back_a == seed).all()
        ok(d.cuMemFree(a))
        ok(d.cuMemFree(b))
    print("ok", seed)
    """
    )
    .replace("import sys", "import ctypes, sys")
    .replace("PTX", repr(SAXPY_PTX))
)


def python_heap() -> int:
    """Bytes the Python objects of this process (the server runs in it) hold now."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def run_clients(server: ServerThread, seeds: range) -> None:
    clients = []
    for seed in seeds:
        address = server.running.addresses[seed % 2]
        env = {**os.environ, "FIKIT_SERVER": address, "PYTHONPATH": str(REPO)}
        clients.append(
            subprocess.Popen(
                [sys.executable, "-c", CLIENT, str(seed)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for seed, client in zip(seeds, clients):
        out, err = client.communicate(timeout=600)
        assert client.returncode == 0, err[-2000:]
        assert out.split() == ["ok", str(seed)]


def test_64_clients_at_once_all_correct_and_nothing_left_behind(tmp_path: Path) -> None:
    server = ServerThread(listen=("127.0.0.1:0", f"unix:{tmp_path}/gpu.sock"))
    try:
        in_use = memory_in_use(server)
        run_clients(server, range(8))  # warm up: lazily built tables, thread pools
        assert wait_until(lambda: not server.active_sessions(), timeout=10)
        tracemalloc.start()
        heap = python_heap()
        run_clients(server, range(CLIENTS))
        assert wait_until(lambda: not server.active_sessions(), timeout=10)
        assert memory_in_use(server) == in_use
        assert len(server.backend.launches) == 5 * (8 + CLIENTS)
        # What stays is the test double's record of each launch, a few hundred bytes each.
        assert python_heap() - heap < 1 << 20
    finally:
        tracemalloc.stop()
        server.stop()
