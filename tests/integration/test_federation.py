"""Federated mode: each city runs its own gateway and the gateways deliver to each other
(gateway/services/peering.py). A case keeps one exchange id across both; the handling city's
statuses travel back to the receiving city's gateway and reach its system in its own codes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from gateway.app import Gateway
from gateway.demo import make_federation_pki, peer_gateway_env
from gateway.partner_sim import InboxSimulator, start_simulator
from gateway.ports import free_port
from gateway.settings import ConfigError
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import case_exchange_pb2_grpc as cx_grpc
from tongban.v1 import common_pb2, records_pb2
from tongban.v1 import identity_pb2 as idp
from tongban.v1 import identity_pb2_grpc as id_grpc
from tongban.v1 import partner_inbox_pb2 as inbox
from tongban.v1 import partner_inbox_pb2_grpc as inbox_grpc

from .conftest import ROOT, make_settings, rich_error

ZS_CASE = json.loads((ROOT / "mappings/zhongshan/samples/case/01-case.json").read_text("utf-8"))
PERSON = "440303199001010015"  # a Shenzhen resident (Luohu, 440303)


@dataclass
class Federation:
    """Zhongshan's gateway and Shenzhen's, each with its city's system behind it."""

    pki: Path
    zs_gw: Gateway
    sz_gw: Gateway
    zs_sim: InboxSimulator  # Zhongshan's system: receives its cases' statuses
    sz_sim: InboxSimulator  # Shenzhen's system: receives the cases it handles


def _secure(address: str, pki: Path, name: str) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / f"{name}-key.pem").read_bytes(),
        certificate_chain=(pki / f"{name}.pem").read_bytes(),
    )
    return grpc.aio.secure_channel(address, creds)


def _gateway_env(
    pki: Path, me: str, port: int, local: tuple[str, str, int], peer: tuple[str, str, int]
) -> dict[str, str]:
    """A city's gateway of the demo's federation (``peer_gateway_env``), with fast retries and
    identity purposes."""
    return {
        **peer_gateway_env(pki, me, port, local, peer),
        "TONGBAN_DELIVERY__RETRY__INITIAL_BACKOFF_SECONDS": "0.05",
        "TONGBAN_DELIVERY__RETRY__MAX_BACKOFF_SECONDS": "0.2",
        # What a person lookup for case handling may disclose. Shenzhen's gateway, the home
        # of the people in these tests, discloses less than Zhongshan's would: the phone stays.
        "TONGBAN_PURPOSES__CASE_HANDLING__PERSON_FIELDS": json.dumps(
            ["name", "sex", "certificate_number"] + (["phone"] if me == "zs-gateway" else [])
        ),
        f"TONGBAN_PARTNERS__{local[0].upper()}__ACL__PURPOSES": '["case_handling"]',
        f"TONGBAN_PARTNERS__{peer[0].upper()}__ACL__PURPOSES": '["case_handling"]',
    }


