"""Who may open sessions, at which priority, with how much device memory.

``gpu-server --tokens FILE`` reads one tenant per line::

    # token                             tenant     highest priority   device memory
    3f9c0a8e5b7d4c21a6e0f19b2d8c7a54    inference  9                  40G
    b71e2d9a0c4f4b3e8a5d6c7f1e2a3b4c    batch      3                  16G

Memory takes a plain byte count or a K, M, G or T suffix (powers of 1024). With tokens
configured, a client must present one (``FIKIT_TOKEN``): without it, or with a wrong one,
its session is refused as unauthenticated and nothing runs. A priority above the tenant's
highest is lowered to it, and logged. Tokens are compared in constant time and never
logged; logs name the tenant.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class Tenant:
    """What a token allows."""

    name: str
    max_priority: int
    memory_quota: int | None


class TokenBook:
    """The tokens the server accepts, read from a tokens file."""

    def __init__(self, tenants: dict[str, Tenant]) -> None:
        self._tenants = tenants

    @classmethod
    def load(cls, path: Path) -> TokenBook:
        """Read a tokens file; ValueError names the line that is wrong."""
        tenants: dict[str, Tenant] = {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            try:
                token, name, priority, memory = fields
                tenant = Tenant(name, int(priority), parse_bytes(memory))
            except ValueError:
                raise ValueError(
                    f"{path}:{number}: expected 'token tenant highest-priority memory'"
                ) from None
            if not 0 <= tenant.max_priority <= 9 or len(token) < 16 or token in tenants:
                raise ValueError(
                    f"{path}:{number}: priority must be 0..9 and tokens unique, 16+ characters"
                )
            tenants[token] = tenant
        return cls(tenants)

    def tenant(self, token: str) -> Tenant | None:
        """The tenant a token belongs to, or None; takes as long whatever the token."""
        found = None
        presented = token.encode()
        for known, tenant in self._tenants.items():
            if hmac.compare_digest(presented, known.encode()):
                found = tenant
        return found


def parse_bytes(text: str) -> int:
    """``16G`` -> 17179869184; a plain number is bytes."""
    unit = text[-1:].upper() if text[-1:].isalpha() else ""
    value = int(text[: len(text) - len(unit)])
    if value < 0 or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r}")
    return value * _UNITS[unit]
