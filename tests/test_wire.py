"""The committed generated code matches proto/, and the msgpack codec refuses bad frames."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fikit_wire import calls as wire
from fikit_wire.frames import FrameDecoder, FrameSocket, header
from tests.test_sessions import wait_until

REPO = Path(__file__).resolve().parents[1]
GENERATED = ("session_pb2.py", "session_pb2_grpc.py", "session_pb2.pyi")


def test_regenerating_the_protocol_gives_the_committed_files(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools==1.84.0 regenerates the wire code")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO / 'proto'}",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(REPO / "proto" / "fikit_wire" / "session.proto"),
        ],
        check=True,
    )
    for name in GENERATED:
        fresh = (tmp_path / "fikit_wire" / name).read_text()
        assert fresh == (REPO / "fikit_wire" / name).read_text(), f"{name} is stale: regenerate"


def test_codec_round_trip() -> None:
    batch = [["cuMemcpyHtoD", False, 1, 2, 0, b"\x00\xff" * 8, 16, None], ["cuInit", True, 0]]
    assert wire.unpack(wire.pack(batch)) == batch


@pytest.mark.parametrize("size", [0, 1, 0xFF, 0x100, 0xFFFF, 0x10000, (1 << 20) + 3])
def test_a_call_packed_argument_by_argument_reads_as_packed_whole(size: int) -> None:
    data = os.urandom(size)
    call = ["cuMemcpyHtoD", True, 1, 2, data, None]
    pieces = [wire.array_header(len(call))]
    for arg in call:
        pieces += (wire.bin_header(len(arg)), arg) if arg is data else (wire.pack(arg),)
    assert b"".join(pieces) == wire.pack(call)


LONG = os.urandom(0x10000)


@pytest.mark.parametrize(
    ("batch", "viewed"),
    [
        ([[0, LONG]], True),
        ([[0, LONG], [0, LONG[:-1] + b"!"]], True),
        ([[0, LONG]] * 15, True),
        ([[0, LONG]] * 16, False),  # not a fixed-size array
        ([[0, LONG[:0xFFFF]]], False),  # a 16-bit length
        ([[0, LONG], [0]], False),
        ([[1, LONG]], False),
        ([[0, LONG, 1]], False),
        ([[0, b"short"]], False),
        ([], False),
    ],
)
def test_replies_carrying_long_data_unpack_as_views_and_any_other_batch_as_usual(
    batch: list, viewed: bool
) -> None:
    replies = wire.unpack_replies(wire.pack(batch))
    assert replies == batch
    assert all(isinstance(reply[1], memoryview) == viewed for reply in replies if len(reply) > 1)


def test_a_malformed_batch_of_replies_is_refused() -> None:
    with pytest.raises(ValueError, match="malformed frame"):
        wire.unpack_replies(wire.pack([[0, LONG]])[:-1])


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x92\x01", wire.pack({"a": 1}), wire.pack(5)])
def test_codec_refuses_malformed_frames(data: bytes) -> None:
    with pytest.raises(ValueError, match="malformed frame"):
        wire.unpack(data)


def test_frames_of_any_size_arrive_whole_and_in_order_from_a_stream_socket() -> None:
    ours, theirs = socket.socketpair()
    payloads = [b"a" * 10, os.urandom(5 << 20), b"", b"b" * 70_000, b"c"]
    sender = threading.Thread(target=lambda: [FrameSocket(theirs).send(p) for p in payloads])
    sender.start()
    frames = FrameSocket(ours)
    received: list[bytes] = []
    while len(received) < len(payloads):
        received += frames.receive()
    sender.join()
    theirs.close()
    assert received == payloads
    assert frames.receive() == []


@pytest.mark.parametrize("delay_s", [0.0, 0.02], ids=["within the spin", "after it"])
def test_a_spinning_receive_gets_frames_that_come_while_it_polls_or_after(
    delay_s: float,
) -> None:
    ours, theirs = socket.socketpair()
    timer = threading.Timer(delay_s, FrameSocket(theirs).send, [b"reply"])
    timer.start()
    with ours, theirs:
        assert FrameSocket(ours).receive(spin_s=0.005) == [b"reply"]
        timer.join()
        theirs.shutdown(socket.SHUT_WR)
        assert FrameSocket(ours).receive(spin_s=0.005) == []


def test_a_stream_that_ends_inside_a_long_frame_is_refused() -> None:
    ours, theirs = socket.socketpair()
    theirs.sendall(struct.pack("<I", 1 << 20) + b"x" * 1000)
    theirs.close()
    with pytest.raises(ValueError, match="ended inside a frame"):
        FrameSocket(ours).receive()


def test_a_decoder_cuts_a_stream_that_arrives_in_any_pieces_into_its_frames() -> None:
    payloads = [b"", b"a", os.urandom(70_000), b"xyz" * 10]
    stream = b"".join(header(p) + p for p in payloads)
    for piece in (1, 3, 4096, len(stream)):
        decoder = FrameDecoder()
        got = []
        for at in range(0, len(stream), piece):
            got += decoder.feed(stream[at : at + piece])
        assert got == payloads and not decoder.buffer
    with pytest.raises(ValueError):
        FrameDecoder().feed(struct.pack("<I", wire.MAX_MESSAGE_BYTES + 1))


def test_a_decoder_hands_over_the_start_of_a_long_frame_and_keeps_short_ones() -> None:
    long = os.urandom(70_000)
    decoder = FrameDecoder()
    assert decoder.feed(header(b"ab") + b"ab" + header(long) + long[:100]) == [b"ab"]
    assert decoder.take_long_start(1 << 17) is None  # not long enough to take
    assert decoder.take_long_start(1 << 16) == (len(long), long[:100])
    assert not decoder.buffer and decoder.take_long_start(0) is None
    whole = header(b"xyz") + b"xyz"
    assert decoder.feed(whole) == [b"xyz"] and decoder.take_long_start(0) is None


def test_a_work_done_notice_is_told_apart_from_replies_and_the_end_frame() -> None:
    assert wire.done_count(wire.pack_done(12345)) == 12345
    assert wire.done_count(wire.pack([[0], [0, 7]])) is None
    assert wire.done_count(wire.pack_end("bye")) is None
    assert wire.done_count(b"") is None
    assert wire.end_reason(wire.pack_done(3)) is None


def test_polling_a_frame_socket_keeps_what_arrived_for_the_next_receive() -> None:
    ours, theirs = socket.socketpair()
    frames = FrameSocket(ours)
    assert not frames.poll()
    theirs.sendall(header(b"abc") + b"abc")
    assert wait_until(frames.poll)
    assert frames.receive() == [b"abc"]
    assert not frames.poll()
    assert frames.unread_sent_bytes() == 0
    frames.send(b"y" * 10)
    assert frames.unread_sent_bytes() > 0
    assert FrameSocket(theirs).receive() == [b"y" * 10]
    assert frames.unread_sent_bytes() == 0
