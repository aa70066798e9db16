"""Typed models of a city's mapping set, validated from the files in ``mappings/<city>/``.

A city folder holds::

    city.yaml               the city: name, GB/T 2260 region code, time zone
    schemas/<kind>.json     the city's record schemas (JSON Schema subset, see schema.py)
    codes/<name>.yaml       code lists (ConceptMap-like, versioned, unknown-code policies)
    <kind>.yaml             one mapping per record kind: case.yaml, person.yaml, enterprise.yaml
    samples/<kind>/*.json   golden samples with their expected canonical form (*.canonical.json)

Loading checks everything it can before a record is ever translated and reports every problem
with its file and line; see docs/mappings.md for each construct.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import convert
from .canonical import CANONICAL_KINDS, CanonicalField, enum_values, resolve_canonical
from .errors import MappingLoadError, Problem
from .expr import Expr, ExprError, parse_expr
from .schema import SchemaNode, load_schema
from .yamlsrc import LDict, LList, line_of, load_yaml

__all__ = ["City", "CodeList", "Mapping", "Policy", "Rule", "load_city"]

Direction = Literal["both", "inbound", "outbound"]
CoveragePolicy = Literal["ignore", "warn", "error"]
_VALIDATORS = set(convert.CANONICAL_VALIDATORS)


@dataclass(frozen=True, slots=True)
class Policy:
    """What to do with a code missing from a code list: ``error``, ``pass`` or ``fixed``."""

    kind: Literal["error", "pass", "fixed"] = "error"
    value: Any = None


@dataclass(slots=True)
class City:
    """A city served by the gateway."""

    name: str
    code: str
    display_name: str
    timezone: str
    folder: Path


@dataclass(slots=True)
class CodeList:
    """A versioned code table: city code -> canonical value, and back where provable."""

    name: str
    version: int
    canonical: str  # an enum's full name, "string" or "bool"
    forward: dict[str, Any]
    reverse: dict[Any, str]
    unknown: Policy
    reverse_unknown: Policy
    file: str
    line: int
    reverse_complete: bool  # every canonical value the forward table yields has a reverse
    ambiguity: str = ""  # why it is not one-to-one, when it is not

    @property
    def ref(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"


@dataclass(slots=True)
class Rule:
    """One mapping rule, checked against both schemas."""

    file: str
    line: int
    label: str  # e.g. "rules[3]" or "rules[7].each[1]"
    source: tuple[str, ...] | None
    target: tuple[str, ...] | None
    direction: Direction
    source_node: SchemaNode | None = None
    target_field: CanonicalField | None = None
    required: bool = False
    default: Any = None
    const: Any = None
    has_const: bool = False
    expr: Expr | None = None
    datetime: convert.DatePattern | None = None
    date: convert.DatePattern | None = None
    codes: CodeList | None = None
    validate: tuple[str, ...] = ()
    each: list[Rule] | None = None

    @property
    def where(self) -> str:
        """``file:line``."""
        return f"{self.file}:{self.line}"

    @property
    def inbound(self) -> bool:
        """Runs city -> canonical."""
        return self.direction in ("both", "inbound")

    @property
    def outbound(self) -> bool:
        """Runs canonical -> city."""
        return self.direction in ("both", "outbound")


@dataclass(slots=True)
class Mapping:
    """The mapping of one city record kind to its canonical message."""

    city: City
    kind: str
    version: int
    file: str
    schema: SchemaNode
    canonical: str
    rules: list[Rule]
    coverage_source: CoveragePolicy = "warn"
    coverage_canonical: CoveragePolicy = "ignore"
    ignore_source: frozenset[str] = frozenset()
    ignore_canonical: frozenset[str] = frozenset()
    code_lists: list[CodeList] = field(default_factory=list)

    @property
    def name(self) -> str:
        """Schema name, ``<city>.<kind>``."""
        return f"{self.city.name}.{self.kind}"

    @property
    def ref(self) -> str:
        """``<city>.<kind>@<version>``, carried by every record this mapping produces."""
        return f"{self.name}@{self.version}"


class _Collector:
    """Collects problems while loading; one per file:line."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[Problem] = []

    def display(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root.parent))
        except ValueError:
            return str(path)

    def add(self, file: str, line: int, message: str, rule: str = "") -> None:
        self.problems.append(Problem(file, line, message, rule))

    def load(self, path: Path) -> Any:
        try:
            return load_yaml(path, self.display(path))
        except MappingLoadError as exc:
            self.problems.extend(exc.problems)
            return None


