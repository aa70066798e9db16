"""Archiving the audit chain: entries older than a cut-off move to files, the store keeps the
rest, and both stay verifiable; any change to a file, a missing or reordered file, or a second
archive racing the first is caught. On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.audit import verify_store_chain
from gateway.services.retention import DAY, RetentionService
from gateway.settings import ConfigError, RetentionSettings, load_settings
from gateway.store.audit_archive import (
    ArchiveError,
    ArchiveIntent,
    ArchiveRaced,
    archive_audit,
    read_archive,
    verify_archives,
)
from gateway.store.store import Store
from gateway.store.writer import AUDIT, GENESIS

from .conftest import SteppingClock, append_audit_entries, running_store


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    async with running_store(db_url, clock=SteppingClock()) as s:
        yield s


async def append(store: Store, n: int) -> None:
    await append_audit_entries(store, n, one_by_one=True)


def verify_store(store: Store) -> tuple[bool, int]:
    report = verify_store_chain(store.reader)
    return report.ok, report.checked


def recorded(store: Store) -> dict[str, str]:
    return {r.file: r.sha256 for r in store.reader.audit_archives()}


def ts_of(store: Store, seq: int) -> float:
    with store.engine.connect() as conn:
        return float(conn.execute(select(AUDIT.c.ts).where(AUDIT.c.seq == seq)).scalar_one())


async def test_entries_before_the_cut_move_to_files_and_everything_still_verifies(
    store: Store, tmp_path: Path
) -> None:
    await append(store, 25)
    # Entries made before entry 24's time: 1-23, in files of at most 10.
    files = await archive_audit(store, tmp_path / "a", ts_of(store, 24), 10, "ops")
    assert [(f.first, f.last) for f in files] == [(1, 10), (11, 20), (21, 23)]
    assert [f.path.name for f in files] == [
        "audit-000000000001.jsonl.gz",
        "audit-000000000011.jsonl.gz",
        "audit-000000000021.jsonl.gz",
    ]
    with store.engine.connect() as conn:
        low, high = conn.execute(select(func.min(AUDIT.c.seq), func.max(AUDIT.c.seq))).one()
    # 24 and 25 stay; each file recorded is an entry of its own (26-28).
    assert (low, high) == (24, 28)
    assert store.reader.audit_archived() == (23, files[-1].last_hash)
    assert verify_store(store) == (True, 5)
    report = verify_archives(tmp_path / "a", store.reader.audit_archived(), recorded(store))
    assert (report.ok, report.files, report.entries) == (True, 3, 23)
    with store.engine.connect() as conn:
        details = conn.execute(
            select(AUDIT.c.subject, AUDIT.c.detail).where(AUDIT.c.action == "audit.archive")
        ).all()
    assert details[0] == ("audit-000000000001.jsonl.gz", f"entries 1-10, sha256 {files[0].sha256}")
    # Nothing older than the cut is left: a second run archives nothing.
    assert await archive_audit(store, tmp_path / "a", ts_of(store, 24), 10, "ops") == []
    # Later, everything up to now, the archive's own entries included, into the same directory.
    more = await archive_audit(store, tmp_path / "a", store.clock() + 1, 10, "ops")
    assert [(f.first, f.last) for f in more] == [(24, 28)]
    assert verify_store(store) == (True, 1)  # the entry recording that file
    report = verify_archives(tmp_path / "a", store.reader.audit_archived(), recorded(store))
    assert (report.ok, report.files, report.entries) == (True, 4, 28)
    # Each file holds every column of its entries, readable without the gateway.
    with gzip.open(files[0].path, "rt", encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    assert lines[0] == {
        "format": "tongban-audit-archive/1",
        "first": 1,
        "prev_hash": GENESIS,
        "hash": "sha256",
    }
    assert (lines[1]["seq"], lines[1]["action"]) == (1, "delivery.replay")
    assert lines[-1] == {"last": 10, "last_hash": files[0].last_hash, "entries": 10}


async def test_a_changed_missing_or_cut_file_is_caught(store: Store, tmp_path: Path) -> None:
    await append(store, 12)
    files = await archive_audit(store, tmp_path / "a", ts_of(store, 12), 4, "ops")
    assert len(files) == 3
    archived, sums = store.reader.audit_archived(), recorded(store)
    middle = files[1].path
    original = middle.read_bytes()

    def rewrite(edit: Callable[[list[str]], list[str]]) -> None:
        with gzip.open(io.BytesIO(original), "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
        lines = edit(lines)
        with gzip.open(middle, "wt", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    def edited(lines: list[str]) -> list[str]:
        entry = json.loads(lines[2])
        entry["actor"] = "someone else"
        return [lines[0], lines[1], json.dumps(entry), *lines[3:]]

    rewrite(edited)
    report = verify_archives(tmp_path / "a", archived, sums)
    assert not report.ok
    assert report.problem == "audit-000000000005.jsonl.gz: entry 6: content does not match its hash"
    with pytest.raises(ArchiveError, match="entry 6: content does not match"):
        read_archive(middle)
    rewrite(lambda lines: lines[:-1])  # the trailer gone: cut short
    assert verify_archives(tmp_path / "a", archived, sums).problem == (
        "audit-000000000005.jsonl.gz: cut short (no trailer after entry 8)"
    )
    rewrite(lambda lines: lines)  # the same entries, other bytes (gzip's header): not the file
    assert (
        "its SHA-256 is not the one the store recorded"
        in verify_archives(tmp_path / "a", archived, sums).problem
    )
    middle.write_bytes(original)
    assert verify_archives(tmp_path / "a", archived, sums).ok
    middle.unlink()
    assert verify_archives(tmp_path / "a", archived, sums).problem == "entries 5..8 have no file"
    middle.write_bytes(original)
    # A copy of the first file under the second's name (the second's own name taken away).
    middle.rename(tmp_path / "second.gz")
    middle.write_bytes(files[0].path.read_bytes())
    assert verify_archives(tmp_path / "a", archived, sums).problem == (
        "audit-000000000005.jsonl.gz: overlaps the file before it"
    )
    (tmp_path / "second.gz").replace(middle)
    files[2].path.rename(tmp_path / "elsewhere.gz")  # the last file gone
    assert verify_archives(tmp_path / "a", archived, sums).problem == (
        "the files end at entry 8, the store's chain starts after entry 11"
    )


async def test_a_second_archive_racing_the_first_changes_nothing(
    store: Store, tmp_path: Path
) -> None:
    await append(store, 6)
    [first] = await archive_audit(store, tmp_path / "a", ts_of(store, 4), 10, "ops")
    assert (first.first, first.last) == (1, 3)
    # Another archiver read the chain before the first recorded its file: entries 1-5.
    with store.engine.connect() as conn:
        h5 = conn.execute(select(AUDIT.c.hash).where(AUDIT.c.seq == 5)).scalar_one()
    late = ArchiveIntent("ops", 1, 5, h5, "audit-000000000001.jsonl.gz", "0" * 64)
    assert await store.write(late) is False
    # Starting after the first, but naming an entry that is not the one it archived.
    wrong = ArchiveIntent("ops", 4, 5, "f" * 64, "audit-000000000004.jsonl.gz", "0" * 64)
    assert await store.write(wrong) is False
    with store.engine.connect() as conn:
        assert conn.execute(select(func.min(AUDIT.c.seq))).scalar_one() == 4
    assert store.reader.audit_archived() == (3, first.last_hash)
    assert verify_store(store)[0]


async def test_a_broken_chain_is_not_archived(store: Store, tmp_path: Path) -> None:
    await append(store, 5)
    with store.engine.begin() as conn:
        conn.execute(AUDIT.update().where(AUDIT.c.seq == 3).values(detail="edited"))
    with pytest.raises(ArchiveError, match="entry 3: content does not match its hash"):
        await archive_audit(store, tmp_path / "a", ts_of(store, 5), 2, "ops")
    # Entries 1-2 were archived (their file checked out); nothing from 3 on moved.
    assert store.reader.audit_archived()[0] == 2
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["audit-000000000001.jsonl.gz"]
    with store.engine.connect() as conn:
        assert conn.execute(select(func.min(AUDIT.c.seq))).scalar_one() == 3


async def test_a_serving_gateway_archives_with_its_purge(store: Store, tmp_path: Path) -> None:
    await append(store, 6)
    counted: list[tuple[str, int]] = []
    retention = RetentionSettings(
        audit_days=3 / DAY, audit_archive_dir=tmp_path / "a", audit_entries_per_file=2
    )
    svc = RetentionService(retention, store, on_purged=lambda t, n: counted.append((t, n)))
    assert svc.enabled
    # The clock reads 1 s on: entries made more than 3 s before that, 1-3, move.
    files = await svc.archive()
    assert [(f.first, f.last) for f in files] == [(1, 2), (3, 3)]
    assert counted == [("audit", 3)]
    assert store.reader.audit_archived() == (3, files[-1].last_hash)
    report = verify_archives(tmp_path / "a", store.reader.audit_archived(), recorded(store))
    assert report.ok
    with store.engine.connect() as conn:
        actors = conn.execute(
            select(AUDIT.c.actor).where(AUDIT.c.action == "audit.archive")
        ).scalars()
        assert set(actors) == {"gateway"}
    # Without audit_days, nothing is archived.
    assert await RetentionService(RetentionSettings(), store).archive() == []


def test_audit_days_need_an_archive_directory() -> None:
    with pytest.raises(ConfigError, match="'audit_days' needs 'audit_archive_dir'"):
        load_settings(None, env={"TONGBAN_RETENTION__AUDIT_DAYS": "365"})
    settings = load_settings(
        None,
        env={"TONGBAN_RETENTION__AUDIT_DAYS": "365", "TONGBAN_RETENTION__AUDIT_ARCHIVE_DIR": "a"},
    )
    assert settings.retention.audit_archive_dir == Path("a")


def archiving_often(directory: Path) -> RetentionSettings:
    """A serving gateway's retention that only archives, every 50 ms, what is 1 s old."""
    return RetentionSettings(
        request_days=0,
        delivered_days=0,
        audit_days=1 / DAY,
        audit_archive_dir=directory,
        interval_seconds=0.05,
    )


