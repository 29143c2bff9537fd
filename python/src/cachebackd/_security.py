"""Credentials of a client: TLS (an `https://` target) and the bearer token's guard.

TLS uses grpc's SSL channel credentials, from the PEM files that CACHEBACKD_TLS_CA,
CACHEBACKD_TLS_CERT and CACHEBACKD_TLS_KEY name (PROTOCOL.md, "Security"). The token
travels as `authorization: Bearer <token>` call metadata on every call, over TLS and over
a Unix socket or loopback alike; grpc's access-token call credentials would do the same
but refuse plaintext channels, and a local Unix socket is plaintext by design.

A token is never sent in plaintext to another machine unless the caller says
`allow_plaintext_token=True`.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any, Optional, Union

import grpc

#: PEM bundle of the CAs that verify the daemon's certificate.
TLS_CA_ENV = "CACHEBACKD_TLS_CA"
#: The client certificate (PEM), for mTLS.
TLS_CERT_ENV = "CACHEBACKD_TLS_CERT"
#: Its private key (PEM).
TLS_KEY_ENV = "CACHEBACKD_TLS_KEY"


@dataclass(frozen=True)
class TlsConfig:
    """TLS settings: `ca` (PEM; None: the system's roots), `cert` and `key` (PEM, both or
    neither: the client certificate for mTLS), `server_name` (the name to verify instead of
    the target's host)."""

    ca: Optional[bytes] = None
    cert: Optional[bytes] = None
    key: Optional[bytes] = None
    server_name: Optional[str] = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("TlsConfig: cert and key go together: give both or neither")

    @classmethod
    def from_files(
        cls,
        ca: Optional[str] = None,
        cert: Optional[str] = None,
        key: Optional[str] = None,
        server_name: Optional[str] = None,
    ) -> "TlsConfig":
        """The settings from PEM files."""

        def read(path: Optional[str]) -> Optional[bytes]:
            if path is None:
                return None
            with open(path, "rb") as f:
                return f.read()

        return cls(ca=read(ca), cert=read(cert), key=read(key), server_name=server_name)

    @classmethod
    def from_env(cls) -> "TlsConfig":
        """The files CACHEBACKD_TLS_CA, CACHEBACKD_TLS_CERT and CACHEBACKD_TLS_KEY name."""
        return cls.from_files(
            os.environ.get(TLS_CA_ENV) or None,
            os.environ.get(TLS_CERT_ENV) or None,
            os.environ.get(TLS_KEY_ENV) or None,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def split_scheme(target: str) -> tuple[str, bool]:
    """(`host:port` or `unix:/path`, whether the scheme asks for TLS)."""
    if target.startswith("https://"):
        return target[len("https://") :].rstrip("/"), True
    return target, False


def choose_tls(tls: Union["TlsConfig", bool, None], https: bool) -> Optional[TlsConfig]:
    """The TLS settings in force: `tls` as given, else (for an https:// target) the
    environment's; None for plaintext."""
    if isinstance(tls, TlsConfig):
        return tls
    if tls is True or (tls is None and https):
        return TlsConfig.from_env()
    return None


def is_local(target: str) -> bool:
    """Whether `target` (`host:port` or `unix:/path`) reaches only this machine."""
    if target.startswith("unix:"):
        return True
    host = target.rsplit(":", 1)[0] if ":" in target else target
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_plaintext_token(
    target: str, token: Optional[str], tls: Optional[TlsConfig], allowed: bool
) -> None:
    """Refuses to send `token` without TLS to another machine unless `allowed`."""
    if token and tls is None and not allowed and not is_local(target):
        raise ValueError(
            f"cachebackd: refusing to send a bearer token in plaintext to {target}: use an "
            "https:// target (or tls=...), or pass allow_plaintext_token=True on a trusted network"
        )
