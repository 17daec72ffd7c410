"""TLS, mutual TLS and per-client tokens.

Why both: TLS (server certificate) keeps updates private and the server authentic; a client is
then identified either by a token (cheap to provision on many devices) or by a client certificate
(mutual TLS), whose common name must equal the name it joins under. The server stores only
``sha256(token)`` so a leaked tokens file does not leak credentials, and compares in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc

CLIENT_KEY = "fedkit-client"
AUTH_KEY = "authorization"


class AuthError(Exception):
    """Missing or wrong credentials; the server answers UNAUTHENTICATED."""


class Authenticator(Protocol):
    def check(self, name: str, token: str | None) -> None:
        """Raise :class:`AuthError` unless ``token`` authenticates ``name``."""
        ...


def hash_token(token: str) -> str:
    """The form a server stores: sha256 hex of the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits) to give to one client."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class TokenAuth:
    """Per-client tokens: ``hashes`` maps client name -> sha256(token) hex."""

    hashes: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_tokens(cls, tokens: Mapping[str, str]) -> TokenAuth:
        """Build from plaintext tokens (tests, provisioning scripts)."""
        return cls({name: hash_token(t) for name, t in tokens.items()})

    @classmethod
    def from_file(cls, path: str | Path) -> TokenAuth:
        """Load ``{name: sha256hex}`` from a JSON or YAML file."""
        text = Path(path).read_text()
        if str(path).endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise ValueError(f"{path}: expected a mapping of client name -> sha256 hex")
        return cls({k: v.lower() for k, v in data.items()})

    def check(self, name: str, token: str | None) -> None:
        if token is None:
            raise AuthError(f"client {name!r}: missing token")
        expected = self.hashes.get(name)
        # Compare even for unknown names so timing does not reveal which names exist.
        ok = hmac.compare_digest(hash_token(token), expected or "0" * 64)
        if expected is None or not ok:
            raise AuthError(f"client {name!r}: wrong token or unknown client")


@dataclass(frozen=True)
class ServerTls:
    """Server certificate and key (PEM); ``client_ca`` set means mutual TLS is required."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(
        cls, cert: str | Path, key: str | Path, client_ca: str | Path | None = None
    ) -> ServerTls:
        return cls(
            Path(cert).read_bytes(),
            Path(key).read_bytes(),
            Path(client_ca).read_bytes() if client_ca else None,
        )

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.mutual,
        )


@dataclass(frozen=True)
class ClientTls:
    """CA to trust (PEM), and for mutual TLS the client's certificate and key."""

    root_ca: bytes
    cert_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None  # override the name checked against the server certificate

    @classmethod
    def from_files(
        cls,
        ca: str | Path,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
    ) -> ClientTls:
        return cls(
            Path(ca).read_bytes(),
            Path(cert).read_bytes() if cert else None,
            Path(key).read_bytes() if key else None,
            server_name,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_ca,
            private_key=self.private_key,
            certificate_chain=self.cert_chain,
        )


def client_metadata(name: str, token: str | None) -> tuple[tuple[str, str], ...]:
    """Metadata a client attaches to every call."""
    md: tuple[tuple[str, str], ...] = ((CLIENT_KEY, name),)
    if token is not None:
        md += ((AUTH_KEY, f"Bearer {token}"),)
    return md


def parse_metadata(md: object) -> tuple[str | None, str | None]:
    """(client name, bearer token) from invocation metadata; either may be missing."""
    name = token = None
    for key, value in md or ():  # type: ignore[attr-defined]
        if key == CLIENT_KEY:
            name = value
        elif key == AUTH_KEY and isinstance(value, str) and value.startswith("Bearer "):
            token = value[len("Bearer ") :]
    return name, token


def peer_common_name(auth_context: Mapping[str, list[bytes]]) -> str | None:
    """Common name of the verified client certificate, if the peer presented one."""
    cn = auth_context.get("x509_common_name")
    return cn[0].decode() if cn else None
