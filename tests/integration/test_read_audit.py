"""``audit.case_reads``: every case record a partner reads is in the audit log (who, which case,
in which schema) before the record is answered; a read the store cannot record is not answered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import text

from gateway.audit import verify_store_chain
from gateway.errors import BackendUnavailable
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import operations_pb2 as ops
from tongban.v1 import operations_pb2_grpc as ops_grpc

from .test_case_exchange import SZ, ZS, ZS_CASE, Exchange, running_exchange, submit_req


def reads(ex: Exchange) -> list[tuple[str, str, str, str]]:
    with ex.gateway.services.store.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT actor, subject, outcome, detail FROM audit "
                "WHERE action = 'case.read' ORDER BY seq"
            )
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


async def submit_three(ex: Exchange) -> list[str]:
    ids = []
    for i in range(3):
        rec = dict(ZS_CASE, SBLSH=f"442000-2026-60000{i}")
        resp = await ex.stub.SubmitCase(submit_req(f"ra-{i}", rec), metadata=ZS)
        ids.append(resp.exchange_id)
    return ids


async def test_each_case_record_read_is_audited_before_it_is_answered(tmp_path: Path) -> None:
    held = {"TONGBAN_DELIVERY__ENABLED": "false", "TONGBAN_AUDIT__CASE_READS": "true"}
    async with running_exchange(tmp_path, **held) as ex:
        ids = await submit_three(ex)
        await ex.stub.GetCase(cx.GetCaseRequest(exchange_id=ids[0]), metadata=ZS)
        await ex.stub.GetCase(
            cx.GetCaseRequest(exchange_id=ids[1], schema="tongban.v1.Case"), metadata=SZ
        )
        page = await ex.stub.ListCases(cx.ListCasesRequest(page_size=2), metadata=ZS)
        assert len(page.cases) == 2
        # Summaries only: no personal data, nothing recorded.
        await ex.stub.ListCases(cx.ListCasesRequest(schema="none"), metadata=ZS)
        assert reads(ex) == [
            ("zs", ids[0], "disclosed", "read as zhongshan.case"),
            ("sz", ids[1], "disclosed", "read as tongban.v1.Case"),
            ("zs", ids[2], "disclosed", "listed as zhongshan.case"),
            ("zs", ids[1], "disclosed", "listed as zhongshan.case"),
        ]
        assert verify_store_chain(ex.gateway.services.store.reader).ok
        # A read the store cannot record is not answered.
        store = ex.gateway.services.store

        async def down(intent: Any) -> Any:
            raise BackendUnavailable("the store is unavailable; retry later", 1.0)

        store.write = down  # type: ignore[method-assign]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ex.stub.GetCase(cx.GetCaseRequest(exchange_id=ids[0]), metadata=ZS)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_reads_are_not_audited_by_default(tmp_path: Path) -> None:
    async with running_exchange(tmp_path, TONGBAN_DELIVERY__ENABLED="false") as ex:
        ids = await submit_three(ex)
        await ex.stub.GetCase(cx.GetCaseRequest(exchange_id=ids[0]), metadata=ZS)
        await ex.stub.ListCases(cx.ListCasesRequest(), metadata=ZS)
        assert reads(ex) == []


async def test_watched_notes_and_operators_traces_are_audited(tmp_path: Path) -> None:
    """A status note may name the applicant: streamed by WatchCases, or shown by an operator's
    TraceCase, it is recorded as read first (events without a note are not)."""
    held = {
        "TONGBAN_DELIVERY__ENABLED": "false",
        "TONGBAN_AUDIT__CASE_READS": "true",
        "TONGBAN_PARTNERS__OPS__CITY": "440000",
        "TONGBAN_PARTNERS__OPS__TOKEN": "t-ops",
        "TONGBAN_PARTNERS__OPS__OPERATOR": "true",
    }
    async with running_exchange(tmp_path, **held) as ex:
        xid = (await ex.stub.SubmitCase(submit_req("w-1", ZS_CASE), metadata=ZS)).exchange_id
        await ex.stub.ReportStatus(  # Zhongshan's 09: the applicant withdrew, and why
            cx.ReportStatusRequest(
                request_id="w-2", exchange_id=xid, status_code="09", note="申请人陈嘉怡撤回"
            ),
            metadata=ZS,
        )
        watch = ex.stub.WatchCases(
            cx.WatchCasesRequest(from_beginning=True, exchange_id=xid), metadata=ZS
        )
        notes = [(await watch.read()).event.note for _ in range(2)]
        watch.cancel()
        assert notes == ["", "申请人陈嘉怡撤回"]
        async with grpc.aio.insecure_channel(ex.gateway.address) as ch:
            trace = await ops_grpc.OperationsServiceStub(ch).TraceCase(
                ops.TraceCaseRequest(exchange_id=xid), metadata=[("authorization", "Bearer t-ops")]
            )
        assert trace.exchange_id == xid
        assert reads(ex) == [
            ("zs", xid, "disclosed", "note of CASE_STATUS_WITHDRAWN watched"),
            ("ops", xid, "disclosed", "traced"),
        ]
