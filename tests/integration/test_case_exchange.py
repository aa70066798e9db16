"""CaseExchangeService end to end in one process: real gateway, real partner inboxes, SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from gateway.app import Gateway
from gateway.partner_sim import InboxSimulator, start_simulator
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import case_exchange_pb2_grpc as cx_grpc
from tongban.v1 import common_pb2, records_pb2

from .conftest import ROOT, make_settings, rich_error

ZS = [("authorization", "Bearer t-zs")]
SZ = [("authorization", "Bearer t-sz")]
GZ = [("authorization", "Bearer t-gz")]
ZS_CASE = json.loads((ROOT / "mappings/zhongshan/samples/case/01-case.json").read_text("utf-8"))


@dataclass
class Exchange:
    gateway: Gateway
    stub: cx_grpc.CaseExchangeServiceStub
    zs: InboxSimulator
    sz: InboxSimulator
    db: Path

    def rows(self, table: str) -> int:
        with sqlite3.connect(self.db) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@contextlib.asynccontextmanager
async def running_exchange(tmp_path: Path, **env: str) -> AsyncIterator[Exchange]:
    """A gateway with Zhongshan's and Shenzhen's inboxes (simulators) and a channel to it;
    ``env`` adds to or overrides its settings."""
    zs = InboxSimulator(tmp_path / "zs.db")
    sz = InboxSimulator(tmp_path / "sz.db")
    zs_server, zs_port = await start_simulator(zs)
    sz_server, sz_port = await start_simulator(sz)
    settings = {
        "TONGBAN_AUTH__MODE": "token",
        "TONGBAN_DELIVERY__RETRY__INITIAL_BACKOFF_SECONDS": "0.01",
        "TONGBAN_PARTNERS__ZS__CITY": "442000",
        "TONGBAN_PARTNERS__ZS__TOKEN": "t-zs",
        "TONGBAN_PARTNERS__ZS__INBOX__TRANSPORT": "grpc",
        "TONGBAN_PARTNERS__ZS__INBOX__TARGET": f"127.0.0.1:{zs_port}",
        "TONGBAN_PARTNERS__SZ__CITY": "440300",
        "TONGBAN_PARTNERS__SZ__TOKEN": "t-sz",
        "TONGBAN_PARTNERS__SZ__INBOX__TRANSPORT": "grpc",
        "TONGBAN_PARTNERS__SZ__INBOX__TARGET": f"127.0.0.1:{sz_port}",
        "TONGBAN_PARTNERS__GZ__CITY": "440100",
        "TONGBAN_PARTNERS__GZ__TOKEN": "t-gz",
        **env,
    }
    gw = Gateway(make_settings(tmp_path, **settings))
    await gw.start()
    try:
        async with grpc.aio.insecure_channel(gw.address) as ch:
            yield Exchange(
                gw, cx_grpc.CaseExchangeServiceStub(ch), zs, sz, tmp_path / "data/tongban.db"
            )
    finally:
        await gw.stop(grace=0)
        await zs_server.stop(0)
        await sz_server.stop(0)
        zs.close()
        sz.close()


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[Exchange]:
    async with running_exchange(tmp_path) as ex:
        yield ex


def submit_req(
    rid: str, record: dict, target: str = "440300", schema: str = "zhongshan.case"
) -> cx.SubmitCaseRequest:
    return cx.SubmitCaseRequest(
        request_id=rid,
        target_city=target,
        foreign=common_pb2.ForeignRecord(schema=schema, json=json.dumps(record).encode()),
    )


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_submit_deliver_and_read_in_each_schema(exchange: Exchange) -> None:
    resp = await exchange.stub.SubmitCase(submit_req("r1", ZS_CASE), metadata=ZS)
    assert resp.status == records_pb2.CASE_STATUS_SUBMITTED
    await wait_for(lambda: len(exchange.sz.applied("case")) == 1)
    delivered = exchange.sz.applied("case")
    assert list(delivered) == [resp.exchange_id]  # the exchange id is the idempotency key
    got = await exchange.stub.GetCase(cx.GetCaseRequest(exchange_id=resp.exchange_id), metadata=ZS)
    zs_view = json.loads(got.case_view.foreign.json)
    assert got.case_view.foreign.schema == "zhongshan.case"
    assert zs_view["SBLSH"] == ZS_CASE["SBLSH"]
    sz_got = await exchange.stub.GetCase(
        cx.GetCaseRequest(exchange_id=resp.exchange_id), metadata=SZ
    )
    assert sz_got.case_view.foreign.schema == "shenzhen.case"
    assert json.loads(sz_got.case_view.foreign.json)["caseNo"] == ZS_CASE["SBLSH"]
    await wait_for(lambda: len(exchange.zs.applied("status")) == 1)  # RECEIVED told to Zhongshan
    canon = await exchange.stub.GetCase(
        cx.GetCaseRequest(exchange_id=resp.exchange_id, schema="tongban.v1.Case"), metadata=ZS
    )
    assert canon.case_view.canonical.handling_city == "440300"
    assert [e.status for e in canon.case_view.canonical.status_history] == [
        records_pb2.CASE_STATUS_SUBMITTED,
        records_pb2.CASE_STATUS_RECEIVED,
    ]


async def test_idempotent_submit(exchange: Exchange) -> None:
    first = await exchange.stub.SubmitCase(submit_req("same", ZS_CASE), metadata=ZS)
    again = await exchange.stub.SubmitCase(submit_req("same", ZS_CASE), metadata=ZS)
    assert again == first
    other = dict(ZS_CASE, SBLSH="442000-2026-999999")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await exchange.stub.SubmitCase(submit_req("same", other), metadata=ZS)
    err = rich_error(info.value)
    assert (err["code"], err["reason"], err["fields"]) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "REQUEST_ID_REUSED",
        ["request_id"],
    )
    assert exchange.rows("cases") == 1
    assert exchange.rows("outbox") >= 1


@pytest.mark.parametrize(
    ("change", "target", "code", "reason", "field"),
    [
        (
            {"SQRZJHM": ZS_CASE["SQRZJHM"][:-1] + "0"},
            "440300",
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ID_NUMBER",
            "/SQRZJHM",
        ),
        ({}, "110000", grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_CITY", "target_city"),
        ({}, "440100", grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_CITY", "target_city"),
        ({"BJZT": "42"}, "440300", grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_CODE", "/BJZT"),
        ({"BZ": "备" * 600}, "440300", grpc.StatusCode.INVALID_ARGUMENT, "MAPPING_FAILED", "/BZ"),
        ({"BLD": "440100"}, "440300", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "/BLD"),
    ],
)
async def test_bad_submissions_leave_no_row(
    exchange: Exchange, change: dict, target: str, code: grpc.StatusCode, reason: str, field: str
) -> None:
    record = {**ZS_CASE, **change}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await exchange.stub.SubmitCase(submit_req("bad", record, target), metadata=ZS)
    err = rich_error(info.value)
    assert (err["code"], err["reason"]) == (code, reason)
    assert field in err["fields"]
    for table in ("cases", "requests", "events", "outbox", "audit"):
        assert exchange.rows(table) == 0, table


async def test_oversized_payload_refused(exchange: Exchange) -> None:
    req = submit_req("big", ZS_CASE)
    req.foreign.json = b" " * (300 * 1024) + req.foreign.json
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await exchange.stub.SubmitCase(req, metadata=ZS)
    assert rich_error(info.value)["reason"] == "RECORD_TOO_LARGE"
    assert exchange.rows("cases") == 0


async def test_unauthenticated_and_visibility(exchange: Exchange) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await exchange.stub.SubmitCase(submit_req("x", ZS_CASE))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    resp = await exchange.stub.SubmitCase(submit_req("v1", ZS_CASE), metadata=ZS)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await exchange.stub.GetCase(cx.GetCaseRequest(exchange_id=resp.exchange_id), metadata=GZ)
    assert rich_error(info.value)["reason"] == "CASE_NOT_FOUND"  # no existence leak
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await exchange.stub.GetCase(cx.GetCaseRequest(exchange_id="nope"), metadata=ZS)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_report_status_lifecycle_and_watch(exchange: Exchange) -> None:
    resp = await exchange.stub.SubmitCase(submit_req("w1", ZS_CASE), metadata=ZS)
    await wait_for(lambda: len(exchange.sz.applied("case")) == 1)
    xid = resp.exchange_id
    with pytest.raises(grpc.aio.AioRpcError) as info:  # RECEIVED -> APPROVED skips acceptance
        await exchange.stub.ReportStatus(
            cx.ReportStatusRequest(request_id="s0", exchange_id=xid, status_code="APPROVED"),
            metadata=SZ,
        )
    err = rich_error(info.value)
    assert (err["code"], err["reason"]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ILLEGAL_TRANSITION",
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await exchange.stub.ReportStatus(
            cx.ReportStatusRequest(request_id="s1", exchange_id=xid, status_code="SLEEPING"),
            metadata=SZ,
        )
    assert rich_error(info.value)["fields"] == ["status_code"]
    with pytest.raises(grpc.aio.AioRpcError) as info:  # the receiving city may not accept
        await exchange.stub.ReportStatus(
            cx.ReportStatusRequest(request_id="s2", exchange_id=xid, status_code="02"), metadata=ZS
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    acc = await exchange.stub.ReportStatus(
        cx.ReportStatusRequest(request_id="s3", exchange_id=xid, status_code="ACCEPTED"),
        metadata=SZ,
    )
    again = await exchange.stub.ReportStatus(
        cx.ReportStatusRequest(request_id="s3", exchange_id=xid, status_code="ACCEPTED"),
        metadata=SZ,
    )
    assert again == acc
    watch = exchange.stub.WatchCases(cx.WatchCasesRequest(from_beginning=True), metadata=ZS)
    codes = []
    async for msg in watch:
        codes.append((msg.event.status_code, msg.cursor))
        if len(codes) == 3:
            break
    watch.cancel()
    assert [c for c, _ in codes] == ["00", "01", "02"]
    # Resume after the second event: the third comes again, then new ones as they happen.
    resumed = exchange.stub.WatchCases(cx.WatchCasesRequest(cursor=codes[1][1]), metadata=ZS)
    first = await resumed.read()
    assert first.event.status_code == "02"
    await exchange.stub.ReportStatus(
        cx.ReportStatusRequest(request_id="s4", exchange_id=xid, status_code="APPROVED"),
        metadata=SZ,
    )
    nxt = await asyncio.wait_for(resumed.read(), 5)
    assert (nxt.event.status_code, nxt.event.reported_by) == ("06", "440300")
    resumed.cancel()
    await wait_for(lambda: {p["status_code"] for p in exchange.zs.statuses()} >= {"01", "02", "06"})


async def test_a_withdrawal_reaches_the_handling_city(exchange: Exchange) -> None:
    resp = await exchange.stub.SubmitCase(submit_req("wd1", ZS_CASE), metadata=ZS)
    xid = resp.exchange_id
    await wait_for(lambda: len(exchange.sz.applied("case")) == 1)
    await exchange.stub.ReportStatus(  # Zhongshan's 09: the applicant withdrew
        cx.ReportStatusRequest(request_id="wd1-w", exchange_id=xid, status_code="09"), metadata=ZS
    )
    await wait_for(lambda: len(exchange.sz.statuses()) == 1)
    (told,) = exchange.sz.statuses()
    assert (told["exchange_id"], told["status_code"], told["reported_by"]) == (
        xid,
        "WITHDRAWN",  # in Shenzhen's codes
        "442000",
    )
    # Zhongshan, which reported it, is not told of its own change (only of RECEIVED before).
    await wait_for(lambda: len(exchange.zs.statuses()) >= 1)
    await asyncio.sleep(0.3)
    assert [s["status_code"] for s in exchange.zs.statuses()] == ["01"]


async def test_enum_values_and_timestamps_out_of_range_are_invalid_arguments(
    exchange: Exchange,
) -> None:
    """Proto3 enums are open and a Timestamp's seconds unchecked on the wire: a caller can send
    a status 99 or the year 36812. Each is INVALID_ARGUMENT naming its field, not INTERNAL; so
    is a change stamped an hour ahead of the gateway's clock."""
    resp = await exchange.stub.SubmitCase(submit_req("enum1", ZS_CASE), metadata=ZS)
    bad_time = cx.ReportStatusRequest(
        request_id="enum1-t", exchange_id=resp.exchange_id, status=records_pb2.CASE_STATUS_WITHDRAWN
    )
    bad_time.occurred_at.seconds = 2**40
    future = cx.ReportStatusRequest()
    future.CopyFrom(bad_time)
    future.occurred_at.seconds = int(time.time()) + 3600  # an hour ahead of the gateway's clock
    calls = [
        exchange.stub.ReportStatus(
            cx.ReportStatusRequest(request_id="enum1-s", exchange_id=resp.exchange_id, status=99),
            metadata=ZS,
        ),
        exchange.stub.ReportStatus(bad_time, metadata=ZS),
        exchange.stub.ReportStatus(future, metadata=ZS),
        exchange.stub.ListCases(cx.ListCasesRequest(status=99), metadata=ZS),
        exchange.stub.ListCases(cx.ListCasesRequest(delivery_state=42), metadata=ZS),
    ]
    fields = []
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        err = rich_error(info.value)
        assert err["code"] == grpc.StatusCode.INVALID_ARGUMENT
        fields.append(err["fields"])
    assert fields == [["status"], ["occurred_at"], ["occurred_at"], ["status"], ["delivery_state"]]


