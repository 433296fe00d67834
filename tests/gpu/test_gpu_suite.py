"""Plain cuda-python programs run natively and through gpu-server + fikit-run must match."""

import contextlib
import difflib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def _gpu_available() -> bool:
    """True when libcuda loads, cuInit succeeds and at least one device is visible."""
    try:
        from cuda.bindings import driver

        (err,) = driver.cuInit(0)
        if err != driver.CUresult.CUDA_SUCCESS:
            return False
        err, count = driver.cuDeviceGetCount()
        return err == driver.CUresult.CUDA_SUCCESS and count > 0
    except Exception:  # RuntimeError without libcuda, ImportError without cuda-python
        return False


if not _gpu_available():
    pytest.skip("no usable CUDA GPU (cuInit failed or no device)", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
PROGRAMS_DIR = Path(__file__).resolve().parent / "programs"
PROGRAMS = sorted(p.name for p in PROGRAMS_DIR.glob("*.py") if p.name != "common.py")
VECTOR_ADD = REPO / "examples" / "vector_add.py"
TENANT = Path(__file__).resolve().parent / "tenants" / "tenant.py"
#: Where the fault-containment figures go (the GPU run script sets it to its output folder).
FIGURES = Path(os.environ.get("FIKIT_GPU_FIGURES", "/tmp")) / "isolation.jsonl"
CONCURRENT_PROGRAMS = ["copies.py", "saxpy_arg_forms.py"]
TIMEOUT_S = int(os.environ.get("FIKIT_GPU_TEST_TIMEOUT", "240"))
SERVER_START_S = 30
SERVER_STOP_S = 10


def _env() -> dict[str, str]:
    """The environment without FIKIT_SERVER, so native runs stay native; a program that
    hangs prints its threads' stacks when it is stopped with SIGABRT."""
    env = dict(os.environ)
    env.pop("FIKIT_SERVER", None)
    env["PYTHONFAULTHANDLER"] = "1"
    return env


def _server_command(listen: list[str], isolation: str) -> list[str]:
    """gpu-server console script if installed, else `python -m gpu_server`."""
    script = shutil.which("gpu-server")
    base = [script] if script else [sys.executable, "-m", "gpu_server"]
    addresses = [arg for address in listen for arg in ("--listen", address)]
    return [*base, *addresses, "--backend", "cuda", "--isolation", isolation]


def _remote_prefix(addr: str) -> list[str]:
    """fikit-run console script if installed, else `python -m client_stub.run`."""
    script = shutil.which("fikit-run")
    base = [script] if script else [sys.executable, "-m", "client_stub.run"]
    return [*base, "--server", addr]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A running gpu-server subprocess."""

    addr: str
    port: int
    proc: subprocess.Popen
    log: Path

    def assert_alive(self) -> None:
        """Fail the current test if the server has exited."""
        if self.proc.poll() is not None:
            pytest.fail(
                f"gpu-server exited early with status {self.proc.returncode}; its output:\n"
                f"{self.log.read_text(errors='replace')}"
            )

    def wait_listening(self) -> None:
        """Poll the TCP port until the server accepts connections."""
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            self.assert_alive()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"gpu-server did not accept connections on {self.addr} in {SERVER_START_S} s")

    def stacks(self) -> str:
        """The server's log after asking it to print every thread's stack (SIGUSR1)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1)
        return self.log.read_text(errors="replace")[-20000:]

    def stop(self) -> None:
        """SIGTERM, then kill after SERVER_STOP_S."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=SERVER_STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def running_server(log_dir: Path, isolation: str, transport: str = "tcp") -> Iterator[Server]:
    """A gpu-server with the CUDA backend on a free local port, and for ``transport``
    "unix" on a unix socket too, which clients then use (same-host sessions are handed
    to the GPU worker; TCP sessions are relayed to it)."""
    port = _free_port()
    listen = [f"127.0.0.1:{port}"]
    if transport == "unix":
        listen.append(f"unix:{log_dir / 'gpu.sock'}")
    log = log_dir / "server.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            _server_command(listen, isolation),
            cwd=REPO,
            env=_env(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    handle = Server(listen[-1], port, proc, log)
    try:
        handle.wait_listening()
        yield handle
    finally:
        handle.stop()


@pytest.fixture(
    scope="module",
    params=[("shared", "tcp"), ("shared", "unix"), ("process", "unix")],
    ids=["shared-tcp", "shared-unix", "process-unix"],
)
def server(request, tmp_path_factory):
    """A gpu-server for this module's tests, under each isolation mode that uses workers
    and each way its sessions reach them."""
    with running_server(tmp_path_factory.mktemp("gpu_server"), *request.param) as handle:
        yield handle


def _check_exit(label: str, returncode: int, stdout: str, stderr: str) -> None:
    if returncode != 0:
        pytest.fail(f"{label} exited with {returncode}\nstdout:\n{stdout}\nstderr:\n{stderr}")


def _run(label: str, command: list[str], server: Server | None = None) -> str:
    """Run a command to completion; fail unless it exits 0; return its stdout. A command
    that outlives TIMEOUT_S fails with its own and the server's thread stacks."""
    proc = subprocess.Popen(
        command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server_stacks = server.stacks() if server is not None else ""
        proc.send_signal(signal.SIGABRT)
        stdout, stderr = proc.communicate()
        pytest.fail(
            f"{label} hung for {TIMEOUT_S} s\nstdout tail:\n{stdout[-3000:]}\n"
            f"stderr:\n{stderr[-8000:]}\nserver:\n{server_stacks}"
        )
    _check_exit(label, proc.returncode, stdout, stderr)
    return stdout


@functools.cache
def _native_stdout(program: Path) -> str:
    """Stdout of a native run (run once per program)."""
    return _run(f"native {program.name}", [sys.executable, str(program)])


def _remote_command(server: Server, program: Path) -> list[str]:
    return [*_remote_prefix(server.addr), sys.executable, str(program)]


def _assert_same_output(label: str, native: str, remote: str) -> None:
    native_lines, remote_lines = native.splitlines(), remote.splitlines()
    if native_lines != remote_lines:
        diff = difflib.unified_diff(native_lines, remote_lines, "native", "remote", lineterm="")
        pytest.fail(f"{label}: remote output differs from native:\n" + "\n".join(diff))


def _compare(server: Server, program: Path) -> str:
    native = _native_stdout(program)
    remote = _run(f"remote {program.name}", _remote_command(server, program), server)
    server.assert_alive()
    _assert_same_output(program.name, native, remote)
    return remote


@pytest.mark.gpu
@pytest.mark.parametrize("program", PROGRAMS)
def test_program_remote_matches_native(server, program):
    _compare(server, PROGRAMS_DIR / program)


@pytest.mark.gpu
def test_vector_add_remote_matches_native(server):
    assert "vector_add: OK" in _compare(server, VECTOR_ADD).splitlines()


@pytest.mark.gpu
def test_two_remote_clients_concurrently(server, tmp_path):
    programs = [PROGRAMS_DIR / name for name in CONCURRENT_PROGRAMS]
    natives = {program: _native_stdout(program) for program in programs}
    running = []
    for program in programs:
        stdout, stderr = tmp_path / f"{program.stem}.out", tmp_path / f"{program.stem}.err"
        with stdout.open("w") as out, stderr.open("w") as err:
            command = _remote_command(server, program)
            proc = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=out, stderr=err)
        running.append((program, proc, stdout, stderr))

    deadline = time.monotonic() + TIMEOUT_S
    hung = False
    for _, proc, _, _ in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            hung = True
    if hung:
        server_stacks = server.stacks()
        for _, proc, _, _ in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGABRT)
                proc.wait()
        report = [f"server:\n{server_stacks}"]
        report += [f"{p.name}:\n{err.read_text()[-8000:]}" for p, _, _, err in running]
        pytest.fail("concurrent clients hung\n" + "\n".join(report))

    server.assert_alive()
    for program, proc, stdout, stderr in running:
        remote = stdout.read_text()
        label = f"concurrent remote {program.name}"
        _check_exit(label, proc.returncode, remote, stderr.read_text())
        _assert_same_output(label, natives[program], remote)


