"""Errors of the gateway's service layer.

Exception tree::

    GatewayError
    ├── InvalidRequest          a request field is missing or malformed (.field)
    ├── RecordTooLarge          the record exceeds the size limit
    ├── UnknownCity             a city region code is not served (.field, .city)
    ├── CaseNotFound            no such case, or not visible to the caller
    ├── DeadLetterNotFound      no such dead letter
    ├── RequestIdReused         the request_id was used with a different body
    ├── IllegalTransition       the status change breaks the lifecycle (.current, .requested)
    ├── UnknownStatusCode       a status code not in the reporter's code list
    ├── NotRepresentable        a stored record cannot be written in the requested schema
    ├── InvalidPageToken        the page token is malformed or from another query
    ├── Unauthenticated         no valid client identity
    ├── PermissionDenied        the caller's ACL refuses this
    ├── RateLimited             too many requests (.retry_after)
    ├── AuditKeyUnknown         a peer's checkpoint signed by a key not held for that peer
    ├── CheckpointConflict      a peer's checkpoint contradicts one witnessed before
    └── BackendUnavailable      the store is unreachable (.retry_after)

Mapping errors (adapters.mapping.MappingError) travel beside these; gateway.rpc.errors turns
both into gRPC status with rich details in one table.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuditKeyUnknown",
    "BackendUnavailable",
    "CaseNotFound",
    "CheckpointConflict",
    "DeadLetterNotFound",
    "ExchangeIdTaken",
    "GatewayError",
    "HomeCityNotServed",
    "IllegalTransition",
    "InvalidIdentifier",
    "InvalidPageToken",
    "InvalidRequest",
    "NotRepresentable",
    "OutOfOrder",
    "PartnerRefused",
    "PermissionDenied",
    "RateLimited",
    "RecordNotFound",
    "RecordTooLarge",
    "RequestIdReused",
    "Unauthenticated",
    "UnknownCity",
    "UnknownStatusCode",
]


class GatewayError(Exception):
    """Base class of the service layer's errors. ``field`` names the request field, if any."""

    field: str = ""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        if field:
            self.field = field

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled whole (the store's writer process sends errors back): subclasses take other
        # constructor arguments, so rebuild from the attributes instead of calling __init__.
        return (_restore, (type(self), self.args, dict(self.__dict__)))


def _restore(cls: type[GatewayError], args: tuple[Any, ...], state: dict[str, Any]) -> GatewayError:
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class InvalidRequest(GatewayError):
    """A request field is missing or malformed."""


class RecordTooLarge(GatewayError):
    """The record exceeds the configured size limit."""


class UnknownCity(GatewayError):
    """A city region code that this gateway does not serve."""

    def __init__(self, city: str, field: str) -> None:
        shown = repr(city) if len(city) == 6 and city.isascii() and city.isdigit() else "that value"
        super().__init__(f"{field}: {shown} is not a city served by this gateway", field)
        self.city = city


class InvalidIdentifier(GatewayError):
    """An identity number or credit code fails its standard; ``reason`` says which."""

    def __init__(self, message: str, field: str, reason: str) -> None:
        super().__init__(message, field)
        self.reason = reason


class HomeCityNotServed(GatewayError):
    """The home city of an identity has no system connected to this gateway."""


class RecordNotFound(GatewayError):
    """The home city's system does not know the person or enterprise."""


class PartnerRefused(GatewayError):
    """The partner system refused the query."""


class CaseNotFound(GatewayError):
    """The case does not exist or is not visible to the caller (no existence leak)."""


class DeadLetterNotFound(GatewayError):
    """The dead letter does not exist."""


class RequestIdReused(GatewayError):
    """The request_id was used before with a different body."""


class ExchangeIdTaken(GatewayError):
    """A peer gateway delivered a case under an exchange id that another case holds here."""


class OutOfOrder(GatewayError):
    """A peer gateway's status change arrived before an earlier one of the same case; retry
    after ``retry_after`` seconds."""

    def __init__(self, message: str, field: str = "", retry_after: float = 1.0) -> None:
        super().__init__(message, field)
        self.retry_after = retry_after


class IllegalTransition(GatewayError):
    """The requested status change is not allowed from the current status."""

    def __init__(self, current: str, requested: str) -> None:
        super().__init__(f"a case in {current} cannot move to {requested}", "status_code")
        self.current, self.requested = current, requested


class UnknownStatusCode(GatewayError):
    """A status code that is not in the reporting city's code list."""


class NotRepresentable(GatewayError):
    """A stored record cannot be written in the schema asked for."""


class InvalidPageToken(GatewayError):
    """The page token is malformed or belongs to another query."""


class Unauthenticated(GatewayError):
    """The caller did not present a valid identity."""


class PermissionDenied(GatewayError):
    """The caller's ACL does not allow the call."""


class RateLimited(GatewayError):
    """The caller exceeded its rate limit; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AuditKeyUnknown(GatewayError):
    """A peer gateway's audit checkpoint is signed by a key this gateway does not hold for it."""


class CheckpointConflict(GatewayError):
    """A peer gateway's audit checkpoint has another hash than one of the same length this
    gateway witnessed before (both kept: the peer signed two different chains)."""


class BackendUnavailable(GatewayError):
    """The store (or another backend) is unreachable; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
