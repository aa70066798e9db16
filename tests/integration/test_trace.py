"""A case's outbox rows and audit entries, found without an index by exchange (StoreReader.trail):
from the first row made since its submission, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, insert

from gateway.store.engine import upgrade
from gateway.store.reads import StoreReader
from gateway.store.writer import AUDIT, OUTBOX

DAY = 86400.0
NOW = 400 * DAY


@pytest.fixture
def reader(db_engine: Engine) -> StoreReader:
    upgrade(db_engine)
    return StoreReader(db_engine)


def add(reader: StoreReader, xid: str, age_days: float, seq: int) -> None:
    at = NOW - age_days * DAY
    with reader.engine.begin() as conn:
        conn.execute(
            insert(OUTBOX).values(
                exchange_id=xid,
                kind="case",
                target_partner="sz",
                target_city="440300",
                state="delivered",
                attempts=1,
                next_attempt_at=at,
                lease_until=0.0,
                last_error="",
                created_at=at,
                delivered_at=at,
                replays=0,
            )
        )
        conn.execute(
            insert(AUDIT).values(
                seq=seq,
                ts=at,
                actor="zs",
                action="case.submit",
                subject=xid,
                detail="",
                outcome="accepted",
                prev_hash="0" * 64,
                hash="0" * 64,
            )
        )


def test_the_trail_of_a_case_is_found_among_older_and_newer_rows(reader: StoreReader) -> None:
    seq = 0
    for age in range(100, 80, -1):
        seq += 1
        add(reader, f"old{age}", age, seq)
    seq += 1
    add(reader, "target", 80, seq)
    for age in range(79, 11, -1):
        seq += 1
        add(reader, f"new{age}", age, seq)
    seq += 1
    add(reader, "target", 10, seq)  # a status delivered 70 days later
    rows, entries = reader.trail("target", NOW - 80 * DAY)
    assert [r.created_at for r in rows] == [NOW - 80 * DAY, NOW - 10 * DAY]
    assert [e.seq for e in entries] == [21, seq]
    assert reader.trail("nobody", NOW - 80 * DAY) == ([], [])