def _keys(obj: LDict, allowed: set[str], c: _Collector, file: str, what: str) -> None:
    for key in obj:
        if key not in allowed:
            c.add(
                file,
                line_of(obj, key),
                f"unknown key {key!r} in {what} (allowed: {', '.join(sorted(allowed))})",
            )


def _version(obj: LDict, c: _Collector, file: str) -> int:
    v = obj.get("version")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        c.add(file, line_of(obj, "version", obj.line), "'version' must be a positive integer")
        return 0
    return v


def load_city(folder: Path) -> tuple[City, dict[str, Mapping]]:
    """Load and check one city folder; raise MappingLoadError listing every problem."""
    c = _Collector(folder.parent)
    city_file = folder / "city.yaml"
    raw = c.load(city_file) if city_file.exists() else None
    if not city_file.exists():
        c.add(c.display(city_file), 0, "missing city.yaml (name, code, timezone)")
    city = _city(raw, folder, c)
    if city is None:
        raise MappingLoadError(c.problems)
    codes = _code_lists(folder / "codes", c)
    mappings: dict[str, Mapping] = {}
    for kind in CANONICAL_KINDS:
        path = folder / f"{kind}.yaml"
        if path.exists():
            m = _mapping(path, kind, city, codes, c)
            if m is not None:
                mappings[kind] = m
    for extra in sorted(folder.glob("*.yaml")):
        if extra.stem not in CANONICAL_KINDS and extra.name != "city.yaml":
            c.add(
                c.display(extra),
                0,
                f"unknown mapping file (expected one of "
                f"{', '.join(k + '.yaml' for k in CANONICAL_KINDS)})",
            )
    if not mappings and not c.problems:
        c.add(c.display(folder), 0, "the city has no mapping (case.yaml, person.yaml, ...)")
    if c.problems:
        raise MappingLoadError(c.problems)
    return city, mappings


def _city(raw: Any, folder: Path, c: _Collector) -> City | None:
    file = c.display(folder / "city.yaml")
    if not isinstance(raw, LDict):
        if raw is not None:
            c.add(file, 1, "city.yaml must be a mapping")
        return None
    _keys(raw, {"city", "code", "name", "timezone"}, c, file, "city.yaml")
    name, code = raw.get("city"), raw.get("code")
    ok = True
    if not isinstance(name, str) or not name.isidentifier() or not name.islower():
        c.add(
            file, line_of(raw, "city", 1), "'city' must be a lowercase identifier, e.g. zhongshan"
        )
        ok = False
    elif name != folder.name:
        c.add(
            file, line_of(raw, "city", 1), f"'city' is {name!r} but the folder is {folder.name!r}"
        )
        ok = False
    if not isinstance(code, str):
        c.add(file, line_of(raw, "code", 1), "'code' must be a quoted six-digit region code")
        ok = False
    else:
        try:
            convert.check_region(code)
        except convert.ValueProblem:
            c.add(file, line_of(raw, "code", 1), f"'code' {code!r} is not a GB/T 2260 region code")
            ok = False
    tz = raw.get("timezone", "Asia/Shanghai")
    try:
        convert.zone(str(tz))
    except Exception:  # noqa: BLE001 - zoneinfo raises several types for bad names
        c.add(file, line_of(raw, "timezone", 1), f"unknown time zone {tz!r}")
        ok = False
    if not ok:
        return None
    return City(str(name), str(code), str(raw.get("name", name)), str(tz), folder)


def _policy(raw: Any, c: _Collector, file: str, line: int, canonical: str) -> Policy:
    if raw is None or raw == "error":
        return Policy("error")
    if raw == "pass":
        if canonical not in ("string",):
            c.add(file, line, f"policy 'pass' needs a string code list, not {canonical}")
        return Policy("pass")
    if isinstance(raw, LDict) and set(raw) == {"fixed"}:
        return Policy("fixed", raw["fixed"])
    c.add(file, line, "unknown-code policy must be error, pass or {fixed: VALUE}")
    return Policy("error")


