"""The mapping set a gateway serves: every city's mappings, loaded, checked and compiled.

A :class:`MappingSet` is immutable once built, so a running server can swap a new one in with one
assignment (hot reload) and a request in flight keeps the set it started with. Building one loads
every city folder, checks every mapping against its schemas, compiles both directions and applies
each mapping's coverage policy; any problem fails the whole set.

>>> from pathlib import Path
>>> ms = MappingSet.load(Path("mappings"))              # doctest: +SKIP
>>> result = ms.translate("zhongshan.case", "shenzhen.case", {"SBLSH": "..."})  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .canonical import CANONICAL_KINDS, canonical_leaf_paths
from .canonical_io import parse_canonical
from .compiler import CompiledMapping, compile_mapping
from .errors import (
    Issue,
    KindMismatchError,
    MalformedRecordError,
    MappingLoadError,
    Problem,
    RecordInvalidError,
    UnknownSchemaError,
)
from .model import City, Mapping, Rule, load_city

__all__ = ["CANONICAL_SCHEMAS", "Coverage", "MappingSet", "TranslationResult", "files_digest"]

#: Canonical schema name -> record kind.
CANONICAL_SCHEMAS: dict[str, str] = {v: k for k, v in CANONICAL_KINDS.items()}


#: What one step of a translation gives: the record, the mapping versions, the warnings.
_Step = tuple[dict[str, Any], tuple[str, ...], tuple[Issue, ...]]


@dataclass(frozen=True, slots=True)
class TranslationResult:
    """A translated record, the mapping versions that produced it, and its warnings."""

    record: dict[str, Any]
    versions: tuple[str, ...]
    warnings: tuple[Issue, ...] = ()


@dataclass(slots=True)
class Coverage:
    """Fields a mapping leaves out, in both directions."""

    schema: str
    source_unread: list[str] = field(default_factory=list)
    canonical_unfilled: list[str] = field(default_factory=list)
    source_unwritten: list[str] = field(default_factory=list)


def _leaves(
    rules: list[Rule], inbound: bool, prefix_src: str = "", prefix_can: str = ""
) -> tuple[set[str], set[str]]:
    """Source and canonical leaf paths touched by ``rules`` in one direction."""
    src: set[str] = set()
    can: set[str] = set()
    for r in rules:
        if not (r.inbound if inbound else r.outbound):
            continue
        if r.each is not None and r.source and r.target:
            s, c = _leaves(
                r.each,
                inbound,
                prefix_src + ".".join(r.source) + "[].",
                prefix_can + ".".join(r.target) + "[].",
            )
            src |= s
            can |= c
            continue
        if r.source:
            src.add(prefix_src + ".".join(r.source))
        if r.target:
            can.add(prefix_can + ".".join(r.target))
        if r.expr is not None:
            for p in r.expr.paths:
                (src if inbound else can).add((prefix_src if inbound else prefix_can) + ".".join(p))
    return src, can


def _ignored(path: str, ignore: frozenset[str]) -> bool:
    bare = path.replace("[]", "")
    return any(bare == i or bare.startswith(i + ".") for i in ignore)


def coverage_of(m: Mapping) -> Coverage:
    """What ``m`` reads, fills and writes, compared with both schemas."""
    src_in, can_in = _leaves(m.rules, inbound=True)
    src_out, _ = _leaves(m.rules, inbound=False)
    leaves = m.schema.leaf_paths()
    return Coverage(
        m.name,
        [p for p in leaves if p not in src_in and not _ignored(p, m.ignore_source)],
        [
            p
            for p in canonical_leaf_paths(m.canonical)
            if p not in can_in and not _ignored(p, m.ignore_canonical)
        ],
        [p for p in leaves if p not in src_out and not _ignored(p, m.ignore_source)],
    )


def files_digest(root: Path) -> str:
    """SHA-256 over the files below ``root`` that translations come from (each city's
    ``city.yaml``, mappings, code lists and schemas; not its golden samples, nor hidden
    files): each file's path relative to ``root`` and its bytes, in path order."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if "samples" in rel.parts[1:] or any(part.startswith(".") for part in rel.parts):
            continue
        name = rel.as_posix().encode("utf-8")
        data = path.read_bytes()
        h.update(len(name).to_bytes(4, "big") + name + len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


class MappingSet:
    """Immutable, fully checked mappings of every city under one folder."""

    def __init__(
        self,
        root: Path,
        cities: dict[str, City],
        compiled: dict[str, CompiledMapping],
        warnings: list[Problem],
        digest: str = "",
    ) -> None:
        self.root = root
        self.cities = cities
        self.cities_by_code = {c.code: c for c in cities.values()}
        self.compiled = compiled
        self.warnings = warnings
        # SHA-256 of the files the translations come from (files_digest): replicas compare it.
        self.digest = digest
        # Called with (schema, direction, first error code or None) per record; set by the host.
        self.observer: Callable[[str, str, str | None], None] | None = None

    def view(self, observer: Callable[[str, str, str | None], None] | None = None) -> MappingSet:
        """The same set (its compiled mappings shared) with an observer of its own: a caller
        that counts its translations itself leaves the serving set's observer alone."""
        ms = MappingSet(self.root, self.cities, self.compiled, self.warnings, self.digest)
        ms.observer = observer
        return ms

    @classmethod
    def load(cls, root: Path) -> MappingSet:
        """Load every city folder below ``root``; raise MappingLoadError with every problem."""
        if not root.is_dir():
            raise MappingLoadError([Problem(str(root), 0, "mapping folder does not exist")])
        problems: list[Problem] = []
        warnings: list[Problem] = []
        cities: dict[str, City] = {}
        compiled: dict[str, CompiledMapping] = {}
        codes: dict[str, str] = {}
        for folder in sorted(
            p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            try:
                city, mappings = load_city(folder)
            except MappingLoadError as exc:
                problems.extend(exc.problems)
                continue
            if city.code in codes:
                problems.append(
                    Problem(
                        f"{folder.name}/city.yaml",
                        1,
                        f"region code {city.code} is already used by {codes[city.code]}",
                    )
                )
                continue
            codes[city.code] = city.name
            cities[city.name] = city
            for m in mappings.values():
                cov = coverage_of(m)
                for policy, items, what in (
                    (m.coverage_source, cov.source_unread, "source field never read"),
                    (m.coverage_canonical, cov.canonical_unfilled, "canonical field never filled"),
                ):
                    if policy == "ignore":
                        continue
                    for p in items:
                        pr = Problem(
                            m.file, 1, f"{what}: {p} (coverage policy {policy})", "coverage"
                        )
                        (problems if policy == "error" else warnings).append(pr)
                compiled[m.name] = compile_mapping(m)
        if problems:
            raise MappingLoadError(problems)
        return cls(root, cities, compiled, warnings, files_digest(root))

    def versions(self) -> list[str]:
        """Every mapping's ``<city>.<kind>@<version>``, sorted."""
        return sorted(cm.ref for cm in self.compiled.values())

    # -- schemas ----------------------------------------------------------------------------

    def schema_names(self) -> list[str]:
        """Every schema name, city schemas then canonical ones."""
        return sorted(self.compiled) + sorted(CANONICAL_SCHEMAS)

    def kind_of(self, schema: str) -> str:
        """Record kind of ``schema``; UnknownSchemaError when it is not registered."""
        if schema in CANONICAL_SCHEMAS:
            return CANONICAL_SCHEMAS[schema]
        cm = self.compiled.get(schema)
        if cm is None:
            raise UnknownSchemaError(schema)
        return cm.mapping.kind

    def schema_for(self, city: str, kind: str) -> str | None:
        """The schema of ``kind`` for a city given by name or region code, if it has one."""
        c = self.cities.get(city) or self.cities_by_code.get(city)
        if c is None:
            return None
        name = f"{c.name}.{kind}"
        return name if name in self.compiled else None

    def city(self, name_or_code: str) -> City | None:
        """A city by name or region code."""
        return self.cities.get(name_or_code) or self.cities_by_code.get(name_or_code)

    # -- translation ------------------------------------------------------------------------

    def to_canonical(self, schema: str, record: Any) -> TranslationResult:
        """Translate ``record`` from ``schema`` into canonical; RecordInvalidError on errors."""
        return TranslationResult(*self._inbound(schema, record))

    def to_canonical_parts(
        self, schema: str, record: Any
    ) -> tuple[dict[str, Any], tuple[str, ...], tuple[Issue, ...]]:
        """:meth:`to_canonical` as (record, mapping versions, warnings), without building a
        :class:`TranslationResult` (a frozen dataclass: ~0.5 µs a case on the stream's path)."""
        return self._inbound(schema, record)

    def from_canonical(self, schema: str, canonical: dict[str, Any]) -> TranslationResult:
        """Translate a (valid, normalised) canonical dict into ``schema``."""
        return TranslationResult(*self._outbound(schema, canonical))

    def translate(self, source: str, target: str, record: Any) -> TranslationResult:
        """Translate ``record`` from ``source`` to ``target`` through the canonical model."""
        if self.kind_of(source) != self.kind_of(target):
            raise KindMismatchError(source, target)
        return self._translate(source, target, record)

    # The steps return (record, versions, warnings) as plain tuples: a translation through the
    # canonical model builds one TranslationResult, not three (a frozen dataclass's __init__
    # sets each field through object.__setattr__; each step's result only feeds the next).

    def _inbound(self, schema: str, record: Any) -> _Step:
        cm = self.compiled.get(schema)  # a city schema (a canonical one is not compiled)
        if cm is None:
            kind = CANONICAL_SCHEMAS.get(schema)
            if kind is None:
                raise UnknownSchemaError(schema)
            if not isinstance(record, dict):
                raise MalformedRecordError("a record must be a JSON object")
            canonical, issues = parse_canonical(kind, record)
            versions: tuple[str, ...] = ()
        else:
            if not isinstance(record, dict):
                raise MalformedRecordError("a record must be a JSON object")
            issues = []
            try:
                canonical = cm.forward(record, issues)
            except RecursionError:
                raise MalformedRecordError("record is nested too deeply") from None
            versions = (cm.ref,)
        errors = [i for i in issues if i.severity == "error"] if issues else issues
        if self.observer is not None:
            self.observer(schema, "inbound", errors[0].code if errors else None)
        if errors:
            raise RecordInvalidError(schema, issues)
        return canonical, versions, tuple(issues)

    def _outbound(self, schema: str, canonical: dict[str, Any]) -> _Step:
        cm = self.compiled.get(schema)
        if cm is None:
            if schema in CANONICAL_SCHEMAS:
                return canonical, (), ()
            raise UnknownSchemaError(schema)
        issues: list[Issue] = []
        out = cm.reverse(canonical, issues)
        errors = [i for i in issues if i.severity == "error"] if issues else issues
        if self.observer is not None:
            self.observer(schema, "outbound", errors[0].code if errors else None)
        if errors:
            raise RecordInvalidError(schema, issues)
        return out, (cm.ref,), tuple(issues)

    def _translate(self, source: str, target: str, record: Any) -> TranslationResult:
        canonical, versions_in, warnings_in = self._inbound(source, record)
        out, versions_out, warnings_out = self._outbound(target, canonical)
        return TranslationResult(out, versions_in + versions_out, warnings_in + warnings_out)

    def translate_json(self, source: str, target: str, data: bytes | str) -> TranslationResult:
        """Like :meth:`translate`, from JSON text; MalformedRecordError on bad JSON."""
        if self.kind_of(source) != self.kind_of(target):  # before parsing: unknown names first
            raise KindMismatchError(source, target)
        return self._translate(source, target, parse_json(data))

    def _rule_for(self, schema: str, canonical_path: tuple[str, ...]) -> Rule | None:
        cm = self.compiled.get(schema)
        if cm is None:
            return None
        return next((r for r in cm.mapping.rules if r.target == canonical_path and r.source), None)

    def status_codes(self, schema: str) -> tuple[dict[str, Any], dict[Any, str]] | None:
        """(city code -> canonical status, canonical status -> city code) of a case schema."""
        rule = self._rule_for(schema, ("status",))
        if rule is None or rule.codes is None:
            return None
        return rule.codes.forward, rule.codes.reverse

    def source_pointer(self, schema: str, canonical_path: tuple[str, ...]) -> str:
        """The JSON pointer, in ``schema``, of the field that fills a canonical path."""
        if schema in CANONICAL_SCHEMAS:
            return "/" + "/".join(canonical_path)
        rule = self._rule_for(schema, canonical_path)
        if rule is None or rule.source is None:
            return "/" + "/".join(canonical_path)
        return "/" + "/".join(rule.source)

    def coverage(self, schema: str) -> Coverage:
        """Coverage of one city schema's mapping."""
        cm = self.compiled.get(schema)
        if cm is None:
            raise UnknownSchemaError(schema)
        return coverage_of(cm.mapping)


def parse_json(data: bytes | str) -> Any:
    """Parse one JSON document; MalformedRecordError (without the content) when it is not.

    orjson: strict (no NaN), UTF-8 checked, nesting limited; integers beyond 64 bits come back
    as floats, which the schema's type checks then refuse rather than pass on changed.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedRecordError(f"record is not valid JSON: {str(exc)[:120]}") from None
