"""Retention on SQLite and on PostgreSQL: a purge deletes idempotency records, delivered outbox
rows and closed cases past their time, step by step, and never a pending row, a dead letter or a
case that still waits for either; every step is in the audit log."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from sqlalchemy import insert, select

from gateway.audit import verify_chain
from gateway.services.retention import RetentionService
from gateway.settings import RetentionSettings
from gateway.store.retention import PURGE_LOCK, ThinIntent, purge_bound, thinned_keys
from gateway.store.store import Store
from gateway.store.writer import (
    AUDIT,
    AUDIT_CHECKPOINTS,
    CASES,
    EVENTS,
    OUTBOX,
    REQUESTS,
    WITNESSED,
)
from tongban.v1 import case_exchange_pb2 as cx

from .conftest import running_store
from .test_case_exchange import SZ, ZS, ZS_CASE, running_exchange, submit_req, wait_for

DAY = 86400.0
NOW = 400 * DAY
POLICY = RetentionSettings(request_days=30, delivered_days=30, closed_case_days=60, batch_rows=3)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    async with running_store(db_url, clock=lambda: NOW) as s:
        yield s


def insert_row(store: Store, table: Any, **values: Any) -> Any:
    with store.engine.begin() as conn:
        return conn.execute(insert(table).values(**values)).inserted_primary_key


def request(store: Store, age_days: float) -> str:
    rid = uuid.uuid4().hex
    insert_row(
        store,
        REQUESTS,
        partner="zs",
        request_id=rid,
        kind="submit",
        body_hash="0" * 64,
        response=b"r",
        created_at=NOW - age_days * DAY,
    )
    return rid


def case(store: Store, status: str, made_days: float, changed_days: float) -> str:
    """A case made ``made_days`` ago, last changed ``changed_days`` ago, with two events."""
    xid = uuid.uuid4().hex
    insert_row(
        store,
        CASES,
        exchange_id=xid,
        submitter="zs",
        receiving_city="442000",
        handling_city="440300",
        case_number="N",
        status=status,
        delivery_state="DELIVERY_STATE_DELIVERED",
        canonical="{}",
        mapping_versions="",
        submitted_at=NOW - made_days * DAY,
        updated_at=NOW - changed_days * DAY,
    )
    for at in (made_days, changed_days):
        insert_row(
            store,
            EVENTS,
            exchange_id=xid,
            status=status,
            occurred_at=NOW - at * DAY,
            reported_by="440300",
            note="",
            created_at=NOW - at * DAY,
        )
    return xid


def outbox(store: Store, xid: str, state: str, made_days: float, delivered_days: float) -> int:
    (row_id,) = insert_row(
        store,
        OUTBOX,
        exchange_id=xid,
        kind="case",
        target_partner="sz",
        target_city="440300",
        state=state,
        attempts=1,
        next_attempt_at=NOW - made_days * DAY,
        lease_until=0.0,
        last_error="",
        created_at=NOW - made_days * DAY,
        delivered_at=NOW - delivered_days * DAY if state == "delivered" else None,
        dead_at=NOW - delivered_days * DAY if state == "dead" else None,
        replays=0,
    )
    return int(row_id)


def left(store: Store) -> dict[str, set[Any]]:
    with store.engine.begin() as conn:
        return {
            "requests": set(conn.execute(select(REQUESTS.c.request_id)).scalars()),
            "outbox": set(conn.execute(select(OUTBOX.c.id)).scalars()),
            "cases": set(conn.execute(select(CASES.c.exchange_id)).scalars()),
            "events": set(conn.execute(select(EVENTS.c.exchange_id)).scalars()),
        }


CLOSED = "CASE_STATUS_COMPLETED_APPROVED"


async def test_a_purge_deletes_only_what_is_past_its_time(store: Store) -> None:
    # Made oldest first, so that what is kept lies between what goes, in key order.
    old_requests = [request(store, 45 - i) for i in range(4)]
    kept_requests = [request(store, 29), request(store, 1)]
    gone_cases, kept_cases, gone_rows, kept_rows = [], [], [], []
    for i in range(7):
        xid = case(store, CLOSED, 100 - i, 70)
        gone_cases.append(xid)
        gone_rows.append(outbox(store, xid, "delivered", 100 - i, 99 - i))
        if i == 2:
            waiting = case(store, CLOSED, 98, 70)  # its status report is still to be delivered
            kept_cases.append(waiting)
            gone_rows.append(outbox(store, waiting, "delivered", 98, 97))
            kept_rows.append(outbox(store, waiting, "pending", 70, 0))
        if i == 4:
            parked = case(store, "CASE_STATUS_WITHDRAWN", 97, 70)  # its delivery is a dead letter
            kept_cases.append(parked)
            kept_rows.append(outbox(store, parked, "dead", 97, 90))
            kept_cases.append(case(store, "CASE_STATUS_IN_PROGRESS", 96, 70))  # still open
    kept_cases.append(case(store, CLOSED, 80, 59))  # closed 59 days ago
    late = case(store, CLOSED, 80, 59)
    kept_rows.append(outbox(store, late, "delivered", 80, 29))  # delivered after 51 days
    kept_cases.append(late)
    kept_rows.append(outbox(store, late, "delivered", 20, 20))

    svc = RetentionService(POLICY, store)
    dry = await svc.dry_run()
    assert dry.deleted == {"requests": 4, "outbox": 8, "cases": 7, "events": 14}
    assert left(store)["requests"] == {*old_requests, *kept_requests}  # a dry run deletes nothing

    report = await svc.purge("ops")
    assert not report.skipped
    assert report.deleted == dry.deleted
    after = left(store)
    assert after["requests"] == set(kept_requests)
    assert after["outbox"] == set(kept_rows)
    assert after["cases"] == set(kept_cases)
    assert after["events"] == set(kept_cases)
    assert (await svc.purge()).total == 0  # nothing left to purge

    # Each step of at most 3 rows has its audit entry, and the chain holds.
    with store.engine.begin() as conn:
        entries = conn.execute(
            select(AUDIT.c.actor, AUDIT.c.subject, AUDIT.c.detail).where(
                AUDIT.c.action == "store.purge"
            )
        ).all()
    assert [(e.subject, int(e.detail.split()[0])) for e in entries] == [
        ("requests", 3),
        ("requests", 1),
        ("outbox", 3),
        ("outbox", 3),
        ("outbox", 2),
        ("cases", 3),
        ("cases", 3),
        ("cases", 1),
    ]
    assert {e.actor for e in entries} == {"ops"}
    assert entries[-1].detail.endswith(", with 2 status events")
    length, head = store.reader.audit_head()
    assert verify_chain(store.reader.audit_rows(length), length, head).ok


async def test_old_checkpoints_are_thinned_to_the_last_of_each_day(store: Store) -> None:
    """retention.checkpoint_days: of the checkpoints signed before the cut-off, this chain's and
    the peers' witnessed here, the last of each UTC day stays, and so does each chain's last
    one and every witnessed length held with two hashes (the evidence of two chains)."""

    def signed(length: int, day: float, hour: int) -> None:
        insert_row(
            store,
            AUDIT_CHECKPOINTS,
            length=length,
            hash=f"{length:064x}",
            ts=day * DAY + hour * 3600,
            key_id="k" * 16,
            signature="s",
        )

    def witnessed(peer: str, length: int, day: float, hour: int, h: str = "") -> None:
        insert_row(
            store,
            WITNESSED,
            peer=peer,
            length=length,
            hash=h or f"{length:064x}",
            ts=day * DAY + hour * 3600,
            key_id="k" * 16,
            signature="s",
            received_at=day * DAY + hour * 3600 + 1,
        )

    # The cut-off is 30 days before NOW: day 370.
    for length, day, hour in [(1, 360, 1), (2, 360, 5), (3, 360, 23), (4, 361, 0), (5, 361, 9)]:
        signed(length, day, hour)
    signed(6, 375, 1)
    signed(7, 375, 2)
    for length, day, hour in [(10, 360, 1), (11, 360, 2), (12, 360, 3), (13, 361, 1), (14, 361, 2)]:
        witnessed("a", length, day, hour)
    witnessed("a", 10, 360, 4, h="e" * 64)  # peer a signed another chain of 10 entries
    witnessed("b", 1, 360, 1)
    witnessed("b", 2, 360, 2)  # peer b's last: before the cut-off, but kept
    svc = RetentionService(RetentionSettings(checkpoint_days=30, batch_rows=2), store)
    assert svc.enabled
    dry = await svc.dry_run()
    assert dry.deleted == {
        "requests": 0,
        "outbox": 0,
        "audit_checkpoints": 3,
        "witnessed_checkpoints": 3,
    }
    report = await svc.purge("ops")
    assert report.deleted == dry.deleted
    with store.engine.connect() as conn:
        kept = conn.execute(select(AUDIT_CHECKPOINTS.c.length)).scalars().all()
        held = conn.execute(select(WITNESSED.c.peer, WITNESSED.c.length)).all()
        entries = conn.execute(
            select(AUDIT.c.subject, AUDIT.c.detail).where(AUDIT.c.action == "store.purge")
        ).all()
    assert sorted(kept) == [3, 5, 6, 7]
    assert sorted(held) == [("a", 10), ("a", 10), ("a", 12), ("a", 14), ("b", 2)]
    # Two rows a transaction, each with its audit entry; the chain holds.
    assert [(e.subject, int(e.detail.split()[0])) for e in entries] == [
        ("audit_checkpoints", 2),
        ("audit_checkpoints", 1),
        ("witnessed_checkpoints", 2),
        ("witnessed_checkpoints", 1),
    ]
    assert entries[0].detail.endswith("all but the last of each day")
    length, head = store.reader.audit_head()
    assert verify_chain(store.reader.audit_rows(length), length, head).ok
    assert (await svc.purge()).total == 0  # nothing left to thin
    # A second hash for a length listed to go, arriving before it goes, keeps it.
    witnessed("b", 3, 360, 3)
    witnessed("b", 4, 360, 4)
    keys = thinned_keys(store.engine, "witnessed_checkpoints", NOW - 30 * DAY)
    assert keys == [{"peer": "b", "length": n, "hash": f"{n:064x}"} for n in (2, 3)]
    witnessed("b", 2, 360, 5, h="f" * 64)
    step = await store.write(ThinIntent("ops", "witnessed_checkpoints", NOW - 30 * DAY, keys))
    assert step.deleted == 1
    with store.engine.connect() as conn:
        held = conn.execute(select(WITNESSED.c.length).where(WITNESSED.c.peer == "b")).all()
    assert sorted(n for (n,) in held) == [2, 2, 4]


async def test_retention_of_zero_days_keeps_everything(store: Store) -> None:
    request(store, 1000)
    xid = case(store, CLOSED, 1000, 1000)
    outbox(store, xid, "delivered", 1000, 1000)
    svc = RetentionService(
        RetentionSettings(request_days=0, delivered_days=0, closed_case_days=0), store
    )
    assert not svc.enabled
    assert (await svc.purge()).total == 0
    assert all(left(store).values())


async def test_the_walk_stops_at_the_last_row_made_before_the_cut(store: Store) -> None:
    """Rows are made in key order; a row made out of order (another replica's clock) after
    the bound is left for a later purge, and none made after the cut is ever reached."""
    xids = [case(store, CLOSED, made, made) for made in (90, 80, 70, 75, 50, 65, 40)]
    with store.engine.begin() as conn:
        seqs = {
            r.exchange_id: r.seq for r in conn.execute(select(CASES.c.exchange_id, CASES.c.seq))
        }
    bound = purge_bound(store.engine, "cases", NOW - 60 * DAY)
    assert bound in (seqs[xids[3]], seqs[xids[5]])  # the binary search lands on one of them
    assert bound < seqs[xids[6]]
    assert purge_bound(store.engine, "cases", NOW - 100 * DAY) == 0
    assert purge_bound(store.engine, "cases", NOW) == seqs[xids[6]]


@pytest.mark.postgres
async def test_one_postgres_replica_purges_at_a_time(pg_schema: str) -> None:
    url = f"postgresql+psycopg://127.0.0.1:5432/test?options=-csearch_path%3D{pg_schema}"
    s = Store(url, clock=lambda: NOW)
    s.migrate()
    s.start()
    try:
        request(s, 45)
        svc = RetentionService(POLICY, s)
        with psycopg.connect("host=127.0.0.1 dbname=test", autocommit=True) as other:
            other.execute(f"SET search_path TO {pg_schema}")
            other.execute("SELECT pg_advisory_lock(%s, hashtext(current_schema()))", (PURGE_LOCK,))
            report = await svc.purge()
            assert report.skipped
            assert report.total == 0
            assert len(left(s)["requests"]) == 1
        # The other replica is done (its connection, and so its lock, is gone).
        assert (await svc.purge()).deleted["requests"] == 1
    finally:
        await s.stop()


async def test_a_serving_gateway_purges_on_its_own(tmp_path: Path) -> None:
    """A case closed and delivered, its request id and its outbox rows, go once past their
    time (here 1.5 s); until then a retry replays the first answer, after it the request is
    new. Counted in ``tongban_store_purged_rows_total``."""
    days = str(1.5 / DAY)
    env = {
        "TONGBAN_RETENTION__REQUEST_DAYS": days,
        "TONGBAN_RETENTION__DELIVERED_DAYS": days,
        "TONGBAN_RETENTION__CLOSED_CASE_DAYS": days,
        "TONGBAN_RETENTION__INTERVAL_SECONDS": "0.25",
    }
    async with running_exchange(tmp_path, **env) as ex:
        stub = ex.stub
        started = ex.gateway.services.metrics.registry.get_sample_value(
            "tongban_store_last_purge_timestamp_seconds"
        )
        assert started is not None
        first = await stub.SubmitCase(submit_req("r1", ZS_CASE), metadata=ZS)
        xid = first.exchange_id
        await wait_for(lambda: xid in ex.sz.applied("case"))
        for rid, code in (("s1", "ACCEPTED"), ("s2", "APPROVED")):
            await stub.ReportStatus(
                cx.ReportStatusRequest(request_id=rid, exchange_id=xid, status_code=code),
                metadata=SZ,
            )
        assert await stub.SubmitCase(submit_req("r1", ZS_CASE), metadata=ZS) == first
        await wait_for(lambda: "06" in {p["status_code"] for p in ex.zs.statuses()})

        async def purged() -> bool:
            try:
                await stub.GetCase(cx.GetCaseRequest(exchange_id=xid), metadata=ZS)
            except grpc.aio.AioRpcError as err:
                return err.code() == grpc.StatusCode.NOT_FOUND
            return False

        deadline = asyncio.get_running_loop().time() + 15
        while not await purged():
            assert asyncio.get_running_loop().time() < deadline, "not purged in 15 s"
            await asyncio.sleep(0.1)
        again = await stub.SubmitCase(submit_req("r1", ZS_CASE), metadata=ZS)
        assert again.exchange_id != xid  # the request id is forgotten: a new request
        metrics = ex.gateway.services.metrics.registry
        for table in ("requests", "outbox", "cases", "events"):
            assert metrics.get_sample_value("tongban_store_purged_rows_total", {"table": table})
        last = metrics.get_sample_value("tongban_store_last_purge_timestamp_seconds")
        assert last is not None
        assert last > started  # set at the start, then at the end of each purge
        store = ex.gateway.services.store
        length, head = store.reader.audit_head()
        assert verify_chain(store.reader.audit_rows(length), length, head).ok


async def test_a_purge_ends_between_two_transactions_when_the_gateway_stops(
    store: Store,
) -> None:
    for age in range(40, 35, -1):
        request(store, age)
    stop = asyncio.Event()
    deleted: list[int] = []

    def on_purged(table: str, n: int) -> None:
        deleted.append(n)
        stop.set()  # the gateway stops during the first transaction

    svc = RetentionService(POLICY, store, on_purged=on_purged)
    report = await svc.purge(stop=stop)
    assert report.deleted == {"requests": 3}  # one transaction of batch_rows (3), no more
    assert len(left(store)["requests"]) == 2
    assert (await svc.purge()).deleted == {"requests": 2, "outbox": 0, "cases": 0, "events": 0}
