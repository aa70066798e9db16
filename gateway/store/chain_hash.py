"""The audit chain's hash functions (``audit.hash_algorithm``), and the entry switching them.

Light on purpose: the settings check that this Python computes the configured function
without importing the store's writer (and SQLAlchemy with it).
"""

from __future__ import annotations

import hashlib

__all__ = ["HASH_ALGORITHMS", "HASH_NAMES", "SWITCH_ACTION", "algorithm_after", "hash_available"]

#: The hash functions an audit chain is computed with: SHA-256, or SM3 (GB/T 32905), both 256
#: bits written as 64 hex digits, both from the OpenSSL that Python's hashlib is built on.
HASH_ALGORITHMS = ("sha256", "sm3")
#: Their names as reports print them.
HASH_NAMES = {"sha256": "SHA-256", "sm3": "SM3"}

#: The action of the entry that changes the chain's hash function: hashed with the function
#: before it, its subject names the function of every entry after it (:func:`algorithm_after`).
SWITCH_ACTION = "audit.hash"


def algorithm_after(action: str, subject: str, algorithm: str) -> str:
    """The hash function of the entries after one of ``action`` and ``subject`` hashed with
    ``algorithm``: the one a :data:`SWITCH_ACTION` entry names, else the same. ValueError
    when the entry names a function this code does not know (a chain of a newer gateway)."""
    if action != SWITCH_ACTION:
        return algorithm
    if subject not in HASH_ALGORITHMS:
        raise ValueError(f"the chain switches to a hash function this gateway lacks: {subject!r}")
    return subject


def hash_available(algorithm: str) -> bool:
    """Whether this Python's hashlib computes ``algorithm`` (SM3 needs an OpenSSL with it)."""
    try:
        hashlib.new(algorithm, b"")
    except ValueError:
        return False
    return True
