"""Putting the stub in place of ``cuda.bindings.driver`` and ``cuda.bindings.runtime``.

``install()`` registers an import hook, so that a later ``from cuda.bindings import driver``
or ``import cuda.bindings.driver`` gives the stub module; modules imported already are
replaced in ``sys.modules`` too. The ``fikit_activate.pth`` file installed with the package
calls ``activate_from_environment()`` at interpreter start, which installs the hook only
when ``FIKIT_SERVER`` is set.

Packages that make most of their driver calls from compiled code (``cuda.core``, through
``cuda.bindings.cydriver``) bypass ``cuda.bindings.driver``, so the stub cannot forward
them: importing one while the stub is in place logs a warning.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

DRIVER = "cuda.bindings.driver"
RUNTIME = "cuda.bindings.runtime"
#: Packages that call the CUDA driver from compiled code, past the stub.
COMPILED_CALLERS = ("cuda.core",)

log = logging.getLogger("fikit.client")


def output_count(fn: Any) -> int:
    """How many values besides the status the real binding returns, read from its docstring."""
    lines = (fn.__doc__ or "").splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.strip() == "Returns" and set(lines[i + 1].strip()) == {"-"}:
            section = lines[i + 2 :]
            break
    else:
        return 0
    entries, indent = 0, None
    for line in section:
        text = line.strip()
        if text in ("See Also", "Notes", "Examples"):
            break
        if not text:
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        entries += depth == indent
    return max(entries - 1, 0)


def _unsupported(real_fn: Any, status: Any) -> Callable[..., tuple[Any, ...]]:
    failed = (status,) + (None,) * output_count(real_fn)

    def not_supported(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return failed

    not_supported.__name__ = real_fn.__name__
    not_supported.__doc__ = real_fn.__doc__
    return not_supported


def build_stub(
    real: ModuleType, prefix: str, implementations: dict[str, Any], unsupported_status: Any
) -> ModuleType:
    """A module with every name of ``real``: its types and constants, and for each of its
    functions whose name starts with ``prefix`` our implementation or a stub returning
    ``unsupported_status``."""
    stub = ModuleType(real.__name__, real.__doc__)
    for name, value in vars(real).items():
        if name.startswith("__"):
            continue
        if name.startswith(prefix) and callable(value) and not isinstance(value, type):
            impl = implementations.get(name)
            if impl is not None:
                impl.__doc__ = value.__doc__
                value = impl
            else:
                value = _unsupported(value, unsupported_status)
        setattr(stub, name, value)
    stub.__fikit_stub__ = True
    return stub


def make_driver_stub(real: ModuleType) -> ModuleType:
    """The driver stub built over the real ``cuda.bindings.driver``."""
    from client_stub.driver import IMPLEMENTATIONS

    return build_stub(real, "cu", IMPLEMENTATIONS, real.CUresult.CUDA_ERROR_NOT_SUPPORTED)


def make_runtime_stub(real: ModuleType) -> ModuleType:
    """The runtime stub built over the real ``cuda.bindings.runtime``."""
    from client_stub.runtime import IMPLEMENTATIONS

    return build_stub(real, "cuda", IMPLEMENTATIONS, real.cudaError_t.cudaErrorNotSupported)


_BUILDERS: dict[str, Callable[[ModuleType], ModuleType]] = {
    DRIVER: make_driver_stub,
    RUNTIME: make_runtime_stub,
}


def _warn_not_forwarded(package: str) -> None:
    log.warning(
        "fikit: %s calls the CUDA driver mostly from compiled code, which the FIKIT stub does "
        "not forward: its GPU work runs on this host's CUDA driver, if it has one, not on the "
        "GPU server; only cuda.bindings.driver and cuda.bindings.runtime are forwarded",
        package,
    )


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers imports of the real bindings with their stubs, and warns at the import of a
    package whose driver calls the stub cannot see."""

    def __init__(self) -> None:
        self._loading_real = False

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname in COMPILED_CALLERS:
            _warn_not_forwarded(fullname)
            return None
        if fullname not in _BUILDERS or self._loading_real:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        self._loading_real = True
        try:
            real = importlib.import_module(spec.name)
        finally:
            self._loading_real = False
        return _BUILDERS[spec.name](real)

    def exec_module(self, module: ModuleType) -> None:
        """The stub is complete when created."""


def _replace_loaded(name: str) -> None:
    module = sys.modules.get(name)
    if module is None or getattr(module, "__fikit_stub__", False):
        return
    stub = _BUILDERS[name](module)
    sys.modules[name] = stub
    parent = sys.modules.get(name.rpartition(".")[0])
    if parent is not None:
        setattr(parent, name.rpartition(".")[2], stub)


def install(server: str | None = None, priority: int | None = None) -> ModuleType:
    """Route cuda-python's driver and runtime to a GPU server; returns the driver stub.

    ``server`` (``host:port``) and ``priority`` (0 lowest to 9 highest) default to the
    ``FIKIT_SERVER`` and ``FIKIT_PRIORITY`` environment variables.
    """
    from client_stub.driver import REMOTE

    REMOTE.configure(server, priority)
    if not any(isinstance(f, _StubFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _StubFinder())
    for name in _BUILDERS:
        _replace_loaded(name)
    for package in COMPILED_CALLERS:
        if package in sys.modules:
            _warn_not_forwarded(package)
    return importlib.import_module(DRIVER)


def activate_from_environment() -> None:
    """Called at interpreter start: install the stub when FIKIT_SERVER is set."""
    if os.environ.get("FIKIT_SERVER"):
        install()
