"""The Python client's credentials against the real daemon (PROTOCOL.md, "Security"):
CACHEBACKD_TOKEN, an https:// target verified with CACHEBACKD_TLS_CA, mTLS with
CACHEBACKD_TLS_CERT / CACHEBACKD_TLS_KEY, the same in code, the Worker on them, and the
refusal to send a token in plaintext to another machine. Certificates are made at run
time (trustme); no key is committed."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any, Callable

import grpc
import pytest
import trustme

from cachebackd import CachebackError, Client, Job, TlsConfig, Worker
from cachebackd.aio import AsyncClient
from conftest import Daemon
from support import WAIT

TOKEN = "python-token-0123456789abcdefghijklmnopqrstuvw"


class Echo(Job):
    name = "secure.Echo"

    def fetch(self, *args: Any) -> list[Any]:
        return list(args)


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    web = ca.issue_cert("web.internal")
    files = {
        "ca": tmp_path / "ca.pem",
        "server_cert": tmp_path / "server.pem",
        "server_key": tmp_path / "server.key",
        "client_cert": tmp_path / "client.pem",
        "client_key": tmp_path / "client.key",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.private_key_pem.write_to_path(str(files["server_key"]))
    web.private_key_pem.write_to_path(str(files["client_key"]))
    files["server_cert"].write_bytes(b"".join(b.bytes() for b in server.cert_chain_pems))
    files["client_cert"].write_bytes(b"".join(b.bytes() for b in web.cert_chain_pems))
    return files


def secured(make_daemon: Callable[..., Daemon], tmp_path: Path, pki: dict[str, Path]) -> Daemon:
    """mTLS, auth required; principal `web` has every role by token and by certificate."""
    config = tmp_path / "c.toml"
    config.write_text(
        "[auth]\nrequired = true\n[[auth.principal]]\nname = \"web\"\n"
        f"token_sha256 = [\"{sha256(TOKEN)}\"]\ntls_names = [\"web.internal\"]\n"
        "roles = [\"reader\", \"writer\", \"worker\", \"admin\"]\n"
    )
    probe = grpc.ssl_channel_credentials(
        root_certificates=pki["ca"].read_bytes(),
        private_key=pki["client_key"].read_bytes(),
        certificate_chain=pki["client_cert"].read_bytes(),
    )
    return make_daemon(
        "--config", str(config),
        "--tls-cert", str(pki["server_cert"]),
        "--tls-key", str(pki["server_key"]),
        "--tls-client-ca", str(pki["ca"]),
        credentials=probe,
    )


def test_token_and_tls_come_from_the_environment(
    make_daemon: Callable[..., Daemon], tmp_path: Path, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = secured(make_daemon, tmp_path, pki)
    monkeypatch.setenv("CACHEBACKD_TARGET", f"https://{daemon.target}")
    monkeypatch.setenv("CACHEBACKD_TLS_CA", str(pki["ca"]))
    monkeypatch.setenv("CACHEBACKD_TLS_CERT", str(pki["client_cert"]))
    monkeypatch.setenv("CACHEBACKD_TLS_KEY", str(pki["client_key"]))
    monkeypatch.setenv("CACHEBACKD_TOKEN", TOKEN)
    with Client(timeout=WAIT) as client:
        worker = Worker(client).serve(Echo).start()
        try:
            assert worker.wait_until_registered(WAIT)
            assert Echo(client).get("a", 1) == ["a", 1]
        finally:
            worker.stop()


def test_tls_in_code_and_a_wrong_token_is_unauthenticated(
    make_daemon: Callable[..., Daemon], tmp_path: Path, pki: dict[str, Path]
) -> None:
    daemon = secured(make_daemon, tmp_path, pki)
    tls = TlsConfig.from_files(
        ca=str(pki["ca"]), cert=str(pki["client_cert"]), key=str(pki["client_key"])
    )
    with Client(f"https://{daemon.target}", tls=tls, token="not-the-token", timeout=WAIT) as client:
        with pytest.raises(CachebackError) as raised:
            client.get("secure.Echo", b"[]")
        assert raised.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert "not-the-token" not in str(raised.value)
    # The certificate alone names the principal.
    with Client(f"https://{daemon.target}", tls=tls, timeout=WAIT) as client:
        with pytest.raises(CachebackError) as raised:
            client.get("secure.Echo", b"[]")
        assert raised.value.code == grpc.StatusCode.NOT_FOUND  # authorized; no such job yet

    async def read() -> grpc.StatusCode:
        async with AsyncClient(f"https://{daemon.target}", tls=tls, token=TOKEN, timeout=WAIT) as c:
            try:
                await c.get("secure.Echo", b"[]")
            except CachebackError as error:
                return error.code
        return grpc.StatusCode.OK

    assert asyncio.run(read()) == grpc.StatusCode.NOT_FOUND


def test_a_token_is_never_sent_in_plaintext_beyond_loopback_unless_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CACHEBACKD_TOKEN", raising=False)
    with pytest.raises(ValueError, match="plaintext") as raised:
        Client("192.0.2.7:7070", token=TOKEN)
    assert TOKEN not in str(raised.value)
    Client("192.0.2.7:7070", token=TOKEN, allow_plaintext_token=True).close()
    Client("192.0.2.7:7070").close()
    for local in ("127.0.0.1:7070", "localhost:7070", "[::1]:7070", "unix:/tmp/c.sock"):
        Client(local, token=TOKEN).close()
    monkeypatch.setenv("CACHEBACKD_TOKEN", TOKEN)
    with pytest.raises(ValueError, match="plaintext"):
        Client("http://cache.internal:7070")
