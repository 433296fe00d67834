"""The same-host transport: a unix socket, and one thread per session doing all its work.

``gpu-server --listen unix:PATH`` serves it. Each connection gets a thread that reads the
frames that have arrived and submits them to the session's port; a session run in this
process executes them on that thread and writes the replies itself: a call goes from the
socket to the driver and its reply back without a hand-over between threads or an event
loop, which is what a round trip costs through gRPC. A session run in a GPU worker process
gets the connection itself once welcomed (passed over a unix socket), so its calls do not
pass through this process either; the thread then only waits to tell the client if the
worker is lost. Backpressure is the socket's: a thread reads only when it is ready for
more.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import threading
import time

import msgpack

from fikit_wire import calls as wire
from fikit_wire.frames import FrameSocket
from gpu_server.hub import SHUTTING_DOWN, Hello, HelloRefused, SessionHub
from gpu_server.ports import LocalPort, SessionPort, end_session, serve_frames

log = logging.getLogger(__name__)

#: How often the accepting thread looks at whether it should stop.
_ACCEPT_POLL_S = 0.2


class SocketListener:
    """Accepts same-host sessions on a unix socket until stopped."""

    def __init__(self, hub: SessionHub, path: str) -> None:
        self.hub = hub
        self.path = path
        self._sock = _bind(path)
        self._stopping = threading.Event()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._lock = threading.Lock()
        self._acceptor = threading.Thread(target=self._accept, name="fikit-accept", daemon=True)
        self._acceptor.start()

    def stop(self, grace: float) -> None:
        """Stop accepting, give sessions ``grace`` seconds to end, then cut them off."""
        self._stopping.set()
        self._acceptor.join()
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        with self._lock:
            connections = dict(self._connections)
        deadline = time.monotonic() + grace
        for thread in connections.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        for conn, thread in connections.items():
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)  # the session ends; its thread says why
            thread.join()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as err:
                log.error("unix socket %s: %s", self.path, err)
                return
            conn.settimeout(None)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self._connections[conn] = thread
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        """Run one session to its end; nothing a client sends can stop the server."""
        frames = FrameSocket(conn)
        try:
            port = self._open(frames)
            if port is None:
                return
            try:
                reason = self._run(port, frames)
            finally:
                self.hub.close(port)
            if reason or self._stopping.is_set():
                end_session(frames, reason or SHUTTING_DOWN)
        except (OSError, ValueError) as err:
            log.info("unix session ended: %s", err)
        finally:
            conn.close()
            with self._lock:
                self._connections.pop(conn, None)

    @staticmethod
    def _run(port: SessionPort, frames: FrameSocket) -> str:
        """Serve the session until the client or the server ends it; why the server did."""
        if port.can_adopt:
            return port.adopt(frames.sock, frames.unread())
        assert isinstance(port, LocalPort), "a port that cannot adopt runs here"
        return serve_frames(port, frames)

    def _open(self, frames: FrameSocket) -> SessionPort | None:
        """Read the Hello and answer it: the new session, or None once refused."""
        first = frames.receive_one()
        if first is None:
            return None
        try:
            fields = msgpack.unpackb(first, raw=False)
            hello = Hello(
                int(fields["protocol_version"]),
                str(fields["client_name"]),
                int(fields["priority"]),
                str(fields.get("staging_path", "")),
                str(fields.get("token", "")),
                bool(fields.get("notices", False)),
            )
            port = self.hub.open(hello, f"unix:{self.path}")
        except HelloRefused as refused:
            frames.send(wire.pack_end(str(refused)))
            return None
        except (ValueError, TypeError, KeyError, msgpack.UnpackException):
            frames.send(wire.pack_end("the first frame must be a Hello"))
            return None
        frames.send(msgpack.packb(self.hub.welcome(port)))
        return port


def _bind(path: str) -> socket.socket:
    """A listening unix socket at ``path``; a stale socket file left there is replaced."""
    if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
        else:
            raise OSError(f"cannot listen on unix:{path}: a server answers there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on unix:{path}: {err.strerror}") from None
    sock.settimeout(_ACCEPT_POLL_S)
    return sock
