"""Audit archives: the oldest entries of the hash chain moved out of the store into files.

The audit log is append-only and would grow for ever; like X-Road's message log archiver,
``tongban audit archive`` moves entries older than a cut-off into gzip files of JSON lines and
deletes them from the store, in chain order, without breaking the chain's evidence:

* a file holds entries ``first``..``last``: a header line (format, ``first``, the hash before
  it, the hash function of its first entry: ``sha256`` when a file of an earlier gateway names
  none), one line per entry (every column), and a trailer line (``last``, its hash, the
  count). A file cut short has no trailer and fails to read;
* it is written next to its final name, flushed to disk, checked by reading it back, and only
  then renamed (the directory flushed too). Only then is the store told (:class:`ArchiveIntent`):
  in one transaction the entries are deleted and a row of ``audit_archives`` records the file,
  its last entry's hash and its SHA-256, and a new audit entry says so;
* the store's chain now starts after the archived entries, from the last one's hash: ``tongban
  audit verify`` checks it from there, and with ``--archives DIR`` checks every file too, each
  linked to the one before it from the chain's start, the last one to where the store's chain
  begins, and each file's SHA-256 against the store's record. A file edited, dropped, reordered
  or replaced breaks one of these links.

Files are named by their first entry (``audit-000000000001.jsonl.gz``): an archive interrupted
after writing its file and before the store recorded it writes the same name again next time.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, text

from ..audit import Signed, check_link
from .chain_hash import HASH_ALGORITHMS
from .reads import time_bound
from .writer import AUDIT, AUDIT_ARCHIVES, AUDIT_HEAD, GENESIS, AuditEntry, Batch, Intent

if TYPE_CHECKING:
    from .store import Store

__all__ = [
    "FORMAT",
    "ArchiveError",
    "ArchiveFile",
    "ArchiveIntent",
    "ArchiveRaced",
    "ArchivesReport",
    "archivable_through",
    "archive_audit",
    "archive_name",
    "read_archive",
    "verify_archives",
    "write_archive",
]

#: The first line's ``format``.
FORMAT = "tongban-audit-archive/1"

_COLUMNS = ("seq", "ts", "actor", "action", "subject", "detail", "outcome", "prev_hash", "hash")
_NAME = re.compile(r"^audit-(\d{12})\.jsonl\.gz$")


class ArchiveError(Exception):
    """An archive file that cannot be written or does not check out."""


class ArchiveRaced(ArchiveError):
    """Another archive of the same store moved the chain while this one wrote its file."""


@dataclass(frozen=True, slots=True)
class ArchiveFile:
    """One archive file: entries ``first``..``last``, the hash before the first, the last's
    hash, and the file's SHA-256; the hash function of its first entry (``algorithm``) and of
    the entry after its last (``next_algorithm``: the chain may switch inside a file)."""

    path: Path
    first: int
    last: int
    prev_hash: str
    last_hash: str
    sha256: str
    algorithm: str = "sha256"
    next_algorithm: str = "sha256"

    @property
    def entries(self) -> int:
        return self.last - self.first + 1


def archive_name(first: int) -> str:
    """The file name of the archive starting at entry ``first``."""
    return f"audit-{first:012d}.jsonl.gz"


def _check(
    row: Any, seq: int, prev: str, algorithm: str, signed: Signed | None = None
) -> tuple[str, str]:
    """The entry's hash and the hash function of the entry after it, after checking it
    follows ``prev`` as entry ``seq`` hashed with ``algorithm`` (and ends the chain a
    checkpoint in ``signed`` covers); raises ArchiveError naming what is wrong."""
    problem, following = check_link(row, seq, prev, algorithm, signed)
    if problem:
        raise ArchiveError(f"entry {seq}: {problem}")
    return str(row.hash), following


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_archive(
    rows: Iterable[Any], first: int, prev_hash: str, directory: Path, algorithm: str = "sha256"
) -> ArchiveFile:
    """Write ``rows`` (entries ``first``.., in chain order, following ``prev_hash``, the first
    hashed with ``algorithm``) to an archive file in ``directory``, checking each link on the
    way; read it back before it takes its name. Raises ArchiveError if the rows do not chain,
    or there are none."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / archive_name(first)
    partial = final.with_name(final.name + ".partial")
    seq, prev, following = first, prev_hash, algorithm
    try:
        with partial.open("wb") as raw:
            # mtime 0: the same entries give the same bytes (and SHA-256) when written again
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:
                header = {
                    "format": FORMAT,
                    "first": first,
                    "prev_hash": prev_hash,
                    "hash": algorithm,
                }
                out.write(json.dumps(header).encode() + b"\n")
                for row in rows:
                    try:
                        prev, following = _check(row, seq, prev, following)
                    except ArchiveError as exc:
                        raise ArchiveError(f"the store's audit chain is broken: {exc}") from None
                    line = {c: getattr(row, c) for c in _COLUMNS}
                    out.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
                    seq += 1
                if seq == first:
                    raise ArchiveError(f"no entries from {first} to archive")
                trailer = {"last": seq - 1, "last_hash": prev, "entries": seq - first}
                out.write(json.dumps(trailer).encode() + b"\n")
            raw.flush()
            os.fsync(raw.fileno())
        written = read_archive(partial)
        if (written.first, written.last, written.last_hash, written.next_algorithm) != (
            first,
            seq - 1,
            prev,
            following,
        ):
            raise ArchiveError(f"{partial}: reads back as another range")  # pragma: no cover
        partial.replace(final)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        partial.unlink(missing_ok=True)
    return ArchiveFile(final, first, seq - 1, prev_hash, prev, written.sha256, algorithm, following)