def _check_canonical_value(value: Any, canonical: str) -> bool:
    if canonical == "string":
        return isinstance(value, str)
    if canonical == "bool":
        return isinstance(value, bool)
    return isinstance(value, str) and value in enum_values(canonical)


def _code_lists(folder: Path, c: _Collector) -> dict[str, CodeList]:
    out: dict[str, CodeList] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.yaml")):
        file = c.display(path)
        raw = c.load(path)
        if raw is None:
            continue
        if not isinstance(raw, LDict):
            c.add(file, 1, "a code list must be a mapping")
            continue
        _keys(
            raw,
            {
                "codelist",
                "version",
                "canonical",
                "unknown",
                "reverse_unknown",
                "codes",
                "reverse",
                "description",
            },
            c,
            file,
            "a code list",
        )
        name = raw.get("codelist")
        if name != path.stem:
            c.add(
                file,
                line_of(raw, "codelist", 1),
                f"'codelist' must be {path.stem!r} (the file name)",
            )
        version = _version(raw, c, file)
        canonical = raw.get("canonical")
        if canonical not in ("string", "bool"):
            try:
                enum_values(str(canonical))
            except KeyError:
                c.add(
                    file,
                    line_of(raw, "canonical", 1),
                    f"'canonical' must be a tongban.v1 enum, 'string' or 'bool', not {canonical!r}",
                )
                continue
        canonical = str(canonical)
        codes = raw.get("codes")
        if not isinstance(codes, LDict) or not codes:
            c.add(
                file,
                line_of(raw, "codes", raw.line),
                "'codes' must map city codes to canonical values",
            )
            continue
        forward: dict[str, Any] = {}
        for code, value in codes.items():
            if not _check_canonical_value(value, canonical):
                c.add(
                    file,
                    line_of(codes, code),
                    f"code {code!r}: {value!r} is not a value of {canonical}",
                )
            forward[code] = value
        explicit = raw.get("reverse") or LDict()
        if not isinstance(explicit, LDict):
            c.add(
                file,
                line_of(raw, "reverse", 1),
                "'reverse' must map canonical values to city codes",
            )
            explicit = LDict()
        reverse: dict[Any, str] = {}
        for value, code in explicit.items():
            key: Any = (
                {"true": True, "false": False}.get(value, value) if canonical == "bool" else value
            )
            if not _check_canonical_value(key, canonical):
                c.add(
                    file,
                    line_of(explicit, value),
                    f"reverse: {value!r} is not a value of {canonical}",
                )
            if str(code) not in forward:
                c.add(file, line_of(explicit, value), f"reverse: {code!r} is not one of the codes")
            reverse[key] = str(code)
        by_value: dict[Any, list[str]] = {}
        for code, value in forward.items():
            by_value.setdefault(value, []).append(code)
        for value, codes_for in by_value.items():
            if value in reverse:
                continue
            if len(codes_for) == 1:
                reverse[value] = codes_for[0]
        ambiguous = {v: cs for v, cs in by_value.items() if len(cs) > 1 and v not in reverse}
        line = line_of(raw, "codelist", 1)
        unknown = _policy(raw.get("unknown"), c, file, line_of(raw, "unknown", line), canonical)
        reverse_unknown = _policy(
            raw.get("reverse_unknown"), c, file, line_of(raw, "reverse_unknown", line), "string"
        )
        # An ambiguous list is not an error by itself: it is then usable inbound only, and a rule
        # using it in both directions is refused with this explanation.
        out[str(name)] = CodeList(
            str(name),
            version,
            canonical,
            forward,
            reverse,
            unknown,
            reverse_unknown,
            file,
            line,
            reverse_complete=not ambiguous,
            ambiguity=", ".join(f"{v} <- {cs}" for v, cs in ambiguous.items()),
        )
    return out


_RULE_KEYS = {
    "from",
    "to",
    "direction",
    "required",
    "default",
    "const",
    "expr",
    "datetime",
    "date",
    "codes",
    "validate",
    "each",
    "note",
}


