"""An online backup of the embedded SQLite store, taken while gateways write to it.

Copying ``tongban.db`` with ``cp`` while a gateway runs is not a backup: the last commits live
in ``tongban.db-wal`` until a checkpoint, and a copy taken mid-checkpoint is torn. SQLite's
backup API copies the database as of one moment instead: the copy runs in one step, inside one
read transaction, so it is a snapshot of committed transactions only, and in WAL mode the
gateways keep committing meanwhile (their writes go to the WAL; only its checkpoint waits for
the copy). The copy is checked before it is kept: ``PRAGMA integrity_check`` and the audit
chain; it is then turned into a single file (rollback journal, no ``-wal``), flushed to disk
and renamed into place, so a backup file that exists is complete. It is readable by its owner
only (mode 0600): it holds the cases' personal data.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine

from ..audit import sort_checkpoints, verify_store_chain
from .checkpoints import stored_checkpoints
from .reads import StoreReader

if TYPE_CHECKING:
    from ..audit_signing import PublicKey

__all__ = ["BackupError", "BackupReport", "backup_sqlite"]


class BackupError(Exception):
    """The backup could not be taken, or its copy failed a check (nothing is left behind)."""


@dataclass(frozen=True)
class BackupReport:
    """What was copied, and what the copy holds."""

    path: Path
    bytes: int
    seconds: float
    cases: int
    pending: int  # outbox rows still to deliver
    dead_letters: int
    audit_entries: int
    checkpoints: int = 0  # signed checkpoints of the copy's chain that hold, under the keys given


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup_sqlite(
    db: Path,
    dest: Path,
    *,
    replace: bool = False,
    keys: Mapping[str, PublicKey] | None = None,
) -> BackupReport:
    """Copy the store ``db`` to ``dest`` as of now; raise :class:`BackupError` if it cannot.
    With ``keys``, the copy's chain is checked against its signed checkpoints too."""
    if not db.is_file():
        raise BackupError(f"{db}: no store there")
    if dest.is_dir():
        raise BackupError(f"{dest} is a folder: name the backup file")
    if dest.exists() and not replace:
        raise BackupError(f"{dest} exists (use --force to replace it)")
    if dest.resolve() == db.resolve():
        raise BackupError(f"{dest} is the store itself")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot write {dest}: {exc.strerror}") from None
    partial = dest.with_name(f".{dest.name}.partial")
    partial.unlink(missing_ok=True)
    started = time.monotonic()
    try:
        source = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            copy = sqlite3.connect(partial)
            try:
                source.backup(copy)  # one step: one read transaction, one snapshot
            finally:
                copy.close()
        finally:
            source.close()
        report = _check(partial, dest, time.monotonic() - started, keys or {})
        copy = sqlite3.connect(partial)
        try:
            copy.execute("PRAGMA journal_mode=DELETE")  # one file: no -wal to carry along
        finally:
            copy.close()
        partial.chmod(0o600)  # the cases' personal data: the owner's only, whatever the umask
        _fsync(partial)
        os.replace(partial, dest)
        _fsync(dest.parent)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy {db} to {dest}: {exc}") from None
    except OSError as exc:
        raise BackupError(f"cannot write {dest}: {exc.strerror}") from None
    finally:
        for leftover in (partial, partial.with_name(partial.name + "-wal")):
            leftover.unlink(missing_ok=True)
        partial.with_name(partial.name + "-shm").unlink(missing_ok=True)
    return dataclasses.replace(report, bytes=dest.stat().st_size)


def _check(copy: Path, dest: Path, seconds: float, keys: Mapping[str, PublicKey]) -> BackupReport:
    """The copy's integrity and audit chain (against the checkpoints that hold under
    ``keys``), and what it holds."""
    conn = sqlite3.connect(copy)
    try:
        problems = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise BackupError(f"the copy fails PRAGMA integrity_check: {'; '.join(problems[:5])}")
        (cases,) = conn.execute("SELECT COUNT(*) FROM cases").fetchone()
        counts = dict(
            conn.execute(
                "SELECT state, COUNT(*) FROM outbox WHERE state IN ('pending', 'dead') "
                "GROUP BY state"
            ).fetchall()
        )
    finally:
        conn.close()
    engine = create_engine(f"sqlite:///{copy}")
    try:
        reader = StoreReader(engine)
        signed = sort_checkpoints(stored_checkpoints(engine), keys) if keys else None
        chain = verify_store_chain(reader, signed.trusted if signed else None)
    finally:
        engine.dispose()
    if not chain.ok:
        raise BackupError(
            f"the copy's audit chain is broken at entry {chain.broken_seq}: {chain.reason}"
        )
    if signed is not None and signed.problems:
        raise BackupError(f"the copy's {signed.problems[0]}")
    return BackupReport(
        dest,
        0,
        seconds,
        cases,
        counts.get("pending", 0),
        counts.get("dead", 0),
        chain.checked,
        len(signed.trusted) if signed else 0,
    )
