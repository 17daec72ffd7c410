"""TLS, mutual TLS, token authentication and the certificate factory."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509

from fedkit.transport import ClientTls, ServerTls, TokenAuth, hash_token, make_certs, run_client
from fedkit.transport.security import AuthError

from .conftest import enc, exchange, plus_one, tasks_for


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_certs(tmp_path_factory.mktemp("pki"), clients=("client-0", "client-1"))


def test_make_certs_writes_a_ca_server_and_clients(certs: dict[str, Path]) -> None:
    assert set(certs) == {"ca_cert", "ca_key", "server_cert", "server_key", "client-0_cert",
                          "client-0_key", "client-1_cert", "client-1_key"}
    server = x509.load_pem_x509_certificate(certs["server_cert"].read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    client = x509.load_pem_x509_certificate(certs["client-1_cert"].read_bytes())
    assert client.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "client-1"
    assert stat.S_IMODE(certs["client-0_key"].stat().st_mode) == 0o600


def test_tls_exchange(servers, clients, certs) -> None:
    tls = ServerTls.from_files(certs["server_cert"], certs["server_key"])
    srv = servers(tls=tls)
    for host in ("127.0.0.1", "localhost"):  # IP SAN and DNS SAN
        clients.start(f"{host}:{srv.port}", plus_one, f"c-{host}",
                      tls=ClientTls.from_files(certs["ca_cert"]))
    srv.wait_for_clients(2, timeout=10)
    replies = exchange(srv.link, tasks_for(srv.link.clients(), 0, enc([np.zeros(2)])), 10)
    assert len(replies) == 2 and all(r.ok for r in replies)


def test_tls_client_refuses_an_untrusted_server(servers, certs, tmp_path) -> None:
    other = make_certs(tmp_path / "other", clients=())
    srv = servers(tls=ServerTls.from_files(certs["server_cert"], certs["server_key"]))
    with pytest.raises(ConnectionError):
        run_client(f"127.0.0.1:{srv.port}", plus_one, name="c0", max_attempts=2,
                   backoff=(0.01, 0.02), tls=ClientTls.from_files(other["ca_cert"]))


def test_mutual_tls_checks_the_certificate_name(servers, clients, certs) -> None:
    tls = ServerTls.from_files(certs["server_cert"], certs["server_key"], certs["ca_cert"])
    srv = servers(tls=tls)
    addr = f"127.0.0.1:{srv.port}"
    mine = ClientTls.from_files(certs["ca_cert"], certs["client-0_cert"], certs["client-0_key"])
    clients.start(addr, plus_one, "client-0", tls=mine)
    assert srv.wait_for_clients(1, timeout=10) == ["client-0"]
    assert len(exchange(srv.link, tasks_for(["client-0"], 0, enc([])), 10)) == 1
    # someone else's certificate under this name
    theirs = ClientTls.from_files(certs["ca_cert"], certs["client-1_cert"], certs["client-1_key"])
    with pytest.raises(grpc.RpcError) as ei:
        run_client(addr, plus_one, name="client-0", tls=theirs, max_attempts=2)
    assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "client-1" in ei.value.details()
    # no certificate at all: the handshake fails
    with pytest.raises(ConnectionError):
        run_client(addr, plus_one, name="client-0", max_attempts=2, backoff=(0.01, 0.02),
                   tls=ClientTls.from_files(certs["ca_cert"]))
    assert srv.link.clients() == ["client-0"]


def test_tokens(servers, clients, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="fedkit.transport")
    srv = servers(auth=TokenAuth.from_tokens({"c0": "s3cret", "c1": "other"}))
    addr = f"127.0.0.1:{srv.port}"
    clients.start(addr, plus_one, "c0", token="s3cret")
    assert srv.wait_for_clients(1, timeout=10) == ["c0"]
    assert len(exchange(srv.link, tasks_for(["c0"], 0, enc([])), 10)) == 1
    for name, token in (("c1", None), ("c1", "s3cret"), ("nobody", "s3cret")):
        with pytest.raises(grpc.RpcError) as ei:
            run_client(addr, plus_one, name=name, token=token, insecure=True, max_attempts=2)
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert sum("UNAUTHENTICATED" in m for m in caplog.messages) == 3
    assert srv.link.clients() == ["c0"]


def test_token_file_stores_hashes(tmp_path) -> None:
    p = tmp_path / "tokens.json"
    p.write_text(json.dumps({"c0": hash_token("abc").upper()}))
    auth = TokenAuth.from_file(p)
    auth.check("c0", "abc")
    with pytest.raises(AuthError, match="wrong token"):
        auth.check("c0", "abd")
    with pytest.raises(AuthError, match="missing"):
        auth.check("c0", None)
    y = tmp_path / "tokens.yaml"
    y.write_text(f"c1: {hash_token('xyz')}\n")
    TokenAuth.from_file(y).check("c1", "xyz")
    y.write_text("- not a mapping\n")
    with pytest.raises(ValueError, match="mapping"):
        TokenAuth.from_file(y)
