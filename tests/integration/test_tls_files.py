"""The checks a server certificate set passes before the gateway serves it, at start or when
its files change (gateway/tls_files.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography import x509

from gateway.certs import issue, make_ca
from gateway.tls_files import CertificateError, ServerCertificates, certificate_expiry


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    make_ca(tmp_path / "a")
    issue(tmp_path / "a", "gateway", server=True, hosts=["localhost"], days=30)
    make_ca(tmp_path / "b", days=10)
    issue(tmp_path / "b", "gateway", server=True, hosts=["localhost"])
    return tmp_path


def expiry_of(path: Path) -> float:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc.timestamp()


def test_a_good_set_loads_with_the_expiry_of_each_part(pki: Path) -> None:
    a = pki / "a"
    bundle = pki / "bundle.pem"
    bundle.write_bytes((a / "ca.pem").read_bytes() + (pki / "b" / "ca.pem").read_bytes())
    loaded = ServerCertificates(a / "gateway.pem", a / "gateway-key.pem", bundle).load()
    assert loaded.expiry == {
        "server": expiry_of(a / "gateway.pem"),
        "client_ca": expiry_of(pki / "b" / "ca.pem"),  # the earliest in the bundle: 10 days
    }
    assert loaded.subject == "CN=gateway"
    assert certificate_expiry(bundle) == loaded.expiry["client_ca"]


def test_a_set_that_cannot_serve_is_refused_naming_the_file(pki: Path) -> None:
    a, b = pki / "a", pki / "b"
    with pytest.raises(CertificateError, match="not the key of the certificate"):
        ServerCertificates(a / "gateway.pem", b / "gateway-key.pem", None).load()
    (pki / "half.pem").write_bytes((a / "gateway.pem").read_bytes()[:200])
    with pytest.raises(CertificateError, match=r"half\.pem: not a PEM certificate"):
        ServerCertificates(pki / "half.pem", a / "gateway-key.pem", None).load()
    with pytest.raises(CertificateError, match="not an unencrypted PEM private key"):
        ServerCertificates(a / "gateway.pem", a / "gateway.pem", None).load()
    with pytest.raises(CertificateError, match="No such file"):
        ServerCertificates(a / "gateway.pem", a / "gone.pem", None).load()
    in_40_days = time.time() + 40 * 86400
    with pytest.raises(CertificateError, match=r"gateway\.pem: expired at"):
        ServerCertificates(
            a / "gateway.pem", a / "gateway-key.pem", None, clock=lambda: in_40_days
        ).load()
    in_20_days = time.time() + 20 * 86400
    with pytest.raises(CertificateError, match=r"ca\.pem: expired at"):
        ServerCertificates(
            a / "gateway.pem", a / "gateway-key.pem", b / "ca.pem", clock=lambda: in_20_days
        ).load()


def test_fetch_reads_the_files_only_when_they_change(pki: Path) -> None:
    a = pki / "a"
    outcomes: list[str] = []
    expiry: dict[str, float] = {}
    certs = ServerCertificates(
        a / "gateway.pem",
        a / "gateway-key.pem",
        a / "ca.pem",
        on_reload=outcomes.append,
        on_expiry=expiry.__setitem__,
    )
    certs.credentials()
    assert expiry == {"server": expiry_of(a / "gateway.pem"), "client_ca": expiry_of(a / "ca.pem")}
    assert certs.fetch() is None  # unchanged: gRPC keeps what it has
    issue(a, "gateway", server=True, hosts=["localhost"], days=60)
    assert certs.fetch() is not None
    assert expiry["server"] == expiry_of(a / "gateway.pem")
    assert certs.fetch() is None
    (a / "gateway-key.pem").write_bytes((pki / "b" / "gateway-key.pem").read_bytes())
    assert certs.fetch() is None  # refused once, not at every handshake
    assert certs.fetch() is None
    (a / "gateway-key.pem").unlink()
    assert certs.fetch() is None  # a file gone: refused, no exception into gRPC's thread
    assert certs.fetch() is None
    assert outcomes == ["ok", "rejected", "rejected"]
