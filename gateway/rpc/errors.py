"""Domain errors to gRPC status, in one table (AIP-193).

Every error leaves with a canonical code, a message, one ``google.rpc.ErrorInfo`` (domain
``tongban.v1``, an UPPER_SNAKE reason from ``tongban.v1.ErrorReason``), a ``google.rpc.BadRequest``
naming the fields in the caller's own schema when fields are at fault, and ``google.rpc.RetryInfo``
when the caller should come back later. Unexpected exceptions become INTERNAL with a reference to
the log line, never a stack trace.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from adapters.mapping import (
    Issue,
    KindMismatchError,
    MalformedRecordError,
    MappingError,
    RecordInvalidError,
    UnknownSchemaError,
)
from gateway import errors as e
from gateway.privacy import scrub

__all__ = ["DOMAIN", "status_for"]

DOMAIN = "tongban.v1"
log = logging.getLogger("tongban.rpc")

# exception type -> (status code, reason). First match wins: subclasses before bases.
_TABLE: list[tuple[type[Exception], grpc.StatusCode, str]] = [
    (e.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
    (e.RecordTooLarge, grpc.StatusCode.INVALID_ARGUMENT, "RECORD_TOO_LARGE"),
    (e.UnknownCity, grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_CITY"),
    (e.CaseNotFound, grpc.StatusCode.NOT_FOUND, "CASE_NOT_FOUND"),
    (e.InvalidIdentifier, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ID_NUMBER"),
    (e.HomeCityNotServed, grpc.StatusCode.NOT_FOUND, "HOME_CITY_NOT_SERVED"),
    (e.RecordNotFound, grpc.StatusCode.NOT_FOUND, "RECORD_NOT_FOUND"),
    (e.PartnerRefused, grpc.StatusCode.FAILED_PRECONDITION, "PARTNER_REFUSED"),
    (e.DeadLetterNotFound, grpc.StatusCode.NOT_FOUND, "DEAD_LETTER_NOT_FOUND"),
    (e.RequestIdReused, grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED"),
    (e.IllegalTransition, grpc.StatusCode.FAILED_PRECONDITION, "ILLEGAL_TRANSITION"),
    (e.ExchangeIdTaken, grpc.StatusCode.ALREADY_EXISTS, "EXCHANGE_ID_TAKEN"),
    (e.OutOfOrder, grpc.StatusCode.ABORTED, "OUT_OF_ORDER"),
    (e.InvalidPageToken, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN"),
    (e.UnknownStatusCode, grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_CODE"),
    (e.NotRepresentable, grpc.StatusCode.FAILED_PRECONDITION, "MAPPING_FAILED"),
    (e.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
    (e.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
    (e.RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"),
    (e.BackendUnavailable, grpc.StatusCode.UNAVAILABLE, "BACKEND_UNAVAILABLE"),
    (e.AuditKeyUnknown, grpc.StatusCode.FAILED_PRECONDITION, "AUDIT_KEY_UNKNOWN"),
    (e.CheckpointConflict, grpc.StatusCode.ALREADY_EXISTS, "AUDIT_CHECKPOINT_CONFLICT"),
    (UnknownSchemaError, grpc.StatusCode.NOT_FOUND, "UNKNOWN_SCHEMA"),
    (KindMismatchError, grpc.StatusCode.INVALID_ARGUMENT, "KIND_MISMATCH"),
    (MalformedRecordError, grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_RECORD"),
    (RecordInvalidError, grpc.StatusCode.INVALID_ARGUMENT, "MAPPING_FAILED"),
]

# A record whose errors all share one of these codes gets the matching, more precise reason.
_ISSUE_REASONS = {
    "INVALID_ID_NUMBER": "INVALID_ID_NUMBER",
    "INVALID_CREDIT_CODE": "INVALID_CREDIT_CODE",
    "UNKNOWN_CODE": "UNKNOWN_CODE",
}


# Whatever a caller sent may come back in an error; bound it so that a hostile value can never
# overflow gRPC's metadata limit (status details travel in trailers).
_MAX_MESSAGE, _MAX_FIELD, _MAX_META = 500, 80, 128


def _clip(text: str, limit: int) -> str:
    # Also masks ID numbers, credit codes and phones a caller may have put anywhere.
    text = scrub(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


_MAX_VIOLATIONS = 20


def _violations(issues: Iterable[Issue], prefix: str) -> error_details_pb2.BadRequest:
    br = error_details_pb2.BadRequest()
    items = list(issues)
    if len(items) > _MAX_VIOLATIONS:
        rest = len(items) - _MAX_VIOLATIONS + 1
        items = items[: _MAX_VIOLATIONS - 1]
        br.field_violations.add(
            field="", description=f"... and {rest} more problems", reason="MORE_PROBLEMS"
        )
    for i in items:
        v = br.field_violations.add()
        v.field = _clip(
            f"{prefix}{i.pointer}" if i.pointer else prefix.rstrip(":") or i.canonical, _MAX_FIELD
        )
        v.description = _clip(f"{i.code}: {i.message}", _MAX_MESSAGE)
        v.reason = i.code
    return br


def status_for(
    exc: BaseException, record_field: str = ""
) -> tuple[grpc.StatusCode, str, status_pb2.Status]:
    """The gRPC code, message and rich ``google.rpc.Status`` for ``exc``.

    ``record_field`` prefixes JSON pointers of record issues (e.g. ``"record:"`` gives
    ``record:/SQRZJHM``); by default the pointer alone names the field in the caller's schema.
    """
    found = next(((c, r) for cls, c, r in _TABLE if isinstance(exc, cls)), None)
    if found is None:
        ref = uuid.uuid4().hex[:12]
        log.error("unexpected error (ref %s)", ref, exc_info=exc)
        code, reason = grpc.StatusCode.INTERNAL, "INTERNAL"
        message = f"internal error (ref {ref})"
        st = status_pb2.Status(code=code_pb2.INTERNAL, message=message)
        st.details.append(_pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN)))
        return code, message, st
    code, reason = found
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN)
    details: list[object] = []
    if isinstance(exc, RecordInvalidError):
        errs = exc.errors
        codes = {i.code for i in errs}
        if len(codes) == 1 and next(iter(codes)) in _ISSUE_REASONS:
            info.reason = _ISSUE_REASONS[next(iter(codes))]
        info.metadata["schema"] = _clip(exc.schema, _MAX_META)
        info.metadata["errors"] = str(len(errs))
        message = _clip(
            f"record in schema {exc.schema!r} is invalid: {exc.summary()}", _MAX_MESSAGE
        )
        details.append(_violations(errs, record_field))
    elif isinstance(exc, UnknownSchemaError):
        info.metadata["schema"] = _clip(exc.schema, _MAX_META)
        message = _clip(str(exc), _MAX_MESSAGE)
        if exc.field:
            br = error_details_pb2.BadRequest()
            br.field_violations.add(
                field=_clip(exc.field, _MAX_FIELD), description=message, reason=reason
            )
            details.append(br)
    elif isinstance(exc, e.GatewayError):
        message = _clip(exc.message, _MAX_MESSAGE)
        if isinstance(exc, e.InvalidIdentifier):
            info.reason = exc.reason
        if exc.field:
            br = error_details_pb2.BadRequest()
            br.field_violations.add(
                field=_clip(exc.field, _MAX_FIELD), description=message, reason=reason
            )
            details.append(br)
        if isinstance(exc, e.RateLimited | e.BackendUnavailable | e.OutOfOrder):
            secs = max(exc.retry_after, 0.0)
            delay = duration_pb2.Duration(seconds=int(secs), nanos=int((secs % 1) * 1e9))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    elif isinstance(exc, MappingError):
        message = _clip(str(exc), _MAX_MESSAGE)
    else:  # pragma: no cover - the table covers every class above
        message = str(exc)
    message = _clip(message, _MAX_MESSAGE)
    st = status_pb2.Status(code=code.value[0], message=message)
    st.details.append(_pack(info))
    for d in details:
        st.details.append(_pack(d))
    return code, message, st
