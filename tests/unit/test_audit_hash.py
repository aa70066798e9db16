"""The audit chain's hash is over the same bytes it was before orjson wrote them: chains written
by earlier versions still verify."""

from __future__ import annotations

import hashlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

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


# Any text but lone surrogates (which neither UTF-8 nor a protobuf string carries).
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=500, deadline=None)
@given(
    seq=st.integers(min_value=1, max_value=2**62),
    ts=st.floats(min_value=0, max_value=4e9),
    fields=st.tuples(_text, _text, _text, _text, _text),
)
def test_same_hash_for_any_text(seq: int, ts: float, fields: tuple[str, ...]) -> None:
    entry = AuditEntry(*fields)
    assert audit_hash(GENESIS, seq, ts, entry) == _hash_as_before(GENESIS, seq, ts, entry)
