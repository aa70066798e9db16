"""The outbox statements that keep one partner's outage away from the others, on SQLite and on
PostgreSQL: claims partner by partner, interleaved, that leave a refusing partner's rows alone;
the bulk deferral when its circuit opens; putting a row back (only by the worker that holds
it)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import insert, select

from gateway.store.intents import ClaimIntent, DeferPartnerIntent, FailedIntent
from gateway.store.store import Store
from gateway.store.writer import OUTBOX

from .conftest import running_store

NOW = 1_000.0


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    clock = [NOW]
    async with running_store(db_url, clock=lambda: clock[0]) as s:
        yield s


def add(store: Store, partner: str, due: float, **values: Any) -> int:
    """One pending case row for ``partner``, due at ``due``; returns its id."""
    row = {
        "exchange_id": uuid.uuid4().hex,
        "kind": "case",
        "target_partner": partner,
        "target_city": {"sz": "440300", "gz": "440100"}[partner],
        "state": "pending",
        "attempts": 0,
        "next_attempt_at": due,
        "lease_until": 0.0,
        "last_error": "",
        "created_at": 0.0,
        "replays": 0,
    }
    with store.engine.begin() as conn:
        stmt = insert(OUTBOX).values({**row, **values}).returning(OUTBOX.c.id)
        return int(conn.execute(stmt).scalar_one())


def due_times(store: Store) -> dict[int, float]:
    with store.engine.begin() as conn:
        rows = conn.execute(select(OUTBOX.c.id, OUTBOX.c.next_attempt_at)).all()
    return {r.id: r.next_attempt_at for r in rows}


async def test_a_claim_leaves_the_skipped_partners_rows_in_the_outbox(store: Store) -> None:
    sz = [add(store, "sz", NOW - 10 + i) for i in range(3)]
    gz = add(store, "gz", NOW - 1)
    claimed = await store.write(ClaimIntent("w1", 10, 30, ("sz",)))
    assert [r.id for r in claimed] == [gz]
    claimed = await store.write(ClaimIntent("w1", 10, 30))
    assert [r.id for r in claimed] == sz


async def test_a_claim_by_partner_interleaves_their_due_rows(store: Store) -> None:
    """Shenzhen's backlog is older than Guangzhou's rows; claimed partner by partner, the two
    alternate instead of Shenzhen's backlog coming first."""
    sz = [add(store, "sz", NOW - 100 + i) for i in range(5)]
    gz = [add(store, "gz", NOW - 10 + i) for i in range(2)]
    add(store, "gz", NOW + 10)  # not due
    claimed = await store.write(ClaimIntent("w1", 5, 30, (), ("sz", "gz")))
    assert [r.id for r in claimed] == [sz[0], gz[0], sz[1], gz[1], sz[2]]
    # The partners' circuits: a skipped one's rows stay; rows of other partners are not taken.
    add(store, "gz", NOW - 1)
    stray = add(store, "gz", NOW - 1000, target_partner="old")
    claimed = await store.write(ClaimIntent("w1", 5, 30, ("sz",), ("sz", "gz")))
    assert len(claimed) == 1
    assert claimed[0].target_partner == "gz"
    # Without partners, the oldest due rows whoever their partner: the sweep for strays.
    claimed = await store.write(ClaimIntent("w1", 5, 30, ("sz", "gz")))
    assert [r.id for r in claimed] == [stray]
    claimed = await store.write(ClaimIntent("w1", 5, 30))
    assert [r.id for r in claimed] == sz[3:]


async def test_an_open_circuit_defers_the_partners_due_rows_nobody_holds(store: Store) -> None:
    due = add(store, "sz", NOW - 5)
    soon = add(store, "sz", NOW + 5)
    later = add(store, "sz", NOW + 120)  # already due after the circuit's end: unchanged
    held = add(store, "sz", NOW - 5, lease_owner="w2", lease_until=NOW + 20)
    other = add(store, "gz", NOW - 5)
    assert await store.write(DeferPartnerIntent("sz", NOW + 60)) == 2
    assert due_times(store) == {
        due: NOW + 60,
        soon: NOW + 60,
        later: NOW + 120,
        held: NOW - 5,  # its worker refuses it itself
        other: NOW - 5,
    }


def outbox_row(store: Store) -> tuple[Any, ...]:
    with store.engine.begin() as conn:
        return tuple(
            conn.execute(
                select(
                    OUTBOX.c.state,
                    OUTBOX.c.attempts,
                    OUTBOX.c.next_attempt_at,
                    OUTBOX.c.lease_owner,
                    OUTBOX.c.last_error,
                )
            ).one()
        )


async def test_only_the_lease_holder_puts_a_row_back(store: Store) -> None:
    add(store, "sz", NOW - 5)
    (row,) = await store.write(ClaimIntent("w1", 10, 30))
    for dead in (False, True):  # another worker's word does not settle it
        assert not await store.write(FailedIntent(row, "w2", 1, "E: x", dead=dead))
    assert outbox_row(store) == ("pending", 0, NOW - 5, "w1", "")
    assert await store.write(
        FailedIntent(row, "w1", 1, "UNAVAILABLE: down", dead=False, next_attempt_at=NOW - 1)
    )
    assert outbox_row(store) == ("pending", 1, NOW - 1, None, "UNAVAILABLE: down")
    # Refused by an open circuit: put back without an error of its own, the last one is kept.
    (row,) = await store.write(ClaimIntent("w1", 10, 30))
    assert await store.write(FailedIntent(row, "w1", 1, "", dead=False, next_attempt_at=NOW + 9))
    assert outbox_row(store) == ("pending", 1, NOW + 9, None, "UNAVAILABLE: down")
    assert await store.write(ClaimIntent("w1", 10, 30)) == []  # not due yet


async def test_the_backlog_by_partner(store: Store) -> None:
    """What ``tongban outbox status`` reads, on both stores."""
    add(store, "sz", NOW + 30, attempts=4, last_error="UNAVAILABLE: down", created_at=1.0)
    add(store, "sz", NOW + 10)
    add(store, "sz", NOW - 1, lease_owner="w1", lease_until=NOW + 20)
    add(store, "gz", NOW - 1)
    add(store, "gz", NOW - 1, state="delivered")
    gz, sz = store.reader.backlog(NOW)
    assert (gz.partner, gz.pending, gz.due, gz.waiting, gz.held) == ("gz", 1, 1, 0, 0)
    assert gz.next_attempt_at is None
    assert (sz.partner, sz.pending, sz.due, sz.waiting, sz.held) == ("sz", 3, 0, 2, 1)
    assert sz.next_attempt_at == NOW + 10
    assert (sz.oldest_created_at, sz.oldest_attempts, sz.last_error) == (
        1.0,
        4,
        "UNAVAILABLE: down",
    )
