"""The store's writer process: typed errors across the pipe, a dead child, a clean stop."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.app import bootstrap
from gateway.errors import BackendUnavailable, GatewayError, IllegalTransition, RequestIdReused
from gateway.services.cases import report_response
from gateway.store.intents import (
    ClaimedRow,
    ClaimIntent,
    DeferPartnerIntent,
    DeliveredIntent,
    ExtendLeaseIntent,
    FailedIntent,
    ReleaseIntent,
    ReplayIntent,
    ReportStatusIntent,
    SubmitCaseIntent,
)
from gateway.store.writer_process import WriterProcess
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import common_pb2

from .conftest import ROOT, WRITER_PROCESS_ENV, make_settings

CASE = json.loads((ROOT / "mappings/zhongshan/samples/case/01-case.json").read_text("utf-8"))
ENV = WRITER_PROCESS_ENV


def _request(i: int, number: str | None = None) -> cx.SubmitCaseRequest:
    return cx.SubmitCaseRequest(
        request_id=f"wp-{i}",
        target_city="440300",
        foreign=common_pb2.ForeignRecord(
            schema="zhongshan.case",
            json=json.dumps(dict(CASE, SBLSH=number or f"442000-2026-w{i:05d}")).encode(),
        ),
    )


def test_gateway_errors_survive_pickling() -> None:
    for exc in (
        RequestIdReused("request_id was already used", "request_id"),
        IllegalTransition("CASE_STATUS_SUBMITTED", "CASE_STATUS_COMPLETED"),
        BackendUnavailable("down", 2.5),
    ):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc)
        assert isinstance(back, GatewayError)
        assert (back.message, back.field, back.args) == (exc.message, exc.field, exc.args)
        assert back.__dict__ == exc.__dict__


async def test_writes_go_through_the_child_and_errors_come_back_typed(tmp_path: Path) -> None:
    services = bootstrap(make_settings(tmp_path, **ENV))
    store = services.store
    assert store.writer_process is not None
    caller = services.auth.identify([("authorization", "Bearer t")])
    assert caller is not None
    store.start()
    try:
        first = await services.cases.submit(caller, _request(1))
        child = store.writer_process.pid
        assert child is not None
        assert child != os.getpid()
        # The same request id with another body: refused in the child, typed here.
        with pytest.raises(RequestIdReused) as err:
            await services.cases.submit(caller, _request(1, number="442000-2026-other"))
        assert err.value.field == "request_id"
        # A retry with the same body gets the first answer back.
        again = await services.cases.submit(caller, _request(1))
        assert again.exchange_id == first.exchange_id
        row = await store.read(store.reader.case, first.exchange_id)
        assert row is not None
        assert row.case_number == "442000-2026-w00001"
    finally:
        await store.stop()
    # Stopping the store stops the child.
    assert store.writer_process.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


async def test_a_killed_child_fails_its_batch_and_the_next_write_starts_a_new_one(
    tmp_path: Path,
) -> None:
    services = bootstrap(make_settings(tmp_path, **ENV))
    store = services.store
    wp = store.writer_process
    assert wp is not None
    caller = services.auth.identify([("authorization", "Bearer t")])
    assert caller is not None
    store.start()
    try:
        await services.cases.submit(caller, _request(1))
        old = wp.pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        await asyncio.sleep(0.2)
        # The child died between batches: the next write starts a new one and succeeds.
        answer = await services.cases.submit(caller, _request(2))
        assert answer.exchange_id
        assert wp.restarts == 1
        assert wp.pid not in (None, old)

        # The child dies during a batch: its callers get UNAVAILABLE, nothing half-written,
        # and the retry (same request id) is accepted exactly once.
        real = WriterProcess.run

        async def die_mid_batch(self: WriterProcess, intents: list[Any], now: float) -> Any:
            assert self.pid is not None
            os.kill(self.pid, signal.SIGKILL)
            return await real(self, intents, now)

        wp.run = die_mid_batch.__get__(wp)  # type: ignore[method-assign]
        store.writer.executor = wp.run
        with pytest.raises(BackendUnavailable):
            await services.cases.submit(caller, _request(3))
        wp.run = real.__get__(wp)  # type: ignore[method-assign]
        store.writer.executor = wp.run
        retried = await services.cases.submit(caller, _request(3))
        replay = await services.cases.submit(caller, _request(3))
        assert replay.exchange_id == retried.exchange_id
        rows = await store.read(store.reader.cases, ["442000"], before_seq=None, limit=10)
        assert sorted(r.case_number for r in rows) == [
            "442000-2026-w00001",
            "442000-2026-w00002",
            "442000-2026-w00003",
        ]
    finally:
        await store.stop()


def test_every_intent_pickles_to_an_equal_intent() -> None:
    row = ClaimedRow(7, "e" * 32, "case", None, "sz", "440300", 2)
    intents = [
        SubmitCaseIntent(
            "zs", "r1", "h" * 64, "e" * 32, "442000", "440300", "N-1", "{}", "zs@1", "sz", b"\x01"
        ),
        ReportStatusIntent(
            "sz",
            "440300",
            "r2",
            "h",
            "e" * 32,
            "CASE_STATUS_ACCEPTED",
            1.5,
            "note",
            None,
            ("zs", "442000"),
            report_response,
        ),
        ClaimIntent("worker-1", 32, 30.0),
        ClaimIntent("worker-1", 32, 30.0, ("sz", "gz")),
        DeferPartnerIntent("sz", 99.0),
        ReleaseIntent("worker-1", [7, 8]),
        ExtendLeaseIntent(7, "worker-1", 99.0, 3),
        DeliveredIntent(row, "worker-1", 3, ("zs", "442000")),
        FailedIntent(row, "worker-1", 3, "UNAVAILABLE", dead=False, next_attempt_at=12.0),
        ReplayIntent("ops", [1, 2]),
    ]
    for intent in intents:
        back = pickle.loads(pickle.dumps(intent, protocol=pickle.HIGHEST_PROTOCOL))
        assert type(back) is type(intent)
        assert back == intent


async def test_a_batch_cancelled_in_flight_does_not_leave_its_reply_to_the_next(
    tmp_path: Path,
) -> None:
    services = bootstrap(make_settings(tmp_path, **ENV))
    wp = services.store.writer_process
    assert wp is not None
    caller = services.auth.identify([("authorization", "Bearer t")])
    assert caller is not None
    first = services.cases.prepare(caller, _request(1))
    second = services.cases.prepare(caller, _request(2))
    wp.start()
    # Hold the database's write lock so that the child is stuck in the first batch.
    lock = sqlite3.connect(tmp_path / "data" / "tongban.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        task = asyncio.create_task(wp.run([first], 1.0))
        await asyncio.sleep(0.5)  # the batch is with the child, waiting for the lock
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        lock.execute("ROLLBACK")
        # The next batch gets its own answer, not the cancelled one's.
        [(stored, replayed)] = await wp.run([second], 2.0)
        assert replayed is False
        assert stored == second.response
    finally:
        lock.close()
        await wp.close()