@contextlib.contextmanager
def _stores(kind: str) -> Iterator[dict[str, str]]:
    """Each gateway's ``TONGBAN_STORE__URL``: none (a SQLite file in its data directory), or a
    schema of its own on the PostgreSQL server, migrated, dropped afterwards."""
    if kind == "sqlite":
        yield {}
        return
    from gateway.store.engine import make_engine, upgrade

    names = {gw: f"tb_{uuid.uuid4().hex[:10]}" for gw in ("zs-gateway", "sz-gateway")}
    urls = {}
    with psycopg.connect("host=127.0.0.1 dbname=test", autocommit=True) as conn:
        for gw, name in names.items():
            conn.execute(f'CREATE SCHEMA "{name}"')
            urls[gw] = f"postgresql+psycopg://127.0.0.1:5432/test?options=-csearch_path%3D{name}"
            engine = make_engine(urls[gw])
            upgrade(engine)
            engine.dispose()
    try:
        yield urls
    finally:
        with psycopg.connect("host=127.0.0.1 dbname=test", autocommit=True) as conn:
            for name in names.values():
                conn.execute(f'DROP SCHEMA "{name}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def federation(
    request: pytest.FixtureRequest, tmp_path: Path, federation_pki: Path
) -> AsyncIterator[Federation]:
    """Both gateways on SQLite, then both on PostgreSQL."""
    pki = federation_pki
    zs_sim, sz_sim = InboxSimulator(tmp_path / "zs.db"), InboxSimulator(tmp_path / "sz.db")
    sz_sim.persons[PERSON] = records_pb2.Person(
        name="张三", certificate_number=PERSON, sex=records_pb2.SEX_MALE, phone="13800138000"
    )
    zs_server, zs_port = await start_simulator(zs_sim)
    sz_server, sz_port = await start_simulator(sz_sim)
    try:
        with _stores(request.param) as urls:
            async with _gateways(pki, tmp_path, zs_port, sz_port, urls) as (zs_gw, sz_gw):
                yield Federation(pki, zs_gw, sz_gw, zs_sim, sz_sim)
    finally:
        await zs_server.stop(0)
        await sz_server.stop(0)
        zs_sim.close()
        sz_sim.close()


@contextlib.asynccontextmanager
async def _gateways(
    pki: Path, tmp_path: Path, zs_port: int, sz_port: int, urls: dict[str, str]
) -> AsyncIterator[tuple[Gateway, Gateway]]:
    zs_gw_port, sz_gw_port = free_port(), free_port()
    zs_env = _gateway_env(
        pki,
        "zs-gateway",
        zs_gw_port,
        ("zhongshan", "442000", zs_port),
        ("sz-gateway", "440300", sz_gw_port),
    )
    sz_env = _gateway_env(
        pki,
        "sz-gateway",
        sz_gw_port,
        ("shenzhen", "440300", sz_port),
        ("zs-gateway", "442000", zs_gw_port),
    )
    # Guangzhou's system also calls Shenzhen's gateway, as a partner but not a peer.
    sz_env["TONGBAN_PARTNERS__GUANGZHOU__CITY"] = "440100"
    for gw, env in (("zs-gateway", zs_env), ("sz-gateway", sz_env)):
        if gw in urls:
            env["TONGBAN_STORE__URL"] = urls[gw]
    zs_gw = Gateway(make_settings(tmp_path / "zs-gw", **zs_env))
    sz_gw = Gateway(make_settings(tmp_path / "sz-gw", **sz_env))
    await sz_gw.start()
    try:
        await zs_gw.start()
        try:
            yield zs_gw, sz_gw
        finally:
            await zs_gw.stop(grace=0)
    finally:
        await sz_gw.stop(grace=0)


async def _received(sim: InboxSimulator, kind: str, n: int = 1) -> list[dict[str, object]]:
    out = []
    while len(out) < n:
        got = await asyncio.wait_for(sim.received.get(), 15)
        if got.kind == kind:
            out.append({"key": got.key, **got.payload})
    return out


async def _submit_at_zhongshan(f: Federation, request_id: str, case_number: str) -> str:
    """Zhongshan's system submits a case for Shenzhen to its gateway; its exchange id."""
    async with _secure(f.zs_gw.address, f.pki, "zhongshan") as zs:
        answer = await cx_grpc.CaseExchangeServiceStub(zs).SubmitCase(
            cx.SubmitCaseRequest(
                request_id=request_id,
                target_city="440300",
                foreign=common_pb2.ForeignRecord(
                    schema="zhongshan.case",
                    json=json.dumps(dict(ZS_CASE, SBLSH=case_number)).encode(),
                ),
            ),
            timeout=10,
        )
    return str(answer.exchange_id)


