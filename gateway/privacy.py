"""Masking of personal data for logs, error messages and anything else that leaves the core.

>>> mask_id("440305199103150249")
'4403************49'
>>> mask_name("陈嘉怡")
'陈**'
>>> mask_phone("13800138000")
'138****8000'
"""

from __future__ import annotations

__all__ = ["mask_id", "mask_name", "mask_phone"]


def mask_id(value: str) -> str:
    """Keep the first four and last two characters of an identity number."""
    if len(value) <= 6:
        return "*" * len(value)
    return value[:4] + "*" * (len(value) - 6) + value[-2:]


def mask_name(value: str) -> str:
    """Keep the first character of a name."""
    return value[:1] + "*" * (len(value) - 1) if value else value


def mask_phone(value: str) -> str:
    """Keep the first three and last four digits of a phone number."""
    if len(value) <= 7:
        return "*" * len(value)
    return value[:3] + "*" * (len(value) - 7) + value[-4:]
