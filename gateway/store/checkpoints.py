"""Signed checkpoints of the audit chain in the store: written by serving gateways, read by
``tongban audit verify`` and ``tongban audit checkpoints`` (see gateway.audit_signing)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, Select, inspect, select, text

from ..audit_signing import Checkpoint, Signer, signature_problem
from ..timestamps import utc_text
from .writer import AUDIT, AUDIT_CHECKPOINTS, Batch, Intent

if TYPE_CHECKING:
    from ..audit_signing import PublicKey
    from .reads import StoreReader
    from .store import Store

__all__ = [
    "CheckpointIntent",
    "extension_problem",
    "held_problem",
    "last_checkpoint",
    "sign_head",
    "stored_checkpoints",
]


@dataclass
class CheckpointIntent(Intent):
    """Record a signed checkpoint. Returns ``"signed"``; ``"exists"`` (another gateway signed
    that length first: nothing written); ``"differs"`` (entry ``length`` no longer has the
    signed hash: the chain changed under it; nothing written); ``"gone"`` (the store no longer
    holds entry ``length``)."""

    length: int
    hash: str
    ts: float
    key_id: str
    signature: str

    def run(self, batch: Batch) -> str:
        conn = batch.conn
        found = conn.execute(
            text(f"SELECT hash FROM {AUDIT.name} WHERE seq = :s"),  # noqa: S608
            {"s": self.length},
        ).scalar()
        if found is None:
            return "gone"
        if found != self.hash:
            return "differs"
        signed = conn.execute(
            text(f"SELECT 1 FROM {AUDIT_CHECKPOINTS.name} WHERE length = :s"),  # noqa: S608
            {"s": self.length},
        ).scalar()
        if signed is not None:
            return "exists"
        conn.execute(
            AUDIT_CHECKPOINTS.insert().values(
                length=self.length,
                hash=self.hash,
                ts=self.ts,
                key_id=self.key_id,
                signature=self.signature,
            )
        )
        return "signed"


async def sign_head(
    store: Store, signer: Signer, keys: Mapping[str, PublicKey]
) -> tuple[str, int, str]:
    """Sign the chain's head if it grew past the store's last checkpoint, once the chain is
    checked to extend that checkpoint (:func:`extension_problem`, its signature checked with
    ``keys``).
    Returns the outcome (``"unchanged"``, ``"broken"`` or :class:`CheckpointIntent`'s but
    ``"differs"``, reported as ``"broken"``), the head's length, and what is broken."""
    length, head = await store.read(store.reader.audit_head)
    last, problem = await store.read(extension_problem, store.reader, length, head, keys)
    if problem:
        return "broken", length, problem
    if length == 0 or (last is not None and last.length == length):
        return "unchanged", length, ""
    # In a thread: a key in a hardware security module signs over a network or a bus.
    cp = await asyncio.to_thread(signer.sign, length, head, time.time())
    outcome = await store.write(
        CheckpointIntent(cp.length, cp.hash, cp.ts, cp.key_id, cp.signature)
    )
    if outcome == "differs":
        return "broken", length, f"entry {length} changed while its checkpoint was signed"
    return str(outcome), length, ""


def last_checkpoint(engine: Engine) -> Checkpoint | None:
    """The store's checkpoint of the most entries (None: there is none)."""
    found = _checkpoints(
        engine, select(AUDIT_CHECKPOINTS).order_by(AUDIT_CHECKPOINTS.c.length.desc()).limit(1)
    )
    return found[0] if found else None


def extension_problem(
    reader: StoreReader, length: int, head: str, keys: Mapping[str, PublicKey]
) -> tuple[Checkpoint | None, str]:
    """The store's last checkpoint, and why the chain's first ``length`` entries, ending with
    ``head``, do not extend it ("" when they do, or when there is none): its signature must
    hold under ``keys``, the chain must be at least as long, and the entry it covers must still
    have the signed hash, which every entry before it went into (an entry moved to an archive
    file since is checked there, by ``tongban audit verify --archives``).

    Checking that one entry costs the same however many entries came since (walking them all
    again cost ~18 µs each, ~7% of a core at 4,000 entries/s): an entry below the checkpoint
    rewritten with every hash computed again changes the signed entry's hash; one edited
    without does not, but breaks its own link, which ``tongban audit verify`` reports, signed or
    not."""
    last = last_checkpoint(reader.engine)
    if last is None:
        return None, ""
    bad = signature_problem(last, keys)
    where = f"the last checkpoint (entries 1-{last.length}, signed at {utc_text(last.ts)})"
    if bad:
        return last, f"{where} does not hold: {bad}"
    return last, held_problem(reader, length, head, last, where)


def held_problem(reader: StoreReader, length: int, head: str, cp: Checkpoint, where: str) -> str:
    """Why the chain's first ``length`` entries, ending with ``head``, no longer hold ``cp``
    (described as ``where``; its signature checked before): "" when they do, or when its entry
    was archived since (checked by ``tongban audit verify --archives``)."""
    if cp.length > length:
        return f"cut short: the chain holds {length} entries, fewer than {where}"
    found = head if cp.length == length else reader.audit_hash_at(cp.length)
    if found is not None and found != cp.hash:
        return f"rewritten: entry {cp.length} no longer ends the chain {where} holds"
    return ""


def stored_checkpoints(
    engine: Engine, after: int = 0, limit: int | None = None
) -> list[Checkpoint]:
    """The store's checkpoints of lengths above ``after``, by length, at most ``limit``."""
    return _checkpoints(
        engine,
        select(AUDIT_CHECKPOINTS)
        .where(AUDIT_CHECKPOINTS.c.length > after)
        .order_by(AUDIT_CHECKPOINTS.c.length)
        .limit(limit),
    )


def _checkpoints(engine: Engine, query: Select[Any]) -> list[Checkpoint]:
    """The checkpoints ``query`` selects (none in a store not yet migrated to 0006: ``tongban
    audit verify`` does not migrate)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table(AUDIT_CHECKPOINTS.name):
            return []
        rows = conn.execute(query).all()
    return [Checkpoint(r.length, r.hash, float(r.ts), r.key_id, r.signature) for r in rows]
