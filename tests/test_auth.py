"""Tokens, tenants' priority ceilings and device-memory quotas."""

from __future__ import annotations

import datetime
import ipaddress
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from cuda.bindings.driver import CUresult

from client_stub.connection import ConnectionLost, connect
from gpu_server.auth import Tenant, TokenBook, parse_bytes
from gpu_server.hub import Admission
from tests.conftest import ServerThread
from tests.test_sessions import wait_until

INFERENCE = "3f9c0a8e5b7d4c21a6e0f19b2d8c7a54"
BATCH = "b71e2d9a0c4f4b3e8a5d6c7f1e2a3b4c"
TOKENS = f"""
# token  tenant  highest-priority  memory
{INFERENCE}  inference  9  1M
{BATCH}  batch  3  4096   # a small quota
"""


def test_the_tokens_file_is_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(TOKENS)
    book = TokenBook.load(path)
    assert book.tenant(BATCH) == Tenant("batch", 3, 4096)
    assert book.tenant(INFERENCE) == Tenant("inference", 9, 1 << 20)
    assert book.tenant("nope") is None and book.tenant("") is None
    assert [parse_bytes(s) for s in ("12", "2k", "3G")] == [12, 2048, 3 << 30]
    other = "0123456789abcdef0123"
    for bad in (
        f"{other} batch 10 1G",  # priority over 9
        f"{other} batch 3",  # no memory
        "short batch 3 1G",  # token too short
        f"{other} b 3 -1",  # negative memory
        f"{BATCH} again 3 1G",  # a token twice
    ):
        path.write_text(TOKENS + bad + "\n")
        with pytest.raises(ValueError, match=r"tokens:5: "):
            TokenBook.load(path)


@pytest.fixture(params=[0, 1], ids=["grpc", "unix"])
def guarded(request, tmp_path: Path) -> Iterator[str]:
    """The address of a server that needs tokens, over each transport."""
    path = tmp_path / "tokens"
    path.write_text(TOKENS)
    server = ServerThread(
        listen=("127.0.0.1:0", f"unix:{tmp_path}/gpu.sock"),
        admission=Admission(tokens=TokenBook.load(path)),
    )
    yield server.running.addresses[request.param]
    server.stop()


@pytest.mark.parametrize("token", [None, "wrong-token-of-some-length", BATCH[:-1]])
def test_without_a_valid_token_nothing_runs(
    guarded: str, token: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if token is None:
        monkeypatch.delenv("FIKIT_TOKEN", raising=False)
    else:
        monkeypatch.setenv("FIKIT_TOKEN", token)
    with pytest.raises(ConnectionLost, match="unauthenticated"):
        connect(guarded, priority=0, client_name="intruder")


def test_a_tenant_gets_its_ceiling_and_its_quota(
    guarded: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FIKIT_TOKEN", BATCH)
    with caplog.at_level(logging.INFO):
        conn = connect(guarded, priority=9, client_name="batch job")
    try:
        ctx = conn.request("cuDevicePrimaryCtxRetain", 0)[1]
        first = conn.request("cuMemAlloc", ctx, 4000)
        assert first[0] == 0
        assert conn.request("cuMemAlloc", ctx, 200) == [CUresult.CUDA_ERROR_OUT_OF_MEMORY]
        assert conn.request("cuMemFree", first[1]) == [0]
        assert conn.request("cuMemAlloc", ctx, 4096)[0] == 0
    finally:
        conn.close()
    assert "tenant batch asked for priority 9: lowered to 3" in caplog.text
    assert BATCH not in caplog.text


def test_a_server_wide_quota_applies_without_tokens(tmp_path: Path) -> None:
    server = ServerThread(admission=Admission(memory_quota=8192))
    try:
        conn = connect(server.address, priority=0, client_name="app")
        ctx = conn.request("cuDevicePrimaryCtxRetain", 0)[1]
        assert conn.request("cuMemAlloc", ctx, 8192)[0] == 0
        assert conn.request("cuMemAlloc", ctx, 1) == [CUresult.CUDA_ERROR_OUT_OF_MEMORY]
        conn.close()
    finally:
        server.stop()


def self_signed() -> tuple[bytes, bytes]:
    """A certificate for 127.0.0.1 and its key, PEM; the certificate is its own CA."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "fikit test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_tls_with_a_token_works_and_plaintext_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed()
    (tmp_path / "ca.pem").write_bytes(cert)
    (tmp_path / "tokens").write_text(TOKENS)
    tokens = TokenBook.load(tmp_path / "tokens")
    server = ServerThread(admission=Admission(tokens=tokens), tls=(cert, key))
    try:
        monkeypatch.setenv("FIKIT_TOKEN", INFERENCE)
        monkeypatch.delenv("FIKIT_TLS_CA", raising=False)
        with pytest.raises(ConnectionLost):
            connect(server.address, priority=0, client_name="plain", timeout=2)
        monkeypatch.setenv("FIKIT_TLS_CA", str(tmp_path / "ca.pem"))
        conn = connect(server.address, priority=9, client_name="secure")
        assert conn.request("cuDeviceGetCount") == [0, 1]
        conn.close()
    finally:
        server.stop()


@pytest.mark.parametrize("transport", [0, 1], ids=["grpc", "unix"])
def test_sessions_past_the_limit_are_refused_until_one_ends(tmp_path: Path, transport: int) -> None:
    server = ServerThread(
        listen=("127.0.0.1:0", f"unix:{tmp_path}/gpu.sock"), admission=Admission(max_sessions=2)
    )
    address = server.running.addresses[transport]
    try:
        first, second = (connect(address, priority=0, client_name=str(i)) for i in range(2))
        with pytest.raises(ConnectionLost, match=r"full \(2 sessions\)"):
            connect(address, priority=0, client_name="third")
        first.close()
        assert wait_until(lambda: len(server.active_sessions()) == 1)
        third = connect(address, priority=0, client_name="third")
        assert third.request("cuDeviceGetCount") == [0, 1]
        for conn in (second, third):
            conn.close()
    finally:
        server.stop()
