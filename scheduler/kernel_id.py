"""Stable kernel identity: which launches count as "the same kernel" for profiling.

A kernel ID is a short hex digest over a canonical encoding of:

- the **module content digest** (``module_digest``: sha256 of the loaded module image, PTX or
  cubin, with trailing NUL bytes stripped). The same code is the same kernel across runs,
  processes and clients, whatever handle the driver gave the module; a PTX string passed
  with or without its terminating NUL is the same module;
- the **function name**: a module holds several kernels;
- the **grid and block dimensions**: a kernel's duration scales with the launch size;
- the **dynamic shared memory** size: it changes occupancy, hence duration.

Not included, on purpose:

- **argument values** (device pointers, scalars): they change on every call, and profiles
  would never repeat. A kernel whose duration depends on a scalar such as ``n`` gets one ID
  per launch geometry; usually ``n`` determines the grid anyway;
- the **stream** and the **context**: they say where a kernel runs, not how long it takes,
  and differ between clients running the same code.
"""

from __future__ import annotations

import hashlib

#: Bumped whenever the encoding below changes, so that old and new IDs never collide.
_ENCODING = b"fikit-kernel-id/1"


def module_digest(image: bytes) -> str:
    """The sha256 hex digest of a module image, ignoring trailing NUL bytes."""
    return hashlib.sha256(bytes(image).rstrip(b"\0")).hexdigest()


def kernel_id(
    module_digest: str,
    function_name: str,
    grid: tuple[int, int, int],
    block: tuple[int, int, int],
    dynamic_smem: int,
) -> str:
    """A 16-hex-digit ID of one kernel at one launch geometry (see the module docstring)."""
    if len(grid) != 3 or len(block) != 3:
        raise ValueError(f"grid and block need 3 dimensions, got {grid!r} and {block!r}")
    dims = ",".join(str(int(d)) for d in (*grid, *block, dynamic_smem))
    encoded = b"\0".join(
        (_ENCODING, module_digest.encode("ascii"), function_name.encode("utf-8"), dims.encode())
    )
    return hashlib.blake2b(encoded, digest_size=8).hexdigest()
