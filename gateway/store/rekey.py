"""Which key seals each stored value, and sealing them all with the active key
(``tongban db keys status``, ``tongban db reencrypt``, and serving gateways in the background:
gateway.services.reencrypt; docs/security.md#personal-data-at-rest).

Re-encryption walks a table by its key, a transaction per step, and writes each value only if
it is still what the step read (a gateway may change a case's record meanwhile: its own write
is sealed already, and is left as it is). Each step that seals values appends an audit entry.

The background walk keeps its place in ``reencrypt_progress`` (a row per sealed column), read
and moved on in the same transaction as the step it records: replicas sharing a store share
one walk (PostgreSQL: the rows are locked for the step), and a restarted gateway goes on where
the walk was. A new active key starts the walk again from the first row.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, replace

from sqlalchemy import Engine, inspect, text

from .sealing import (
    CANONICAL,
    HEAD,
    NOTE,
    Keyring,
    SealError,
    key_id_in_head,
    key_id_of,
    open_value,
)
from .writer import AuditEntry, Batch, Intent

__all__ = [
    "SEALED_COLUMNS",
    "Progress",
    "ReencryptIntent",
    "ReencryptStep",
    "WalkIntent",
    "WalkStep",
    "reencrypt_progress",
    "sealed_counts",
]

#: The columns that hold personal data: "table.column" -> (table, column, what it is bound to,
#: which rows hold a value).
SEALED_COLUMNS = {
    "cases.canonical": ("cases", "canonical", CANONICAL, "1 = 1"),
    "events.note": ("events", "note", NOTE, "note <> ''"),
}


def sealed_counts(engine: Engine) -> dict[str, dict[str, int]]:
    """Per column, how many values each key seals ("" for values stored in the clear). Reads
    each table once (the start of each value only)."""
    out: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for name, (table, column, _, holds) in SEALED_COLUMNS.items():
            counts: Counter[str] = Counter()
            rows = conn.execute(
                text(f"SELECT substr({column}, 1, {HEAD}) FROM {table} WHERE {holds}")  # noqa: S608
            )
            for (head,) in rows:
                counts[key_id_in_head(head) or ""] += 1
            out[name] = dict(sorted(counts.items()))
    return out


@dataclass(frozen=True, slots=True)
class ReencryptStep:
    """What one re-encryption transaction did."""

    last: int  # the last key read: the next step starts after it
    read: int  # rows read
    sealed: int  # values sealed with the active key
    changed: int = 0  # values changed by a gateway since they were read: left as they are
    problem: str = ""  # a value that does not open (the walk stops there)


@dataclass
class ReencryptIntent(Intent):
    """Seal with the active key the values of ``column`` ("table.column") in rows with keys
    after ``after`` (at most ``limit`` rows) that are in the clear or sealed with another key."""

    actor: str
    column: str
    after: int
    limit: int

    def run(self, batch: Batch) -> ReencryptStep:
        keyring = batch.keyring
        if keyring is None:
            return ReencryptStep(self.after, 0, 0, problem="no keys: set store.keys_file")
        return _seal_step(batch, keyring, self.actor, self.column, self.after, self.limit)


def _seal_step(
    batch: Batch, keyring: Keyring, actor: str, name: str, after: int, limit: int
) -> ReencryptStep:
    """Seal with the active key the values of column ``name`` in (at most ``limit``) rows with
    keys after ``after`` that are in the clear or under another key; an audit entry if any."""
    table, column, where, holds = SEALED_COLUMNS[name]
    conn = batch.conn
    rows = conn.execute(
        text(
            f"SELECT seq, exchange_id, {column} FROM {table} "  # noqa: S608
            f"WHERE seq > :after AND {holds} ORDER BY seq LIMIT :n"
        ),
        {"after": after, "n": limit},
    ).all()
    update = text(
        f"UPDATE {table} SET {column} = :new WHERE seq = :seq AND {column} = :old"  # noqa: S608
    )
    sealed = changed = 0
    last, problem = after, ""
    for seq, exchange_id, value in rows:
        if key_id_of(value) != keyring.active:
            try:
                plain = open_value(keyring, value, where, exchange_id)
            except SealError as exc:
                problem = f"{name} of case {exchange_id} (row {seq}): {exc}"
                break
            new = keyring.seal(plain.encode("utf-8"), where, exchange_id)
            if conn.execute(update, {"new": new, "seq": seq, "old": value}).rowcount:
                sealed += 1
            else:
                changed += 1
        last = seq
    if sealed:
        batch.audit.append(
            AuditEntry(
                actor,
                "store.reencrypt",
                table,
                "sealed",
                f"{sealed} values of {name} sealed with key {keyring.active}",
            )
        )
    return ReencryptStep(last, len(rows), sealed, changed, problem)


@dataclass(frozen=True, slots=True)
class Progress:
    """The background walk over one sealed column (a ``reencrypt_progress`` row)."""

    column: str
    key_id: str  # the key it seals with
    last_seq: int  # rows up to this one passed
    sealed: int  # values it sealed since it began
    started_at: float
    done_at: float | None  # when it passed the last row
    problem: str  # the value it stopped at ("" if none)


_PROGRESS = (
    "SELECT sealed_column, key_id, last_seq, sealed, started_at, done_at, problem "
    "FROM reencrypt_progress"
)


def reencrypt_progress(engine: Engine) -> list[Progress]:
    """Where the background walk is, column by column (none in a store not yet migrated to
    0008: ``tongban db keys status`` does not migrate)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("reencrypt_progress"):
            return []
        rows = conn.execute(text(_PROGRESS + " ORDER BY sealed_column")).all()
    return [Progress(*r) for r in rows]


