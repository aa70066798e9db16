"""Retention: what the store stops keeping, and when (docs/operations.md#retention).

Three kinds of rows are purged, each once older than its own cut-off time (and two kinds of
signed audit checkpoints thinned: :class:`ThinIntent`):

requests  idempotency records (``created_at``): a retry after that is taken as a new request
outbox    delivered rows (``delivered_at``); pending rows and dead letters never are
cases     closed cases (a final status, last changed at ``updated_at``) with their status
          events, unless an outbox row of theirs is pending or dead

None of these tables has an index on its time column, and none is added for this: each would
cost every submitted case one more B-tree entry. Rows are appended in time order, so a purge
walks a table in key order, up to the last key whose row is older than the cut-off (found by a
binary search on the key, O(log² n)). Beyond what it deletes, it reads only what it walks past
and keeps: cases still open, outbox rows still pending. PostgreSQL's ``requests`` has no integer
key and is scanned. Every step deletes at most ``limit`` rows in one transaction, with its audit
entry; on PostgreSQL one replica purges a schema at a time (a transaction's advisory lock).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, bindparam, inspect, text

from ..domain.lifecycle import TERMINAL
from ..timestamps import utc_text
from .reads import time_bound
from .writer import AuditEntry, Batch, Intent

__all__ = [
    "PURGED",
    "THINNED",
    "PurgeIntent",
    "PurgeStep",
    "ThinIntent",
    "describe",
    "purge_bound",
    "purge_counts",
    "thinned_keys",
]

#: What can be purged, in the order a purge takes them, and what its rows are.
PURGED = {
    "requests": "idempotency records made",
    "outbox": "outbox rows delivered",
    "cases": "closed cases last changed",
}

#: Signed audit checkpoints thinned past ``retention.checkpoint_days`` (what their rows are):
#: of those signed before the cut-off, the last of each UTC day is kept, and so is each
#: chain's last checkpoint and every witnessed checkpoint of a length held with two hashes
#: (the evidence of a peer that signed two chains).
THINNED = {
    "audit_checkpoints": "signed audit checkpoints",
    "witnessed_checkpoints": "peers' checkpoints witnessed",
}

#: With the schema's name, the advisory lock that lets one replica purge at a time (per schema:
#: gateways of separate schemas in one database do not wait for each other).
PURGE_LOCK = 0x7462_7572  # "tbur"

_CLOSED = ", ".join(f"'{s}'" for s in sorted(TERMINAL))
# Rows whose case must be kept: still to be delivered, or parked as a dead letter.
_WAITING = "SELECT exchange_id FROM outbox WHERE state IN ('pending', 'dead')"

# table -> (key, the key's time column, what else a purged row must satisfy). The key's time
# is when the row was made; the row's own cut-off column is never earlier than it.
_WALK = {
    "requests": ("rowid", "created_at", "created_at < :cut"),
    "outbox": ("id", "created_at", "state = 'delivered' AND delivered_at < :cut"),
    "cases": (
        "seq",
        "submitted_at",
        f"status IN ({_CLOSED}) AND updated_at < :cut AND exchange_id NOT IN ({_WAITING})",
    ),
}

_DELETE_EVENTS = text("DELETE FROM events WHERE exchange_id IN :ids").bindparams(
    bindparam("ids", expanding=True)
)


@dataclass(frozen=True, slots=True)
class PurgeStep:
    """What one purge transaction did."""

    deleted: int
    events: int = 0  # status events deleted with their cases
    last: int = 0  # the last key deleted: the next step starts after it
    more: bool = False  # a full step: there may be more
    skipped: bool = False  # another replica holds the purge lock (PostgreSQL)


def purge_bound(engine: Engine, table: str, cut: float) -> int:
    """The last key a purge of ``table`` before ``cut`` looks at (unused for PostgreSQL's
    ``requests``, which is scanned)."""
    key, made, _ = _WALK[table]
    if table == "requests" and engine.dialect.name != "sqlite":
        return 0
    with engine.connect() as conn:
        return time_bound(conn, table, key, made, cut)


def purge_counts(engine: Engine, cuts: dict[str, float]) -> dict[str, int]:
    """How many rows a purge with these cut-offs would delete now (``tongban db purge
    --dry-run``): per table, and ``events`` for the closed cases' status events."""
    out: dict[str, int] = {}
    with engine.connect() as conn:
        for table, cut in cuts.items():
            where = _WALK[table][2]
            out[table] = int(
                conn.execute(
                    text(f"SELECT COUNT(*) FROM {table} WHERE {where}"),  # noqa: S608
                    {"cut": cut},
                ).scalar_one()
            )
            if table == "cases":
                out["events"] = int(
                    conn.execute(
                        text(
                            "SELECT COUNT(*) FROM events WHERE exchange_id IN "  # noqa: S608
                            f"(SELECT exchange_id FROM cases WHERE {where})"
                        ),
                        {"cut": cut},
                    ).scalar_one()
                )
    return out


def describe(table: str, n: int, cut: float, events: int = 0) -> str:
    """``n`` purged rows of ``table``, in words (the audit entry's detail, the command's line)."""
    when = utc_text(cut)
    if table in THINNED:
        return f"{n} {THINNED[table]} signed before {when}, all but the last of each day"
    with_events = f", with {events} status events" if table == "cases" else ""
    return f"{n} {PURGED[table]} before {when}{with_events}"


