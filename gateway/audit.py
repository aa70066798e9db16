"""Verification of the append-only, hash-chained audit log.

Each entry's hash is H(previous hash + the entry's canonical JSON) (see
gateway.store.writer.audit_hash), H being SHA-256 or SM3: the function of the chain's first
entry is SHA-256, and an ``audit.hash`` entry names the function of the entries after it
(``audit.hash_algorithm``; a walk follows it, gateway.store.chain_hash). Editing, deleting or
reordering any entry breaks the chain from that entry on; :func:`verify_chain` finds the first broken link. A chain whose hashes were
all computed again after an edit is found by its signed checkpoints (gateway.audit_signing):
given them (``signed``), the walk also checks each signed entry's hash.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .audit_signing import Checkpoint, signature_problem
from .store.chain_hash import algorithm_after
from .store.writer import GENESIS, AuditEntry, audit_hash
from .timestamps import utc_text

if TYPE_CHECKING:
    from .audit_signing import PublicKey
    from .store.reads import StoreReader

__all__ = [
    "ChainReport",
    "SignedCheckpoints",
    "check_link",
    "sort_checkpoints",
    "verify_chain",
    "verify_store_chain",
]

#: Signed checkpoints whose signatures hold, by the length they cover.
Signed = Mapping[int, Checkpoint]


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
    #: The hash function of the entry after the last one checked, and the last entry of the
    #: walk that switched to it (0: none did; it is the function the walk started with).
    algorithm: str = "sha256"
    switched_at: int = 0
    #: The hash function of entry ``after + 1`` (where archive files must end).
    after_algorithm: str = "sha256"


def check_link(
    row: Any, seq: int, prev: str, algorithm: str, signed: Signed | None = None
) -> tuple[str, str]:
    """(what is wrong with ``row`` as entry ``seq`` of the chain, following the hash ``prev``,
    hashed with ``algorithm`` and, if a checkpoint in ``signed`` covers it, ending with the
    signed hash: "" when nothing is; the hash function of the entry after it). Shared by the
    store's chain and the archive files'."""
    if row.seq != seq:
        return f"missing (found entry {row.seq})", algorithm
    if row.prev_hash != prev:
        return "link to the previous entry is broken", algorithm
    entry = AuditEntry(row.actor, row.action, row.subject, row.outcome, row.detail)
    try:
        computed = audit_hash(prev, row.seq, row.ts, entry, algorithm)
    except ValueError:  # hashlib: this Python's OpenSSL lacks the function
        return f"cannot be checked: this Python's hashlib has no {algorithm}", algorithm
    if computed != row.hash:
        return "content does not match its hash", algorithm
    if signed and (cp := signed.get(seq)) is not None and cp.hash != row.hash:
        return (
            f"rewritten: the chain up to here is not the one key {cp.key_id} signed at "
            f"{utc_text(cp.ts)}"
        ), algorithm
    try:
        return "", algorithm_after(row.action, row.subject, algorithm)
    except ValueError as exc:  # a switch to a function this gateway does not know
        return str(exc), algorithm


@dataclass(frozen=True, slots=True)
class SignedCheckpoints:
    """Checkpoints sorted by their signatures: ``trusted`` (they hold, by length), ``problems``
    (one line per checkpoint that does not hold, or that contradicts another), ``unchecked``
    (how many could not be checked: no trusted key was given)."""

    trusted: dict[int, Checkpoint] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    unchecked: int = 0


def sort_checkpoints(
    checkpoints: Iterable[Checkpoint], keys: Mapping[str, PublicKey]
) -> SignedCheckpoints:
    """Check each checkpoint's signature against the trusted ``keys``; two that hold for one
    length with different hashes are a problem too (the key signed two different chains)."""
    found = list(checkpoints)
    if not keys:
        return SignedCheckpoints(unchecked=len(found))
    trusted: dict[int, Checkpoint] = {}
    problems: list[str] = []
    for cp in found:
        problem = signature_problem(cp, keys)
        if problem:
            problems.append(f"checkpoint of entries 1-{cp.length} ({utc_text(cp.ts)}): {problem}")
            continue
        seen = trusted.setdefault(cp.length, cp)
        if seen.hash != cp.hash:
            problems.append(
                f"two checkpoints of entries 1-{cp.length} hold different hashes "
                f"({utc_text(seen.ts)} and {utc_text(cp.ts)})"
            )
    return SignedCheckpoints(trusted, tuple(problems))


def verify_chain(
    rows: Iterable[Any],
    head_length: int,
    head_hash: str,
    after: int = 0,
    after_hash: str = GENESIS,
    signed: Signed | None = None,
    algorithm: str = "sha256",
    head_algorithm: str | None = None,
) -> ChainReport:
    """Walk ``rows`` (in seq order, from entry ``after + 1``, whose previous hash is
    ``after_hash`` and whose hash function is ``algorithm``) and the recorded head (its
    function ``head_algorithm``, when given), checking the hashes ``signed`` covers; report
    the first inconsistency."""
    prev, start = after_hash, algorithm
    checked = switched_at = 0
    for row in rows:
        seq = after + checked + 1
        problem, following = check_link(row, seq, prev, algorithm, signed)
        if following != algorithm:
            algorithm, switched_at = following, seq
        if problem:
            return ChainReport(
                False, checked, seq, problem, after, after_hash, algorithm, switched_at, start
            )
        prev = row.hash
        checked += 1
    end = after + checked
    if end != head_length or prev != head_hash:
        problem = f"chain ends at entry {end} but the head records {head_length}"
    elif head_algorithm is not None and head_algorithm != algorithm:
        how = f"switched to {algorithm} at entry {switched_at}" if switched_at else algorithm
        problem = f"the head records the hash function {head_algorithm}, the entries {how}"
    else:
        return ChainReport(
            True, checked, None, "", after, after_hash, algorithm, switched_at, start
        )
    return ChainReport(
        False, checked, end + 1, problem, after, after_hash, algorithm, switched_at, start
    )


def verify_store_chain(reader: StoreReader, signed: Signed | None = None) -> ChainReport:
    """Verify the chain a store holds: from after its archived entries (if any) to its head,
    read first (entries a running gateway appends meanwhile are not part of the walk), and
    against the checkpoints ``signed`` (one of a length past the head: the chain was cut)."""
    after, after_hash = reader.audit_archived()
    start, head_algorithm = reader.audit_hash_algorithms()
    length, head = reader.audit_head()
    report = verify_chain(
        reader.audit_rows(length, after=after),
        length,
        head,
        after,
        after_hash,
        signed,
        start,
        head_algorithm,
    )
    beyond = [cp for n, cp in (signed or {}).items() if n > length]
    if report.ok and beyond:
        cp = max(beyond, key=lambda c: c.length)
        return ChainReport(
            False,
            report.checked,
            length + 1,
            f"cut short: the chain holds {length} entries, but key {cp.key_id} signed "
            f"{cp.length} at {utc_text(cp.ts)}",
            after,
            after_hash,
            report.algorithm,
            report.switched_at,
            report.after_algorithm,
        )
    return report
