"""Read queries (SQLAlchemy Core), run in worker threads by the services."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    Connection,
    Engine,
    and_,
    bindparam,
    func,
    inspect,
    literal,
    or_,
    select,
    text,
)

from .sealing import CANONICAL, NOTE, PREFIX, Keyring, SealError, key_id_of, open_value
from .writer import AUDIT, AUDIT_ARCHIVES, AUDIT_HEAD, CASES, EVENTS, GATEWAYS, GENESIS, OUTBOX

__all__ = [
    "AuditRecord",
    "CaseRecord",
    "EventRecord",
    "GatewaySeen",
    "OutboxRecord",
    "PartnerBacklog",
    "StoreReader",
    "time_bound",
]


@dataclass(frozen=True, slots=True)
class CaseRecord:
    """A case row."""

    seq: int
    exchange_id: str
    submitter: str
    receiving_city: str
    handling_city: str
    case_number: str
    status: str
    delivery_state: str
    canonical: str
    mapping_versions: str
    submitted_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A status event row."""

    seq: int
    exchange_id: str
    status: str
    occurred_at: float
    reported_by: str
    note: str
    late: bool  # recorded after a newer change from the same city: history only


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """An outbox row (a dead letter when ``state`` is dead)."""

    id: int
    exchange_id: str
    kind: str
    event_seq: int | None
    target_partner: str
    target_city: str
    state: str
    attempts: int
    next_attempt_at: float
    last_error: str
    created_at: float
    delivered_at: float | None
    dead_at: float | None
    replays: int


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """An audit entry (who did what to which subject)."""

    seq: int
    ts: float
    actor: str
    action: str
    subject: str
    detail: str
    outcome: str


@dataclass(frozen=True, slots=True)
class PartnerBacklog:
    """What waits in the outbox for one partner (``tongban outbox status``)."""

    partner: str
    pending: int  # rows not yet delivered nor dead
    due: int  # of them, due now and held by no process
    waiting: int  # due later: backing off, or behind an open circuit
    held: int  # leased by a gateway process now (queued there or in a call)
    next_attempt_at: float | None  # the earliest of the waiting rows' next attempts
    oldest_created_at: float | None  # the oldest pending row's, and its attempts and error
    oldest_attempts: int
    last_error: str


@dataclass(frozen=True, slots=True)
class GatewaySeen:
    """A gateway process's heartbeat in the store (``tongban outbox status``, ``tongban
    gateways``; the live ones, as each heartbeat finds them)."""

    owner: str  # its outbox lease owner
    host: str
    pid: int
    started_at: float
    seen_at: float
    settings: str  # JSON (gateway.services.replicas); "" from a gateway before 0011
    delivers: bool  # it runs delivery workers; true from a gateway before 0012

    @classmethod
    def from_row(cls, row: Any) -> GatewaySeen:
        """From a row of these columns in this order (``delivers`` as the database gives it)."""
        owner, host, pid, started_at, seen_at, settings, delivers = row
        return cls(owner, host, pid, started_at, seen_at, settings, bool(delivers))


_CASE_COLS = [CASES.c[n] for n in CaseRecord.__slots__]
_EVENT_COLS = [EVENTS.c[n] for n in EventRecord.__slots__]
_OUTBOX_COLS = [OUTBOX.c[n] for n in OutboxRecord.__slots__]
_AUDIT_COLS = [AUDIT.c[n] for n in AuditRecord.__slots__]
# Built once: building a statement per call cost a GetCase more than running it.
_CASE_BY_ID = select(*_CASE_COLS).where(CASES.c.exchange_id == bindparam("x"))
_HISTORY = select(*_EVENT_COLS).where(EVENTS.c.exchange_id == bindparam("x")).order_by(EVENTS.c.seq)
#: The history in a store not yet at 0010 (``tongban cases trace`` does not migrate): no
#: event there was recorded late.
_HISTORY_BEFORE_0010 = _HISTORY.with_only_columns(
    *(literal(False, Boolean).label("late") if c.name == "late" else c for c in _EVENT_COLS)
)
_EVENT_BY_SEQ = select(*_EVENT_COLS).where(EVENTS.c.seq == bindparam("seq"))
_CASES_BY_IDS = select(*_CASE_COLS).where(CASES.c.exchange_id.in_(bindparam("ids", expanding=True)))
_EVENTS_BY_SEQS = select(*_EVENT_COLS).where(EVENTS.c.seq.in_(bindparam("seqs", expanding=True)))


