"""The canonical case lifecycle (see CaseStatus in proto/tongban/v1/records.proto).

>>> allowed("CASE_STATUS_ACCEPTED", "CASE_STATUS_IN_PROGRESS")
True
>>> allowed("CASE_STATUS_COMPLETED_APPROVED", "CASE_STATUS_IN_PROGRESS")
False
"""

from __future__ import annotations

__all__ = ["GATEWAYS_OWN", "TERMINAL", "TRANSITIONS", "allowed", "is_terminal"]

_COMPLETED = {
    "CASE_STATUS_COMPLETED_APPROVED",
    "CASE_STATUS_COMPLETED_DENIED",
    "CASE_STATUS_COMPLETED_RETURNED",
}
_WITHDRAWN = "CASE_STATUS_WITHDRAWN"

#: status -> statuses it may move to.
TRANSITIONS: dict[str, frozenset[str]] = {
    "CASE_STATUS_SUBMITTED": frozenset({"CASE_STATUS_RECEIVED", _WITHDRAWN}),
    "CASE_STATUS_RECEIVED": frozenset(
        {"CASE_STATUS_ACCEPTED", "CASE_STATUS_NOT_ACCEPTED", _WITHDRAWN}
    ),
    "CASE_STATUS_ACCEPTED": frozenset(
        {"CASE_STATUS_IN_PROGRESS", "CASE_STATUS_SUPPLEMENT_REQUIRED", _WITHDRAWN, *_COMPLETED}
    ),
    "CASE_STATUS_IN_PROGRESS": frozenset(
        {"CASE_STATUS_SUPPLEMENT_REQUIRED", _WITHDRAWN, *_COMPLETED}
    ),
    "CASE_STATUS_SUPPLEMENT_REQUIRED": frozenset(
        {"CASE_STATUS_IN_PROGRESS", _WITHDRAWN, *_COMPLETED}
    ),
}

#: Statuses the gateways set themselves, stamped by their own clocks: SUBMITTED when a case is
#: accepted, RECEIVED when its delivery to the handling city succeeds. The others are the
#: cities' own, stamped by the city that reports them.
GATEWAYS_OWN = frozenset({"CASE_STATUS_SUBMITTED", "CASE_STATUS_RECEIVED"})

#: Statuses with no way out.
TERMINAL = frozenset({"CASE_STATUS_NOT_ACCEPTED", _WITHDRAWN, *_COMPLETED})


def allowed(current: str, new: str) -> bool:
    """Whether a case in ``current`` may move to ``new``."""
    return new in TRANSITIONS.get(current, frozenset())


def is_terminal(status: str) -> bool:
    """Whether ``status`` ends the case."""
    return status in TERMINAL
