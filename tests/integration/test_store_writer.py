"""The group-commit writer with batches larger than any SQL expression limit."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from gateway.app import Services, bootstrap
from gateway.auth import Caller
from gateway.store.writer import run_intents
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import common_pb2, records_pb2

from .conftest import ROOT, make_settings

CASE = json.loads((ROOT / "mappings/zhongshan/samples/case/01-case.json").read_text("utf-8"))


def _services(tmp_path: Path) -> tuple[Services, Caller]:
    """Zhongshan submits (token ``t``); Shenzhen and Zhongshan have inboxes (not called)."""
    services = bootstrap(
        make_settings(
            tmp_path,
            TONGBAN_AUTH__MODE="token",
            TONGBAN_PARTNERS__ZS__CITY="442000",
            TONGBAN_PARTNERS__ZS__TOKEN="t",
            TONGBAN_PARTNERS__ZS__INBOX__TRANSPORT="grpc",
            TONGBAN_PARTNERS__ZS__INBOX__TARGET="127.0.0.1:9",
            TONGBAN_PARTNERS__SZ__CITY="440300",
            TONGBAN_PARTNERS__SZ__INBOX__TRANSPORT="grpc",
            TONGBAN_PARTNERS__SZ__INBOX__TARGET="127.0.0.1:9",
        )
    )
    caller = services.auth.identify([("authorization", "Bearer t")])
    assert caller is not None
    return services, caller


def _one_case_stored(tmp_path: Path, request_id: str, at: float) -> tuple[Engine, str]:
    """A store holding one case Zhongshan submitted for Shenzhen at ``at``; its exchange id."""
    services, caller = _services(tmp_path)
    request = cx.SubmitCaseRequest(
        request_id=request_id,
        target_city="440300",
        foreign=common_pb2.ForeignRecord(schema="zhongshan.case", json=json.dumps(CASE).encode()),
    )
    intent = services.cases.prepare(caller, request)
    engine = services.store.engine
    [(_, replayed)] = run_intents(engine, [intent], at)
    assert replayed is False
    return engine, intent.exchange_id


async def test_large_batch_commits_once_and_replays_idempotently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    services, caller = _services(tmp_path)
    requests = [
        cx.SubmitCaseRequest(
            request_id=f"big-{i}",
            target_city="440300",
            foreign=common_pb2.ForeignRecord(
                schema="zhongshan.case",
                json=json.dumps(dict(CASE, SBLSH=f"442000-2026-{i:06d}")).encode(),
            ),
        )
        for i in range(1500)
    ]
    intents = [services.cases.prepare(caller, r) for r in requests]
    engine = services.store.engine
    with caplog.at_level(logging.WARNING, logger="tongban.store"):
        first = run_intents(engine, intents, 1.0)  # one transaction for all 1500
        assert all(replayed is False for _, replayed in first)
        again = run_intents(engine, [services.cases.prepare(caller, r) for r in requests], 2.0)
    # Neither batch fell back to one transaction per intent.
    assert not [r for r in caplog.records if "one by one" in r.getMessage()]
    assert [replayed for _, replayed in again] == [True] * 1500
    assert [stored for stored, _ in again] == [stored for stored, _ in first]
    engine.dispose()


async def test_rows_of_a_submitted_case_and_a_status_report_hold_the_models_defaults(
    tmp_path: Path,
) -> None:
    """The constants written into the INSERT statements (NewRows' fixed columns) are what the
    table models say a new row holds."""
    from sqlalchemy import select

    from gateway.services.cases import report_response
    from gateway.store.intents import ReportStatusIntent
    from gateway.store.writer import CASES, EVENTS, OUTBOX, REQUESTS

    engine, exchange_id = _one_case_stored(tmp_path, "rows-1", 5.0)
    report = ReportStatusIntent(
        "sz",
        "440300",
        "rep-1",
        "h",
        exchange_id,
        "CASE_STATUS_RECEIVED",
        6.0,
        "",
        None,
        ("zs", "442000"),
        report_response,
    )
    [result] = run_intents(engine, [report], 7.0)
    assert not isinstance(result, Exception), result
    with engine.connect() as conn:
        case = conn.execute(select(CASES).where(CASES.c.exchange_id == exchange_id)).one()
        stored_as = conn.exec_driver_sql("SELECT typeof(canonical) FROM cases").scalar_one()
        events = conn.execute(select(EVENTS).order_by(EVENTS.c.seq)).all()
        outbox = conn.execute(select(OUTBOX).order_by(OUTBOX.c.id)).all()
        requests = conn.execute(select(REQUESTS).order_by(REQUESTS.c.request_id)).all()
    assert (case.status, case.delivery_state) == ("CASE_STATUS_RECEIVED", "DELIVERY_STATE_PENDING")
    assert (case.submitter, case.receiving_city, case.handling_city) == ("zs", "442000", "440300")
    assert stored_as == "text"
    assert json.loads(case.canonical)["applicant"]["name"] == CASE["SQRMC"]
    assert (case.submitted_at, case.updated_at) == (5.0, 7.0)
    assert [(e.status, e.note, e.reported_by, e.occurred_at) for e in events] == [
        ("CASE_STATUS_SUBMITTED", "", "442000", 5.0),
        ("CASE_STATUS_RECEIVED", "", "440300", 6.0),
    ]
    assert [(o.kind, o.event_seq, o.target_partner, o.target_city) for o in outbox] == [
        ("case", None, "sz", "440300"),
        ("status", events[1].seq, "zs", "442000"),
    ]
    for row, at in zip(outbox, (5.0, 7.0), strict=True):
        assert (row.state, row.attempts, row.lease_owner, row.last_error, row.replays) == (
            "pending",
            0,
            None,
            "",
            0,
        )
        assert row.lease_until == 0.0
        assert type(row.lease_until) is float
        assert (row.next_attempt_at, row.created_at, row.delivered_at, row.dead_at) == (
            at,
            at,
            None,
            None,
        )
    assert [(r.request_id, r.kind, r.created_at) for r in requests] == [
        ("rep-1", "report", 7.0),
        ("rows-1", "submit", 5.0),
    ]
    engine.dispose()


async def test_a_peers_change_older_than_one_stored_in_the_same_batch_is_recorded_late(
    tmp_path: Path,
) -> None:
    """Two deliveries of one case in flight together: the writer judges each against what the
    other stored before it, in the transaction (the peer service's read came before both)."""
    from sqlalchemy import select

    from gateway.errors import IllegalTransition
    from gateway.services.cases import report_response
    from gateway.store.intents import ReportStatusIntent
    from gateway.store.writer import AUDIT, CASES, EVENTS, OUTBOX

    engine, xid = _one_case_stored(tmp_path, "late-1", 5.0)

    def report(
        key: str, status: str, at: float, *, late: bool = True, notify_late: bool = False
    ) -> ReportStatusIntent:
        return ReportStatusIntent(
            "sz", "440300", key, key, xid, status, at, f"note {key}", None, ("zs", "442000"),
            report_response, record_late=late, notify_late=notify_late,
        )  # fmt: skip

    results = run_intents(
        engine,
        [
            report("r", "CASE_STATUS_RECEIVED", 6.0),
            report("a", "CASE_STATUS_ACCEPTED", 7.0),
            report("c", "CASE_STATUS_COMPLETED_APPROVED", 9.0),
            report("p", "CASE_STATUS_IN_PROGRESS", 8.0),  # overtaken by "c" just before
            report("q", "CASE_STATUS_IN_PROGRESS", 8.5, late=False),  # a city's own report
        ],
        10.0,
    )
    assert isinstance(results[4], IllegalTransition)
    answers = [cx.ReportStatusResponse.FromString(r[0]) for r in results[:4]]
    # The late one's answer keeps the case's status, and points at its event.
    assert [records_pb2.CaseStatus.Name(a.status) for a in answers] == [
        "CASE_STATUS_RECEIVED",
        "CASE_STATUS_ACCEPTED",
        "CASE_STATUS_COMPLETED_APPROVED",
        "CASE_STATUS_COMPLETED_APPROVED",
    ]
    with engine.connect() as conn:
        case = conn.execute(select(CASES).where(CASES.c.exchange_id == xid)).one()
        events = conn.execute(select(EVENTS).order_by(EVENTS.c.seq)).all()
        outbox = conn.execute(select(OUTBOX).where(OUTBOX.c.kind == "status")).all()
        audit = conn.execute(select(AUDIT).where(AUDIT.c.action == "case.status")).all()
    assert (case.status, case.updated_at) == ("CASE_STATUS_COMPLETED_APPROVED", 10.0)
    assert [(e.status, e.occurred_at, e.late, e.note) for e in events] == [
        ("CASE_STATUS_SUBMITTED", 5.0, False, ""),
        ("CASE_STATUS_RECEIVED", 6.0, False, "note r"),
        ("CASE_STATUS_ACCEPTED", 7.0, False, "note a"),
        ("CASE_STATUS_COMPLETED_APPROVED", 9.0, False, "note c"),
        ("CASE_STATUS_IN_PROGRESS", 8.0, True, "note p"),
    ]
    assert answers[3].event_cursor == str(events[4].seq)
    # Zhongshan's system is told of the three applied, not of the late one.
    assert sorted(o.event_seq for o in outbox) == [e.seq for e in events[1:4]]
    assert [(a.subject, a.outcome, a.detail) for a in audit] == [
        (xid, "accepted", "CASE_STATUS_RECEIVED"),
        (xid, "accepted", "CASE_STATUS_ACCEPTED"),
        (xid, "accepted", "CASE_STATUS_COMPLETED_APPROVED"),
        (xid, "late", "CASE_STATUS_IN_PROGRESS"),
    ]
    # A retry of the late one replays its answer.
    [(again, replayed)] = run_intents(engine, [report("p", "CASE_STATUS_IN_PROGRESS", 8.0)], 11.0)
    assert (again, replayed) == (results[3][0], True)
    # For a system that reads late changes (inbox.late_statuses), one is queued for it too.
    [(told, _)] = run_intents(
        engine, [report("s", "CASE_STATUS_SUPPLEMENT_REQUIRED", 8.2, notify_late=True)], 12.0
    )
    seq = int(cx.ReportStatusResponse.FromString(told).event_cursor)
    with engine.connect() as conn:
        late_rows = conn.execute(select(OUTBOX).where(OUTBOX.c.event_seq == seq)).all()
        (stored,) = conn.execute(select(EVENTS).where(EVENTS.c.seq == seq)).all()
    assert (stored.status, stored.late) == ("CASE_STATUS_SUPPLEMENT_REQUIRED", True)
    assert [(o.kind, o.target_partner, o.target_city, o.state) for o in late_rows] == [
        ("status", "zs", "442000", "pending")
    ]
    engine.dispose()