def _tenant(server: Server, role: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [*_remote_command(server, TENANT), role],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def _record(figure: dict) -> None:
    with FIGURES.open("a") as out:
        out.write(json.dumps(figure) + "\n")


@pytest.mark.gpu
@pytest.mark.parametrize("isolation", ["shared", "process"])
def test_a_kernel_fault_is_contained(tmp_path, isolation):
    with running_server(tmp_path, isolation, "unix") as server:
        bystander = _tenant(server, "bystander", stdin=subprocess.PIPE)
        assert bystander.stdout.readline().strip() == "ready"
        fault = _run("fault", [*_remote_command(server, TENANT), "fault"], server)
        faulted = time.monotonic()
        assert fault.strip() == "CUDA_ERROR_ILLEGAL_ADDRESS"
        fresh = _run("fresh", [*_remote_command(server, TENANT), "fresh"], server)
        fresh_s = time.monotonic() - faulted
        bystander.stdin.write("\n")
        bystander.stdin.flush()
        said, log = bystander.communicate(timeout=TIMEOUT_S)
        server.assert_alive()
    _record({"isolation": isolation, "new_session_ok_after_fault_s": round(fresh_s, 3)})
    assert fresh.strip() == "ok"
    if isolation == "shared":
        assert said.strip() == "CUDA_ERROR_DEVICE_UNAVAILABLE"
        assert "another tenant's kernel faulted (CUDA_ERROR_ILLEGAL_ADDRESS)" in log
    else:
        assert said.strip() == "ok", log
    assert fresh_s < 2.0, f"a new session worked only {fresh_s:.2f} s after the fault"


def _free_device_memory() -> int:
    from cuda.bindings import driver

    free, _ = driver.cuMemGetInfo()[1:]
    return free


@pytest.mark.gpu
@pytest.mark.parametrize("isolation", ["shared", "process"])
def test_a_killed_client_has_its_device_memory_freed_within_a_second(tmp_path, isolation):
    from cuda.bindings import driver

    driver.cuInit(0)
    ctx = driver.cuDevicePrimaryCtxRetain(driver.cuDeviceGet(0)[1])[1]
    driver.cuCtxSetCurrent(ctx)
    with running_server(tmp_path, isolation, "unix") as server:
        holder = _tenant(server, "hold", stdin=subprocess.PIPE)
        assert holder.stdout.readline().strip() == "ready"
        held = _free_device_memory()
        holder.kill()
        killed = time.monotonic()
        while _free_device_memory() < held + (3 << 30) and time.monotonic() - killed < 10:
            time.sleep(0.01)
        freed_s = time.monotonic() - killed
        server.assert_alive()
    driver.cuDevicePrimaryCtxRelease(driver.cuDeviceGet(0)[1])
    _record({"isolation": isolation, "killed_client_memory_freed_s": round(freed_s, 3)})
    assert freed_s < 1.0, f"4 GiB came back {freed_s:.2f} s after the kill"


@pytest.mark.gpu
def test_sixteen_tenants_at_once_all_correct(tmp_path):
    with running_server(tmp_path, "shared") as server:
        tenants = [_tenant(server, "fresh") for _ in range(16)]
        results = [tenant.communicate(timeout=TIMEOUT_S) for tenant in tenants]
        server.assert_alive()
    assert [out.strip() for out, _ in results] == ["ok"] * 16, [err for _, err in results]