async def test_list_cases_keyset_pages(exchange: Exchange) -> None:
    for i in range(7):
        await exchange.stub.SubmitCase(
            submit_req(f"l{i}", dict(ZS_CASE, SBLSH=f"442000-2026-{i:06d}")), metadata=ZS
        )
    seen: list[str] = []
    token = ""
    while True:
        page = await exchange.stub.ListCases(
            cx.ListCasesRequest(page_size=3, page_token=token, schema="none"), metadata=ZS
        )
        seen += [c.case_number for c in page.cases]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"442000-2026-{i:06d}" for i in reversed(range(7))]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await exchange.stub.ListCases(
            cx.ListCasesRequest(
                page_size=3,
                page_token=(
                    await exchange.stub.ListCases(cx.ListCasesRequest(page_size=3), metadata=ZS)
                ).next_page_token,
                status=records_pb2.CASE_STATUS_ACCEPTED,
            ),
            metadata=ZS,
        )
    assert rich_error(info.value)["reason"] == "INVALID_PAGE_TOKEN"
    other = await exchange.stub.ListCases(cx.ListCasesRequest(), metadata=GZ)
    assert len(other.cases) == 0


async def test_a_stream_is_counted_whole_in_the_metrics(exchange: Exchange) -> None:
    """Streamed messages and their translations are told to the metrics in runs, not one by
    one: at the end of the call every message and every translation is counted."""
    registry = exchange.gateway.services.metrics.registry
    method = {
        "grpc_type": "client_stream",
        "grpc_service": "tongban.v1.CaseExchangeService",
        "grpc_method": "SubmitCases",
    }
    inbound = {"schema": "zhongshan.case", "direction": "inbound"}

    def value(name: str, labels: dict[str, str]) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    before = value("tongban_translations_total", inbound)
    n = 300  # more than a run of counted messages (256)

    async def gen() -> AsyncIterator[cx.SubmitCasesRequest]:
        for i in range(n):
            rec = dict(ZS_CASE, SBLSH=f"442000-2026-m{i:05d}")
            if i == 7:
                rec.pop("SQRMC")  # the applicant's name is required
            yield cx.SubmitCasesRequest(case_request=submit_req(f"metric-{i}", rec))

    resp = await exchange.stub.SubmitCases(gen(), metadata=ZS)
    assert (resp.accepted_count, resp.rejected_count) == (n - 1, 1)
    assert value("grpc_server_msg_received_total", method) == n
    assert value("grpc_server_handled_total", {**method, "grpc_code": "OK"}) == 1
    assert value("tongban_translations_total", inbound) - before == n - 1
    failed = {**inbound, "code": "REQUIRED_MISSING"}
    assert value("tongban_translation_failures_total", failed) == 1
    # The serving mapping set still reports to the metrics itself.
    ms = exchange.gateway.services.mappings.current
    assert ms.observer == exchange.gateway.services.metrics.translation