class _Row:
    """An entry as read from a file (the columns as attributes)."""

    __slots__ = _COLUMNS

    def __init__(self, values: dict[str, Any]) -> None:
        for c in _COLUMNS:
            setattr(self, c, values[c])


def read_archive(path: Path, signed: Signed | None = None) -> ArchiveFile:
    """Read and check one archive file: its header, every entry's link and hash (and the
    hashes of the signed checkpoints ``signed``), its trailer. Raises ArchiveError naming the
    file and the first problem."""
    try:
        with gzip.open(path, "rb") as f:
            lines = iter(f)
            header = json.loads(next(lines, b"null"))
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise ArchiveError(f"{path.name}: not a {FORMAT} file")
            first, prev = int(header["first"]), str(header["prev_hash"])
            algorithm = str(header.get("hash", "sha256"))
            if algorithm not in HASH_ALGORITHMS:
                raise ArchiveError(f"{path.name}: unknown hash function {algorithm!r}")
            seq, trailer, following = first, None, algorithm
            for raw in lines:
                line = json.loads(raw)
                if "last" in line:
                    trailer = line
                    break
                try:
                    prev, following = _check(_Row(line), seq, prev, following, signed)
                except ArchiveError as exc:
                    raise ArchiveError(f"{path.name}: {exc}") from None
                seq += 1
            if trailer is None:
                raise ArchiveError(f"{path.name}: cut short (no trailer after entry {seq - 1})")
            if next(lines, None) is not None:
                raise ArchiveError(f"{path.name}: lines after the trailer")
            if (trailer["last"], trailer["last_hash"], trailer["entries"]) != (
                seq - 1,
                prev,
                seq - first,
            ):
                raise ArchiveError(f"{path.name}: the trailer does not match the entries")
    except ArchiveError:
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise ArchiveError(f"{path.name}: unreadable ({type(exc).__name__}: {exc})") from exc
    return ArchiveFile(
        path, first, seq - 1, str(header["prev_hash"]), prev, _sha256(path), algorithm, following
    )


@dataclass(frozen=True, slots=True)
class ArchivesReport:
    """Outcome of checking a directory of archives against the store."""

    ok: bool
    files: int
    entries: int
    problem: str = ""
    ignored: tuple[str, ...] = ()  # files past the store's archived point (not recorded)


def verify_archives(
    directory: Path,
    archived: tuple[int, str],
    recorded: dict[str, str],
    signed: Signed | None = None,
    archived_algorithm: str = "sha256",
) -> ArchivesReport:
    """Check every archive file in ``directory``: each one on its own (:func:`read_archive`,
    with the checkpoints ``signed``), linked to the one before it from the chain's start (hash
    and hash function), the last ending where the store's chain begins (``archived``: its
    last archived entry and hash; ``archived_algorithm``: the function of the entry after
    it), and each file's SHA-256 equal to the one the store recorded (``recorded``: file
    name -> SHA-256)."""
    upto, upto_hash = archived
    found = sorted(p for p in directory.glob("audit-*.jsonl.gz") if _NAME.match(p.name))
    expected, prev, files, ignored = 1, GENESIS, 0, []
    algorithm = "sha256"  # the chain's first entry's
    try:
        for path in found:
            if int(_NAME.match(path.name).group(1)) > upto:  # type: ignore[union-attr]
                ignored.append(path.name)
                continue
            a = read_archive(path, signed)
            if a.first < expected:
                raise ArchiveError(f"{path.name}: overlaps the file before it")
            if a.first > expected:
                raise ArchiveError(f"entries {expected}..{a.first - 1} have no file")
            if a.prev_hash != prev:
                raise ArchiveError(f"{path.name}: does not follow the file before it")
            if a.algorithm != algorithm:
                raise ArchiveError(
                    f"{path.name}: starts hashed with {a.algorithm}, the chain before it "
                    f"with {algorithm}"
                )
            if recorded.get(path.name) != a.sha256:
                raise ArchiveError(f"{path.name}: its SHA-256 is not the one the store recorded")
            expected, prev, files = a.last + 1, a.last_hash, files + 1
            algorithm = a.next_algorithm
        if expected - 1 != upto or prev != upto_hash:
            raise ArchiveError(
                f"the files end at entry {expected - 1}, the store's chain starts after entry "
                f"{upto}"
            )
        if algorithm != archived_algorithm:
            raise ArchiveError(
                f"the files end hashed with {algorithm}, the store's chain goes on with "
                f"{archived_algorithm}"
            )
    except ArchiveError as exc:
        return ArchivesReport(False, files, expected - 1, str(exc))
    return ArchivesReport(True, files, upto, ignored=tuple(ignored))


