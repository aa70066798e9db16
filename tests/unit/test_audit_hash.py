"""The audit chain's hash is over the same bytes it was before orjson wrote them: chains written
by earlier versions still verify. With SM3 it is the standard's SM3 over those bytes (checked
against GB/T 32905's examples and against gmssl, an SM3 written apart from OpenSSL)."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.store.chain_hash import HASH_ALGORITHMS, SWITCH_ACTION, algorithm_after, hash_available
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


# -- SM3 (audit.hash_algorithm = "sm3") ---------------------------------------------------------

#: GB/T 32905-2016, appendix A: its two examples, and their hashes.
SM3_EXAMPLES = [
    (b"abc", "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"),
    (b"abcd" * 16, "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"),
]


def _sm3_by_gmssl(data: bytes) -> str:
    """SM3 as gmssl computes it: written apart from OpenSSL, in Python (an independent check)."""
    from gmssl import func, sm3

    return str(sm3.sm3_hash(func.bytes_to_list(data)))


def test_sm3_is_the_standards_hash() -> None:
    for data, digest in SM3_EXAMPLES:
        assert hashlib.new("sm3", data).hexdigest() == digest
        assert _sm3_by_gmssl(data) == digest


def test_an_sm3_chain_hash_is_sm3_over_the_same_bytes_as_sha256s() -> None:
    entry = AuditEntry("zs", "case.submit", "深圳市 → 中山市", "accepted", "to 440300")
    body = json.dumps(
        [7, repr(1764115200.5), *entry[:3], entry.detail, entry.outcome],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    data = (GENESIS + body).encode()
    assert audit_hash(GENESIS, 7, 1764115200.5, entry, "sm3") == _sm3_by_gmssl(data)
    assert audit_hash(GENESIS, 7, 1764115200.5, entry) == hashlib.sha256(data).hexdigest()
    assert audit_hash(GENESIS, 7, 1764115200.5, entry, "sm3") != audit_hash(
        GENESIS, 7, 1764115200.5, entry
    )


@settings(max_examples=100, deadline=None)
@given(
    seq=st.integers(min_value=1, max_value=2**62),
    ts=st.floats(min_value=0, max_value=4e9),
    fields=st.tuples(_text, _text, _text, _text, _text),
)
def test_sm3_chain_hash_agrees_with_gmssl_for_any_text(
    seq: int, ts: float, fields: tuple[str, ...]
) -> None:
    entry = AuditEntry(*fields)
    body = json.dumps(
        [seq, repr(ts), entry.actor, entry.action, entry.subject, entry.detail, entry.outcome],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    expected = _sm3_by_gmssl((GENESIS + body).encode())
    assert audit_hash(GENESIS, seq, ts, entry, "sm3") == expected


def test_only_a_switch_entry_changes_the_function_and_only_to_a_known_one() -> None:
    assert algorithm_after("case.submit", "sm3", "sha256") == "sha256"
    assert algorithm_after(SWITCH_ACTION, "sm3", "sha256") == "sm3"
    assert algorithm_after(SWITCH_ACTION, "sha256", "sm3") == "sha256"
    with pytest.raises(ValueError, match="'md5'"):
        algorithm_after(SWITCH_ACTION, "md5", "sha256")
    assert all(hash_available(a) for a in HASH_ALGORITHMS)
    assert not hash_available("no-such-hash")