async def test_a_case_crosses_two_gateways_and_its_statuses_come_back(f: Federation) -> None:
    xid = await _submit_at_zhongshan(f, "fed-1", ZS_CASE["SBLSH"])
    # Shenzhen's system gets the case in its own schema, under the same exchange id.
    (case,) = await _received(f.sz_sim, "case")
    assert case["key"] == xid
    assert case["schema"] == "shenzhen.case"
    assert case["source_city"] == "442000"
    held = await f.sz_gw.services.store.read(f.sz_gw.services.store.reader.case, xid)
    assert held is not None
    assert (held.submitter, held.receiving_city, held.handling_city) == (
        "zs-gateway",
        "442000",
        "440300",
    )
    # Shenzhen reports to its own gateway; the changes reach Zhongshan's gateway and system.
    async with _secure(f.sz_gw.address, f.pki, "shenzhen") as sz:
        stub = cx_grpc.CaseExchangeServiceStub(sz)
        for n, status in enumerate(
            (records_pb2.CASE_STATUS_ACCEPTED, records_pb2.CASE_STATUS_COMPLETED_APPROVED)
        ):
            await stub.ReportStatus(
                cx.ReportStatusRequest(request_id=f"r{n}", exchange_id=xid, status=status),
                timeout=10,
            )
    store = f.zs_gw.services.store
    for _ in range(300):
        mine = await store.read(store.reader.case, xid)
        assert mine is not None
        if mine.status == "CASE_STATUS_COMPLETED_APPROVED":
            break
        await asyncio.sleep(0.05)
    assert mine.status == "CASE_STATUS_COMPLETED_APPROVED"
    events = await store.read(store.reader.events, xid)
    assert [e.status for e in events] == [
        "CASE_STATUS_SUBMITTED",
        "CASE_STATUS_RECEIVED",
        "CASE_STATUS_ACCEPTED",
        "CASE_STATUS_COMPLETED_APPROVED",
    ]
    assert {e.reported_by for e in events[1:]} == {"440300"}
    # Zhongshan's system is told in Zhongshan's codes (RECEIVED once, from its own gateway).
    statuses = await _received(f.zs_sim, "status", 3)
    assert [s["status_code"] for s in statuses] == ["01", "02", "06"]
    assert {s["exchange_id"] for s in statuses} == {xid}


async def test_a_withdrawal_at_zhongshan_reaches_shenzhen_s_system(f: Federation) -> None:
    xid = await _submit_at_zhongshan(f, "wd-1", "442000-2026-wd")
    await _received(f.sz_sim, "case")
    async with _secure(f.zs_gw.address, f.pki, "zhongshan") as zs:
        await cx_grpc.CaseExchangeServiceStub(zs).ReportStatus(
            cx.ReportStatusRequest(request_id="wd-1-w", exchange_id=xid, status_code="09"),
            timeout=10,
        )
    (told,) = await _received(f.sz_sim, "status")
    assert (told["exchange_id"], told["status_code"], told["reported_by"]) == (
        xid,
        "WITHDRAWN",
        "442000",
    )
    held = await f.sz_gw.services.store.read(f.sz_gw.services.store.reader.case, xid)
    assert held is not None
    assert held.status == "CASE_STATUS_WITHDRAWN"


async def test_a_person_is_resolved_through_the_home_city_s_gateway(f: Federation) -> None:
    async with _secure(f.zs_gw.address, f.pki, "zhongshan") as zs:
        answer = await id_grpc.IdentityServiceStub(zs).ResolvePerson(
            idp.ResolvePersonRequest(
                certificate_number=PERSON, purpose="case_handling", schema="tongban.v1.Person"
            ),
            timeout=10,
        )
    assert answer.home_city == "440300"
    assert answer.canonical.name == "张三"
    assert answer.canonical.certificate_number == PERSON
    assert not answer.canonical.phone  # Shenzhen's gateway does not disclose it for this purpose


def _case(xid: str, source: str = "442000") -> inbox.DeliverCaseRequest:
    case = records_pb2.Case(
        case_number=f"442000-2026-{xid}",
        receiving_city=source,
        handling_city="440300",
        service_item_code="11442000MB2D27065Y4440111006000",
        service_item_name="公共场所卫生许可",
    )
    return inbox.DeliverCaseRequest(idempotency_key=xid, source_city=source, canonical=case)


