"""Errors of the mapping engine.

Exception tree::

    MappingError
    ├── MappingLoadError        a mapping set failed to load or check (carries .problems)
    ├── UnknownSchemaError      a schema name is not registered
    ├── KindMismatchError       source and target schemas hold different record kinds
    ├── MalformedRecordError    the input is not a JSON object
    └── RecordInvalidError      the record failed its mapping (carries .issues)

Problems found while translating one record are collected as :class:`Issue` values instead of
raised one by one, so a caller sees every problem of a record at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Issue",
    "KindMismatchError",
    "MalformedRecordError",
    "MappingError",
    "MappingLoadError",
    "Problem",
    "RecordInvalidError",
    "UnknownSchemaError",
]

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem with one record: where it is on both sides, which rule, and why.

    ``pointer`` is a JSON pointer into the record as the caller sent it (``/CLXX/2/CLMC``);
    ``canonical`` the canonical path (``materials[2].name``); ``rule`` the mapping file and line.
    ``message`` never holds the raw value: values are redacted with :func:`redact`.
    """

    code: str
    pointer: str
    canonical: str
    rule: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = self.pointer or self.canonical or "/"
        return f"{self.severity}: {self.code} at {where} ({self.rule}): {self.message}"


@dataclass(frozen=True, slots=True)
class Problem:
    """A problem in a mapping file, found at load time."""

    file: str
    line: int
    message: str
    rule: str = ""

    def __str__(self) -> str:
        rule = f" [{self.rule}]" if self.rule else ""
        return f"{self.file}:{self.line}:{rule} {self.message}"


class MappingError(Exception):
    """Base class of every error raised by the mapping engine."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled whole (the gateway's store writer process translates and sends errors back):
        # subclasses take other constructor arguments, so rebuild from the attributes.
        return (_restore, (type(self), self.args, dict(self.__dict__)))


def _restore(cls: type[MappingError], args: tuple[Any, ...], state: dict[str, Any]) -> MappingError:
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class MappingLoadError(MappingError):
    """A mapping set failed to load or check. ``problems`` lists every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        head = f"{len(problems)} problem(s) in mapping set"
        super().__init__("\n".join([head, *(str(p) for p in problems)]))


class UnknownSchemaError(MappingError):
    """The schema name is not registered. ``field`` names the request field that held it."""

    def __init__(self, schema: str, field: str = "") -> None:
        self.schema = schema
        self.field = field
        # Echo only what looks like a schema name; never free text (it could be personal data).
        looks = (
            0 < len(schema) <= 64
            and schema.isascii()
            and all(c.isalnum() or c in "._-" for c in schema)
        )
        super().__init__(
            f"unknown schema {schema!r}" if looks else "unknown schema (not a schema name)"
        )


class KindMismatchError(MappingError):
    """The source and target schemas describe different record kinds."""

    def __init__(self, source: str, target: str) -> None:
        self.source, self.target = source, target
        super().__init__(f"schema {source!r} and {target!r} hold different record kinds")


class MalformedRecordError(MappingError):
    """The input record is not a JSON object (bad UTF-8, bad JSON, or not an object)."""


@dataclass
class RecordInvalidError(MappingError):
    """The record failed its mapping; ``issues`` holds every error (and warning) found."""

    schema: str
    issues: list[Issue] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.summary())

    @property
    def errors(self) -> list[Issue]:
        """Only the issues of severity ``error``."""
        return [i for i in self.issues if i.severity == "error"]

    def summary(self) -> str:
        """One line naming the first error and how many there are."""
        errs = self.errors
        if not errs:
            return f"record in schema {self.schema!r} is invalid"
        first = errs[0]
        more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
        return f"{first.pointer or first.canonical or '/'}: {first.message}{more}"
