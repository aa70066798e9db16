"""Canonical records at the edges: protobuf JSON in and out, and built-in field validation.

Canonical input from outside (a canonical Translate request, a canonical SubmitCase) is parsed
with protobuf's own JSON parser, so it follows the published contract exactly, then normalised to
the dict form the compiled mappings read, and checked by the same validators the mappings use.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from tongban.v1 import records_pb2

from . import convert
from .canonical import CANONICAL_KINDS, _fields
from .errors import Issue

__all__ = [
    "MESSAGE_CLASSES",
    "canonical_to_message",
    "case_message",
    "message_to_canonical",
    "parse_canonical",
    "validate_canonical",
]

#: Record kind -> protobuf class.
MESSAGE_CLASSES: dict[str, type[Message]] = {
    "case": records_pb2.Case,
    "person": records_pb2.Person,
    "enterprise": records_pb2.Enterprise,
}


def message_to_canonical(message: Message) -> dict[str, Any]:
    """A canonical protobuf message as the dict form used by mappings."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def canonical_to_message(kind: str, record: dict[str, Any]) -> Message:
    """The protobuf message for a canonical dict (already validated)."""
    return json_format.ParseDict(record, MESSAGE_CLASSES[kind]())


def case_message(record: dict[str, Any]) -> records_pb2.Case:
    """A canonical case dict as a ``tongban.v1.Case``."""
    return json_format.ParseDict(record, records_pb2.Case())


def parse_canonical(kind: str, record: Any) -> tuple[dict[str, Any], list[Issue]]:
    """Parse canonical JSON (an object) of ``kind``; return the normalised dict and its issues."""
    message = MESSAGE_CLASSES[kind]()
    try:
        json_format.ParseDict(record, message)
    except json_format.ParseError as exc:
        text = str(exc)
        # protobuf names the field in its message ("... field: Message.name ...").
        return {}, [Issue("INVALID_CANONICAL_RECORD", "", "", CANONICAL_KINDS[kind], _scrub(text))]
    normalised = message_to_canonical(message)
    return normalised, validate_canonical(kind, normalised)


def _scrub(text: str) -> str:
    # ParseError messages may quote the offending value; keep only the part naming the field.
    head = text.split(":", maxsplit=1)[0]
    return head[:200] if head else "record does not match the canonical message"


def validate_canonical(kind: str, record: dict[str, Any]) -> list[Issue]:
    """Run the built-in validators over a canonical dict; issues name canonical paths."""
    issues: list[Issue] = []
    _walk(CANONICAL_KINDS[kind], record, "", "", issues)
    return issues


def _walk(message: str, obj: dict[str, Any], ptr: str, path: str, issues: list[Issue]) -> None:
    fields = _fields(message)
    for name, value in obj.items():
        f = fields.get(name)
        if f is None:
            continue
        p, c = f"{ptr}/{name}", f"{path}.{name}" if path else name
        if f.kind == "message" and f.target_message:
            if f.repeated:
                for i, item in enumerate(value):
                    _walk(f.target_message, item, f"{p}/{i}", f"{c}[{i}]", issues)
            else:
                _walk(f.target_message, value, p, c, issues)
            continue
        if f.validator is None or not isinstance(value, str):
            continue
        try:
            if f.validator == "certificate_number":
                found = convert.check_certificate_number(value, obj.get("certificate_type"))
            else:
                found = convert.CANONICAL_VALIDATORS[f.validator](value)
        except convert.ValueProblem as exc:
            issues.append(Issue(exc.code, p, c, message, exc.message))
        else:
            issues.extend(Issue(code, p, c, message, msg, "warning") for code, msg in found)
