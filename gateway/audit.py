"""Verification of the append-only, hash-chained audit log.

Each entry's hash is sha256(previous hash + the entry's canonical JSON) (see
gateway.store.writer.audit_hash). Editing, deleting or reordering any entry breaks the chain
from that entry on; :func:`verify_chain` finds the first broken link.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .store.writer import GENESIS, AuditEntry, audit_hash

__all__ = ["ChainReport", "verify_chain"]


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Outcome of a verification: ``ok``, entries checked, and the first broken link if any."""

    ok: bool
    checked: int
    broken_seq: int | None = None
    reason: str = ""


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
    expected_seq = after + 1
    checked = 0
    for row in rows:
        if row.seq != expected_seq:
            return ChainReport(
                False, checked, expected_seq, f"entry {expected_seq} is missing (found {row.seq})"
            )
        if row.prev_hash != prev:
            return ChainReport(False, checked, row.seq, "link to the previous entry is broken")
        entry = AuditEntry(row.actor, row.action, row.subject, row.outcome, row.detail)
        if audit_hash(prev, row.seq, row.ts, entry) != row.hash:
            return ChainReport(False, checked, row.seq, "entry content does not match its hash")
        prev = row.hash
        expected_seq += 1
        checked += 1
    if after + checked != head_length or prev != head_hash:
        return ChainReport(
            False,
            checked,
            after + checked + 1,
            f"chain ends at entry {after + checked} but the head records {head_length}",
        )
    return ChainReport(True, checked)
