"""Deliveries over TLS: the gateway checks the partner's certificate and presents its own."""

from __future__ import annotations

import asyncio
import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
from cryptography import x509

from adapters.transports import TransportError
from gateway.app import Gateway, make_transports
from gateway.certs import issue, make_ca
from gateway.partner_sim import InboxSimulator, start_simulator
from gateway.settings import ConfigError
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import case_exchange_pb2_grpc as cx_grpc
from tongban.v1 import common_pb2
from tongban.v1 import partner_inbox_pb2 as inbox_pb2

from .conftest import ROOT, make_settings

ZS_CASE = json.loads((ROOT / "mappings/zhongshan/samples/case/01-case.json").read_text("utf-8"))


class CertifiedInbox(InboxSimulator):
    """The partner inbox, noting the client certificate names of each delivery."""

    peers: list[list[bytes]]

    async def DeliverCase(self, request: Any, context: Any) -> Any:
        self.peers.append(list(context.auth_context().get("x509_common_name", [])))
        return await super().DeliverCase(request, context)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    ca = tmp_path / "pki"
    make_ca(ca)
    issue(ca, "shenzhen-inbox", server=True, hosts=["inbox.shenzhen.example"])
    issue(ca, "tongban-gateway")  # a client certificate
    other = tmp_path / "other"
    make_ca(other)
    issue(other, "tongban-gateway")  # the same name from a CA the partner does not trust
    return ca


