"""Batch frames serialized from their payloads read as the protobuf messages they stand for."""

from __future__ import annotations

import pytest

from fikit_wire import session_pb2
from fikit_wire.stream_frames import SerializedBatch, batch_prefix, frame_parser, serialize_frame

SIZES = [0, 1, 127, 128, 16383, 16384, 1 << 20, (1 << 21) + 5]


@pytest.mark.parametrize("size", SIZES)
def test_a_batch_frame_is_the_message_protobuf_would_write(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    data = serialize_frame(payload)
    assert data == session_pb2.ServerFrame(replies=payload).SerializeToString()
    assert data == session_pb2.ClientFrame(calls=payload).SerializeToString()
    for message in (session_pb2.ServerFrame, session_pb2.ClientFrame):
        parsed = frame_parser(message)(data)
        assert isinstance(parsed, memoryview) and parsed == payload
    joined = SerializedBatch(b"".join((batch_prefix(size), payload[:5], payload[5:])))
    assert serialize_frame(joined) == data


def test_any_other_frame_is_read_as_a_message() -> None:
    welcome = session_pb2.ServerFrame(welcome=session_pb2.Welcome(backend="sim", session_id=3))
    assert frame_parser(session_pb2.ServerFrame)(serialize_frame(welcome)) == welcome
    hello = session_pb2.ClientFrame(hello=session_pb2.Hello(client_name="app", priority=4))
    assert frame_parser(session_pb2.ClientFrame)(serialize_frame(hello)) == hello


def test_a_batch_frame_followed_by_more_fields_is_read_by_protobuf() -> None:
    later = session_pb2.ServerFrame(replies=b"xy").SerializeToString()
    data = serialize_frame(b"abc") + later  # protobuf: the last one wins
    parsed = frame_parser(session_pb2.ServerFrame)(data)
    assert isinstance(parsed, session_pb2.ServerFrame) and parsed.replies == b"xy"
