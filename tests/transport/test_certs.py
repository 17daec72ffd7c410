"""Credentials over a deployment's life: adding a device keeps everything else; nothing is
overwritten without --force; server/setup_tls.sh works as server/README.md says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fedkit.cli import main
from fedkit.transport.certs import add_clients, make_certs
from fedkit.transport.security import TokenAuth

ROOT = Path(__file__).parents[2]


def _signed_by(cert: Path, ca: Path) -> bool:
    c = x509.load_pem_x509_certificate(cert.read_bytes())
    pub = x509.load_pem_x509_certificate(ca.read_bytes()).public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and c.signature_hash_algorithm is not None
    try:
        pub.verify(c.signature, c.tbs_certificate_bytes, ec.ECDSA(c.signature_hash_algorithm))
    except Exception:  # noqa: BLE001  (InvalidSignature)
        return False
    return True


def _snapshot(d: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(d.iterdir()) if f.is_file()}


def test_make_certs_refuses_an_existing_ca_unless_forced(tmp_path: Path) -> None:
    make_certs(tmp_path, clients=("a",))
    before = _snapshot(tmp_path)
    with pytest.raises(FileExistsError, match="already holds ca.pem.*--add-client"):
        make_certs(tmp_path, clients=("b",))
    assert _snapshot(tmp_path) == before
    make_certs(tmp_path, clients=("b",), force=True)
    assert (tmp_path / "ca.pem").read_bytes() != before["ca.pem"]


def test_add_clients_keeps_the_ca_server_key_and_other_clients(tmp_path: Path) -> None:
    make_certs(tmp_path, clients=("a",))
    before = _snapshot(tmp_path)
    paths = add_clients(tmp_path, ["b"])
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("b.")} == before
    assert _signed_by(paths["b_cert"], tmp_path / "ca.pem")
    assert (paths["b_key"].stat().st_mode & 0o777) == 0o600
    with pytest.raises(FileExistsError, match="client 'a' already exists"):
        add_clients(tmp_path, ["a"])
    with pytest.raises(FileNotFoundError, match="no ca.pem"):
        add_clients(tmp_path / "empty", ["c"])
    with pytest.raises(ValueError, match="cannot be a certificate file name"):
        add_clients(tmp_path, ["../x"])


def test_cli_add_client_merges_tokens_and_never_overwrites(tmp_path: Path, capsys) -> None:
    d = tmp_path / "certs"
    assert main(["certs", str(d), "--client", "dev-1"]) == 0
    tok1 = (d / "dev-1.token").read_text()
    before = _snapshot(d)
    assert main(["certs", str(d), "--client", "dev-2"]) == 2  # would regenerate the CA
    assert "already holds" in capsys.readouterr().err
    assert _snapshot(d) == before
    assert main(["certs", str(d), "--add-client", "dev-2"]) == 0
    assert main(["certs", str(d), "--add-client", "dev-2"]) == 2
    assert (d / "ca.pem").read_bytes() == before["ca.pem"]
    assert (d / "server.key").read_bytes() == before["server.key"]
    assert (d / "dev-1.token").read_text() == tok1
    assert sorted(json.loads((d / "tokens.json").read_text())) == ["dev-1", "dev-2"]
    auth = TokenAuth.from_file(d / "tokens.json")
    auth.check("dev-1", tok1.strip())
    auth.check("dev-2", (d / "dev-2.token").read_text().strip())
    assert main(["certs", str(d), "--add-client", "dev-2", "--force"]) == 0


def test_setup_tls_script_works_as_documented_without_fedkit_on_path(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    env = dict(os.environ, PATH="/usr/bin:/bin", PYTHON=sys.executable)
    script = str(ROOT / "server" / "setup_tls.sh")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([script, "-o", str(out), *args], env=env, capture_output=True, text=True, timeout=60)

    r = run("fl.example.org", "10.0.0.5", "--", "dev-1", "dev-2")
    assert r.returncode == 0, r.stderr
    for f in ("ca.pem", "ca.key", "server.pem", "server.key", "tokens.json", "dev-1.pem", "dev-2.token"):
        assert (out / f).exists(), f
    server = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    ca = (out / "ca.pem").read_bytes()
    r = run("fl.example.org", "--", "dev-3")
    assert r.returncode != 0 and "already holds" in r.stderr
    r = run("--add", "dev-3")
    assert r.returncode == 0, r.stderr
    assert (out / "ca.pem").read_bytes() == ca and _signed_by(out / "dev-3.pem", out / "ca.pem")
    assert sorted(json.loads((out / "tokens.json").read_text())) == ["dev-1", "dev-2", "dev-3"]