# A chain's checkpoints signed before :cut that are not the last of their UTC day, nor the
# chain's last; a witnessed one held with two hashes neither. Uncorrelated subqueries: each is
# computed once per query, whatever the table's size. A day is CAST(ts AS BIGINT) / 86400.
_THIN = {
    "audit_checkpoints": (
        "SELECT length FROM audit_checkpoints WHERE ts < :cut "
        "AND length < (SELECT MAX(length) FROM audit_checkpoints) "
        "AND length NOT IN (SELECT MAX(length) FROM audit_checkpoints WHERE ts < :cut "
        "GROUP BY CAST(ts AS BIGINT) / 86400) ORDER BY length"
    ),
    "witnessed_checkpoints": (
        "SELECT peer, length, hash FROM witnessed_checkpoints WHERE ts < :cut "
        "AND (peer, length) NOT IN (SELECT peer, MAX(length) FROM witnessed_checkpoints "
        "GROUP BY peer) "
        "AND (peer, length) NOT IN (SELECT peer, MAX(length) FROM witnessed_checkpoints "
        "WHERE ts < :cut GROUP BY peer, CAST(ts AS BIGINT) / 86400) "
        "AND (peer, length) NOT IN (SELECT peer, length FROM witnessed_checkpoints "
        "GROUP BY peer, length HAVING COUNT(*) > 1) ORDER BY peer, length"
    ),
}
# One row, checked again as it is deleted: a second hash for its length may have arrived
# since it was listed (a witnessed checkpoint's time is its signing time, not its arrival).
_THIN_DELETE = {
    "audit_checkpoints": text("DELETE FROM audit_checkpoints WHERE length = :length"),
    "witnessed_checkpoints": text(
        "DELETE FROM witnessed_checkpoints WHERE peer = :peer AND length = :length "
        "AND hash = :hash AND NOT EXISTS (SELECT 1 FROM witnessed_checkpoints o "
        "WHERE o.peer = :peer AND o.length = :length AND o.hash <> :hash)"
    ),
}


def thinned_keys(engine: Engine, table: str, cut: float) -> list[dict[str, object]]:
    """The keys of ``table``'s checkpoints that thinning before ``cut`` deletes (none in a store
    without the table: not yet migrated)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table(table):
            return []
        rows = conn.execute(text(_THIN[table]), {"cut": cut}).mappings().all()
    return [dict(r) for r in rows]


@dataclass
class ThinIntent(Intent):
    """Delete these checkpoints of ``table`` (listed by :func:`thinned_keys`), and record it in
    the audit log."""

    actor: str
    table: str
    cut: float
    keys: list[dict[str, object]]

    def run(self, batch: Batch) -> PurgeStep:
        deleted = 0
        for key in self.keys:
            deleted += batch.conn.execute(_THIN_DELETE[self.table], key).rowcount
        if deleted:
            detail = describe(self.table, deleted, self.cut)
            batch.audit.append(AuditEntry(self.actor, "store.purge", self.table, "deleted", detail))
        return PurgeStep(deleted)


@dataclass
class PurgeIntent(Intent):
    """Delete up to ``limit`` rows of ``table`` older than ``cut``, with keys in
    (``after``, ``bound``], and record it in the audit log."""

    actor: str
    table: str
    cut: float
    after: int
    bound: int
    limit: int

    def run(self, batch: Batch) -> PurgeStep:
        conn = batch.conn
        if (
            batch.is_postgres
            and not conn.execute(
                text("SELECT pg_try_advisory_xact_lock(:k, hashtext(current_schema()))"),
                {"k": PURGE_LOCK},
            ).scalar_one()
        ):
            return PurgeStep(0, skipped=True)
        key, _, where = _WALK[self.table]
        params = {"cut": self.cut, "after": self.after, "bound": self.bound, "n": self.limit}
        events = 0
        if self.table == "requests" and batch.is_postgres:
            deleted = conn.execute(
                text(
                    "DELETE FROM requests WHERE ctid = ANY(ARRAY("  # noqa: S608
                    f"SELECT ctid FROM requests WHERE {where} LIMIT :n))"
                ),
                params,
            ).rowcount
            step = PurgeStep(deleted, more=deleted == self.limit)
        else:
            also = ", exchange_id" if self.table == "cases" else ""
            rows = conn.execute(
                text(
                    f"SELECT {key}{also} FROM {self.table} "  # noqa: S608
                    f"WHERE {key} > :after AND {key} <= :bound AND {where} "
                    f"ORDER BY {key} LIMIT :n"
                ),
                params,
            ).all()
            keys = [r[0] for r in rows]
            if keys:
                if self.table == "cases":
                    events = conn.execute(
                        _DELETE_EVENTS, {"ids": [r.exchange_id for r in rows]}
                    ).rowcount
                conn.execute(
                    text(f"DELETE FROM {self.table} WHERE {key} IN :ids").bindparams(  # noqa: S608
                        bindparam("ids", expanding=True)
                    ),
                    {"ids": keys},
                )
            step = PurgeStep(
                len(keys), events, keys[-1] if keys else self.bound, len(keys) == self.limit
            )
        if step.deleted:
            detail = describe(self.table, step.deleted, self.cut, events)
            batch.audit.append(AuditEntry(self.actor, "store.purge", self.table, "deleted", detail))
        return step
