"""Verification of the append-only, hash-chained audit log.

Each entry's hash is sha256(previous hash + the entry's canonical JSON) (see
gateway.store.writer.audit_hash). Editing, deleting or reordering any entry breaks the chain
from that entry on; :func:`verify_chain` finds the first broken link.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .store.writer import GENESIS, AuditEntry, audit_hash

if TYPE_CHECKING:
    from .store.reads import StoreReader

__all__ = ["ChainReport", "link_problem", "verify_chain", "verify_store_chain"]


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Outcome of a verification: ``ok``, entries checked (from entry ``after + 1``, following
    ``after_hash``: the entries before are in archive files), and the first broken link if any."""

    ok: bool
    checked: int
    broken_seq: int | None = None
    reason: str = ""
    after: int = 0
    after_hash: str = GENESIS


def link_problem(row: Any, seq: int, prev: str) -> str:
    """What is wrong with ``row`` as entry ``seq`` of the chain, following the hash ``prev``
    ("" when nothing is). Shared by the store's chain and the archive files'."""
    if row.seq != seq:
        return f"missing (found entry {row.seq})"
    if row.prev_hash != prev:
        return "link to the previous entry is broken"
    entry = AuditEntry(row.actor, row.action, row.subject, row.outcome, row.detail)
    if audit_hash(prev, row.seq, row.ts, entry) != row.hash:
        return "content does not match its hash"
    return ""


def verify_chain(
    rows: Iterable[Any],
    head_length: int,
    head_hash: str,
    after: int = 0,
    after_hash: str = GENESIS,
) -> ChainReport:
    """Walk ``rows`` (in seq order, from entry ``after + 1``, whose previous hash is
    ``after_hash``) and the recorded head; report the first inconsistency."""
    prev = after_hash
    checked = 0
    for row in rows:
        seq = after + checked + 1
        problem = link_problem(row, seq, prev)
        if problem:
            return ChainReport(False, checked, seq, problem, after, after_hash)
        prev = row.hash
        checked += 1
    if after + checked != head_length or prev != head_hash:
        return ChainReport(
            False,
            checked,
            after + checked + 1,
            f"chain ends at entry {after + checked} but the head records {head_length}",
            after,
            after_hash,
        )
    return ChainReport(True, checked, after=after, after_hash=after_hash)


def verify_store_chain(reader: StoreReader) -> ChainReport:
    """Verify the chain a store holds: from after its archived entries (if any) to its head,
    read first (entries a running gateway appends meanwhile are not part of the walk)."""
    after, after_hash = reader.audit_archived()
    length, head = reader.audit_head()
    return verify_chain(reader.audit_rows(length, after=after), length, head, after, after_hash)
