"""Reliability: a partner down then back, a partner rejecting until a mapping fix."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import text

from adapters.transports import FakePartnerTransport
from gateway.app import Gateway, bootstrap
from gateway.partner_sim import InboxSimulator, start_simulator
from gateway.services.delivery import DeliveryObserver
from gateway.store.audit_archive import archive_audit
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import case_exchange_pb2_grpc as cx_grpc
from tongban.v1 import common_pb2, records_pb2
from tongban.v1 import operations_pb2 as ops
from tongban.v1 import operations_pb2_grpc as ops_grpc

from .conftest import ROOT, make_settings, rich_error

ZS = [("authorization", "Bearer t-zs")]
OPS = [("authorization", "Bearer t-ops")]
ZS_CASE = json.loads((ROOT / "mappings/zhongshan/samples/case/01-case.json").read_text("utf-8"))


async def run_gateway(
    tmp_path: Path, sz_port: int, mappings: Path, **extra: str
) -> tuple[Gateway, DeliveryObserver]:
    env = {
        "TONGBAN_AUTH__MODE": "token",
        "TONGBAN_MAPPINGS__PATH": str(mappings),
        "TONGBAN_DELIVERY__RETRY__INITIAL_BACKOFF_SECONDS": "0.05",
        "TONGBAN_DELIVERY__RETRY__MAX_BACKOFF_SECONDS": "0.8",
        "TONGBAN_DELIVERY__RETRY__MAX_ATTEMPTS": "40",
        "TONGBAN_DELIVERY__CIRCUIT__FAILURE_THRESHOLD": "3",
        "TONGBAN_DELIVERY__CIRCUIT__RESET_SECONDS": "0.3",
        "TONGBAN_PARTNERS__ZS__CITY": "442000",
        "TONGBAN_PARTNERS__ZS__TOKEN": "t-zs",
        "TONGBAN_PARTNERS__SZ__CITY": "440300",
        "TONGBAN_PARTNERS__SZ__TOKEN": "t-sz",
        "TONGBAN_PARTNERS__SZ__INBOX__TRANSPORT": "grpc",
        "TONGBAN_PARTNERS__SZ__INBOX__TARGET": f"127.0.0.1:{sz_port}",
        "TONGBAN_PARTNERS__OPS__CITY": "440000",
        "TONGBAN_PARTNERS__OPS__TOKEN": "t-ops",
        "TONGBAN_PARTNERS__OPS__OPERATOR": "true",
        **extra,
    }
    settings = make_settings(tmp_path, **env)
    observer = DeliveryObserver()
    gw = Gateway(settings, bootstrap(settings, delivery_observer=observer))
    await gw.start()
    return gw, observer


@pytest.fixture
async def shenzhen(tmp_path: Path) -> AsyncIterator[tuple[InboxSimulator, int]]:
    sim = InboxSimulator(tmp_path / "sz.db")
    server, port = await start_simulator(sim)
    yield sim, port
    await server.stop(0)
    sim.close()


async def submit_many(address: str, n: int, prefix: str, city: str = "440300") -> list[str]:
    """Zhongshan submits ``n`` cases handled by ``city`` (Shenzhen by default)."""
    async with grpc.aio.insecure_channel(address) as ch:
        stub = cx_grpc.CaseExchangeServiceStub(ch)
        ids = []
        for i in range(n):
            rec = dict(ZS_CASE, SBLSH=f"442000-2026-{prefix}{i:04d}", BLD=city)
            resp = await stub.SubmitCase(
                cx.SubmitCaseRequest(
                    request_id=f"{prefix}-{i}",
                    target_city=city,
                    foreign=common_pb2.ForeignRecord(
                        schema="zhongshan.case", json=json.dumps(rec).encode()
                    ),
                ),
                metadata=ZS,
            )
            ids.append(resp.exchange_id)
        return ids


async def until(predicate: Any, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


#: Guangzhou, a second partner with an inbox (tests give it a fake transport).
GZ_INBOX = {
    "TONGBAN_PARTNERS__GZ__CITY": "440100",
    "TONGBAN_PARTNERS__GZ__INBOX__TRANSPORT": "grpc",
    "TONGBAN_PARTNERS__GZ__INBOX__TARGET": "127.0.0.1:9",
}


async def two_city_gateway(
    tmp_path: Path, sz: Any, gz: Any, observer: DeliveryObserver | None = None, **extra: str
) -> Gateway:
    """A running gateway delivering to Shenzhen and Guangzhou through fake transports calling
    ``sz`` and ``gz``; Zhongshan submits."""
    settings = make_settings(
        tmp_path,
        TONGBAN_AUTH__MODE="token",
        TONGBAN_DELIVERY__POLL_INTERVAL_SECONDS="0.05",
        TONGBAN_PARTNERS__ZS__CITY="442000",
        TONGBAN_PARTNERS__ZS__TOKEN="t-zs",
        TONGBAN_PARTNERS__SZ__CITY="440300",
        TONGBAN_PARTNERS__SZ__INBOX__TRANSPORT="grpc",
        TONGBAN_PARTNERS__SZ__INBOX__TARGET="127.0.0.1:9",
        **GZ_INBOX,
        **extra,
    )
    transports = {"sz": sz, "gz": gz}
    gw = Gateway(settings, bootstrap(settings, transports=transports, delivery_observer=observer))
    await gw.start()
    return gw


async def test_partner_down_then_back(tmp_path: Path, shenzhen: tuple[InboxSimulator, int]) -> None:
    sim, port = shenzhen
    sim.down = True
    gw, observer = await run_gateway(tmp_path, port, ROOT / "mappings")
    try:
        ids = await submit_many(gw.address, 12, "down")
        delays = observer.retry_delays
        # Backoff grows: a first retry waits 0.05-0.1 s, a third 0.2-0.25 s (and so on up to
        # the 0.8 s cap). Cases retry side by side, so wait for some case's third retry rather
        # than read the last delays recorded (they may be a late case's first ones).
        await until(lambda: len(delays) >= 3 and max(delays) >= 0.2, 20)
        assert min(delays[:3]) <= 0.1
        assert sim.applied("case") == {}
        breaker = gw.services.delivery.breakers["sz"]
        assert "open" in [state for _, state in breaker.transitions]
        sim.down = False
        await until(lambda: set(sim.applied("case")) == set(ids), 20)
        assert breaker.state == "closed"
        assert breaker.transitions[-1][1] == "closed"
        assert all(count == 1 for count in sim.applied("case").values())
    finally:
        await gw.stop(grace=0)


async def test_permanent_rejection_dead_letter_then_replay(
    tmp_path: Path, shenzhen: tuple[InboxSimulator, int]
) -> None:
    sim, port = shenzhen
    mappings = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mappings)
    case_yaml = mappings / "shenzhen/case.yaml"
    good = case_yaml.read_text("utf-8")
    # A mapping bug: Shenzhen's service item name is never written.
    case_yaml.write_text(
        good.replace("  - {from: serviceItem.name, to: service_item_name}\n", "").replace(
            "source: error", "source: warn"
        ),
        "utf-8",
    )
    sim.reject = lambda p: (
        None if p["record"].get("serviceItem", {}).get("name") else "serviceItem.name is required"
    )
    gw, _ = await run_gateway(
        tmp_path, port, mappings, TONGBAN_MAPPINGS__RUN_GOLDEN_ON_RELOAD="false"
    )
    try:
        (xid,) = await submit_many(gw.address, 1, "rej")
        async with grpc.aio.insecure_channel(gw.address) as ch:
            stub = ops_grpc.OperationsServiceStub(ch)

            async def dead() -> list[ops.DeadLetter]:
                return list(
                    (
                        await stub.ListDeadLetters(ops.ListDeadLettersRequest(), metadata=OPS)
                    ).dead_letters
                )

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not await dead():
                assert loop.time() < deadline
                await asyncio.sleep(0.05)
            (letter,) = await dead()
            assert letter.exchange_id == xid
            assert "INVALID_ARGUMENT" in letter.reason
            assert "serviceItem.name is required" in letter.reason
            assert letter.attempts == 1  # permanent: not retried
            with pytest.raises(grpc.aio.AioRpcError) as info:  # not an operator
                await stub.ListDeadLetters(ops.ListDeadLettersRequest(), metadata=ZS)
            assert rich_error(info.value)["reason"] == "PERMISSION_DENIED"
            # The case's trace shows the dead letter, with the partner's reason.
            trace = await stub.TraceCase(ops.TraceCaseRequest(exchange_id=xid), metadata=OPS)
            assert (trace.exchange_id, trace.delivery_state) == (
                xid,
                cx.DELIVERY_STATE_DEAD_LETTERED,
            )
            (parked,) = trace.deliveries
            assert (parked.id, parked.state, parked.kind) == (letter.id, "dead", "case")
            assert parked.last_error == letter.reason
            assert [e.status for e in trace.events] == [records_pb2.CASE_STATUS_SUBMITTED]
            assert [a.action for a in trace.audit_entries] == ["case.submit", "delivery.dead"]
            assert "SQRZJHM" not in str(trace)  # nothing of the record, let alone personal data
            for bad, code, reason in (
                ("", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
                ("0" * 32, grpc.StatusCode.NOT_FOUND, "CASE_NOT_FOUND"),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.TraceCase(ops.TraceCaseRequest(exchange_id=bad), metadata=OPS)
                err = rich_error(info.value)
                assert (err["code"], err["reason"]) == (code, reason)
            assert err["fields"] == ["exchange_id"]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.TraceCase(ops.TraceCaseRequest(exchange_id=xid), metadata=ZS)
            assert rich_error(info.value)["reason"] == "PERMISSION_DENIED"
            # Fix the mapping, reload, replay: delivered, the dead-letter queue is empty.
            case_yaml.write_text(good, "utf-8")
            assert gw.services.mappings.reload().ok
            replayed = await stub.ReplayDeadLetters(
                ops.ReplayDeadLettersRequest(all=True), metadata=OPS
            )
            assert list(replayed.replayed_ids) == [letter.id]
            await until(lambda: xid in sim.applied("case"), 10)
            assert await dead() == []
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetDeadLetter(ops.GetDeadLetterRequest(id=letter.id), metadata=OPS)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            trace = await stub.TraceCase(ops.TraceCaseRequest(exchange_id=xid), metadata=OPS)
            (delivered,) = trace.deliveries
            assert (delivered.state, delivered.replays) == ("delivered", 1)
            assert delivered.delivered_at.seconds > 0
            assert "delivery.replay" in [a.action for a in trace.audit_entries]
            assert trace.audit_archived_through == 0
            # Its audit entries archived: the trace says where they went.
            store = gw.services.store
            moved = await archive_audit(store, tmp_path / "audit", store.clock(), 100, "ops")
            assert moved
            trace = await stub.TraceCase(ops.TraceCaseRequest(exchange_id=xid), metadata=OPS)
            assert list(trace.audit_entries) == []
            assert trace.audit_archived_through == moved[-1].last
            assert len(trace.deliveries) == 1  # the rest of the trace is still there
    finally:
        await gw.stop(grace=0)


async def fake_partner_gateway(
    tmp_path: Path, handler: Any, **extra: str
) -> tuple[Gateway, FakePartnerTransport]:
    """A gateway whose delivery loop is off (tests drive ``deliver`` themselves) and whose
    Shenzhen partner is ``handler`` behind a fake transport."""
    env = {
        "TONGBAN_AUTH__MODE": "token",
        "TONGBAN_DELIVERY__ENABLED": "false",
        "TONGBAN_PARTNERS__ZS__CITY": "442000",
        "TONGBAN_PARTNERS__ZS__TOKEN": "t-zs",
        "TONGBAN_PARTNERS__SZ__CITY": "440300",
        "TONGBAN_PARTNERS__SZ__TOKEN": "t-sz",
        "TONGBAN_PARTNERS__SZ__INBOX__TRANSPORT": "grpc",
        "TONGBAN_PARTNERS__SZ__INBOX__TARGET": "127.0.0.1:9",
        **extra,
    }
    settings = make_settings(tmp_path, **env)
    fake = FakePartnerTransport(handler)
    gw = Gateway(settings, bootstrap(settings, transports={"sz": fake}))
    await gw.start()
    return gw, fake


async def test_retry_intervals_grow_with_injected_sleep(tmp_path: Path) -> None:
    """Delivery retries follow the policy: exponential, capped, RetryInfo honoured; no real sleep.
    Every wait here is under ``hold_max_seconds``, so one worker waits them all out."""
    from adapters.transports import TransportError
    from gateway.services.delivery import DeliveryService
    from gateway.store.intents import ClaimIntent

    intervals: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        intervals.append(seconds)

    calls = 0

    async def handler(kind: str, request: Any) -> None:
        nonlocal calls
        calls += 1
        if calls < 6:
            hint = 4.0 if calls == 5 else None
            raise TransportError("busy", retryable=True, code="UNAVAILABLE", retry_after=hint)

    gw, fake = await fake_partner_gateway(
        tmp_path,
        handler,
        TONGBAN_DELIVERY__RETRY__INITIAL_BACKOFF_SECONDS="0.1",
        TONGBAN_DELIVERY__RETRY__MAX_BACKOFF_SECONDS="1.0",
        TONGBAN_DELIVERY__RETRY__HOLD_MAX_SECONDS="5",
        TONGBAN_DELIVERY__CIRCUIT__FAILURE_THRESHOLD="100",
    )
    try:
        (xid,) = await submit_many(gw.address, 1, "ret")
        svc: DeliveryService = gw.services.delivery
        svc.sleep = fake_sleep
        (row,) = await gw.services.store.write(ClaimIntent(svc.owner, 10, 30))
        assert await svc.deliver(row) == "delivered"
        assert calls == 6
        base = [0.1 * 2**i for i in range(4)]  # 0.1, 0.2, 0.4, 0.8 (+ jitter up to 0.1)
        for got, want in zip(intervals[:4], base, strict=True):
            assert want <= got <= want + 0.1 + 1e-9
        assert intervals[4] == 4.0  # the partner's RetryInfo beats the 1.0 s cap
        assert [c[1].idempotency_key for c in fake.calls] == [xid] * 6
    finally:
        await gw.stop(grace=0)


async def test_a_delivery_holds_its_lease_and_stops_when_it_was_lost(tmp_path: Path) -> None:
    """A claimed row that waited past its lease (behind others in its process's queue) is
    delivered only if its worker still holds it: the lease is extended first, owner-checked. If
    another worker claimed it meanwhile, this one stops before calling the partner (two
    replicas delivering one row at once was seen on a slow machine with 2 s leases)."""
    from gateway.services.delivery import DeliveryService
    from gateway.store.intents import ClaimIntent

    async def handler(kind: str, request: Any) -> None:
        return None

    gw, fake = await fake_partner_gateway(tmp_path, handler, TONGBAN_DELIVERY__LEASE_SECONDS="30")
    try:
        lost, kept = await submit_many(gw.address, 2, "lease")
        svc: DeliveryService = gw.services.delivery
        store = gw.services.store
        rows = await store.write(ClaimIntent(svc.owner, 10, 0.05))  # a 50 ms lease
        by_id = {r.exchange_id: r for r in rows}
        assert set(by_id) == {lost, kept}
        assert all(r.lease_until > 0 for r in rows)
        await asyncio.sleep(0.1)  # both leases expire while the rows wait
        (taken,) = await store.write(ClaimIntent("other", 1, 30))
        assert taken.exchange_id == lost  # the older row: another replica has it now
        assert await svc.deliver(by_id[lost]) == "lost"
        assert fake.calls == []  # the partner was not called for it
        # Still ours (expired, but nobody claimed it): extended, then delivered.
        assert await svc.deliver(by_id[kept]) == "delivered"
        assert [c[1].idempotency_key for c in fake.calls] == [kept]
    finally:
        await gw.stop(grace=0)


async def test_a_worker_is_not_held_by_the_commit_of_an_outcome(tmp_path: Path) -> None:
    """A delivery worker's slot is a call to a partner: while the commit recording one row's
    outcome waits (under load a commit waits for its group), the same worker delivers the next
    rows. Every outcome is still committed, the ones still waiting when the gateway stops
    included."""
    import sqlite3

    from gateway.store.intents import DeliveredIntent

    async def handler(kind: str, request: Any) -> None:
        return None

    gw, fake = await fake_partner_gateway(
        tmp_path,
        handler,
        TONGBAN_DELIVERY__ENABLED="true",
        TONGBAN_DELIVERY__WORKERS="1",
        TONGBAN_DELIVERY__POLL_INTERVAL_SECONDS="0.05",
    )
    store = gw.services.store
    write = store.write
    release = asyncio.Event()
    waiting: list[str] = []

    async def slow_settle(intent: Any) -> Any:
        if isinstance(intent, DeliveredIntent):
            waiting.append(intent.row.exchange_id)
            await release.wait()
        return await write(intent)

    store.write = slow_settle  # type: ignore[method-assign]
    stopping = None
    try:
        ids = await submit_many(gw.address, 3, "held")
        # One worker called the partner for all three while no outcome had been committed.
        await until(lambda: len(fake.calls) == 3 and len(waiting) == 3, 10)
        assert sorted(waiting) == sorted(ids)
        db = gw.settings.store.data_dir / "tongban.db"
        with sqlite3.connect(db) as conn:
            states = conn.execute("SELECT state FROM outbox").fetchall()
        assert states == [("pending",)] * 3
        # Stopping waits for the outcomes still committing.
        stopping = asyncio.create_task(gw.stop(grace=0))
        await asyncio.sleep(0.1)
        release.set()
        await stopping
    finally:
        release.set()
        if stopping is None:
            await gw.stop(grace=0)
    with sqlite3.connect(db) as conn:
        states = conn.execute("SELECT state FROM outbox").fetchall()
        delivered = conn.execute(
            "SELECT count(*) FROM cases WHERE delivery_state = 'DELIVERY_STATE_DELIVERED'"
        ).fetchone()
    assert states == [("delivered",)] * 3
    assert delivered == (3,)
    assert [c[1].idempotency_key for c in fake.calls] == ids


async def test_a_claim_reads_its_cases_at_once_and_a_stale_read_is_not_used(
    tmp_path: Path,
) -> None:
    """The claimer reads the cases of the rows it claimed in one store read (a read per row
    cost ~10x the CPU); a row's first attempt uses that read while it is fresh, and reads the
    case again when the row waited longer (for an open circuit, say)."""
    from gateway.services import delivery as delivery_module
    from gateway.store.intents import ClaimIntent

    async def handler(kind: str, request: Any) -> None:
        return None

    gw, fake = await fake_partner_gateway(tmp_path, handler)
    try:
        svc = gw.services.delivery
        store = gw.services.store
        reader = store.reader
        per_row: list[str] = []
        batched: list[list[str]] = []
        one, many = reader.case, reader.for_delivery

        def case(exchange_id: str) -> Any:
            per_row.append(exchange_id)
            return one(exchange_id)

        def for_delivery(ids: list[str], seqs: list[int]) -> Any:
            batched.append(sorted(ids))
            return many(ids, seqs)

        reader.case = case  # type: ignore[method-assign]
        reader.for_delivery = for_delivery  # type: ignore[method-assign]
        ids = await submit_many(gw.address, 3, "pre")
        rows = await store.write(ClaimIntent(svc.owner, 10, 30))
        await svc._prefetch(rows)
        assert batched == [sorted(ids)]
        _, stale, unread = rows
        # The second row's read is older than PREFETCH_FRESH_SECONDS, and the third has none
        # (its claim's read failed, say): each reads its case; the first uses the claim's read.
        when, *read = svc._prefetched[stale.id]
        svc._prefetched[stale.id] = (when - delivery_module.PREFETCH_FRESH_SECONDS - 1, *read)
        del svc._prefetched[unread.id]
        for row in rows:
            assert await svc.deliver(row) == "delivered"
        assert per_row == [stale.exchange_id, unread.exchange_id]
        assert [c[1].idempotency_key for c in fake.calls] == ids
        assert svc._prefetched == {}
    finally:
        await gw.stop(grace=0)


async def test_a_down_partner_does_not_hold_back_the_others(tmp_path: Path) -> None:
    """Shenzhen's inbox is down and six cases wait for it; a Guangzhou case submitted after
    them is still delivered at once (session 17 found it waiting behind them: workers waited
    out backoffs and open circuits). Shenzhen's cases wait in the outbox, not in workers."""
    from adapters.transports import TransportError

    async def down(kind: str, request: Any) -> None:
        raise TransportError("down", retryable=True, code="UNAVAILABLE")

    async def up(kind: str, request: Any) -> None:
        return None

    sz, gz = FakePartnerTransport(down), FakePartnerTransport(up)
    observer = DeliveryObserver()
    gw = await two_city_gateway(
        tmp_path,
        sz,
        gz,
        observer,
        TONGBAN_DELIVERY__WORKERS="2",
        TONGBAN_DELIVERY__RETRY__INITIAL_BACKOFF_SECONDS="0.5",
        TONGBAN_DELIVERY__RETRY__MAX_BACKOFF_SECONDS="2",
        TONGBAN_DELIVERY__RETRY__MAX_ATTEMPTS="100",
    )
    try:
        await submit_many(gw.address, 6, "holsz")
        (gz_case,) = await submit_many(gw.address, 1, "holgz", city="440100")
        await until(lambda: bool(gz.calls), 3)
        assert [c[1].idempotency_key for c in gz.calls] == [gz_case]
        # Shenzhen's circuit opens after its 5th failure (5 s): its cases wait for its end in
        # the outbox, and nobody calls Shenzhen meanwhile.
        breakers = gw.services.delivery.breakers
        await until(lambda: "sz" in breakers and breakers["sz"].state == "open", 5)
        await until(lambda: ("440300", "circuit_open") in observer.deferrals, 5)
        assert observer.attempts[("440300", "retryable")] >= 5
        calls = len(sz.calls)
        await asyncio.sleep(0.5)
        assert len(sz.calls) == calls
    finally:
        await gw.stop(grace=0)


def outbox_rows(gw: Gateway) -> dict[str, tuple[Any, ...]]:
    """exchange id -> (state, attempts, next_attempt_at, lease_owner, last_error), case rows."""
    import sqlite3

    with sqlite3.connect(gw.settings.store.data_dir / "tongban.db") as conn:
        rows = conn.execute(
            "SELECT exchange_id, state, attempts, next_attempt_at, lease_owner, last_error"
            " FROM outbox WHERE kind = 'case'"
        ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


async def test_a_long_backoff_puts_the_row_back_in_the_outbox(tmp_path: Path) -> None:
    """A worker waits out backoffs up to ``retry.hold_max_seconds``; the first longer one puts
    the row back in the outbox with its next attempt time and count, and frees the worker. The
    next claim (once due) continues where the count stopped."""
    import time

    from adapters.transports import TransportError
    from gateway.services.delivery import DeliveryService
    from gateway.store.intents import ClaimIntent

    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    failing = True

    async def handler(kind: str, request: Any) -> None:
        if failing:
            raise TransportError("busy", retryable=True, code="UNAVAILABLE")

    gw, fake = await fake_partner_gateway(
        tmp_path,
        handler,
        TONGBAN_DELIVERY__RETRY__INITIAL_BACKOFF_SECONDS="0.1",
        TONGBAN_DELIVERY__RETRY__MAX_BACKOFF_SECONDS="10",
        TONGBAN_DELIVERY__RETRY__HOLD_MAX_SECONDS="0.3",
        TONGBAN_DELIVERY__CIRCUIT__FAILURE_THRESHOLD="100",
    )
    try:
        (xid,) = await submit_many(gw.address, 1, "back")
        svc: DeliveryService = gw.services.delivery
        svc.sleep = fake_sleep
        store = gw.services.store
        (row,) = await store.write(ClaimIntent(svc.owner, 10, 30))
        before = time.time()
        assert await svc.deliver(row) == "deferred"
        # Waits of 0.1-0.2 and 0.2-0.3 s were held; the third (0.4-0.5 s) was not.
        assert len(fake.calls) == 3
        assert len(waits) == 2
        state, attempts, next_at, owner, error = outbox_rows(gw)[xid]
        assert (state, attempts, owner) == ("pending", 3, None)
        assert before + 0.4 <= next_at <= time.time() + 0.5 + 1e-6
        assert error.startswith("UNAVAILABLE: busy")
        assert 0.4 <= svc.observer.retry_delays[-1] <= 0.5 + 1e-9
        assert svc.observer.deferrals[("440300", "backoff")] == 1
        assert await store.write(ClaimIntent(svc.owner, 10, 30)) == []  # not due yet
        await asyncio.sleep(max(next_at - time.time(), 0) + 0.05)
        failing = False
        (again,) = await store.write(ClaimIntent(svc.owner, 10, 30))
        assert again.attempts == 3
        assert await svc.deliver(again) == "delivered"
        assert [c[1].attempt for c in fake.calls] == [1, 2, 3, 4]
        assert outbox_rows(gw)[xid][:2] == ("delivered", 4)
    finally:
        await gw.stop(grace=0)


async def test_an_open_circuit_defers_its_partners_rows_without_calling(tmp_path: Path) -> None:
    """When Shenzhen's circuit opens, its rows are refused without a call and wait in the
    outbox for the circuit's end: the claimed ones one by one, the others in one statement;
    claims leave Shenzhen's rows alone while it refuses, and Guangzhou's are claimed."""
    from adapters.transports import TransportError
    from gateway.services.delivery import DeliveryService
    from gateway.store.intents import ClaimIntent

    async def handler(kind: str, request: Any) -> None:
        raise TransportError("down", retryable=True, code="UNAVAILABLE")

    gw, fake = await fake_partner_gateway(
        tmp_path,
        handler,
        TONGBAN_DELIVERY__RETRY__HOLD_MAX_SECONDS="0",
        TONGBAN_DELIVERY__CIRCUIT__FAILURE_THRESHOLD="2",
        TONGBAN_DELIVERY__CIRCUIT__RESET_SECONDS="60",
        **GZ_INBOX,
    )
    try:
        svc: DeliveryService = gw.services.delivery
        store = gw.services.store
        ids = await submit_many(gw.address, 3, "open")
        claimed = await store.write(ClaimIntent(svc.owner, 3, 30))
        later = await submit_many(gw.address, 2, "wait")  # due, not claimed
        assert [await svc.deliver(r) for r in claimed] == ["deferred"] * 3
        await asyncio.gather(*svc._settling)  # the open circuit's bulk deferral
        breaker = svc.breakers["sz"]
        assert breaker.state == "open"
        assert len(fake.calls) == 2  # the third row was refused without a call
        rows = outbox_rows(gw)
        assert rows[ids[0]][1] == rows[ids[1]][1] == 1
        assert rows[ids[2]][:2] == ("pending", 0)
        # Every Shenzhen row waits for the circuit's end, the first one's shorter backoff and
        # the rows nobody had claimed included (those two in one statement).
        for xid in [*ids, *later]:
            assert rows[xid][0] == "pending"
            assert rows[xid][2] == breaker.open_until
        assert svc.observer.deferrals[("440300", "circuit_open")] >= 4
        (gz_case,) = await submit_many(gw.address, 1, "gz", city="440100")
        # Even if due, Shenzhen's rows are not claimed while its circuit refuses.
        with_skip = await store.write(ClaimIntent(svc.owner, 10, 30, ("sz",)))
        assert [r.exchange_id for r in with_skip] == [gz_case]
    finally:
        await gw.stop(grace=0)


async def test_aborted_answers_are_retried_without_opening_the_circuit(tmp_path: Path) -> None:
    """ABORTED (a peer gateway's OUT_OF_ORDER) means the partner is up and only this request
    must come again: retried, and not counted against the circuit, which UNAVAILABLE opens."""
    from adapters.transports import TransportError

    tries: dict[str, int] = {}

    async def handler(kind: str, request: Any) -> None:
        key = request.idempotency_key
        tries[key] = tries.get(key, 0) + 1
        if tries[key] <= 4:
            raise TransportError("later", retryable=True, code="ABORTED", retry_after=0.01)

    from gateway.services.delivery import DeliveryService
    from gateway.store.intents import ClaimIntent

    gw, fake = await fake_partner_gateway(
        tmp_path,
        handler,
        TONGBAN_DELIVERY__RETRY__INITIAL_BACKOFF_SECONDS="0.01",
        TONGBAN_DELIVERY__RETRY__MAX_BACKOFF_SECONDS="0.05",
        TONGBAN_DELIVERY__CIRCUIT__FAILURE_THRESHOLD="2",
        TONGBAN_DELIVERY__CIRCUIT__RESET_SECONDS="60",
    )
    try:
        svc: DeliveryService = gw.services.delivery
        ids = await submit_many(gw.address, 3, "aborted")
        claimed = await gw.services.store.write(ClaimIntent(svc.owner, 3, 30))
        assert [await svc.deliver(r) for r in claimed] == ["delivered"] * 3
        assert all(tries[x] == 5 for x in ids)
        assert len(fake.calls) == 15
        assert "open" not in [state for _, state in svc.breakers["sz"].transitions]
        assert svc.observer.attempts[("440300", "retryable")] == 12
    finally:
        await gw.stop(grace=0)


async def test_group_commit_shares_commits(
    tmp_path: Path, shenzhen: tuple[InboxSimulator, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.services import delivery

    monkeypatch.setattr(delivery, "HEARTBEAT_SECONDS", 3600.0)  # one heartbeat, at the start
    _, port = shenzhen
    gw, _ = await run_gateway(tmp_path, port, ROOT / "mappings", TONGBAN_DELIVERY__ENABLED="false")
    try:
        writer = gw.services.store.writer
        # The serving gateway's heartbeat (it delivers nothing) is committed before counting.
        await until(lambda: gw.services.store.reader.gateways() != [], 5)
        before_batches, before = writer.batches, writer.committed
        async with grpc.aio.insecure_channel(gw.address) as ch:
            stub = cx_grpc.CaseExchangeServiceStub(ch)
            await asyncio.gather(
                *[
                    stub.SubmitCase(
                        cx.SubmitCaseRequest(
                            request_id=f"g{i}",
                            target_city="440300",
                            foreign=common_pb2.ForeignRecord(
                                schema="zhongshan.case",
                                json=json.dumps(
                                    dict(ZS_CASE, SBLSH=f"442000-2026-g{i:04d}")
                                ).encode(),
                            ),
                        ),
                        metadata=ZS,
                    )
                    for i in range(100)
                ]
            )
        assert writer.committed - before == 100
        assert writer.batches - before_batches < 50  # many submissions per transaction
    finally:
        await gw.stop(grace=0)


async def test_claims_interleave_partners_and_sweep_rows_of_removed_ones(tmp_path: Path) -> None:
    """A claim takes Shenzhen's backlog and Guangzhou's new case in turn, not the backlog
    first; rows for a partner no longer configured, or with no inbox now, are swept up and
    dead-lettered (they can be replayed once the partner is back), instead of staying pending
    unseen."""
    import sqlite3

    from gateway.services.delivery import DeliveryService

    async def handler(kind: str, request: Any) -> None:
        return None

    gw, _ = await fake_partner_gateway(tmp_path, handler, **GZ_INBOX)
    try:
        svc: DeliveryService = gw.services.delivery
        # No sweep before the first heartbeat has said which partners other gateways know.
        await until(lambda: svc._known_elsewhere is not None, 5)
        backlog = await submit_many(gw.address, 6, "blog")
        (gz_case,) = await submit_many(gw.address, 1, "new", city="440100")
        with sqlite3.connect(gw.settings.store.data_dir / "tongban.db") as conn:
            for partner, xid in (("zs", backlog[4]), ("gone", backlog[5])):
                conn.execute(
                    "UPDATE outbox SET target_partner = ? WHERE exchange_id = ?", [partner, xid]
                )
        rows = await svc._claim(4)
        assert [r.exchange_id for r in rows] == [backlog[0], gz_case, backlog[1], backlog[2]]
        # The next claim has room left after the partners' rows: the sweep takes the strays.
        rest, *strays = await svc._claim(4)
        assert rest.exchange_id == backlog[3]
        assert [r.target_partner for r in strays] == ["zs", "gone"]
        assert svc._next_sweep > 0  # and not again for SWEEP_SECONDS
        assert [await svc.deliver(r) for r in strays] == ["dead", "dead"]
        rows_now = outbox_rows(gw)
        assert rows_now[backlog[4]][4] == "NO_TRANSPORT: partner zs has no inbox"
        assert rows_now[backlog[5]][4] == "NO_TRANSPORT: partner gone is not configured"
    finally:
        await gw.stop(grace=0)


class HeldInbox:
    """A partner inbox that answers only once ``release`` is set; counts its calls in progress
    (``in_call``) and the most it had at once (``most``)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.in_call = 0
        self.most = 0

    async def __call__(self, kind: str, request: Any) -> None:
        self.in_call += 1
        self.most = max(self.most, self.in_call)
        try:
            await self.release.wait()
        finally:
            self.in_call -= 1


async def up(kind: str, request: Any) -> None:
    """A partner inbox that accepts everything at once."""
    return


async def test_a_slow_partner_leaves_a_worker_to_the_others(tmp_path: Path) -> None:
    """Shenzhen's inbox answers, but slowly (here: not until released). With three workers and
    two partner inboxes it gets at most two calls at once, and a Guangzhou case submitted after
    Shenzhen's is delivered meanwhile; once Shenzhen answers, its cases are all delivered."""
    slow = HeldInbox()

    sz, gz = FakePartnerTransport(slow), FakePartnerTransport(up)
    gw = await two_city_gateway(tmp_path, sz, gz, TONGBAN_DELIVERY__WORKERS="3")
    try:
        svc = gw.services.delivery
        assert (svc.max_in_flight("sz"), svc.max_in_flight("gz")) == (2, 2)
        sz_cases = await submit_many(gw.address, 5, "slow")
        await until(lambda: slow.in_call == 2, 5)
        (gz_case,) = await submit_many(gw.address, 1, "fast", city="440100")
        await until(lambda: bool(gz.calls), 3)
        assert [c[1].idempotency_key for c in gz.calls] == [gz_case]
        assert slow.most == 2
        registry = gw.services.metrics.registry

        def calls_metric() -> float | None:
            return registry.get_sample_value("tongban_delivery_calls_in_flight", {"partner": "sz"})

        assert calls_metric() == 2
        slow.release.set()
        await until(lambda: len(sz.calls) == 5 and slow.in_call == 0, 10)
        await until(lambda: calls_metric() == 0, 5)
        assert sorted(c[1].idempotency_key for c in sz.calls) == sorted(sz_cases)
        assert slow.most == 2
        await until(lambda: all(r[0] == "delivered" for r in outbox_rows(gw).values()), 5)
    finally:
        slow.release.set()
        await gw.stop(grace=0)


def test_a_partner_s_max_in_flight_is_its_setting_or_all_workers_when_alone(
    tmp_path: Path,
) -> None:
    from gateway.services.delivery import DeliveryService

    def caps(**env: str) -> dict[str, int]:
        settings = make_settings(
            tmp_path,
            TONGBAN_DELIVERY__WORKERS="4",
            TONGBAN_PARTNERS__SZ__CITY="440300",
            TONGBAN_PARTNERS__SZ__INBOX__TRANSPORT="grpc",
            TONGBAN_PARTNERS__SZ__INBOX__TARGET="127.0.0.1:9",
            **env,
        )
        svc = DeliveryService(settings, None, None, {})  # type: ignore[arg-type]
        return {p: svc.max_in_flight(p) for p in settings.partners}

    assert caps() == {"sz": 4}  # the only inbox: every worker
    assert caps(TONGBAN_PARTNERS__ZS__CITY="442000") == {"sz": 4, "zs": 4}  # zs has no inbox
    two = {
        "TONGBAN_PARTNERS__GZ__CITY": "440100",
        "TONGBAN_PARTNERS__GZ__INBOX__TRANSPORT": "http",
        "TONGBAN_PARTNERS__GZ__INBOX__TARGET": "http://127.0.0.1:9",
    }
    assert caps(**two) == {"sz": 3, "gz": 3}
    assert caps(**two, TONGBAN_PARTNERS__SZ__MAX_IN_FLIGHT="1") == {"sz": 1, "gz": 3}


async def test_a_stopping_gateway_hands_back_the_rows_it_holds(tmp_path: Path) -> None:
    """Rows a stopping gateway holds and will not settle (one in a call cut short, the others
    waiting for a worker) are released at once, for another replica to claim, instead of
    staying leased for lease_seconds."""
    from gateway.store.intents import ClaimIntent

    release = asyncio.Event()

    async def hung(kind: str, request: Any) -> None:
        await release.wait()

    async def up(kind: str, request: Any) -> None:
        return None

    sz = FakePartnerTransport(hung)
    gw = await two_city_gateway(
        tmp_path, sz, FakePartnerTransport(up), TONGBAN_DELIVERY__WORKERS="1"
    )
    stopped = False
    try:
        ids = await submit_many(gw.address, 3, "held")
        # One in a call that does not end, two waiting for it.
        await until(lambda: all(r[3] is not None for r in outbox_rows(gw).values()), 5)
        assert len(sz.calls) == 1
        store = gw.services.store
        await gw.stop(grace=0)
        stopped = True
        rows = outbox_rows(gw)
        assert [rows[x][0] for x in ids] == ["pending"] * 3
        assert [rows[x][3] for x in ids] == [None] * 3
        # Another replica (a store of its own here) claims them at once.
        from gateway.store.store import Store

        other = Store(store.url)
        other.start()
        try:
            taken = await other.write(ClaimIntent("replica-2", 10, 30, (), ("sz",)))
            assert sorted(r.exchange_id for r in taken) == sorted(ids)
        finally:
            await other.stop()
    finally:
        release.set()
        if not stopped:
            await gw.stop(grace=0)


async def test_a_slow_partner_s_backlog_is_not_claimed_beyond_what_it_can_take(
    tmp_path: Path,
) -> None:
    """Twenty cases wait for a Shenzhen inbox that does not answer; claims take no more of them
    than Shenzhen's calls can use soon (4 x its max_in_flight held at once), so the process
    still has room to claim a Guangzhou case submitted after them."""
    release = asyncio.Event()

    async def hung(kind: str, request: Any) -> None:
        await release.wait()

    async def up(kind: str, request: Any) -> None:
        return None

    sz, gz = FakePartnerTransport(hung), FakePartnerTransport(up)
    # The backlog is there before delivery starts (as after an outage or a restart).
    gw = await two_city_gateway(tmp_path, sz, gz, TONGBAN_DELIVERY__ENABLED="false")
    await submit_many(gw.address, 20, "blog")
    await gw.stop(grace=0)
    gw = await two_city_gateway(tmp_path, sz, gz, TONGBAN_DELIVERY__WORKERS="2")
    try:
        svc = gw.services.delivery
        assert svc.max_in_flight("sz") == 1
        await until(lambda: len(sz.calls) == 1, 5)
        (gz_case,) = await submit_many(gw.address, 1, "fast", city="440100")
        await until(lambda: bool(gz.calls), 3)
        assert [c[1].idempotency_key for c in gz.calls] == [gz_case]
        held = [r for r in outbox_rows(gw).values() if r[3] is not None and r[0] == "pending"]
        assert len(held) <= 4  # Shenzhen's call and three rows waiting for it: 4 x 1
        release.set()
        await until(lambda: len(sz.calls) == 20, 10)
    finally:
        release.set()
        await gw.stop(grace=0)


async def test_a_row_refused_after_failing_keeps_its_error(tmp_path: Path) -> None:
    """A row that failed twice in place and then found its partner's circuit open is put back
    with the partner's error, which ``tongban outbox status`` and dead letters show."""
    from adapters.transports import TransportError
    from gateway.services.delivery import DeliveryService
    from gateway.store.intents import ClaimIntent

    async def handler(kind: str, request: Any) -> None:
        raise TransportError("down", retryable=True, code="UNAVAILABLE")

    async def no_sleep(seconds: float) -> None:
        return None

    gw, fake = await fake_partner_gateway(
        tmp_path,
        handler,
        TONGBAN_DELIVERY__RETRY__HOLD_MAX_SECONDS="60",
        TONGBAN_DELIVERY__CIRCUIT__FAILURE_THRESHOLD="2",
        TONGBAN_DELIVERY__CIRCUIT__RESET_SECONDS="60",
    )
    try:
        (xid,) = await submit_many(gw.address, 1, "kept")
        svc: DeliveryService = gw.services.delivery
        svc.sleep = no_sleep
        (row,) = await gw.services.store.write(ClaimIntent(svc.owner, 10, 30))
        assert await svc.deliver(row) == "deferred"
        assert len(fake.calls) == 2
        state, attempts, next_at, owner, error = outbox_rows(gw)[xid]
        assert (state, attempts, owner, error) == ("pending", 2, None, "UNAVAILABLE: down")
        assert next_at == svc.breakers["sz"].open_until
    finally:
        await gw.stop(grace=0)


@pytest.mark.postgres
async def test_replicas_share_a_partner_s_max_in_flight_total(
    tmp_path: Path, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two gateways on one PostgreSQL store, Shenzhen's inbox slow, its max_in_flight_total 2:
    each gateway makes one call to it at once (three each without the total), and when one
    gateway stops, the other takes the whole total."""
    from gateway.services import delivery
    from gateway.store.engine import make_engine, upgrade

    monkeypatch.setattr(delivery, "HEARTBEAT_SECONDS", 0.1)
    url = f"postgresql+psycopg://127.0.0.1:5432/test?options=-csearch_path%3D{pg_schema}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    slow = HeldInbox()

    env = {
        "TONGBAN_STORE__URL": url,
        "TONGBAN_DELIVERY__WORKERS": "4",
        "TONGBAN_PARTNERS__SZ__MAX_IN_FLIGHT_TOTAL": "2",
    }
    gws = [
        await two_city_gateway(
            tmp_path / name, FakePartnerTransport(slow), FakePartnerTransport(up), **env
        )
        for name in ("a", "b")
    ]
    try:
        svcs = [gw.services.delivery for gw in gws]
        await until(lambda: all(s.live_gateways == 2 for s in svcs), 5)
        assert [(s.max_in_flight("sz"), s.max_in_flight("gz")) for s in svcs] == [(1, 3)] * 2
        registry = gws[0].services.metrics.registry
        assert registry.get_sample_value("tongban_gateways_live") == 2
        await submit_many(gws[0].address, 6, "shared")
        await until(lambda: slow.in_call == 2, 5)
        await asyncio.sleep(0.5)  # no third call: each gateway holds its one
        assert slow.most == 2
        await gws.pop().stop(grace=0)  # it retires: the other's share becomes the total
        await until(lambda: svcs[0].live_gateways == 1, 5)
        assert svcs[0].max_in_flight("sz") == 2
        await until(lambda: slow.in_call == 2, 5)  # a row it held waits no more
        slow.release.set()
        store = gws[0].services.store

        def pending() -> int:
            with store.engine.connect() as conn:
                return int(
                    conn.execute(
                        text("SELECT count(*) FROM outbox WHERE state <> 'delivered'")
                    ).scalar_one()
                )

        await until(lambda: pending() == 0, 10)
        assert slow.most == 2
    finally:
        slow.release.set()
        for gw in gws:
            await gw.stop(grace=0)


@pytest.mark.postgres
async def test_a_serving_only_replica_s_cases_are_delivered_by_a_delivering_one(
    tmp_path: Path, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serving and delivering sized apart on one PostgreSQL store: cases submitted to a
    replica with ``delivery.enabled = false`` are delivered, once each, by the replica that
    delivers; only the latter shares Shenzhen's ``max_in_flight_total``."""
    from gateway.services import delivery
    from gateway.store.engine import make_engine, upgrade

    monkeypatch.setattr(delivery, "HEARTBEAT_SECONDS", 0.1)
    url = f"postgresql+psycopg://127.0.0.1:5432/test?options=-csearch_path%3D{pg_schema}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    env = {"TONGBAN_STORE__URL": url, "TONGBAN_PARTNERS__SZ__MAX_IN_FLIGHT_TOTAL": "2"}
    sz_a, sz_b = FakePartnerTransport(up), FakePartnerTransport(up)
    deliverer = await two_city_gateway(tmp_path / "a", sz_a, FakePartnerTransport(up), **env)
    server = await two_city_gateway(
        tmp_path / "b",
        sz_b,
        FakePartnerTransport(up),
        TONGBAN_DELIVERY__ENABLED="false",
        **env,
    )
    try:
        ids = await submit_many(server.address, 5, "apart")
        await until(lambda: len(sz_a.calls) == 5, 10)
        assert sorted(r.idempotency_key for _, r in sz_a.calls) == sorted(ids)
        assert sz_b.calls == []  # the serving replica called no partner
        # Both heartbeats are there; the delivering replica alone takes Shenzhen's total.
        gateways = deliverer.services.store.reader.gateways()
        assert sorted(g.delivers for g in gateways) == [False, True]
        svc = deliverer.services.delivery
        assert (svc.live_gateways, svc.max_in_flight("sz")) == (1, 2)
    finally:
        await server.stop(grace=0)
        await deliverer.stop(grace=0)


async def test_rows_of_a_partner_another_live_gateway_knows_are_not_swept_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A rolling change of the partners: a gateway already configured with Shenzhen accepts
    cases for it, and one that still runs the old partners (without Shenzhen) delivers from
    the same store. The old one leaves Shenzhen's rows alone while the other is live, instead
    of dead-lettering them as rows of a partner no longer configured; once no live gateway
    knows Shenzhen, they are swept up and dead-lettered (to be replayed)."""
    from gateway.services import delivery

    monkeypatch.setattr(delivery, "HEARTBEAT_SECONDS", 0.05)
    monkeypatch.setattr(delivery, "SWEEP_SECONDS", 0.05)
    caplog.set_level(logging.INFO, logger="tongban.delivery")
    store = {"TONGBAN_STORE__DATA_DIR": str(tmp_path / "shared")}  # one SQLite store
    new = await two_city_gateway(
        tmp_path / "new",
        FakePartnerTransport(up),
        FakePartnerTransport(up),
        TONGBAN_DELIVERY__ENABLED="false",
        **store,
    )
    settings = make_settings(
        tmp_path / "old",
        TONGBAN_AUTH__MODE="token",
        TONGBAN_DELIVERY__POLL_INTERVAL_SECONDS="0.05",
        TONGBAN_PARTNERS__ZS__CITY="442000",
        TONGBAN_PARTNERS__ZS__TOKEN="t-zs",
        **GZ_INBOX,
        **store,
    )
    gz = FakePartnerTransport(up)
    old = Gateway(settings, bootstrap(settings, transports={"gz": gz}))
    await old.start()
    stopped = False
    try:
        ids = await submit_many(new.address, 3, "rolling")
        (gz_case,) = await submit_many(new.address, 1, "gz", city="440100")
        await until(lambda: len(gz.calls) == 1, 5)  # the old one delivers what it knows
        assert gz.calls[0][1].idempotency_key == gz_case
        svc = old.services.delivery
        await until(lambda: svc._known_elsewhere == frozenset({"sz"}), 5)
        sweeps = svc._next_sweep
        await until(lambda: svc._next_sweep > sweeps + 0.2, 5)  # several sweeps since
        rows = outbox_rows(old)
        assert [rows[x][0] for x in ids] == ["pending"] * 3
        assert any(
            r.getMessage().startswith("partners other gateways know") and r.partners == ["sz"]
            for r in caplog.records
        )
        await new.stop(grace=0)
        stopped = True
        # No live gateway knows Shenzhen now: its rows are a removed partner's.
        await until(lambda: [outbox_rows(old)[x][0] for x in ids] == ["dead"] * 3, 10)
        assert outbox_rows(old)[ids[0]][4] == "NO_TRANSPORT: partner sz is not configured"
    finally:
        if not stopped:
            await new.stop(grace=0)
        await old.stop(grace=0)