async def _partner(tmp_path: Path, pki: Path) -> tuple[CertifiedInbox, grpc.aio.Server, int]:
    sim = CertifiedInbox(tmp_path / "sz.db")
    sim.peers = []
    creds = grpc.ssl_server_credentials(
        [
            (
                (pki / "shenzhen-inbox-key.pem").read_bytes(),
                (pki / "shenzhen-inbox.pem").read_bytes(),
            )
        ],
        root_certificates=(pki / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    server, port = await start_simulator(sim, credentials=creds)
    return sim, server, port


def _env(port: int, pki: Path, client: Path | None) -> dict[str, str]:
    env = {
        "TONGBAN_AUTH__MODE": "token",
        "TONGBAN_DELIVERY__RETRY__INITIAL_BACKOFF_SECONDS": "0.05",
        "TONGBAN_DELIVERY__RETRY__MAX_BACKOFF_SECONDS": "0.2",
        "TONGBAN_PARTNERS__ZS__CITY": "442000",
        "TONGBAN_PARTNERS__ZS__TOKEN": "t-zs",
        "TONGBAN_PARTNERS__SZ__CITY": "440300",
        "TONGBAN_PARTNERS__SZ__INBOX__TRANSPORT": "grpc",
        "TONGBAN_PARTNERS__SZ__INBOX__TARGET": f"127.0.0.1:{port}",
        "TONGBAN_PARTNERS__SZ__INBOX__TLS": "true",
        "TONGBAN_PARTNERS__SZ__INBOX__CA": str(pki / "ca.pem"),
        "TONGBAN_PARTNERS__SZ__INBOX__SERVER_NAME": "inbox.shenzhen.example",
    }
    if client is not None:
        env["TONGBAN_PARTNERS__SZ__INBOX__CLIENT_CERT"] = str(client / "tongban-gateway.pem")
        env["TONGBAN_PARTNERS__SZ__INBOX__CLIENT_KEY"] = str(client / "tongban-gateway-key.pem")
    return env


async def _submit(gw: Gateway, rid: str) -> None:
    async with grpc.aio.insecure_channel(gw.address) as ch:
        await cx_grpc.CaseExchangeServiceStub(ch).SubmitCase(
            cx.SubmitCaseRequest(
                request_id=rid,
                target_city="440300",
                foreign=common_pb2.ForeignRecord(
                    schema="zhongshan.case",
                    json=json.dumps(dict(ZS_CASE, SBLSH=f"442000-2026-{rid}")).encode(),
                ),
            ),
            metadata=[("authorization", "Bearer t-zs")],
        )


async def test_the_partner_sees_the_gateway_certificate(tmp_path: Path, pki: Path) -> None:
    sim, server, port = await _partner(tmp_path, pki)
    gw = Gateway(make_settings(tmp_path, **_env(port, pki, pki)))
    await gw.start()
    try:
        await _submit(gw, "tls-1")
        got = await asyncio.wait_for(sim.received.get(), 10)
        assert got.kind == "case"
        assert sim.peers == [[b"tongban-gateway"]]
        # Its expiry is watched (TongbanCertificateExpiresSoon).
        cert = x509.load_pem_x509_certificate((pki / "tongban-gateway.pem").read_bytes())
        assert (
            gw.services.metrics.registry.get_sample_value(
                "tongban_tls_certificate_expiry_timestamp_seconds", {"certificate": "client:sz"}
            )
            == cert.not_valid_after_utc.timestamp()
        )
    finally:
        await gw.stop(grace=0)
        await server.stop(0)
        sim.close()


@pytest.mark.parametrize("client", ["none", "untrusted"])
async def test_without_a_trusted_client_certificate_nothing_is_delivered(
    tmp_path: Path, pki: Path, client: str
) -> None:
    sim, server, port = await _partner(tmp_path, pki)
    cert_dir = None if client == "none" else tmp_path / "other"
    gw = Gateway(make_settings(tmp_path, **_env(port, pki, cert_dir)))
    await gw.start()
    try:
        await _submit(gw, f"tls-{client}")
        await asyncio.sleep(1.0)  # several delivery attempts, each refused in the handshake
        assert sim.calls == 0
        assert sim.received.empty()
        rows = await gw.services.store.read(
            gw.services.store.reader.cases, ["442000"], before_seq=None, limit=5
        )
        assert [r.delivery_state for r in rows] != ["DELIVERY_STATE_DELIVERED"]
    finally:
        await gw.stop(grace=0)
        await server.stop(0)
        sim.close()


def test_tls_settings_are_checked(tmp_path: Path, pki: Path) -> None:
    env = _env(9, pki, pki)
    del env["TONGBAN_PARTNERS__SZ__INBOX__CLIENT_KEY"]
    with pytest.raises(ConfigError, match="client_cert"):
        make_settings(tmp_path, **env)
    env = _env(9, pki, pki)
    env["TONGBAN_PARTNERS__SZ__INBOX__TLS"] = "false"
    with pytest.raises(ConfigError, match="tls = true"):
        make_settings(tmp_path, **env)
    env = _env(9, pki, None)
    env["TONGBAN_PARTNERS__SZ__INBOX__CA"] = str(pki / "missing.pem")
    with pytest.raises(ConfigError, match="no such file"):
        make_settings(tmp_path, **env)


class _Inbox(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        peer = self.connection.getpeercert()  # type: ignore[attr-defined]
        names = [v for rdn in peer["subject"] for k, v in rdn if k == "commonName"]
        _Inbox.seen.extend(names)
        body = b'{"reference": "P-1"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def https_inbox(pki: Path) -> Iterator[int]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(str(pki / "shenzhen-inbox.pem"), str(pki / "shenzhen-inbox-key.pem"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Inbox)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Inbox.seen.clear()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("client", ["trusted", "none"])
async def test_https_inbox_with_client_certificate(
    tmp_path: Path, pki: Path, https_inbox: int, client: str
) -> None:
    env = {
        "TONGBAN_PARTNERS__SZ__CITY": "440300",
        "TONGBAN_PARTNERS__SZ__INBOX__TRANSPORT": "http",
        "TONGBAN_PARTNERS__SZ__INBOX__TARGET": f"https://127.0.0.1:{https_inbox}",
        "TONGBAN_PARTNERS__SZ__INBOX__CA": str(pki / "ca.pem"),
        "TONGBAN_PARTNERS__SZ__INBOX__SERVER_NAME": "inbox.shenzhen.example",
    }
    if client == "trusted":
        env["TONGBAN_PARTNERS__SZ__INBOX__CLIENT_CERT"] = str(pki / "tongban-gateway.pem")
        env["TONGBAN_PARTNERS__SZ__INBOX__CLIENT_KEY"] = str(pki / "tongban-gateway-key.pem")
    transport = make_transports(make_settings(tmp_path, **env))["sz"]
    request = inbox_pb2.DeliverCaseRequest(
        idempotency_key="k-1",
        source_city="442000",
        foreign=common_pb2.ForeignRecord(schema="shenzhen.case", json=b"{}"),
    )
    try:
        if client == "trusted":
            answer = await transport.deliver_case(request, timeout=5)
            assert answer.partner_reference == "P-1"
            assert _Inbox.seen == ["tongban-gateway"]
        else:
            with pytest.raises(TransportError) as err:
                await transport.deliver_case(request, timeout=5)
            assert err.value.retryable
            assert _Inbox.seen == []
    finally:
        await transport.close()