def _mapping(
    path: Path, kind: str, city: City, codes: dict[str, CodeList], c: _Collector
) -> Mapping | None:
    file = c.display(path)
    raw = c.load(path)
    if raw is None:
        return None
    if not isinstance(raw, LDict):
        c.add(file, 1, "a mapping file must be a mapping")
        return None
    _keys(
        raw,
        {"mapping", "version", "schema", "coverage", "rules", "description"},
        c,
        file,
        "a mapping file",
    )
    if raw.get("mapping") != kind:
        c.add(file, line_of(raw, "mapping", 1), f"'mapping' must be {kind!r} (the file name)")
    version = _version(raw, c, file)
    schema_ref = raw.get("schema", f"schemas/{kind}.json")
    schema_path = city.folder / str(schema_ref)
    if not schema_path.exists():
        c.add(file, line_of(raw, "schema", 1), f"schema file {schema_ref!r} does not exist")
        return None
    try:
        schema = load_schema(schema_path, c.display(schema_path))
    except MappingLoadError as exc:
        c.problems.extend(exc.problems)
        return None
    canonical = CANONICAL_KINDS[kind]
    m = Mapping(city, kind, version, file, schema, canonical, [])
    cov = raw.get("coverage") or LDict()
    if isinstance(cov, LDict):
        _keys(
            cov, {"source", "canonical", "ignore_source", "ignore_canonical"}, c, file, "coverage"
        )
        for key in ("source", "canonical"):
            val = cov.get(key, "warn" if key == "source" else "ignore")
            if val not in ("ignore", "warn", "error"):
                c.add(file, line_of(cov, key), f"coverage.{key} must be ignore, warn or error")
            else:
                setattr(m, f"coverage_{key}", val)
        for key in ("ignore_source", "ignore_canonical"):
            val = cov.get(key, [])
            if not isinstance(val, list) or not all(isinstance(v, str) for v in val):
                c.add(file, line_of(cov, key), f"coverage.{key} must be a list of field paths")
            else:
                setattr(m, key, frozenset(val))
    rules = raw.get("rules")
    if not isinstance(rules, LList) or not rules:
        c.add(file, line_of(raw, "rules", 1), "'rules' must be a non-empty list")
        return m
    used: dict[str, CodeList] = {}
    m.rules = _rules(rules, "rules", schema, canonical, city, codes, used, c, file)
    m.code_lists = sorted(used.values(), key=lambda cl: cl.name)
    _check_duplicates(m.rules, c)
    return m


def _split(path: Any) -> tuple[str, ...] | None:
    if not isinstance(path, str) or not path:
        return None
    parts = tuple(path.split("."))
    return parts if all(parts) else None


def _rules(
    items: LList,
    label: str,
    schema: SchemaNode,
    canonical: str,
    city: City,
    codes: dict[str, CodeList],
    used: dict[str, CodeList],
    c: _Collector,
    file: str,
) -> list[Rule]:
    out: list[Rule] = []
    for i, raw in enumerate(items):
        line = items.lines[i]
        here = f"{label}[{i}]"
        if not isinstance(raw, LDict):
            c.add(file, line, "a rule must be a mapping like {from: X, to: y}", here)
            continue
        before = len(c.problems)
        rule = _rule(raw, here, line, schema, canonical, city, codes, used, c, file)
        if rule is not None and len(c.problems) == before:
            out.append(rule)
    return out


