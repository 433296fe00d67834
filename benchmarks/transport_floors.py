"""Transport floors: what a round trip and a bulk stream cost with no GPU server in the way.

Usage: python benchmarks/transport_floors.py
Starts echo servers in a child process (a raw unix socket, a raw TCP socket, and a gRPC aio
server on uvloop with one bidirectional echo method), then measures from this process:
64-byte ping-pong on each, and gRPC streaming bandwidth with 1 MiB messages each way. Prints one
JSON object on the last line. forwarding.py runs it beside the server to compare against.
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import uvloop

PING_BYTES = 64
PINGS = 5_000
STREAM_MESSAGE = 1 << 20
STREAM_MESSAGES = 256
_ECHO = "/fikit.floors.Echo/Stream"
_SEND = "/fikit.floors.Echo/Send"


def _echo_socket(listener: socket.socket) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_echo_connection, args=(conn,), daemon=True).start()


def _echo_connection(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(1 << 20):
            conn.sendall(data)


async def _echo_stream(requests: AsyncIterator[bytes], _: object) -> AsyncIterator[bytes]:
    async for message in requests:
        yield message[:PING_BYTES]


async def _send_stream(requests: AsyncIterator[bytes], _: object) -> AsyncIterator[bytes]:
    """For each request naming a count, that many STREAM_MESSAGE-byte messages back."""
    payload = os.urandom(STREAM_MESSAGE)
    async for message in requests:
        for _ in range(int(message)):
            yield payload


async def _serve_grpc(port: int) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ],
    )
    handlers = {
        "Stream": grpc.stream_stream_rpc_method_handler(_echo_stream),
        "Send": grpc.stream_stream_rpc_method_handler(_send_stream),
    }
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("fikit.floors.Echo", handlers)]
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def serve(unix_path: str, tcp_port: int, grpc_port: int) -> None:
    """The child process: raw unix and TCP echo servers and the gRPC echo server."""
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(unix_path)
    unix.listen()
    tcp = socket.create_server(("127.0.0.1", tcp_port))
    for listener in (unix, tcp):
        threading.Thread(target=_echo_socket, args=(listener,), daemon=True).start()
    print("ready", flush=True)
    uvloop.run(_serve_grpc(grpc_port))


def ping_pong_us(sock: socket.socket) -> float:
    """Median round trip of a 64-byte message, in microseconds."""
    message = b"x" * PING_BYTES
    samples = []
    for _ in range(PINGS):
        start = time.perf_counter()
        sock.sendall(message)
        received = 0
        while received < PING_BYTES:
            received += len(sock.recv(PING_BYTES - received))
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def grpc_figures(port: int) -> dict[str, float]:
    """gRPC bidi ping-pong (64 B) and streaming bandwidth (1 MiB messages) each way, sync
    client: client to server (``grpc_stream_GBps``) and server to client
    (``grpc_stream_down_GBps``)."""
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20),
        ],
    )
    grpc.channel_ready_future(channel).result(timeout=30)  # it starts after the sockets
    stream = channel.stream_stream(_ECHO)
    outbox: list[bytes] = []
    ready = threading.Condition()

    def requests() -> Iterator[bytes]:
        while True:
            with ready:
                ready.wait_for(lambda: outbox)
                message = outbox.pop(0)
            if not message:
                return
            yield message

    def send(message: bytes) -> None:
        with ready:
            outbox.append(message)
            ready.notify()

    replies = stream(requests())
    samples = []
    for _ in range(PINGS // 5):
        start = time.perf_counter()
        send(b"x" * PING_BYTES)
        next(replies)
        samples.append(time.perf_counter() - start)
    payload = os.urandom(STREAM_MESSAGE)
    start = time.perf_counter()
    for _ in range(STREAM_MESSAGES):
        send(payload)
    for _ in range(STREAM_MESSAGES):
        next(replies)
    elapsed = time.perf_counter() - start
    send(b"")
    download = channel.stream_stream(_SEND)(iter([str(STREAM_MESSAGES).encode()]))
    start = time.perf_counter()
    for _ in range(STREAM_MESSAGES):
        next(download)
    down_elapsed = time.perf_counter() - start
    channel.close()
    return {
        "grpc_ping_pong_us": statistics.median(samples) * 1e6,
        "grpc_stream_GBps": STREAM_MESSAGE * STREAM_MESSAGES / elapsed / 1e9,
        "grpc_stream_down_GBps": STREAM_MESSAGE * STREAM_MESSAGES / down_elapsed / 1e9,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure() -> dict[str, float]:
    """Start the echo servers in a child process and measure every floor against them."""
    with tempfile.TemporaryDirectory() as directory:
        unix_path = str(Path(directory) / "echo.sock")
        tcp_port, grpc_port = free_port(), free_port()
        args = [sys.executable, __file__, "serve", unix_path, str(tcp_port), str(grpc_port)]
        child = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        try:
            if child.stdout.readline().strip() != "ready":
                sys.exit("transport_floors: the echo servers did not start")
            results = {}
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
                unix.connect(unix_path)
                results["unix_ping_pong_us"] = ping_pong_us(unix)
            with socket.create_connection(("127.0.0.1", tcp_port)) as tcp:
                tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                results["tcp_ping_pong_us"] = ping_pong_us(tcp)
            results.update(grpc_figures(grpc_port))
            return results
        finally:
            child.kill()
            child.wait()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        figures = measure()
        for key, value in figures.items():
            print(f"{key:<22} {value:>10.2f}")
        print(json.dumps(figures))