async def test_submit_cases_stream_reports_each(exchange: Exchange) -> None:
    good = dict(ZS_CASE, SBLSH="442000-2026-777777")
    bad = dict(ZS_CASE, SQSJ="2026-11-20")

    async def gen() -> AsyncIterator[cx.SubmitCasesRequest]:
        for i, rec in enumerate([good, bad, ZS_CASE]):
            yield cx.SubmitCasesRequest(case_request=submit_req(f"b{i}", rec))

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("tongban")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        resp = await exchange.stub.SubmitCases(gen(), metadata=ZS)
        logger.setLevel(logging.DEBUG)
        again = await exchange.stub.SubmitCases(gen(), metadata=ZS)  # retried: replays
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert (resp.accepted_count, resp.rejected_count) == (2, 1)
    assert [r.index for r in resp.results] == [0, 1, 2]
    assert resp.results[1].error_reason == "MAPPING_FAILED"
    assert list(resp.results[1].error_fields) == ["/SQSJ"]
    assert exchange.rows("cases") == 2
    assert (again.accepted_count, again.rejected_count) == (2, 1)
    assert [r.response.exchange_id for r in again.results] == [
        r.response.exchange_id for r in resp.results
    ]
    # At INFO one line per stream with its counts; at DEBUG also one line per accepted case.
    lines = [(r.getMessage(), r.levelno, vars(r)) for r in records]
    summaries = [
        (v["accepted"], v["replayed"], v["refused"]) for m, _, v in lines if m == "cases accepted"
    ]
    assert summaries == [(2, 0, 1), (2, 2, 1)]
    each = [
        v["exchange_id"] for m, lvl, v in lines if m == "case accepted" and lvl == logging.DEBUG
    ]
    assert each == [resp.results[0].response.exchange_id, resp.results[2].response.exchange_id]
