"""Mutual TLS: the partner is who its certificate says; everyone else is refused."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from gateway.app import Gateway
from gateway.certs import issue, make_ca
from gateway.settings import ConfigError, load_settings
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import case_exchange_pb2_grpc as cx_grpc
from tongban.v1 import common_pb2

from .conftest import ROOT, run

ZS_CASE = json.loads((ROOT / "mappings/zhongshan/samples/case/01-case.json").read_text("utf-8"))


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    out = run(
        "certs",
        "init",
        "--dir",
        str(tmp_path / "certs"),
        "--partners",
        "zhongshan,guangzhou,stranger",
    )
    assert out.returncode == 0, out.stderr
    other = tmp_path / "other-ca"
    make_ca(other)
    issue(other, "zhongshan")  # same name, signed by a CA the gateway does not trust
    return tmp_path / "certs"


def env(tmp_path: Path, certs: Path) -> dict[str, str]:
    return {
        "TONGBAN_SERVER__PORT": "0",
        "TONGBAN_STORE__DATA_DIR": str(tmp_path / "data"),
        "TONGBAN_MAPPINGS__PATH": str(ROOT / "mappings"),
        "TONGBAN_MAPPINGS__WATCH": "false",
        "TONGBAN_METRICS__ENABLED": "false",
        "TONGBAN_DELIVERY__ENABLED": "false",
        "TONGBAN_AUTH__MODE": "mtls",
        "TONGBAN_TLS__CERT": str(certs / "gateway.pem"),
        "TONGBAN_TLS__KEY": str(certs / "gateway-key.pem"),
        "TONGBAN_TLS__CLIENT_CA": str(certs / "ca.pem"),
        "TONGBAN_PARTNERS__ZHONGSHAN__CITY": "442000",
        "TONGBAN_PARTNERS__SHENZHEN__CITY": "440300",
        "TONGBAN_PARTNERS__SHENZHEN__INBOX__TRANSPORT": "grpc",
        "TONGBAN_PARTNERS__SHENZHEN__INBOX__TARGET": "127.0.0.1:9",
        "TONGBAN_PARTNERS__GUANGZHOU__CITY": "440100",
    }


@pytest.fixture
async def gateway(tmp_path: Path, certs: Path) -> AsyncIterator[Gateway]:
    gw = Gateway(load_settings(None, env=env(tmp_path, certs)))
    await gw.start()
    yield gw
    await gw.stop(grace=0)


def channel(gw: Gateway, ca: Path, cert_dir: Path | None, name: str | None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=(cert_dir / f"{name}-key.pem").read_bytes() if cert_dir and name else None,
        certificate_chain=(cert_dir / f"{name}.pem").read_bytes() if cert_dir and name else None,
    )
    return grpc.aio.secure_channel(f"localhost:{gw.port}", creds)


def submit(rid: str) -> cx.SubmitCaseRequest:
    return cx.SubmitCaseRequest(
        request_id=rid,
        target_city="440300",
        foreign=common_pb2.ForeignRecord(
            schema="zhongshan.case", json=json.dumps(ZS_CASE).encode()
        ),
    )


async def test_partner_identified_by_its_certificate(gateway: Gateway, certs: Path) -> None:
    async with channel(gateway, certs / "ca.pem", certs, "zhongshan") as ch:
        stub = cx_grpc.CaseExchangeServiceStub(ch)
        resp = await stub.SubmitCase(submit("m1"), timeout=10)
        row = await gateway.services.store.read(
            gateway.services.store.reader.case, resp.exchange_id
        )
        assert row is not None
        assert (row.submitter, row.receiving_city) == ("zhongshan", "442000")
    async with channel(
        gateway, certs / "ca.pem", certs, "guangzhou"
    ) as ch:  # B cannot read A's case
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await cx_grpc.CaseExchangeServiceStub(ch).GetCase(
                cx.GetCaseRequest(exchange_id=resp.exchange_id), timeout=10
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_refused_without_a_good_certificate(
    gateway: Gateway, certs: Path, tmp_path: Path
) -> None:
    # No client certificate: the TLS handshake itself fails.
    async with channel(gateway, certs / "ca.pem", None, None) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await cx_grpc.CaseExchangeServiceStub(ch).SubmitCase(submit("n1"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # A certificate from an unknown CA: refused in the handshake too.
    async with channel(gateway, certs / "ca.pem", tmp_path / "other-ca", "zhongshan") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await cx_grpc.CaseExchangeServiceStub(ch).SubmitCase(submit("n2"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # A valid certificate of no configured partner: UNAUTHENTICATED.
    async with channel(gateway, certs / "ca.pem", certs, "stranger") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await cx_grpc.CaseExchangeServiceStub(ch).SubmitCase(submit("n3"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A development token over TLS is not an identity.
    async with channel(gateway, certs / "ca.pem", certs, "stranger") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await cx_grpc.CaseExchangeServiceStub(ch).SubmitCase(
                submit("n4"), metadata=[("authorization", "Bearer anything")], timeout=5
            )
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (
        await gateway.services.store.read(
            gateway.services.store.reader.cases, ["442000"], before_seq=None, limit=10
        )
        == []
    )


def test_token_mode_refuses_to_start_with_tls(tmp_path: Path, certs: Path) -> None:
    bad = {**env(tmp_path, certs), "TONGBAN_AUTH__MODE": "token"}
    with pytest.raises(ConfigError, match="refused when TLS is on"):
        load_settings(None, env=bad)


def served_certificate(port: int, certs: Path) -> x509.Certificate:
    """The certificate a new TLS connection to the gateway is shown (as a partner, over h2)."""
    ctx = ssl.create_default_context(cafile=certs / "ca.pem")
    ctx.load_cert_chain(certs / "zhongshan.pem", certs / "zhongshan-key.pem")
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("localhost", port), timeout=5) as sock,
        ctx.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def test_a_rotated_server_certificate_serves_new_connections_at_once(
    gateway: Gateway, certs: Path, tmp_path: Path
) -> None:
    """`tongban certs issue gateway --server` while the gateway runs: the next connection gets
    the new certificate, connections already open keep working, and a key that does not match
    its certificate is refused while the last good pair keeps serving."""
    metrics = gateway.services.metrics.registry
    first = await asyncio.to_thread(served_certificate, gateway.port, certs)
    expiry = metrics.get_sample_value(
        "tongban_tls_certificate_expiry_timestamp_seconds", {"certificate": "server"}
    )
    assert expiry == first.not_valid_after_utc.timestamp()
    async with channel(gateway, certs / "ca.pem", certs, "zhongshan") as before:
        stub = cx_grpc.CaseExchangeServiceStub(before)
        await stub.SubmitCase(submit("r1"), timeout=10)
        out = run("certs", "issue", "gateway", "--server", "--dir", str(certs))
        assert out.returncode == 0, out.stderr
        rotated = await asyncio.to_thread(served_certificate, gateway.port, certs)
        assert rotated.serial_number != first.serial_number
        assert rotated == x509.load_pem_x509_certificate((certs / "gateway.pem").read_bytes())
        await stub.SubmitCase(submit("r2"), timeout=10)  # the open connection goes on
    async with channel(gateway, certs / "ca.pem", certs, "zhongshan") as after:
        await cx_grpc.CaseExchangeServiceStub(after).SubmitCase(submit("r3"), timeout=10)
    assert (
        metrics.get_sample_value(
            "tongban_tls_reloads_total", {"certificate": "server", "outcome": "ok"}
        )
        == 1
    )
    # Half a rotation: a new key without its certificate. Refused; the last pair serves.
    other = tmp_path / "other-ca"
    (certs / "gateway-key.pem").write_bytes((other / "zhongshan-key.pem").read_bytes())
    still = await asyncio.to_thread(served_certificate, gateway.port, certs)
    assert still.serial_number == rotated.serial_number
    assert (
        metrics.get_sample_value(
            "tongban_tls_reloads_total", {"certificate": "server", "outcome": "rejected"}
        )
        == 1
    )
    async with channel(gateway, certs / "ca.pem", certs, "zhongshan") as later:
        await cx_grpc.CaseExchangeServiceStub(later).SubmitCase(submit("r4"), timeout=10)


def test_serve_refuses_a_key_that_is_not_its_certificates(tmp_path: Path, certs: Path) -> None:
    (certs / "gateway-key.pem").write_bytes((certs / "zhongshan-key.pem").read_bytes())
    out = run("serve", env=env(tmp_path, certs), timeout=30)
    assert out.returncode == 2
    assert f"error: tls: {certs / 'gateway-key.pem'}: not the key of the certificate" in out.stderr


def test_serve_refuses_an_inbox_client_key_that_is_not_its_certificates(
    tmp_path: Path, certs: Path
) -> None:
    settings = env(tmp_path, certs) | {
        "TONGBAN_PARTNERS__SHENZHEN__INBOX__TLS": "true",
        "TONGBAN_PARTNERS__SHENZHEN__INBOX__CA": str(certs / "ca.pem"),
        "TONGBAN_PARTNERS__SHENZHEN__INBOX__CLIENT_CERT": str(certs / "gateway.pem"),
        "TONGBAN_PARTNERS__SHENZHEN__INBOX__CLIENT_KEY": str(certs / "zhongshan-key.pem"),
    }
    out = run("serve", env=settings, timeout=30)
    assert out.returncode == 2
    assert (
        f"error: tls: {certs / 'zhongshan-key.pem'}: not the key of the certificate" in out.stderr
    )