def _rule(
    raw: LDict,
    here: str,
    line: int,
    schema: SchemaNode,
    canonical: str,
    city: City,
    codes: dict[str, CodeList],
    used: dict[str, CodeList],
    c: _Collector,
    file: str,
) -> Rule | None:
    def bad(msg: str, key: str | None = None) -> None:
        c.add(file, line_of(raw, key, line) if key else line, msg, here)

    _keys(raw, _RULE_KEYS, c, file, "a rule")
    src, dst = _split(raw.get("from")), _split(raw.get("to"))
    if "from" in raw and src is None:
        bad("'from' must be a dotted source path", "from")
    if "to" in raw and dst is None:
        bad("'to' must be a dotted canonical path", "to")
    direction = raw.get("direction", "both")
    if direction not in ("both", "inbound", "outbound"):
        bad("'direction' must be both, inbound or outbound", "direction")
        return None
    rule = Rule(file, line, here, src, dst, direction)
    # Where each side is checked.
    if src is not None:
        node = schema.resolve(src)
        if isinstance(node, str):
            bad(node, "from")
            return None
        rule.source_node = node
    if dst is not None:
        tf = resolve_canonical(canonical, dst)
        if isinstance(tf, str):
            bad(tf, "to")
            return None
        rule.target_field = tf
    # Constants and expressions: one direction, one side.
    if "const" in raw:
        rule.has_const, rule.const = True, raw["const"]
        if (src is None) == (dst is None):
            bad("'const' goes with exactly one of 'from' (city side) or 'to' (canonical side)")
            return None
        rule.direction = "inbound" if dst is not None else "outbound"
        if rule.target_field is not None:
            _check_literal(rule.const, rule.target_field, bad, "const")
        return rule
    if "expr" in raw:
        if (src is None) == (dst is None):
            bad(
                "'expr' goes with exactly one of 'to' (computed inbound) or 'from' (computed outbound)"
            )
            return None
        try:
            rule.expr = parse_expr(str(raw["expr"]))
        except ExprError as exc:
            bad(str(exc), "expr")
            return None
        rule.direction = "inbound" if dst is not None else "outbound"
        for p in rule.expr.paths:
            if rule.direction == "inbound":
                r = schema.resolve(p)
                msg = r if isinstance(r, str) else None
            else:
                r2 = resolve_canonical(canonical, p)
                msg = r2 if isinstance(r2, str) else None
            if msg:
                bad(f"expression reads {'.'.join(p)!r}: {msg}", "expr")
        if rule.target_field is not None:
            _check_expr_result(rule.expr.result, rule.target_field, bad)
        return rule
    if src is None or dst is None:
        bad("a rule needs 'from' and 'to' (or 'const' / 'expr' with one of them)")
        return None
    assert rule.source_node is not None
    assert rule.target_field is not None
    sn, tf = rule.source_node, rule.target_field
    rule.required = bool(raw.get("required", False))
    if "default" in raw:
        rule.default = raw["default"]
    # Lists.
    if "each" in raw:
        if sn.type != "array" or sn.items is None or sn.items.type != "object":
            bad(f"'each' needs a list of objects at {'.'.join(src)!r}, found {sn.type}", "from")
            return None
        if not (tf.repeated and tf.kind == "message" and tf.target_message):
            bad(f"'each' needs a repeated message at {'.'.join(dst)!r}, found {tf.type_name}", "to")
            return None
        each = raw["each"]
        if not isinstance(each, LList) or not each:
            bad("'each' must be a non-empty list of rules", "each")
            return None
        rule.each = _rules(
            each, f"{here}.each", sn.items, tf.target_message, city, codes, used, c, file
        )
        return rule
    if tf.repeated or tf.kind == "message":
        bad(
            f"canonical field {'.'.join(dst)!r} is {tf.type_name}: map its fields "
            f"({'use each for a list' if tf.repeated else 'e.g. ' + '.'.join(dst) + '.name'})",
            "to",
        )
        return None
    if sn.type in ("object", "array"):
        bad(f"source field {'.'.join(src)!r} is an {sn.type}; map its fields", "from")
        return None
    # Converters.
    tz = convert.zone(city.timezone)
    for key in ("datetime", "date"):
        if key in raw:
            try:
                pattern = convert.DatePattern(str(raw[key]))
            except ValueError as exc:
                bad(str(exc), key)
                return None
            if key == "datetime" and tf.kind != "timestamp":
                bad(f"'datetime' fills a timestamp, but {'.'.join(dst)!r} is {tf.type_name}", key)
            if key == "date" and tf.kind != "date":
                bad(f"'date' fills a date, but {'.'.join(dst)!r} is {tf.type_name}", key)
            if sn.type != "string":
                bad(f"'{key}' reads text, but {'.'.join(src)!r} is {sn.type}", key)
            setattr(rule, key, pattern)
    del tz
    if "codes" in raw:
        cl = codes.get(str(raw["codes"]))
        if cl is None:
            bad(
                f"unknown code list {raw['codes']!r} (files in codes/: {', '.join(sorted(codes)) or 'none'})",
                "codes",
            )
            return None
        want = tf.enum if tf.kind == "enum" else tf.kind
        if cl.canonical != want and not (cl.canonical == "string" and tf.kind == "string"):
            bad(
                f"code list {cl.name!r} yields {cl.canonical}, but {'.'.join(dst)!r} is {tf.type_name}",
                "codes",
            )
        rule.codes = cl
        used[cl.name] = cl
    val = raw.get("validate", [])
    names = [val] if isinstance(val, str) else val
    if not isinstance(names, list) or any(n not in _VALIDATORS for n in names):
        bad(f"'validate' names validators among: {', '.join(sorted(_VALIDATORS))}", "validate")
    else:
        rule.validate = tuple(names)
    # Type compatibility when no converter is given.
    if rule.codes is None and rule.datetime is None and rule.date is None:
        if tf.kind == "enum":
            bad(f"{'.'.join(dst)!r} is {tf.type_name}: give a code list with 'codes'", "to")
        elif tf.kind == "timestamp":
            bad(f"{'.'.join(dst)!r} is a timestamp: give a pattern with 'datetime'", "to")
        elif tf.kind == "date":
            bad(f"{'.'.join(dst)!r} is a date: give a pattern with 'date'", "to")
        elif tf.kind == "bool" and sn.type != "boolean":
            bad(
                f"{'.'.join(dst)!r} is a bool but {'.'.join(src)!r} is {sn.type}: use a bool code list",
                "to",
            )
        elif tf.kind == "int" and sn.type not in ("integer", "string"):
            bad(f"{'.'.join(dst)!r} is an int but {'.'.join(src)!r} is {sn.type}", "to")
        elif tf.kind == "string" and sn.type not in ("string", "integer"):
            bad(f"{'.'.join(dst)!r} is a string but {'.'.join(src)!r} is {sn.type}", "to")
    # Direction: both ways only where the reverse is provable.
    why = _irreversible(rule)
    if why and direction == "both":
        bad(
            f"rule cannot be reversed automatically ({why}); add 'direction: inbound' and, if "
            "needed, an outbound rule",
            "from",
        )
    return rule


