"""CUDA execution backends: the real GPU (``cuda``) and the CPU test double (``sim``)."""

from __future__ import annotations

from gpu_server.backends.base import Backend


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this machine."""


def open_backend(name: str) -> Backend:
    """Create the backend called ``name`` ("cuda", "sim" or "auto")."""
    if name == "sim":
        from gpu_server.backends.sim import SimBackend

        return SimBackend()
    from gpu_server.backends.cuda import CudaBackend, cuda_available

    if name == "cuda" or cuda_available():
        return CudaBackend()
    raise BackendUnavailable(
        "no usable NVIDIA driver or GPU found; to run without a GPU, start the server with "
        "--backend sim (the CPU test double: memory and copies are real, kernels do not compute)"
    )