@dataclass
class ArchiveIntent(Intent):
    """Delete entries ``first``..``last`` of the audit chain, now in the archive file ``file``,
    and record it; returns False, changing nothing, if the store's chain does not start at
    ``first`` (another archive ran meanwhile) or entry ``last`` is not the one archived."""

    actor: str
    first: int
    last: int
    last_hash: str
    file: str
    sha256: str
    next_algorithm: str = "sha256"  # the hash function of entry ``last + 1``

    def run(self, batch: Batch) -> bool:
        conn = batch.conn
        lock = " FOR UPDATE" if batch.is_postgres else ""  # one archive at a time
        conn.execute(text(f"SELECT length FROM {AUDIT_HEAD.name} WHERE id = 1{lock}"))  # noqa: S608
        done = conn.execute(text(f"SELECT MAX(last_seq) FROM {AUDIT_ARCHIVES.name}")).scalar()  # noqa: S608
        if (done or 0) != self.first - 1:
            return False
        last = conn.execute(
            text(f"SELECT hash FROM {AUDIT.name} WHERE seq = :s"),  # noqa: S608
            {"s": self.last},
        ).scalar()
        if last != self.last_hash:
            return False
        conn.execute(
            text(f"DELETE FROM {AUDIT.name} WHERE seq >= :a AND seq <= :b"),  # noqa: S608
            {"a": self.first, "b": self.last},
        )
        conn.execute(
            AUDIT_ARCHIVES.insert().values(
                last_seq=self.last,
                first_seq=self.first,
                last_hash=self.last_hash,
                file=self.file,
                sha256=self.sha256,
                archived_at=batch.now,
                hash_algorithm=self.next_algorithm,
            )
        )
        detail = f"entries {self.first}-{self.last}, sha256 {self.sha256}"
        batch.audit.append(AuditEntry(self.actor, "audit.archive", self.file, "archived", detail))
        return True


def archivable_through(engine: Engine, cut: float) -> int:
    """The last entry made before ``cut`` (0: none): an archive up to ``cut`` moves the
    entries after the store's archived point up to this one."""
    with engine.connect() as conn:
        return time_bound(conn, AUDIT.name, "seq", "ts", cut)


async def archive_audit(
    store: Store,
    directory: Path,
    cut: float,
    per_file: int,
    actor: str,
    *,
    share: float = 1.0,
    stop: asyncio.Event | None = None,
) -> list[ArchiveFile]:
    """Move every audit entry made before ``cut`` into archive files of at most ``per_file``
    entries in ``directory``, oldest first, a file and its transaction at a time.

    ``share`` < 1 paces it as retention's purge is paced: after each file it waits until the
    file's time is ``share`` of the time since it began. It ends between two files once
    ``stop`` is set.

    Raises ArchiveError if the store's chain does not check out over what is archived, or if
    another archive of the same store ran meanwhile (its file is then left for it).
    """
    done: list[ArchiveFile] = []
    bound = await store.read(archivable_through, store.read_engine, cut)
    while True:
        after, after_hash = await store.read(store.reader.audit_archived)
        if bound <= after or (stop is not None and stop.is_set()):
            return done
        started = time.monotonic()
        last = min(bound, after + per_file)
        rows = store.reader.audit_rows(last, after=after)
        algorithm = (await store.read(store.reader.audit_hash_algorithms))[0]
        written = await store.read(write_archive, rows, after + 1, after_hash, directory, algorithm)
        recorded = await store.write(
            ArchiveIntent(
                actor,
                written.first,
                written.last,
                written.last_hash,
                written.path.name,
                written.sha256,
                written.next_algorithm,
            )
        )
        if not recorded:
            raise ArchiveRaced(
                f"another archive of this store ran meanwhile: {written.path.name} was not "
                "recorded; run it again"
            )
        done.append(written)
        if share < 1.0:
            await asyncio.sleep((time.monotonic() - started) * (1.0 / share - 1.0))