def _irreversible(rule: Rule) -> str:
    if rule.datetime is not None and not rule.datetime.iso and not rule.datetime.lossless_time:
        return f"pattern {rule.datetime.pattern!r} drops part of the time"
    if rule.codes is not None and not rule.codes.reverse_complete:
        amb = rule.codes.ambiguity
        return f"code list {rule.codes.name!r} is not one-to-one ({amb}); add a 'reverse' table"
    return ""


def _check_literal(value: Any, tf: CanonicalField, bad: Any, key: str) -> None:
    ok = {
        "string": isinstance(value, str),
        "date": isinstance(value, str),
        "timestamp": isinstance(value, str),
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "enum": isinstance(value, str) and tf.enum is not None and value in enum_values(tf.enum),
    }.get(tf.kind, False)
    if not ok:
        bad(f"{key} {value!r} does not fit {tf.name!r} ({tf.type_name})", key)


def _check_expr_result(result: str, tf: CanonicalField, bad: Any) -> None:
    fits = (
        (result == "string" and tf.kind == "string")
        or (result == "date" and tf.kind in ("date", "string"))
        or (tf.kind == "enum" and result == tf.enum)
    )
    if not fits:
        bad(f"expression yields {result}, but {tf.name!r} is {tf.type_name}", "expr")


def _check_duplicates(rules: list[Rule], c: _Collector) -> None:
    seen_in: dict[tuple[str, ...], Rule] = {}
    seen_out: dict[tuple[str, ...], Rule] = {}
    for r in rules:
        if r.inbound and r.target is not None:
            if r.target in seen_in:
                c.add(
                    r.file,
                    r.line,
                    f"canonical field {'.'.join(r.target)!r} is already filled by "
                    f"the rule at line {seen_in[r.target].line}",
                    r.label,
                )
            seen_in[r.target] = r
        if r.outbound and r.source is not None:
            if r.source in seen_out:
                c.add(
                    r.file,
                    r.line,
                    f"source field {'.'.join(r.source)!r} is already written by "
                    f"the rule at line {seen_out[r.source].line}",
                    r.label,
                )
            seen_out[r.source] = r
        if r.each:
            _check_duplicates(r.each, c)
