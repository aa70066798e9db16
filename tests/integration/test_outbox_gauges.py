"""The outbox gauges: what they count, and that counting reads no table rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, update

from gateway.app import next_gauge_refresh
from gateway.store.writer import OUTBOX, run_intents
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import common_pb2

from .test_store_writer import CASE, _services


def _submit(services: Any, caller: Any, n: int, at: float) -> str:
    """Case ``n`` submitted at ``at``; its exchange id."""
    request = cx.SubmitCaseRequest(
        request_id=f"gauge-{n}",
        target_city="440300",
        foreign=common_pb2.ForeignRecord(
            schema="zhongshan.case",
            json=json.dumps(dict(CASE, SBLSH=f"442000-2026-g{n:05d}")).encode(),
        ),
    )
    intent = services.cases.prepare(caller, request)
    [(_, replayed)] = run_intents(services.store.engine, [intent], at)
    assert replayed is False
    return str(intent.exchange_id)


async def test_pending_oldest_and_dead_follow_the_rows_states(tmp_path: Path) -> None:
    services, caller = _services(tmp_path)
    engine, reader = services.store.engine, services.store.reader
    assert reader.outbox_stats(5.0) == {"pending": 0.0, "oldest_age": 0.0, "dead": 0.0}
    ids = [_submit(services, caller, n, at) for n, at in enumerate((10.0, 20.0, 30.0, 40.0))]

    def set_row(exchange_id: str, **values: Any) -> None:
        with engine.begin() as conn:
            conn.execute(update(OUTBOX).where(OUTBOX.c.exchange_id == exchange_id).values(**values))

    set_row(ids[0], state="delivered", delivered_at=11.0)
    set_row(ids[1], attempts=3, next_attempt_at=1000.0)  # retried: due long after the others
    set_row(ids[2], state="dead", dead_at=31.0)
    # The oldest pending case is the retried one, by when it was accepted, not when it is due.
    assert reader.outbox_stats(100.0) == {"pending": 2.0, "oldest_age": 80.0, "dead": 1.0}
    set_row(ids[2], state="pending", replays=1)  # a dead letter replayed keeps its age
    set_row(ids[1], state="delivered", delivered_at=101.0)
    assert reader.outbox_stats(100.0) == {"pending": 2.0, "oldest_age": 70.0, "dead": 0.0}
    set_row(ids[2], state="delivered", delivered_at=102.0)
    set_row(ids[3], state="delivered", delivered_at=103.0)
    assert reader.outbox_stats(100.0) == {"pending": 0.0, "oldest_age": 0.0, "dead": 0.0}
    # A clock stepped back does not give a negative age.
    _submit(services, caller, 9, 200.0)
    assert reader.outbox_stats(150.0)["oldest_age"] == 0.0
    engine.dispose()


async def test_the_gauges_read_indexes_not_the_outbox_table(tmp_path: Path) -> None:
    """A backlog of millions is counted every few seconds: the counts scan only the claim index
    (SQLite's plan: a covering index), and the oldest row is read by its primary key."""
    services, caller = _services(tmp_path)
    engine, reader = services.store.engine, services.store.reader
    _submit(services, caller, 1, 10.0)
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    event.listen(reader.engine, "before_cursor_execute", seen)
    try:
        assert reader.outbox_stats(20.0)["pending"] == 1.0
    finally:
        event.remove(reader.engine, "before_cursor_execute", seen)
    reads_outbox = [(s, p) for s, p in statements if "outbox" in s]
    assert len(reads_outbox) == 3, statements
    with engine.connect() as conn:
        plans = [
            [row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {s}", p).all()]
            for s, p in reads_outbox
        ]
    for plan in plans:
        assert not [step for step in plan if step.startswith("SCAN")], plans
    counts = [plan for (s, _), plan in zip(reads_outbox, plans, strict=True) if "count(" in s]
    assert len(counts) == 2
    for plan in counts:
        assert any("COVERING INDEX ix_outbox_partner_due" in step for step in plan), plans
    engine.dispose()


@pytest.mark.parametrize(
    ("took", "waits"),
    [(0.0, 1.0), (0.002, 1.0), (0.01, 1.0), (0.02, 2.0), (0.05, 5.0), (0.5, 50.0)],
)
def test_slow_gauge_refreshes_come_less_often(took: float, waits: float) -> None:
    """At most one part in a hundred of the time goes to refreshing the gauges."""
    assert next_gauge_refresh(100.0, 100.0 + took, 1.0) == pytest.approx(100.0 + waits)
