"""The one error type of the server: a CUDA error code with its name."""

from __future__ import annotations

from cuda.bindings.driver import CUresult

#: Errors after which every context of the process is unusable: the only recovery is a new
#: process (see ``../shared/FACTS.md``, "Contexts, processes and faults").
CONTEXT_LOST_ERRORS = frozenset(
    int(code)
    for code in (
        CUresult.CUDA_ERROR_ILLEGAL_ADDRESS,
        CUresult.CUDA_ERROR_LAUNCH_TIMEOUT,
        CUresult.CUDA_ERROR_HARDWARE_STACK_ERROR,
        CUresult.CUDA_ERROR_ILLEGAL_INSTRUCTION,
        CUresult.CUDA_ERROR_MISALIGNED_ADDRESS,
        CUresult.CUDA_ERROR_INVALID_ADDRESS_SPACE,
        CUresult.CUDA_ERROR_INVALID_PC,
        CUresult.CUDA_ERROR_LAUNCH_FAILED,
        CUresult.CUDA_ERROR_ASSERT,
        CUresult.CUDA_ERROR_ECC_UNCORRECTABLE,
    )
)


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
