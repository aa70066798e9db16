"""What the canonical records look like, read from the ``tongban.v1`` protobuf descriptors.

The mapping engine works on canonical records as plain dicts in the protobuf JSON form with
proto field names (enums by name, timestamps as RFC 3339 UTC strings, dates "YYYY-MM-DD"), so
translating between two cities never builds protobuf objects. This module tells the checker which
fields exist, their kinds, and which built-in validator guards each one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from tongban.v1 import records_pb2

__all__ = [
    "CANONICAL_KINDS",
    "CanonicalField",
    "FieldKind",
    "canonical_leaf_paths",
    "enum_values",
    "message_descriptor",
    "resolve_canonical",
]

FieldKind = Literal["string", "enum", "int", "bool", "timestamp", "date", "message"]

#: Record kinds and the canonical message of each.
CANONICAL_KINDS: dict[str, str] = {
    "case": "tongban.v1.Case",
    "person": "tongban.v1.Person",
    "enterprise": "tongban.v1.Enterprise",
}

# String fields that hold calendar dates ("YYYY-MM-DD").
_DATE_FIELDS = {
    ("tongban.v1.Person", "birth_date"),
    ("tongban.v1.Completion", "licence_valid_until"),
}

# Built-in validators guarding canonical fields (see convert.CANONICAL_VALIDATORS).
_VALIDATORS = {
    ("tongban.v1.Person", "certificate_number"): "certificate_number",
    ("tongban.v1.Person", "phone"): "phone",
    ("tongban.v1.Person", "household_region"): "region",
    ("tongban.v1.Enterprise", "credit_code"): "credit_code",
    ("tongban.v1.Enterprise", "phone"): "phone",
    ("tongban.v1.Enterprise", "registered_region"): "region",
    ("tongban.v1.Acceptance", "unit_credit_code"): "credit_code",
    ("tongban.v1.Case", "receiving_city"): "region",
    ("tongban.v1.Case", "handling_city"): "region",
    ("tongban.v1.Material", "sha256"): "sha256",
}

_POOL = records_pb2.DESCRIPTOR.pool


@dataclass(frozen=True, slots=True)
class CanonicalField:
    """One field of a canonical message."""

    message: str
    name: str
    kind: FieldKind
    repeated: bool
    enum: str | None = None
    target_message: str | None = None
    validator: str | None = None

    @property
    def type_name(self) -> str:
        """A readable type, e.g. ``repeated tongban.v1.Material`` or ``enum tongban.v1.Sex``."""
        base = {
            "enum": f"enum {self.enum}",
            "message": str(self.target_message),
        }.get(self.kind, self.kind)
        return f"repeated {base}" if self.repeated else base


def message_descriptor(full_name: str) -> Descriptor:
    """The descriptor of a canonical message; KeyError when unknown."""
    return _POOL.FindMessageTypeByName(full_name)


@cache
def _fields(message: str) -> dict[str, CanonicalField]:
    desc = message_descriptor(message)
    out: dict[str, CanonicalField] = {}
    for f in desc.fields:
        repeated = f.is_repeated
        enum = target = None
        kind: FieldKind
        if f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type is not None:
            if f.message_type.full_name == "google.protobuf.Timestamp":
                kind = "timestamp"
            else:
                kind, target = "message", f.message_type.full_name
        elif f.type == FieldDescriptor.TYPE_ENUM and f.enum_type is not None:
            kind, enum = "enum", f.enum_type.full_name
        elif f.type == FieldDescriptor.TYPE_BOOL:
            kind = "bool"
        elif f.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_UINT32):
            kind = "int"
        elif (message, f.name) in _DATE_FIELDS:
            kind = "date"
        else:
            kind = "string"
        out[f.name] = CanonicalField(
            message, f.name, kind, repeated, enum, target, _VALIDATORS.get((message, f.name))
        )
    return out


def resolve_canonical(message: str, path: tuple[str, ...]) -> CanonicalField | str:
    """The field at ``path`` under ``message``, or a message saying why it does not exist."""
    current = message
    for i, name in enumerate(path):
        fields = _fields(current)
        if name not in fields:
            known = ", ".join(sorted(fields))
            where = ".".join(path[: i + 1])
            return f"canonical field {where!r} does not exist in {current} (fields: {known})"
        f = fields[name]
        if i == len(path) - 1:
            return f
        if f.kind != "message" or f.target_message is None:
            return f"canonical field {'.'.join(path[: i + 1])!r} is {f.type_name}, not a message"
        if f.repeated:
            return f"canonical field {'.'.join(path[: i + 1])!r} is a list; map it with 'each'"
        current = f.target_message
    raise ValueError("empty path")


@cache
def enum_values(enum: str) -> frozenset[str]:
    """Names of the values of a canonical enum, without the ``*_UNSPECIFIED`` zero value."""
    desc = _POOL.FindEnumTypeByName(enum)
    return frozenset(v.name for v in desc.values if v.number != 0)


def canonical_leaf_paths(message: str, prefix: str = "", depth: int = 0) -> list[str]:
    """Every leaf field path under ``message`` (lists shown as ``name[]``), for coverage."""
    out: list[str] = []
    for f in _fields(message).values():
        name = f"{prefix}{f.name}{'[]' if f.repeated else ''}"
        if f.kind == "message" and f.target_message and depth < 3:
            out.extend(canonical_leaf_paths(f.target_message, name + ".", depth + 1))
        else:
            out.append(name)
    return out
