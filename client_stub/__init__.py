"""FIKIT client stub: a drop-in ``cuda.bindings.driver`` that runs on a remote GPU server.

Programs need no change: with ``FIKIT_SERVER=host:port`` set (or under ``fikit-run``),
``from cuda.bindings import driver`` gives the stub. Programs that want to choose in code
call ``client_stub.install("host:port", priority=...)`` before importing the bindings.
"""

from client_stub.activation import install

__all__ = ["install"]
