"""The audit chain's hash is over the same bytes it was before orjson wrote them: chains written
by earlier versions still verify."""

from __future__ import annotations

import hashlib
import json
import random

from gateway.store.writer import GENESIS, AuditEntry, audit_hash


def _hash_as_before(prev: str, seq: int, ts: float, e: AuditEntry) -> str:
    """audit_hash as written with the stdlib's json module (until 2026-11-26)."""
    body = json.dumps(
        [seq, repr(ts), e.actor, e.action, e.subject, e.detail, e.outcome],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256((prev + body).encode()).hexdigest()


TRICKY = [
    "",
    "plain",
    'quote " and backslash \\ and slash /',
    "".join(chr(c) for c in range(0x20)),  # every control character
    "\x7f delete, \u0085 next line, \u2028 line and \u2029 paragraph separators",
    "深圳市 → 中山市, 粤港澳 ✓",
    "emoji 😀 and astral 𠀀",
    "\ufeff byte order mark, \ufffd replacement, \uffff",
]


def test_same_hash_as_the_stdlib_serialization_for_tricky_strings() -> None:
    prev = GENESIS
    for seq, text in enumerate(TRICKY, 1):
        for entry in (
            AuditEntry(text, "case.submit", "subject", "accepted", "to 440300"),
            AuditEntry("zs", text, text, text, text),
        ):
            for ts in (0.0, 1764115200.123456, 1e-7, 2.5e15):
                assert audit_hash(prev, seq, ts, entry) == _hash_as_before(prev, seq, ts, entry)
        prev = audit_hash(prev, seq, 1.0, AuditEntry(text, "a", "s", "o"))


def test_same_hash_for_random_text() -> None:
    rng = random.Random(20261126)
    # Any code point but the surrogates (which neither UTF-8 nor a protobuf string carries).
    points = [*range(0xD800), *range(0xE000, 0x110000)]
    for seq in range(1, 2001):
        fields = [
            "".join(chr(rng.choice(points)) for _ in range(rng.randint(0, 12))) for _ in "abcde"
        ]
        entry = AuditEntry(*fields)
        ts = rng.uniform(0, 2e9)
        assert audit_hash(GENESIS, seq, ts, entry) == _hash_as_before(GENESIS, seq, ts, entry)
