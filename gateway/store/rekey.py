"""Which key seals each stored value, and sealing them all with the active key
(``tongban db keys status``, ``tongban db reencrypt``; docs/security.md#personal-data-at-rest).

Re-encryption walks a table by its key, a transaction per step, and writes each value only if
it is still what the step read (a gateway may change a case's record meanwhile: its own write
is sealed already, and is left as it is). Each step that seals values appends an audit entry.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sqlalchemy import Engine, text

from .sealing import CANONICAL, HEAD, NOTE, SealError, key_id_in_head, key_id_of, open_value
from .writer import AuditEntry, Batch, Intent

__all__ = ["SEALED_COLUMNS", "ReencryptIntent", "ReencryptStep", "sealed_counts"]

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
        table, column, where, holds = SEALED_COLUMNS[self.column]
        conn = batch.conn
        rows = conn.execute(
            text(
                f"SELECT seq, exchange_id, {column} FROM {table} "  # noqa: S608
                f"WHERE seq > :after AND {holds} ORDER BY seq LIMIT :n"
            ),
            {"after": self.after, "n": self.limit},
        ).all()
        update = text(
            f"UPDATE {table} SET {column} = :new WHERE seq = :seq AND {column} = :old"  # noqa: S608
        )
        sealed = changed = 0
        last, problem = self.after, ""
        for seq, exchange_id, value in rows:
            if key_id_of(value) != keyring.active:
                try:
                    plain = open_value(keyring, value, where, exchange_id)
                except SealError as exc:
                    problem = f"{self.column} of case {exchange_id} (row {seq}): {exc}"
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
                    self.actor,
                    "store.reencrypt",
                    table,
                    "sealed",
                    f"{sealed} values of {self.column} sealed with key {keyring.active}",
                )
            )
        return ReencryptStep(last, len(rows), sealed, changed, problem)
