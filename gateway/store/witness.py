"""Peer gateways' signed audit checkpoints, kept in this gateway's store as their witness
(``AuditWitnessService``; see gateway.services.witness).

A peer's own store holds its checkpoints, and whoever can write to that store can delete
them along with a rewritten chain. The copies here are out of that reach: an auditor verifies
the peer's chain against them (``tongban audit witnessed --peer P --json`` there, ``tongban
audit verify --checkpoints`` at the peer), and the peer's gateways check their chain against
the longest copy here each time they hand over a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, inspect, select

from ..audit_signing import Checkpoint
from .writer import WITNESSED, AuditEntry, Batch, Intent

__all__ = ["WitnessIntent", "Witnessed", "witnessed_checkpoints"]


@dataclass
class WitnessIntent(Intent):
    """Keep a peer's checkpoint (its signature checked before). Returns ``(outcome,
    previous)``: outcome ``"kept"``, ``"known"`` (held already) or ``"conflict"`` (one of the
    same length with another hash is held: this one is kept too, as evidence); ``previous``
    the longest checkpoint of the peer held of fewer entries, as a tuple of
    :class:`Checkpoint`'s fields (None: none)."""

    peer: str
    length: int
    hash: str
    ts: float
    key_id: str
    signature: str
    received_at: float

    def run(self, batch: Batch) -> tuple[str, tuple[int, str, float, str, str] | None]:
        conn = batch.conn
        w = WITNESSED.c
        mine = w.peer == self.peer
        same = conn.execute(select(w.hash).where(mine, w.length == self.length)).scalars().all()
        below = conn.execute(
            select(w.length, w.hash, w.ts, w.key_id, w.signature)
            .where(mine, w.length < self.length)
            .order_by(w.length.desc(), w.received_at)
            .limit(1)
        ).first()
        previous = None
        if below is not None:
            previous = (below.length, below.hash, float(below.ts), below.key_id, below.signature)
        if self.hash in same:
            return "known", previous
        conn.execute(
            WITNESSED.insert().values(
                peer=self.peer,
                length=self.length,
                hash=self.hash,
                ts=self.ts,
                key_id=self.key_id,
                signature=self.signature,
                received_at=self.received_at,
            )
        )
        if not same:
            return "kept", previous
        # Not every checkpoint is audited: an entry per checkpoint would grow this chain, whose
        # checkpoints the peer witnesses in turn, every interval for ever. A conflict is.
        detail = f"entries 1-{self.length}: {self.hash} by key {self.key_id}; held: {same[0]}"
        batch.audit.append(
            AuditEntry(self.peer, "audit.witness", f"length {self.length}", "conflict", detail)
        )
        return "conflict", previous


@dataclass(frozen=True, slots=True)
class Witnessed:
    """A peer's checkpoint this gateway holds, and when it arrived."""

    peer: str
    checkpoint: Checkpoint
    received_at: float


def witnessed_checkpoints(
    engine: Engine, peer: str | None = None, after: int = 0
) -> list[Witnessed]:
    """The peers' checkpoints held here (``peer``'s only, when given) of lengths above
    ``after``, by peer and length (none in a store not yet migrated to 0007: ``tongban audit
    witnessed`` does not migrate)."""
    w = WITNESSED.c
    query = select(WITNESSED).where(w.length > after).order_by(w.peer, w.length, w.received_at)
    if peer is not None:
        query = query.where(w.peer == peer)
    with engine.connect() as conn:
        if not inspect(conn).has_table(WITNESSED.name):
            return []
        rows = conn.execute(query).all()
    return [
        Witnessed(
            r.peer, Checkpoint(r.length, r.hash, float(r.ts), r.key_id, r.signature), r.received_at
        )
        for r in rows
    ]
