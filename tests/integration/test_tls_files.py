"""The checks a certificate set passes before the gateway uses it, at start or when its files
change (gateway/tls_files.py): the server's, and a partner inbox's (client certificate, CA)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography import x509

from gateway.certs import issue, make_ca
from gateway.tls_files import (
    CertificateError,
    ClientCertificates,
    ServerCertificates,
    certificate_expiry,
)


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


class Ticks:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_client_files_are_checked_at_start(pki: Path) -> None:
    a, b = pki / "a", pki / "b"
    issue(a, "client", days=30)
    issue(b, "client")
    with pytest.raises(CertificateError, match=r"b/client-key\.pem: not the key of the cert"):
        ClientCertificates("sz", a / "ca.pem", a / "client.pem", b / "client-key.pem")
    with pytest.raises(CertificateError, match=r"client\.pem: expired at"):
        ClientCertificates(
            "sz",
            a / "ca.pem",
            a / "client.pem",
            a / "client-key.pem",
            clock=lambda: time.time() + 40 * 86400,
        )
    with pytest.raises(CertificateError, match=r"gone\.pem: No such file"):
        ClientCertificates("sz", a / "gone.pem", None, None)
    (pki / "junk.pem").write_text("not a certificate")
    with pytest.raises(CertificateError, match=r"junk\.pem: not a PEM certificate"):
        ClientCertificates("sz", pki / "junk.pem", None, None)
    with pytest.raises(CertificateError, match="needs its key"):
        ClientCertificates("sz", None, a / "client.pem", None)
    # Trust anchors alone (TLS without a client certificate), or nothing (the system's).
    assert ClientCertificates("sz", a / "ca.pem", None, None).current.expiry is None
    assert ClientCertificates("sz", None, None, None).current.ca is None


def test_client_files_are_read_again_only_when_they_change_and_pass(pki: Path) -> None:
    a, b = pki / "a", pki / "b"
    issue(a, "client", days=30)
    ticks = Ticks()
    outcomes: list[str] = []
    expiries: list[float] = []
    certs = ClientCertificates(
        "sz",
        a / "ca.pem",
        a / "client.pem",
        a / "client-key.pem",
        on_reload=outcomes.append,
        on_expiry=expiries.append,
        monotonic=ticks,
    )
    first = certs.current
    assert first.generation == 1
    assert first.cert == (a / "client.pem").read_bytes()
    assert expiries == [expiry_of(a / "client.pem")]
    ticks.now += 5
    assert certs.poll() is None  # unchanged
    issue(a, "client", days=60)
    ticks.now += 0.5
    assert certs.poll() is None  # looked at no more than once a second
    ticks.now += 0.6
    second = certs.poll()
    assert second is not None
    assert second.generation == 2
    assert second.cert == (a / "client.pem").read_bytes() != first.cert
    assert certs.current is second
    assert expiries[-1] == expiry_of(a / "client.pem") > expiries[0]
    assert outcomes == ["ok"]
    # Half a rotation: another CA's certificate written, its key not yet. Refused once; the
    # set in use stays; the key's arrival completes the set.
    (a / "client.pem").write_bytes((b / "gateway.pem").read_bytes())
    ticks.now += 2
    assert certs.poll() is None
    assert certs.current is second
    ticks.now += 2
    assert certs.poll() is None  # refused once, not at every look
    assert outcomes == ["ok", "rejected"]
    (a / "client-key.pem").write_bytes((b / "gateway-key.pem").read_bytes())
    ticks.now += 2
    third = certs.poll()
    assert third is not None
    assert third.generation == 3
    assert third.cert == (b / "gateway.pem").read_bytes()
    assert outcomes == ["ok", "rejected", "ok"]
    # A CA bundle that stops parsing is refused too.
    (a / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\ntruncated")
    ticks.now += 2
    assert certs.poll() is None
    assert outcomes[-1] == "rejected"
