"""The audit chain switched to SM3 (``audit.hash_algorithm``) and back: an ``audit.hash`` entry
names the function of the entries after it, the head and the archives record which one
follows, and ``tongban audit verify``'s walk follows it: an entry edited after the switch, a
switch hidden or forged, a head or archive that names the wrong function, are all caught.
On SQLite and on PostgreSQL."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from gateway.app import Gateway
from gateway.audit import verify_store_chain
from gateway.errors import InvalidRequest
from gateway.settings import ConfigError
from gateway.store.audit_archive import ArchiveError, archive_audit, read_archive, verify_archives
from gateway.store.chain_hash import SWITCH_ACTION
from gateway.store.intents import ChainHashIntent
from gateway.store.store import Store
from gateway.store.writer import AUDIT, AUDIT_HEAD, AuditEntry, audit_hash

from .conftest import SteppingClock, append_audit_entries, make_settings, running_store


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    async with running_store(db_url, clock=SteppingClock()) as s:
        yield s


async def switch(store: Store, algorithm: str) -> Any:
    return await store.write(ChainHashIntent("ops", algorithm))


def rows(store: Store) -> list[Any]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(AUDIT).order_by(AUDIT.c.seq)).all())


def rehash(row: Any, algorithm: str, **changes: Any) -> str:
    """The hash an entry changed by ``changes`` would have, computed with ``algorithm``."""
    values = {**row._mapping, **changes}
    entry = AuditEntry(
        values["actor"], values["action"], values["subject"], values["outcome"], values["detail"]
    )
    return audit_hash(values["prev_hash"], values["seq"], values["ts"], entry, algorithm)


async def test_entries_after_a_switch_are_sm3_and_the_chain_verifies(store: Store) -> None:
    await append_audit_entries(store, 3)
    assert await switch(store, "sm3") == "sha256"
    assert await switch(store, "sm3") is None  # already: nothing written
    await append_audit_entries(store, 3)
    found = rows(store)
    assert [r.seq for r in found] == [1, 2, 3, 4, 5, 6, 7]
    marker = found[3]
    assert (marker.actor, marker.action, marker.subject, marker.outcome, marker.detail) == (
        "ops",
        SWITCH_ACTION,
        "sm3",
        "switched",
        "from sha256",
    )
    # The switch entry is hashed with the function before it, the entries after with SM3.
    for r in found[:4]:
        assert r.hash == rehash(r, "sha256")
    for r in found[4:]:
        assert r.hash == rehash(r, "sm3")
        assert r.hash != rehash(r, "sha256")
    assert store.reader.audit_hash_algorithms() == ("sha256", "sm3")
    report = verify_store_chain(store.reader)
    assert (report.ok, report.checked, report.algorithm, report.switched_at) == (True, 7, "sm3", 4)
    # And back to SHA-256, recorded the same way.
    assert await switch(store, "sha256") == "sm3"
    await append_audit_entries(store, 2)
    found = rows(store)
    assert (found[7].action, found[7].detail) == (SWITCH_ACTION, "from sm3")
    assert found[7].hash == rehash(found[7], "sm3")
    assert found[8].hash == rehash(found[8], "sha256")
    report = verify_store_chain(store.reader)
    assert (report.ok, report.checked, report.algorithm, report.switched_at) == (
        True,
        10,
        "sha256",
        8,
    )


async def test_a_switch_in_the_same_batch_as_other_entries_takes_effect_after_it(
    store: Store,
) -> None:
    from gateway.store.intents import AuditIntent

    entry = AuditEntry("zs", "case.read", "x1", "disclosed", "GetCase")
    results = await store.write_many(
        [AuditIntent([entry]), ChainHashIntent("ops", "sm3"), AuditIntent([entry, entry])]
    )
    assert results[1] == "sha256"
    found = rows(store)
    assert [r.action for r in found] == ["case.read", SWITCH_ACTION, "case.read", "case.read"]
    assert [r.hash == rehash(r, "sm3") for r in found] == [False, False, True, True]
    assert verify_store_chain(store.reader).ok


async def test_an_entry_edited_after_the_switch_is_caught_even_rehashed_with_sha256(
    store: Store,
) -> None:
    await switch(store, "sm3")
    await append_audit_entries(store, 4)
    target = rows(store)[2]
    with store.engine.begin() as conn:
        conn.execute(update(AUDIT).where(AUDIT.c.seq == 3).values(actor="someone else"))
    report = verify_store_chain(store.reader)
    assert (report.ok, report.broken_seq, report.reason) == (
        False,
        3,
        "content does not match its hash",
    )
    # Rewritten with a SHA-256 hash (a forger without SM3, or hoping the walk takes any):
    # still wrong, the chain says SM3 from entry 2 on.
    with store.engine.begin() as conn:
        conn.execute(
            update(AUDIT)
            .where(AUDIT.c.seq == 3)
            .values(hash=rehash(target, "sha256", actor="someone else"))
        )
    report = verify_store_chain(store.reader)
    assert (report.ok, report.broken_seq) == (False, 3)


async def test_a_hidden_or_forged_switch_is_caught(store: Store) -> None:
    await append_audit_entries(store, 2)
    await switch(store, "sm3")
    await append_audit_entries(store, 2)
    marker = rows(store)[2]
    # The switch entry turned into another kind of entry (its hash recomputed): the entries
    # after it no longer verify, they are SM3 and the walk now expects SHA-256.
    with store.engine.begin() as conn:
        conn.execute(
            update(AUDIT)
            .where(AUDIT.c.seq == 3)
            .values(action="delivery.replay", hash=rehash(marker, "sha256", action="x"))
        )
    report = verify_store_chain(store.reader)
    assert (report.ok, report.broken_seq) == (False, 3)
    # A switch to a function this gateway does not know, hashed as it would be.
    with store.engine.begin() as conn:
        conn.execute(
            update(AUDIT)
            .where(AUDIT.c.seq == 3)
            .values(
                action=SWITCH_ACTION, subject="md5", hash=rehash(marker, "sha256", subject="md5")
            )
        )
    report = verify_store_chain(store.reader)
    assert (report.ok, report.broken_seq) == (False, 3)
    assert "hash function this gateway lacks: 'md5'" in report.reason


async def test_a_head_that_names_another_function_is_caught(store: Store) -> None:
    await switch(store, "sm3")
    await append_audit_entries(store, 2)
    with store.engine.begin() as conn:
        conn.execute(update(AUDIT_HEAD).values(hash_algorithm="sha256"))
    report = verify_store_chain(store.reader)
    assert not report.ok
    assert report.reason == (
        "the head records the hash function sha256, the entries switched to sm3 at entry 1"
    )


async def test_archives_across_a_switch_verify_and_record_the_function_that_follows(
    store: Store, tmp_path: Path
) -> None:
    await append_audit_entries(store, 5, one_by_one=True)
    await switch(store, "sm3")
    await append_audit_entries(store, 5, one_by_one=True)
    directory = tmp_path / "a"
    cut = store.clock() + 1
    files = await archive_audit(store, directory, cut, 4, "ops")
    # 1-4 SHA-256; 5-8 holds the switch (entry 6); 9-11 SM3.
    assert [(f.first, f.last, f.algorithm, f.next_algorithm) for f in files] == [
        (1, 4, "sha256", "sha256"),
        (5, 8, "sha256", "sm3"),
        (9, 11, "sm3", "sm3"),
    ]
    with gzip.open(files[2].path, "rt", encoding="utf-8") as f:
        assert json.loads(f.readline())["hash"] == "sm3"
    assert store.reader.audit_hash_algorithms() == ("sm3", "sm3")
    report = verify_store_chain(store.reader)  # the store's chain starts after 11, in SM3
    assert report.ok
    assert report.checked == 3  # the entries recording the three files
    sums = {r.file: r.sha256 for r in store.reader.audit_archives()}
    archived = store.reader.audit_archived()
    checked = verify_archives(directory, archived, sums, archived_algorithm="sm3")
    assert (checked.ok, checked.files, checked.entries) == (True, 3, 11)
    # The store's chain said to go on in SHA-256 (its record edited): the files disagree.
    checked = verify_archives(directory, archived, sums, archived_algorithm="sha256")
    assert not checked.ok
    assert checked.problem == (
        "the files end hashed with sm3, the store's chain goes on with sha256"
    )
    # A file's header naming SHA-256 for SM3 entries does not read.
    path = files[2].path
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    header = json.loads(lines[0])
    header["hash"] = "sha256"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    with pytest.raises(ArchiveError, match="entry 9: content does not match its hash"):
        read_archive(path)
    header["hash"] = "md5"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    with pytest.raises(ArchiveError, match="unknown hash function 'md5'"):
        read_archive(path)


async def test_an_unknown_function_is_refused(store: Store) -> None:
    with pytest.raises(InvalidRequest, match="unknown hash function 'md5'"):
        await switch(store, "md5")
    assert rows(store) == []
    assert store.reader.audit_hash_algorithms() == ("sha256", "sha256")


async def test_a_gateway_switches_its_chain_to_the_setting_before_it_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def serve_once(algorithm: str) -> Store:
        gw = Gateway(
            make_settings(
                tmp_path,
                TONGBAN_AUDIT__HASH_ALGORITHM=algorithm,
                TONGBAN_DELIVERY__ENABLED="false",
            )
        )
        await gw.start()
        try:
            await append_audit_entries(gw.services.store, 2)  # the writer process hashes them
        finally:
            await gw.stop(grace=0)
        return gw.services.store

    with caplog.at_level(logging.INFO, logger="tongban"):
        store = await serve_once("sm3")
    switched = [r for r in caplog.records if r.getMessage().startswith("audit chain switched")]
    assert [(r.__dict__["from"], r.__dict__["to"]) for r in switched] == [("sha256", "sm3")]
    found = rows(store)
    assert [(r.action, r.subject) for r in found][:1] == [(SWITCH_ACTION, "sm3")]
    assert all(r.hash == rehash(r, "sm3") for r in found[1:])
    store.dispose()
    caplog.clear()
    store = await serve_once("sm3")  # started again: nothing to switch
    assert not [r for r in caplog.records if r.getMessage().startswith("audit chain switched")]
    assert [r.action for r in rows(store)].count(SWITCH_ACTION) == 1
    report = verify_store_chain(store.reader)
    assert (report.ok, report.checked, report.algorithm, report.switched_at) == (True, 5, "sm3", 1)
    store.dispose()


def test_the_setting_takes_the_two_functions_only(tmp_path: Path) -> None:
    assert make_settings(tmp_path, TONGBAN_AUDIT__HASH_ALGORITHM="sm3").audit.hash_algorithm == (
        "sm3"
    )
    with pytest.raises(ConfigError, match="hash_algorithm"):
        make_settings(tmp_path, TONGBAN_AUDIT__HASH_ALGORITHM="md5")
