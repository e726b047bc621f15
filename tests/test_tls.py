"""HTTPS to the checked address keeps the name: SNI and the certificate check use the URL's host."""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flask_kaizen_webhooks.delivery.client import Client
from flask_kaizen_webhooks.guard import AddressPolicy
from tests.clients import client


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca_and_cert(tmp_path: Path, dns_name: str) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for ``dns_name`` (files: ca, cert, key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Test CA"))
        .issuer_name(_name("Test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[Any]:
    ca, cert, key = make_ca_and_cert(tmp_path, "hooks.example.test")
    seen: dict[str, Any] = {"sni": [], "hosts": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen["hosts"].append(self.headers["Host"])
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: seen["sni"].append(name)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    yield server.server_port, str(ca), seen
    server.shutdown()
    server.server_close()


def transport(ca: str) -> Client:
    policy = AddressPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))
    return client(
        policy=policy, ca_bundle=ca, resolver=lambda host, port: [ipaddress.ip_address("127.0.0.1")]
    )


def test_sni_host_header_and_certificate_use_the_url_name(tls_server: Any) -> None:
    port, ca, seen = tls_server
    result = transport(ca).post(f"https://hooks.example.test:{port}/x", b"x", {}, timeout=5)
    assert result.ok, result
    assert seen["sni"] == ["hooks.example.test"]
    assert seen["hosts"] == [f"hooks.example.test:{port}"]


def test_a_certificate_for_another_name_is_refused(tls_server: Any) -> None:
    port, ca, seen = tls_server
    result = transport(ca).post(f"https://other.example.test:{port}/x", b"x", {}, timeout=5)
    assert not result.ok and result.status_code is None
    assert "certificate" in (result.error or "").lower() or "hostname" in (result.error or "")
    assert seen["hosts"] == []  # nothing was sent over the unverified connection


def test_an_untrusted_authority_is_refused(tls_server: Any, tmp_path: Path) -> None:
    port, _ca, seen = tls_server
    (tmp_path / "other").mkdir()
    other_ca, _, _ = make_ca_and_cert(tmp_path / "other", "hooks.example.test")
    result = transport(str(other_ca)).post(
        f"https://hooks.example.test:{port}/x", b"x", {}, timeout=5
    )
    assert not result.ok and "certificate" in (result.error or "").lower()
    assert seen["hosts"] == []
