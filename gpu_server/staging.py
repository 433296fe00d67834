"""Mapping a client's staging file: the server's end of same-host bulk copies.

A client on this host offers a shared-memory file it created (see ``fikit_wire.calls``).
Only a regular file with a staging name directly in the staging directory, not a link and
with no other name, of a bounded size, is mapped; anything else is refused and the session
simply copies through the stream.

Known limit: a client that keeps a descriptor of its file can still shrink it, and a copy
from the truncated part would fault the server. Staging is meant for clients of this host;
sealed memory handed over a unix socket would close that hole.
"""

from __future__ import annotations

import logging
import mmap
import os
import stat

from fikit_wire import calls as wire

log = logging.getLogger(__name__)


def map_staging(path: str) -> mmap.mmap | None:
    """Map a client's staging file read-write, or None (logged) when it is not acceptable."""
    directory, name = os.path.split(path)
    if not wire.STAGING_NAME.fullmatch(name) or os.path.realpath(directory) != os.path.realpath(
        wire.STAGING_DIR
    ):
        log.warning("refused staging file %r: not a staging name in %s", path, wire.STAGING_DIR)
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        log.info("no staging for %s: %s", path, err.strerror)
        return None
    try:
        info = os.fstat(fd)
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_nlink != 1
            or not 0 < info.st_size <= wire.MAX_STAGING_BYTES
        ):
            log.warning("refused staging file %s: not a plain file of an accepted size", path)
            return None
        return mmap.mmap(fd, info.st_size)
    finally:
        os.close(fd)
