"""Masking of personal data for logs, error messages and anything else that leaves the core.

>>> mask_id("440305199103150249")
'4403************49'
>>> mask_phone("13800138000")
'138****8000'
"""

from __future__ import annotations

import re

__all__ = ["mask_id", "mask_phone", "scrub"]

_ID = re.compile(r"(?<![0-9A-Za-z])[1-9]\d{5}(?:19|20)\d{2}[01]\d[0-3]\d\d{3}[\dXx](?![0-9A-Za-z])")
_USCC = re.compile(r"(?<![0-9A-Z])[0-9A-HJ-NPQRTUWXY]{2}\d{6}[0-9A-HJ-NPQRTUWXY]{10}(?![0-9A-Z])")
_PHONE = re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)")


def mask_id(value: str) -> str:
    """Keep the first four and last two characters of an identity number."""
    if len(value) <= 6:
        return "*" * len(value)
    return value[:4] + "*" * (len(value) - 6) + value[-2:]


def mask_phone(value: str) -> str:
    """Keep the first three and last four digits of a phone number."""
    if len(value) <= 7:
        return "*" * len(value)
    return value[:3] + "*" * (len(value) - 7) + value[-4:]


def scrub(text: str) -> str:
    """Mask ID numbers, credit codes and mobile numbers inside free text (e.g. a partner's error).

    >>> scrub("applicant 440305199103150249 (13800138000) rejected")
    'applicant 4403************49 (138****8000) rejected'
    """
    text = _ID.sub(lambda m: mask_id(m.group()), text)
    text = _USCC.sub(lambda m: mask_id(m.group()), text)
    return _PHONE.sub(lambda m: mask_phone(m.group()), text)
