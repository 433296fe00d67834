"""The committed generated code matches proto/, and the msgpack codec refuses bad frames."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fikit_wire import calls as wire

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


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x92\x01", wire.pack({"a": 1}), wire.pack(5)])
def test_codec_refuses_malformed_frames(data: bytes) -> None:
    with pytest.raises(ValueError, match="malformed frame"):
        wire.unpack(data)
