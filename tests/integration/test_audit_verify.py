"""Verifying the audit chain of a store that a gateway is writing to: the walk stops at the head
read first, a page at a time, and still finds a broken link."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import update

from gateway.audit import verify_chain
from gateway.store.store import Store
from gateway.store.writer import AUDIT

from .conftest import append_audit_entries, running_store


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    async with running_store(db_url) as s:
        yield s


async def append(store: Store, n: int) -> None:
    await append_audit_entries(store, n)


async def test_a_chain_verifies_while_entries_are_appended(store: Store) -> None:
    await append(store, 7)
    length, head = store.reader.audit_head()
    assert length == 7
    await append(store, 5)  # a running gateway goes on writing after the head was read
    report = verify_chain(store.reader.audit_rows(length, page=2), length, head)
    assert (report.ok, report.checked) == (True, 7)
    length, head = store.reader.audit_head()
    assert verify_chain(store.reader.audit_rows(length, page=3), length, head).ok
    with store.engine.begin() as conn:
        conn.execute(update(AUDIT).where(AUDIT.c.seq == 9).values(detail="edited"))
    report = verify_chain(store.reader.audit_rows(length, page=2), length, head)
    assert (report.ok, report.broken_seq, report.checked) == (False, 9, 8)