async def test_what_a_peer_delivers_is_checked(f: Federation) -> None:
    address = f.sz_gw.address
    async with _secure(address, f.pki, "zs-gateway") as ch:
        stub = inbox_grpc.PartnerInboxServiceStub(ch)
        first = await stub.DeliverCase(_case("0190aa00000000000000000000000001"), timeout=10)
        again = await stub.DeliverCase(_case("0190aa00000000000000000000000001"), timeout=10)
        assert (first.duplicate, again.duplicate) == (False, True)
        bad = _case("0190aa00000000000000000000000002")
        bad.foreign.CopyFrom(common_pb2.ForeignRecord(schema="zhongshan.case", json=b"{}"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.DeliverCase(bad, timeout=10)
        assert rich_error(err.value)["fields"] == ["canonical"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.DeliverCase(_case("0190aa00000000000000000000000003", "440100"), timeout=10)
        assert rich_error(err.value)["code"] == grpc.StatusCode.PERMISSION_DENIED
        assert rich_error(err.value)["fields"] == ["source_city"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.DeliverCase(_case("has space"), timeout=10)
        assert rich_error(err.value)["fields"] == ["idempotency_key"]
        # A status of a case that has not arrived (yet): retried later.
        early = inbox.DeliverStatusRequest(
            idempotency_key="k", exchange_id="0190aa0000000000000000000000beef", status=10
        )
        early.occurred_at.GetCurrentTime()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.DeliverStatus(early, timeout=10)
        assert rich_error(err.value)["reason"] == "OUT_OF_ORDER"
        # Lateness is this gateway's to decide, never a peer's to claim.
        early.late = True
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.DeliverStatus(early, timeout=10)
        got = rich_error(err.value)
        assert (got["code"], got["fields"]) == (grpc.StatusCode.INVALID_ARGUMENT, ["late"])
    # A partner that is not a peer gateway may not deliver at all.
    async with _secure(address, f.pki, "guangzhou") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await inbox_grpc.PartnerInboxServiceStub(ch).DeliverCase(
                _case("0190aa00000000000000000000000004", "440100"), timeout=10
            )
        assert rich_error(err.value)["code"] == grpc.StatusCode.PERMISSION_DENIED
    # An exchange id that a case of another submitter holds is refused.
    async with _secure(address, f.pki, "shenzhen") as ch:
        own = await cx_grpc.CaseExchangeServiceStub(ch).SubmitCase(
            cx.SubmitCaseRequest(
                request_id="own-1",
                target_city="442000",
                canonical=records_pb2.Case(
                    case_number="440300-2026-1",
                    service_item_code="11440300MB2D27065Y4440111006000",
                    service_item_name="公共场所卫生许可",
                ),
            ),
            timeout=10,
        )
    async with _secure(address, f.pki, "zs-gateway") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await inbox_grpc.PartnerInboxServiceStub(ch).DeliverCase(
                _case(own.exchange_id), timeout=10
            )
        got = rich_error(err.value)
        assert (got["code"], got["reason"]) == (
            grpc.StatusCode.ALREADY_EXISTS,
            "EXCHANGE_ID_TAKEN",
        )


async def test_statuses_out_of_order_are_retried_then_applied_in_order(f: Federation) -> None:
    """Zhongshan's gateway, told by Shenzhen's of a case's changes in the wrong order."""
    xid = await _submit_at_zhongshan(f, "ooo-1", "442000-2026-ooo")
    await _received(f.sz_sim, "case")
    store = f.zs_gw.services.store

    def status(seq: int, code: int, at: float) -> inbox.DeliverStatusRequest:
        req = inbox.DeliverStatusRequest(
            idempotency_key=f"{xid}:{seq}", exchange_id=xid, status=code, reported_by="440300"
        )
        req.occurred_at.FromNanoseconds(int(at * 1e9))
        return req

    base = time.time() - 3600  # the changes happened in the last hour
    async with _secure(f.zs_gw.address, f.pki, "sz-gateway") as ch:
        stub = inbox_grpc.PartnerInboxServiceStub(ch)
        for _ in range(100):  # until Zhongshan's gateway has marked its delivery RECEIVED
            case = await store.read(store.reader.case, xid)
            if case is not None and case.status == "CASE_STATUS_RECEIVED":
                break
            await asyncio.sleep(0.05)
        # RECEIVED, which this gateway set itself when its delivery succeeded: acknowledged.
        assert (await stub.DeliverStatus(status(2, 2, base), timeout=10)).duplicate
        # IN_PROGRESS before ACCEPTED: ABORTED, retry later; applied after ACCEPTED.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.DeliverStatus(status(4, 5, base + 2), timeout=10)
        got = rich_error(err.value)
        assert (got["code"], got["reason"], got["retry"]) == (
            grpc.StatusCode.ABORTED,
            "OUT_OF_ORDER",
            1.0,
        )
        assert not (await stub.DeliverStatus(status(3, 3, base + 1), timeout=10)).duplicate
        assert not (await stub.DeliverStatus(status(4, 5, base + 2), timeout=10)).duplicate
        # Back to IN_PROGRESS before the SUPPLEMENT_REQUIRED between: the same wait.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.DeliverStatus(status(7, 5, base + 5), timeout=10)
        assert rich_error(err.value)["reason"] == "OUT_OF_ORDER"
        assert not (await stub.DeliverStatus(status(6, 6, base + 4), timeout=10)).duplicate
        assert not (await stub.DeliverStatus(status(7, 5, base + 5), timeout=10)).duplicate
        # A retry of one applied: acknowledged, not applied again.
        assert (await stub.DeliverStatus(status(3, 3, base + 1), timeout=10)).duplicate
        # A change overtaken by newer ones (SUPPLEMENT_REQUIRED between the two IN_PROGRESS,
        # delivered after both): recorded late, the case stays in IN_PROGRESS; its retry is
        # acknowledged.
        assert not (await stub.DeliverStatus(status(5, 6, base + 3), timeout=10)).duplicate
        case = await store.read(store.reader.case, xid)
        assert case is not None
        assert case.status == "CASE_STATUS_IN_PROGRESS"
        assert (await stub.DeliverStatus(status(5, 6, base + 3), timeout=10)).duplicate
        # Nothing moves a case after a terminal status.
        assert not (await stub.DeliverStatus(status(8, 7, base + 6), timeout=10)).duplicate
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.DeliverStatus(status(9, 5, base + 7), timeout=10)
        assert rich_error(err.value)["reason"] == "ILLEGAL_TRANSITION"
    # Each outcome counted. Shenzhen's gateway also delivers its own RECEIVED meanwhile:
    # "own" here, or "applied" if it came before this gateway recorded its delivery.
    counted = {
        o: f.zs_gw.services.metrics.registry.get_sample_value(
            "tongban_peer_status_changes_total", {"peer": "sz-gateway", "outcome": o}
        )
        for o in ("applied", "out_of_order", "overtaken", "repeated", "refused")
    }
    assert counted.pop("applied") in (5, 6)
    assert counted == {
        "out_of_order": 2,
        "overtaken": 1,
        "repeated": 2,
        "refused": 1,
    }
    # The history in the order this gateway learned of it, the late change marked.
    events = await store.read(store.reader.events, xid)
    assert [(e.status, e.late) for e in events] == [
        ("CASE_STATUS_SUBMITTED", False),
        ("CASE_STATUS_RECEIVED", False),
        ("CASE_STATUS_ACCEPTED", False),
        ("CASE_STATUS_IN_PROGRESS", False),
        ("CASE_STATUS_SUPPLEMENT_REQUIRED", False),
        ("CASE_STATUS_IN_PROGRESS", False),
        ("CASE_STATUS_SUPPLEMENT_REQUIRED", True),
        ("CASE_STATUS_COMPLETED_APPROVED", False),
    ]
    late = events[6]
    assert (late.occurred_at, late.reported_by) == (pytest.approx(base + 3), "440300")
    # Zhongshan's system reads it in the case's history and in its watch, marked late.
    async with _secure(f.zs_gw.address, f.pki, "zhongshan") as ch:
        stub = cx_grpc.CaseExchangeServiceStub(ch)
        view = await stub.GetCase(
            cx.GetCaseRequest(exchange_id=xid, schema="tongban.v1.Case"), timeout=10
        )
        history = view.case_view.canonical.status_history
        assert [(h.status, h.late) for h in history][5:] == [
            (records_pb2.CASE_STATUS_IN_PROGRESS, False),
            (records_pb2.CASE_STATUS_SUPPLEMENT_REQUIRED, True),
            (records_pb2.CASE_STATUS_COMPLETED_APPROVED, False),
        ]
        assert view.case_view.status == records_pb2.CASE_STATUS_COMPLETED_APPROVED
        watched = []
        async for item in stub.WatchCases(
            cx.WatchCasesRequest(exchange_id=xid, from_beginning=True), timeout=10
        ):
            watched.append((item.event.status, item.event.late))
            if len(watched) == len(events):
                break
        assert watched == [(records_pb2.CaseStatus.Value(e.status), e.late) for e in events]
    # Its system reads DeliverStatusRequest.late (inbox.late_statuses, as in the demo): every
    # change of the handling city has its delivery, stored with it, the late one's too...
    rows, entries = await store.read(store.reader.trail, xid, 0.0)
    sent = {r.event_seq for r in rows if r.kind == "status"}
    assert sent == {e.seq for e in events if e.reported_by == "440300"}
    assert [(a.action, a.outcome, a.detail) for a in entries if a.outcome == "late"] == [
        ("case.status", "late", "CASE_STATUS_SUPPLEMENT_REQUIRED")
    ]
    # ... and it arrives marked late, in Zhongshan's codes (05 补正告知), the others not.
    for _ in range(300):
        got = [p for p in f.zs_sim.statuses() if p["exchange_id"] == xid]
        if len(got) == len(sent):
            break
        await asyncio.sleep(0.05)
    zs_code = {
        "CASE_STATUS_RECEIVED": "01",
        "CASE_STATUS_ACCEPTED": "02",
        "CASE_STATUS_IN_PROGRESS": "04",
        "CASE_STATUS_SUPPLEMENT_REQUIRED": "05",
        "CASE_STATUS_COMPLETED_APPROVED": "06",
    }
    assert sorted((p["status_code"], p.get("late", False)) for p in got) == sorted(
        (zs_code[e.status], e.late) for e in events if e.reported_by == "440300"
    )
    assert ("05", True) in [(p["status_code"], p.get("late", False)) for p in got]


@pytest.fixture
def f(federation: Federation) -> Federation:
    return federation


def test_a_peer_is_reached_over_mutual_tls(federation_pki: Path, tmp_path: Path) -> None:
    pki = federation_pki
    env = {"TONGBAN_PARTNERS__SZGW__CITY": "440300", "TONGBAN_PARTNERS__SZGW__PEER": "true"}
    with pytest.raises(ConfigError, match="a peer gateway is reached over gRPC"):
        make_settings(tmp_path, **env)
    env["TONGBAN_PARTNERS__SZGW__INBOX__TRANSPORT"] = "http"
    env["TONGBAN_PARTNERS__SZGW__INBOX__TARGET"] = "https://sz.example"
    with pytest.raises(ConfigError, match="a peer gateway is reached over gRPC"):
        make_settings(tmp_path, **env)
    env["TONGBAN_PARTNERS__SZGW__INBOX__TRANSPORT"] = "grpc"
    env["TONGBAN_PARTNERS__SZGW__INBOX__TARGET"] = "sz.example:50051"
    with pytest.raises(ConfigError, match="reached over mutual TLS"):
        make_settings(tmp_path, **env)
    env["TONGBAN_PARTNERS__SZGW__INBOX__TLS"] = "true"
    env["TONGBAN_PARTNERS__SZGW__INBOX__CLIENT_CERT"] = str(pki / "zs-gateway.pem")
    env["TONGBAN_PARTNERS__SZGW__INBOX__CLIENT_KEY"] = str(pki / "zs-gateway-key.pem")
    with pytest.raises(ConfigError, match=r"auth\.mode must be 'mtls'"):
        make_settings(tmp_path, **env)
    env["TONGBAN_AUTH__MODE"] = "mtls"
    env["TONGBAN_TLS__CERT"] = str(pki / "zs-gateway-server.pem")
    env["TONGBAN_TLS__KEY"] = str(pki / "zs-gateway-server-key.pem")
    env["TONGBAN_TLS__CLIENT_CA"] = str(pki / "ca.pem")
    assert make_settings(tmp_path, **env).partners["szgw"].peer
    # A peer is never sent a change marked late: it decides lateness itself.
    env["TONGBAN_PARTNERS__SZGW__INBOX__LATE_STATUSES"] = "true"
    with pytest.raises(ConfigError, match="late_statuses is for a city's system"):
        make_settings(tmp_path, **env)


@pytest.fixture
def federation_pki(tmp_path: Path) -> Path:
    return make_federation_pki(tmp_path / "pki", ("zhongshan", "shenzhen", "guangzhou"))


async def test_hostile_peer_deliveries_get_clear_statuses(f: Federation) -> None:
    """Generated junk from a peer: every DeliverCase and DeliverStatus is answered with OK or a
    clear client status (never INTERNAL or UNKNOWN), and what is refused leaves no case."""
    rng = random.Random(20)
    junk = ["", " ", "x" * 41, "x" * 300, "\x00", "'; DROP TABLE cases; --", "../../etc", "4403"]
    junk += [f"0190aa{rng.getrandbits(100):026x}" for _ in range(4)]
    ok_codes = {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.ABORTED,
    }
    store = f.sz_gw.services.store
    before = len(await store.read(store.reader.cases, ["442000"], before_seq=None, limit=1000))
    accepted = 0
    async with _secure(f.sz_gw.address, f.pki, "zs-gateway") as ch:
        stub = inbox_grpc.PartnerInboxServiceStub(ch)
        for i in range(120):
            if i % 2:
                req = _case(rng.choice(junk), rng.choice(["442000", "440300", "", "x"]))
                case = req.canonical
                case.handling_city = rng.choice(["440300", "442000", "999999", "", "44030"])
                case.case_number = rng.choice(junk)
                case.applicant.certificate_number = rng.choice(junk)
                case.applicant.sex = rng.choice([0, 1, 9, 77])
                case.case_type = rng.choice([0, 1, 99])
                case.channel = rng.choice([0, 2, -5])
                case.handling_mode = rng.choice([0, 1, 55])
                case.applied_at.seconds = rng.choice([0, 1_700_000_000, 2**40])
                case.status = rng.choice([0, 3, 123])
                if rng.random() < 0.2:
                    req.ClearField("canonical")
                code = await _code_of(stub.DeliverCase(req, timeout=10))
                accepted += code == grpc.StatusCode.OK
            else:
                status = inbox.DeliverStatusRequest(
                    idempotency_key=rng.choice(junk),
                    exchange_id=rng.choice(junk),
                    status=rng.choice([0, 3, 5, 7, 10, 99, -1]),
                    note=rng.choice(junk),
                )
                if rng.random() < 0.8:
                    status.occurred_at.seconds = rng.choice([0, 1, 2_000_000_000, 2**40, -(2**40)])
                code = await _code_of(stub.DeliverStatus(status, timeout=10))
            assert code in ok_codes, code
    after = len(await store.read(store.reader.cases, ["442000"], before_seq=None, limit=1000))
    assert after - before == accepted


async def _code_of(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK
