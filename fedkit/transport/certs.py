"""A private CA, a server certificate and client certificates for a deployment or a test.

Why a private CA: the server and the devices belong to one experiment, so trusting one CA
certificate is simpler and safer than a public PKI. Keys are EC P-256; private keys are written
with mode 0600. The server certificate carries a SAN per host (DNS or IP), because gRPC checks
the address the client dials against the SANs, never the common name.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedkit"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    if private:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_certs(
    out_dir: str | Path,
    *,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    clients: Sequence[str] = ("client-0",),
    days: int = 365,
) -> dict[str, Path]:
    """Write ``ca.pem/ca.key``, ``server.pem/server.key`` and ``<client>.pem/<client>.key``.

    Returns paths keyed ``ca_cert, ca_key, server_cert, server_key`` and
    ``<client>_cert, <client>_key`` per client. The client certificate's CN is the client name
    (mutual TLS checks it against the name the client joins under).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    ca_key = _key()
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedkit CA"))
        .issuer_name(_name("fedkit CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value

    def leaf(cn: str, usage: x509.ObjectIdentifier, sans: Sequence[str]) -> tuple[bytes, bytes]:
        key = _key()
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False
            )
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName([_san(h) for h in sans]), False)
        cert = b.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)

    paths: dict[str, Path] = {
        "ca_cert": _write(out / "ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM)),
        "ca_key": _write(out / "ca.key", _pem_key(ca_key), private=True),
    }
    cert, key = leaf(hosts[0] if hosts else "fedkit-server", ExtendedKeyUsageOID.SERVER_AUTH, hosts)
    paths["server_cert"] = _write(out / "server.pem", cert)
    paths["server_key"] = _write(out / "server.key", key, private=True)
    for name in clients:
        if not name or "/" in name or name.startswith(".") or name in ("ca", "server"):
            raise ValueError(f"client name {name!r} cannot be a certificate file name")
        cert, key = leaf(name, ExtendedKeyUsageOID.CLIENT_AUTH, ())
        paths[f"{name}_cert"] = _write(out / f"{name}.pem", cert)
        paths[f"{name}_key"] = _write(out / f"{name}.key", key, private=True)
    return paths