@dataclass(frozen=True, slots=True)
class WalkStep:
    """What one step of the background walk did."""

    read: int = 0
    sealed: tuple[tuple[str, int], ...] = ()  # (column, values sealed) for each column stepped
    changed: int = 0  # values changed by a gateway since they were read: left as they are
    done: bool = False  # every column passed its last row under the active key
    problem: str = ""  # the value the walk stopped at: it waits for other keys

    @property
    def sealed_values(self) -> int:
        """Values sealed by the step, every column together."""
        return sum(n for _, n in self.sealed)


@dataclass
class WalkIntent(Intent):
    """One step of the background walk (gateway.services.reencrypt): the columns whose walk
    under the active key has not passed their last row move on, in order, by up to ``limit``
    rows together (a walk with little left ends in one step).

    A walk that stopped at a value that did not open stays stopped (the step reports it)
    unless ``retry`` (the keys file was read again: it may now hold the key). A walk done
    under the active key goes on from where it ended if ``tail``: the gateway asking sealed
    with an older key until now, and what it wrote after the walk ended is behind it."""

    actor: str
    limit: int
    retry: bool = False
    tail: bool = False

    def run(self, batch: Batch) -> WalkStep:
        keyring = batch.keyring
        if keyring is None:
            return WalkStep(done=True)
        conn, now, active = batch.conn, batch.now, keyring.active
        for name in SEALED_COLUMNS:  # every column has its row (a no-op once it has)
            conn.execute(
                text(
                    "INSERT INTO reencrypt_progress (sealed_column, key_id, last_seq, sealed, "
                    "started_at, done_at, problem) VALUES (:c, :k, 0, 0, :now, NULL, '') "
                    "ON CONFLICT (sealed_column) DO NOTHING"
                ),
                {"c": name, "k": active, "now": now},
            )
        lock = " FOR UPDATE" if batch.is_postgres else ""
        rows = {r[0]: Progress(*r) for r in conn.execute(text(_PROGRESS + lock)).all()}
        save = text(
            "UPDATE reencrypt_progress SET key_id = :key_id, last_seq = :last_seq, "
            "sealed = :sealed, started_at = :started_at, done_at = :done_at, "
            "problem = :problem WHERE sealed_column = :column"
        )
        budget, read, changed = self.limit, 0, 0
        sealed: list[tuple[str, int]] = []
        for name in SEALED_COLUMNS:
            p = rows[name]
            if p.key_id != active:  # a new key: the walk begins again
                p = Progress(name, active, 0, 0, now, None, "")
            elif (p.problem and self.retry) or (p.done_at is not None and self.tail):
                # Tried again from where it stopped, or gone on from where it ended.
                p = replace(p, done_at=None, problem="")
            if p.done_at is not None:
                continue
            if p.problem:
                return WalkStep(read, tuple(sealed), changed, problem=p.problem)
            if budget <= 0:
                conn.execute(save, asdict(p))  # a column begun again waits for the next step
                return WalkStep(read, tuple(sealed), changed)
            step = _seal_step(batch, keyring, self.actor, name, p.last_seq, budget)
            finished = step.read < budget and not step.problem
            budget -= max(step.read, 1)
            read, changed = read + step.read, changed + step.changed
            sealed.append((name, step.sealed))
            p = replace(
                p,
                last_seq=step.last,
                sealed=p.sealed + step.sealed,
                done_at=now if finished else None,
                problem=step.problem,
            )
            conn.execute(save, asdict(p))
            if not finished:
                return WalkStep(read, tuple(sealed), changed, problem=step.problem)
        return WalkStep(read, tuple(sealed), changed, done=True)
