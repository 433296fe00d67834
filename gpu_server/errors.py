"""The one error type of the server: a CUDA error code with its name."""

from __future__ import annotations

from cuda.bindings.driver import CUresult


class CudaError(Exception):
    """A failed driver call, carrying the ``CUresult`` the client receives."""

    def __init__(self, code: int | CUresult, detail: str = "") -> None:
        self.code = int(code)
        self.name = CUresult(self.code).name
        super().__init__(f"{self.name}: {detail}" if detail else self.name)


def invalid_value(detail: str = "") -> CudaError:
    """CUDA_ERROR_INVALID_VALUE with an explanation for the server log."""
    return CudaError(CUresult.CUDA_ERROR_INVALID_VALUE, detail)


def invalid_handle(detail: str = "") -> CudaError:
    """CUDA_ERROR_INVALID_HANDLE with an explanation for the server log."""
    return CudaError(CUresult.CUDA_ERROR_INVALID_HANDLE, detail)