async def test_a_failing_archive_is_counted_and_a_raced_one_is_not(
    store: Store, tmp_path: Path
) -> None:
    await append(store, 3)
    (tmp_path / "taken").write_text("a file where the directory should be")
    failed: list[int] = []
    settings = archiving_often(tmp_path / "taken")
    svc = RetentionService(settings, store, on_archive_failed=lambda: failed.append(1))
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    async with asyncio.timeout(10):
        while len(failed) < 2:  # tried again at the next turn, and failing again
            await asyncio.sleep(0.01)
    # Another replica archives into a shared directory first: skipped, not a failure.
    raced = 0

    async def lose(*args: object, **kwargs: object) -> list[object]:
        nonlocal raced
        raced += 1
        raise ArchiveRaced("another archive of this store ran meanwhile")

    failures = len(failed)
    svc.archive = lose  # type: ignore[method-assign]
    async with asyncio.timeout(10):
        while raced < 2:
            await asyncio.sleep(0.01)
    stop.set()
    await task
    assert len(failed) == failures


async def test_the_serving_gateways_turn_archives_and_logs_it(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await append(store, 4)
    settings = archiving_often(tmp_path / "a")
    counted: list[tuple[str, int]] = []
    svc = RetentionService(settings, store, on_purged=lambda t, n: counted.append((t, n)))
    stop = asyncio.Event()
    with caplog.at_level(logging.INFO, logger="tongban.retention"):
        task = asyncio.create_task(svc.run(stop))
        async with asyncio.timeout(10):
            while not counted:
                await asyncio.sleep(0.01)
        stop.set()
        await task
    upto = store.reader.audit_archived()[0]
    assert upto >= 3
    assert counted[0][0] == "audit"
    report = verify_archives(tmp_path / "a", store.reader.audit_archived(), recorded(store))
    assert report.ok
    assert verify_store(store)[0]
    archived = [r for r in caplog.records if r.getMessage() == "audit entries archived"]
    assert archived
    assert archived[0].files[0] == "audit-000000000001.jsonl.gz"  # type: ignore[attr-defined]
