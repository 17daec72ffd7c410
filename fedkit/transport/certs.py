"""A private CA, a server certificate and client certificates for a deployment or a test.

Why a private CA: the server and the devices belong to one experiment, so trusting one CA
certificate is simpler and safer than a public PKI. Keys are EC P-256; private keys are written
with mode 0600. The server certificate carries a SAN per host (DNS or IP), because gRPC checks
the address the client dials against the SANs, never the common name.

Adding a device later (:func:`add_clients`) signs its certificate with the existing CA and
merges its token into ``tokens.json``: the CA, the server key and every other device's
credentials stay valid. Nothing existing is overwritten unless ``force=True``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedkit.transport.security import hash_token


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


CA_FILES = ("ca.pem", "ca.key", "server.pem", "server.key", "tokens.json")


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or name in ("ca", "server", "tokens"):
        raise ValueError(f"client name {name!r} cannot be a certificate file name")


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.timezone.utc)
    return now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    cn: str,
    usage: x509.ObjectIdentifier,
    sans: Sequence[str],
    days: int,
) -> tuple[bytes, bytes]:
    start, end = _validity(days)
    key = _key()
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
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
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName([_san(h) for h in sans]), False)
    cert = b.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def _client_files(
    out: Path, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
    clients: Sequence[str], days: int,
) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    for name in clients:
        cert, key = _leaf(ca_cert, ca_key, name, ExtendedKeyUsageOID.CLIENT_AUTH, (), days)
        paths[f"{name}_cert"] = _write(out / f"{name}.pem", cert)
        paths[f"{name}_key"] = _write(out / f"{name}.key", key, private=True)
    return paths


def make_certs(
    out_dir: str | Path,
    *,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    clients: Sequence[str] = ("client-0",),
    days: int = 365,
    force: bool = False,
) -> dict[str, Path]:
    """Write ``ca.pem/ca.key``, ``server.pem/server.key`` and ``<client>.pem/<client>.key``.

    Returns paths keyed ``ca_cert, ca_key, server_cert, server_key`` and
    ``<client>_cert, <client>_key`` per client. The client certificate's CN is the client name
    (mutual TLS checks it against the name the client joins under). A directory that already
    holds a CA or tokens raises FileExistsError unless ``force`` (which invalidates every
    device's credentials); use :func:`add_clients` to add devices.
    """
    out = Path(out_dir)
    for name in clients:
        _check_name(name)
    existing = [f for f in CA_FILES if (out / f).exists()]
    if existing and not force:
        raise FileExistsError(
            f"{out} already holds {', '.join(existing)}: add devices with --add-client NAME "
            "(keeps the CA and every token), or pass --force to replace everything"
        )
    out.mkdir(parents=True, exist_ok=True)
    start, end = _validity(days)
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
    if force and (out / "tokens.json").exists():
        (out / "tokens.json").unlink()  # the old tokens belong to the replaced deployment
    paths: dict[str, Path] = {
        "ca_cert": _write(out / "ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM)),
        "ca_key": _write(out / "ca.key", _pem_key(ca_key), private=True),
    }
    server = hosts[0] if hosts else "fedkit-server"
    cert, key = _leaf(ca_cert, ca_key, server, ExtendedKeyUsageOID.SERVER_AUTH, hosts, days)
    paths["server_cert"] = _write(out / "server.pem", cert)
    paths["server_key"] = _write(out / "server.key", key, private=True)
    return paths | _client_files(out, ca_cert, ca_key, clients, days)


def add_clients(
    out_dir: str | Path, clients: Sequence[str], *, days: int = 365, force: bool = False
) -> dict[str, Path]:
    """Sign certificates for new ``clients`` with the CA already in ``out_dir``.

    The CA, server certificate and other clients' files are left untouched. A client whose
    certificate, key or token already exists raises FileExistsError unless ``force``.
    """
    out = Path(out_dir)
    if not (out / "ca.pem").exists() or not (out / "ca.key").exists():
        raise FileNotFoundError(f"{out} has no ca.pem/ca.key: create it first with `fedkit certs {out}`")
    tokens = read_token_hashes(out)
    for name in clients:
        _check_name(name)
        clash = [f"{name}{ext}" for ext in (".pem", ".key", ".token") if (out / f"{name}{ext}").exists()]
        clash += ["its entry in tokens.json"] if name in tokens else []
        if clash and not force:
            raise FileExistsError(f"client {name!r} already exists in {out} ({', '.join(clash)}); --force replaces it")
    ca_cert = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{out / 'ca.key'} is not an EC private key made by fedkit certs")
    return _client_files(out, ca_cert, ca_key, clients, days)


def read_token_hashes(out_dir: str | Path) -> dict[str, str]:
    """``tokens.json`` of ``out_dir`` (client -> sha256 of its token), or {} if absent."""
    f = Path(out_dir) / "tokens.json"
    return dict(json.loads(f.read_text())) if f.exists() else {}


def write_tokens(out_dir: str | Path, tokens: dict[str, str]) -> dict[str, Path]:
    """Write ``<name>.token`` (mode 0600) per client and merge their hashes into tokens.json."""
    out = Path(out_dir)
    paths = {}
    for name, token in tokens.items():
        paths[f"{name}_token"] = _write(out / f"{name}.token", (token + "\n").encode(), private=True)
    hashes = read_token_hashes(out) | {n: hash_token(t) for n, t in tokens.items()}
    tmp = out / "tokens.json.tmp"
    tmp.write_text(json.dumps(hashes, indent=2, sort_keys=True) + "\n")
    tmp.replace(out / "tokens.json")
    paths["tokens"] = out / "tokens.json"
    return paths