def time_bound(conn: Connection, table: str, key: str, made: str, cut: float) -> int:
    """The largest ``key`` of a row made before ``cut``, by binary search (0: none).

    Rows are made in key order; where a few are not (replicas' clocks), the bound is a little
    early and those rows wait for a later purge: it never reaches a row made after ``cut``."""
    lo, hi = conn.execute(text(f"SELECT MIN({key}), MAX({key}) FROM {table}")).one()  # noqa: S608
    if lo is None:
        return 0
    first_from = text(
        f"SELECT {key}, {made} FROM {table} WHERE {key} >= :k ORDER BY {key} LIMIT 1"  # noqa: S608
    )
    best = 0
    while lo <= hi:
        mid = (lo + hi) // 2
        row = conn.execute(first_from, {"k": mid}).first()
        if row is not None and row[1] < cut:
            best, lo = row[0], row[0] + 1
        else:
            hi = mid - 1
    return int(best)


class StoreReader:
    """Read-only queries. With ``keyring``, sealed personal data is opened as it is read
    (:mod:`.sealing`); a value the keyring cannot open raises :class:`SealError`."""

    def __init__(self, engine: Engine, keyring: Keyring | None = None) -> None:
        self.engine = engine
        self.keyring = keyring

    def _case(self, row: Any, *, open_record: bool = True) -> CaseRecord:
        case = CaseRecord(*row)
        if open_record and case.canonical.startswith(PREFIX):
            opened = open_value(self.keyring, case.canonical, CANONICAL, case.exchange_id)
            case = dataclasses.replace(case, canonical=opened)
        return case

    def _event(self, row: Any, *, lenient: bool = False) -> EventRecord:
        event = EventRecord(*row)
        if event.note.startswith(PREFIX):
            try:
                opened = open_value(self.keyring, event.note, NOTE, event.exchange_id)
            except SealError:
                if not lenient:
                    raise
                opened = f"[sealed with key {key_id_of(event.note)}]"
            event = dataclasses.replace(event, note=opened)
        return event

    def ping(self) -> None:
        """Raise if the store is unreachable."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def case(self, exchange_id: str, *, open_record: bool = True) -> CaseRecord | None:
        """One case by exchange id (without ``open_record``, its record as stored: sealed or
        not, for a reader that does not use it)."""
        with self.engine.connect() as conn:
            row = conn.execute(_CASE_BY_ID, {"x": exchange_id}).first()
        return self._case(row, open_record=open_record) if row else None

    def cases(
        self,
        cities: list[str],
        *,
        before_seq: int | None,
        limit: int,
        status: str = "",
        receiving_city: str = "",
        handling_city: str = "",
        delivery_state: str = "",
    ) -> list[CaseRecord]:
        """Cases received or handled by one of ``cities``, newest first, keyset on seq.

        One query per side, each walking its ``(city, seq)`` index backwards for at most
        ``limit`` rows, merged here: an ``OR`` of the two would make the database collect and
        sort every matching row (O(n) per page instead of O(log n + page)).
        """
        common: list[Any] = []
        if before_seq is not None:
            common.append(CASES.c.seq < before_seq)
        if status:
            common.append(CASES.c.status == status)
        if receiving_city:
            common.append(CASES.c.receiving_city == receiving_city)
        if handling_city:
            common.append(CASES.c.handling_city == handling_city)
        if delivery_state:
            common.append(CASES.c.delivery_state == delivery_state)
        found: dict[int, CaseRecord] = {}
        with self.engine.connect() as conn:
            for side in (CASES.c.receiving_city, CASES.c.handling_city):
                stmt = (
                    select(*_CASE_COLS)
                    .where(and_(side.in_(cities), *common))
                    .order_by(CASES.c.seq.desc())
                    .limit(limit)
                )
                for r in conn.execute(stmt):
                    found[r.seq] = self._case(r)
        return [found[k] for k in sorted(found, reverse=True)[:limit]]

    def events(self, exchange_id: str, *, lenient: bool = False) -> list[EventRecord]:
        """The history of one case, oldest first. With ``lenient`` (``tongban cases trace``,
        which does not migrate), a note sealed with a key this reader lacks reads as the key's
        name, instead of raising :class:`SealError`, and a store not yet at 0010 as one with
        no event recorded late."""
        with self.engine.connect() as conn:
            history = _HISTORY
            if lenient and not self._has_column(conn, EVENTS.name, "late"):
                history = _HISTORY_BEFORE_0010
            rows = conn.execute(history, {"x": exchange_id})
            return [self._event(r, lenient=lenient) for r in rows]

    def case_history(self, exchange_id: str) -> tuple[CaseRecord | None, list[EventRecord]]:
        """One case and its history, oldest first, read together (one connection, one
        snapshot: no status change can fall between the two)."""
        with self.engine.connect() as conn:
            row = conn.execute(_CASE_BY_ID, {"x": exchange_id}).first()
            if row is None:
                return None, []
            events = conn.execute(_HISTORY, {"x": exchange_id})
            return self._case(row), [self._event(r) for r in events]

    def event(self, seq: int) -> EventRecord | None:
        """One event by seq."""
        with self.engine.connect() as conn:
            row = conn.execute(_EVENT_BY_SEQ, {"seq": seq}).first()
        return self._event(row) if row else None

    def for_delivery(
        self, exchange_ids: list[str], event_seqs: list[int]
    ) -> tuple[dict[str, CaseRecord], dict[int, EventRecord]]:
        """The cases and status events a batch of claimed outbox rows delivers, by exchange id
        and by seq (one query each, not one per row: ~55 against ~600 µs of CPU per row)."""
        cases: dict[str, CaseRecord] = {}
        events: dict[int, EventRecord] = {}
        with self.engine.connect() as conn:
            if exchange_ids:
                rows = conn.execute(_CASES_BY_IDS, {"ids": exchange_ids})
                cases = {r.exchange_id: self._case(r) for r in rows}
            if event_seqs:
                rows = conn.execute(_EVENTS_BY_SEQS, {"seqs": event_seqs})
                events = {r.seq: self._event(r) for r in rows}
        return cases, events

    def events_after(
        self, after: int, cities: list[str], exchange_id: str = "", limit: int = 500
    ) -> list[tuple[EventRecord, str, str]]:
        """Events after seq ``after`` of cases visible to ``cities``, with case number and receiver."""
        conds: list[Any] = [
            EVENTS.c.seq > after,
            or_(CASES.c.receiving_city.in_(cities), CASES.c.handling_city.in_(cities)),
        ]
        if exchange_id:
            conds.append(EVENTS.c.exchange_id == exchange_id)
        stmt = (
            select(*_EVENT_COLS, CASES.c.case_number, CASES.c.receiving_city)
            .join(CASES, CASES.c.exchange_id == EVENTS.c.exchange_id)
            .where(and_(*conds))
            .order_by(EVENTS.c.seq)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            n = len(_EVENT_COLS)
            return [(self._event(r[:n]), r[n], r[n + 1]) for r in conn.execute(stmt)]

    def last_event_seq(self) -> int:
        """The newest event seq (0 when none)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.max(EVENTS.c.seq), 0))).scalar_one())

    def trail(self, exchange_id: str, since: float) -> tuple[list[OutboxRecord], list[AuditRecord]]:
        """The outbox rows and audit entries of one exchange made at ``since`` or later (its
        submission). Neither table is indexed by exchange (each index would cost every
        submission a B-tree entry): both are read from the first row made since then, found
        by a binary search on their keys, to their end. For operators, not for polling."""
        # A minute's margin: replicas' clocks, rows made in a batch that began before.
        after = since - 60.0
        with self.engine.connect() as conn:
            first_row = time_bound(conn, OUTBOX.name, "id", "created_at", after)
            first_entry = time_bound(conn, AUDIT.name, "seq", "ts", after)
            rows = conn.execute(
                select(*_OUTBOX_COLS)
                .where(OUTBOX.c.id > first_row, OUTBOX.c.exchange_id == exchange_id)
                .order_by(OUTBOX.c.id)
            )
            entries = conn.execute(
                select(*_AUDIT_COLS)
                .where(AUDIT.c.seq > first_entry, AUDIT.c.subject == exchange_id)
                .order_by(AUDIT.c.seq)
            )
            return [OutboxRecord(*r) for r in rows], [AuditRecord(*r) for r in entries]

    def outbox_row(self, row_id: int) -> OutboxRecord | None:
        """One outbox row."""
        with self.engine.connect() as conn:
            row = conn.execute(select(*_OUTBOX_COLS).where(OUTBOX.c.id == row_id)).first()
        return OutboxRecord(*row) if row else None

    def dead_letters(self, *, after_id: int = 0, limit: int = 100) -> list[OutboxRecord]:
        """Dead letters, oldest first."""
        stmt = (
            select(*_OUTBOX_COLS)
            .where(OUTBOX.c.state == "dead", OUTBOX.c.id > after_id)
            .order_by(OUTBOX.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [OutboxRecord(*r) for r in conn.execute(stmt)]

    def outbox_stats(self, now: float) -> dict[str, float]:
        """Pending count, oldest pending age (s), dead count.

        The counts scan the claim index only (``state`` leads it: no table rows are read), so
        they cost O(pending): ~20 ms at 200k pending on SQLite, with the lowest pending id
        found in the same scan. Rows get their id and ``created_at`` together when inserted
        and keep both when retried or replayed, so the lowest pending id is the oldest pending
        row, whose ``created_at`` is then read by its primary key. Asking for the lowest
        ``created_at`` instead reads every pending row from the table (37-47 ms at 200k).
        With several replicas on PostgreSQL, ids come from one sequence while each replica
        stamps ``created_at`` with its own clock: the oldest may be off by their skew.
        """
        with self.engine.connect() as conn:
            pending, first = conn.execute(
                select(func.count(), func.min(OUTBOX.c.id)).where(OUTBOX.c.state == "pending")
            ).one()
            oldest = (
                conn.execute(
                    select(OUTBOX.c.created_at).where(OUTBOX.c.id == first)
                ).scalar_one_or_none()
                if first is not None
                else None
            )
            dead = conn.execute(select(func.count()).where(OUTBOX.c.state == "dead")).scalar_one()
        return {
            "pending": float(pending),
            "oldest_age": max(0.0, float(now - oldest)) if oldest is not None else 0.0,
            "dead": float(dead),
        }

    def gateways(self) -> list[GatewaySeen]:
        """The gateway processes' heartbeats, the latest seen first. ``tongban outbox`` does
        not migrate: in a store not yet at 0011 no gateway recorded settings, and before 0012
        every gateway with a heartbeat delivered."""
        with self.engine.connect() as conn:
            settings = (
                GATEWAYS.c.settings
                if self._has_column(conn, GATEWAYS.name, "settings")
                else literal("").label("settings")
            )
            delivers = (
                GATEWAYS.c.delivers
                if self._has_column(conn, GATEWAYS.name, "delivers")
                else literal(True).label("delivers")
            )
            rows = conn.execute(
                select(
                    GATEWAYS.c.owner,
                    GATEWAYS.c.host,
                    GATEWAYS.c.pid,
                    GATEWAYS.c.started_at,
                    GATEWAYS.c.seen_at,
                    settings,
                    delivers,
                ).order_by(GATEWAYS.c.seen_at.desc())
            )
            return [GatewaySeen.from_row(r) for r in rows]

    def backlog(self, now: float) -> list[PartnerBacklog]:
        """The pending rows of each partner that has any, by partner: one pass over the pending
        rows (O(pending), for operators, not a hot path), then the oldest row of each."""
        due = and_(OUTBOX.c.next_attempt_at <= now, OUTBOX.c.lease_until < now)
        with self.engine.connect() as conn:
            groups = conn.execute(
                select(
                    OUTBOX.c.target_partner,
                    func.count(),
                    func.count().filter(due),
                    func.count().filter(OUTBOX.c.next_attempt_at > now),
                    func.count().filter(OUTBOX.c.lease_until >= now),
                    func.min(OUTBOX.c.next_attempt_at).filter(OUTBOX.c.next_attempt_at > now),
                    func.min(OUTBOX.c.id),
                )
                .where(OUTBOX.c.state == "pending")
                .group_by(OUTBOX.c.target_partner)
                .order_by(OUTBOX.c.target_partner)
            ).all()
            out = []
            for partner, pending, n_due, waiting, held, next_at, first in groups:
                oldest = conn.execute(
                    select(OUTBOX.c.created_at, OUTBOX.c.attempts, OUTBOX.c.last_error).where(
                        OUTBOX.c.id == first
                    )
                ).one()
                out.append(PartnerBacklog(partner, pending, n_due, waiting, held, next_at, *oldest))
        return out

    def audit_length(self) -> int:
        """Entries in the audit chain."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(select(AUDIT_HEAD.c.length).where(AUDIT_HEAD.c.id == 1)).scalar_one()
            )

    def audit_head(self) -> tuple[int, str]:
        """(length, last hash) recorded in the chain head."""
        with self.engine.connect() as conn:
            row = conn.execute(select(AUDIT_HEAD.c.length, AUDIT_HEAD.c.hash)).one()
        return int(row.length), str(row.hash)

    def audit_hash_at(self, seq: int) -> str | None:
        """The hash of audit entry ``seq`` (None if the store does not hold it)."""
        with self.engine.connect() as conn:
            found = conn.execute(select(AUDIT.c.hash).where(AUDIT.c.seq == seq)).scalar()
        return None if found is None else str(found)

    def audit_archived(self) -> tuple[int, str]:
        """(the last entry moved to an archive file, its hash): the store's chain continues
        after it. (0, GENESIS) when nothing was archived."""
        with self.engine.connect() as conn:
            if not self._archives_table(conn):
                return 0, GENESIS
            row = conn.execute(
                select(AUDIT_ARCHIVES.c.last_seq, AUDIT_ARCHIVES.c.last_hash)
                .order_by(AUDIT_ARCHIVES.c.last_seq.desc())
                .limit(1)
            ).first()
        return (int(row.last_seq), str(row.last_hash)) if row else (0, GENESIS)

    def audit_hash_algorithms(self) -> tuple[str, str]:
        """(the hash function of the first entry after the archived ones, that of the chain's
        next entry): where a walk of the store's chain starts, and where it must end. SHA-256
        both for a store not yet migrated to 0009 (its chain never switched)."""
        with self.engine.connect() as conn:
            if not self._hash_columns(conn):
                return "sha256", "sha256"
            head = conn.execute(select(AUDIT_HEAD.c.hash_algorithm)).scalar_one()
            start = conn.execute(
                select(AUDIT_ARCHIVES.c.hash_algorithm)
                .order_by(AUDIT_ARCHIVES.c.last_seq.desc())
                .limit(1)
            ).scalar()
        return str(start or "sha256"), str(head)

    def audit_entry_time(self, seq: int, default: float) -> float:
        """When audit entry ``seq`` was made (``default`` if the store does not hold it)."""
        with self.engine.connect() as conn:
            ts = conn.execute(select(AUDIT.c.ts).where(AUDIT.c.seq == seq)).scalar()
        return default if ts is None else float(ts)

    def audit_archives(self) -> list[Any]:
        """Every archive file recorded, in chain order."""
        with self.engine.connect() as conn:
            if not self._archives_table(conn):
                return []
            columns = list(AUDIT_ARCHIVES.c)
            if not self._hash_columns(conn):  # a store not yet at 0009
                columns.remove(AUDIT_ARCHIVES.c.hash_algorithm)
            return list(conn.execute(select(*columns).order_by(AUDIT_ARCHIVES.c.last_seq)).all())

    @staticmethod
    def _archives_table(conn: Connection) -> bool:
        # A store not yet migrated to 0005 (`tongban audit verify` does not migrate) has
        # nothing archived.
        return inspect(conn).has_table(AUDIT_ARCHIVES.name)

    @staticmethod
    def _hash_columns(conn: Connection) -> bool:
        # A store not yet migrated to 0009 has no hash_algorithm columns: its chain is SHA-256.
        return StoreReader._has_column(conn, AUDIT_HEAD.name, "hash_algorithm")

    @staticmethod
    def _has_column(conn: Connection, table: str, column: str) -> bool:
        """Whether the store's ``table`` has ``column`` (a reader that does not migrate may
        find a store of an earlier revision)."""
        return any(c["name"] == column for c in inspect(conn).get_columns(table))

    def audit_rows(self, upto: int, page: int = 10_000, after: int = 0) -> Iterator[Any]:
        """The audit log's entries ``after + 1`` to ``upto`` (the head's length, read first)
        in chain order, ``page`` at a time: memory stays flat for a log of millions of
        entries, and entries a running gateway appends meanwhile are not part of the walk."""
        while after < upto:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(AUDIT)
                    .where(AUDIT.c.seq > after, AUDIT.c.seq <= upto)
                    .order_by(AUDIT.c.seq)
                    .limit(page)
                ).all()
            if not rows:
                return
            yield from rows
            after = rows[-1].seq
