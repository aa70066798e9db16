"""Deliveries over TLS: the gateway checks the partner's certificate and presents its own."""

from __future__ import annotations

import asyncio
import http.server
import json
import shutil
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
from cryptography import x509

from adapters.transports import GrpcInboxTransport, HttpInboxTransport, TransportError
from gateway.app import Gateway, make_transports
from gateway.certs import issue, make_ca
from gateway.partner_sim import InboxSimulator, start_simulator
from gateway.settings import ConfigError
from gateway.tls_files import ClientCertificates
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import case_exchange_pb2_grpc as cx_grpc
from tongban.v1 import common_pb2
from tongban.v1 import partner_inbox_pb2 as inbox_pb2

from .conftest import ROOT, make_settings

ZS_CASE = json.loads((ROOT / "mappings/zhongshan/samples/case/01-case.json").read_text("utf-8"))


class CertifiedInbox(InboxSimulator):
    """The partner inbox, noting the client certificate names of each delivery; a delivery
    whose idempotency key starts with "slow" waits for ``gate``."""

    peers: list[list[bytes]]
    gate: asyncio.Event

    async def DeliverCase(self, request: Any, context: Any) -> Any:
        self.peers.append(list(context.auth_context().get("x509_common_name", [])))
        if request.idempotency_key.startswith("slow"):
            await self.gate.wait()
        return await super().DeliverCase(request, context)


def replace_files(source: Path, name: str, folder: Path) -> None:
    """Put ``name``'s certificate and key from ``source`` in ``folder`` as tongban-gateway*.pem,
    each written beside and renamed over the old (as an operator's rotation does)."""
    for suffix in (".pem", "-key.pem"):
        shutil.copyfile(source / f"{name}{suffix}", folder / "next.tmp")
        (folder / "next.tmp").replace(folder / f"tongban-gateway{suffix}")


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    ca = tmp_path / "pki"
    make_ca(ca)
    issue(ca, "shenzhen-inbox", server=True, hosts=["inbox.shenzhen.example"])
    issue(ca, "tongban-gateway")  # a client certificate
    other = tmp_path / "other"
    make_ca(other)
    issue(other, "tongban-gateway")  # the same name from a CA the partner does not trust
    issue(ca, "tongban-gateway-next")  # its successor, from the partner's CA
    return ca


async def _partner(tmp_path: Path, pki: Path) -> tuple[CertifiedInbox, grpc.aio.Server, int]:
    sim = CertifiedInbox(tmp_path / "sz.db")
    sim.peers = []
    sim.gate = asyncio.Event()
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


def assert_client_expiry(gw: Gateway, cert_file: Path) -> None:
    """The gateway's expiry gauge for its Shenzhen client certificate is ``cert_file``'s."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    assert (
        gw.services.metrics.registry.get_sample_value(
            "tongban_tls_certificate_expiry_timestamp_seconds", {"certificate": "client:sz"}
        )
        == cert.not_valid_after_utc.timestamp()
    )


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
        assert_client_expiry(gw, pki / "tongban-gateway.pem")
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


async def test_a_replaced_client_certificate_is_used_without_a_restart(
    tmp_path: Path, pki: Path
) -> None:
    """The gateway starts with a certificate the partner does not trust; its files are
    replaced with a trusted one while it runs, and the waiting case is delivered."""
    sim, server, port = await _partner(tmp_path, pki)
    held = tmp_path / "gateway-certs"
    held.mkdir()
    replace_files(tmp_path / "other", "tongban-gateway", held)
    gw = Gateway(make_settings(tmp_path, **_env(port, pki, held)))
    await gw.start()
    metrics = gw.services.metrics.registry
    try:
        await _submit(gw, "rotate-1")
        await asyncio.sleep(1.0)  # refused in the handshake, retried
        assert sim.calls == 0
        replace_files(pki, "tongban-gateway", held)
        got = await asyncio.wait_for(sim.received.get(), 10)
        assert got.kind == "case"
        assert sim.peers == [[b"tongban-gateway"]]
        outcome = {"certificate": "client:sz", "outcome": "ok"}
        assert metrics.get_sample_value("tongban_tls_reloads_total", outcome) == 1
        assert_client_expiry(gw, pki / "tongban-gateway.pem")
    finally:
        await gw.stop(grace=0)
        await server.stop(0)
        sim.close()


def _case(key: str) -> inbox_pb2.DeliverCaseRequest:
    return inbox_pb2.DeliverCaseRequest(
        idempotency_key=key,
        source_city="442000",
        foreign=common_pb2.ForeignRecord(schema="shenzhen.case", json=b"{}"),
    )


async def test_a_call_in_flight_finishes_on_the_replaced_channel(tmp_path: Path, pki: Path) -> None:
    sim, server, port = await _partner(tmp_path, pki)
    held = tmp_path / "gateway-certs"
    held.mkdir()
    replace_files(pki, "tongban-gateway", held)
    certificates = ClientCertificates(
        "sz",
        pki / "ca.pem",
        held / "tongban-gateway.pem",
        held / "tongban-gateway-key.pem",
        poll_seconds=0,
    )
    transport = GrpcInboxTransport(
        f"127.0.0.1:{port}", server_name="inbox.shenzhen.example", certificates=certificates
    )
    try:
        slow = asyncio.create_task(transport.deliver_case(_case("slow-1"), timeout=10))
        while not sim.peers:
            await asyncio.sleep(0.01)
        replace_files(pki, "tongban-gateway-next", held)
        await transport.deliver_case(_case("fast-1"), timeout=10)  # on a new channel
        assert not slow.done()
        sim.gate.set()
        await asyncio.wait_for(slow, 10)  # the old channel finished its call
        assert sim.peers == [[b"tongban-gateway"], [b"tongban-gateway-next"]]
        assert certificates.current.generation == 2
    finally:
        await transport.close()
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


async def test_https_inbox_takes_a_replaced_client_certificate(
    tmp_path: Path, pki: Path, https_inbox: int
) -> None:
    held = tmp_path / "gateway-certs"
    held.mkdir()
    replace_files(tmp_path / "other", "tongban-gateway", held)  # not trusted by the partner
    transport = HttpInboxTransport(
        f"https://127.0.0.1:{https_inbox}",
        server_name="inbox.shenzhen.example",
        certificates=ClientCertificates(
            "sz",
            pki / "ca.pem",
            held / "tongban-gateway.pem",
            held / "tongban-gateway-key.pem",
            poll_seconds=0,
        ),
    )
    try:
        with pytest.raises(TransportError):
            await transport.deliver_case(_case("k-1"), timeout=5)
        assert _Inbox.seen == []
        replace_files(pki, "tongban-gateway-next", held)
        answer = await transport.deliver_case(_case("k-1"), timeout=5)
        assert answer.partner_reference == "P-1"
        assert _Inbox.seen == ["tongban-gateway-next"]
    finally:
        await transport.close()
