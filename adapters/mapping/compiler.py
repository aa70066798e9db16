"""Compile a checked :class:`~adapters.mapping.model.Mapping` into two Python functions.

The mapping rules are turned into Python source, one function per direction, and compiled once
with ``compile()``: at run time a record goes through straight-line code as if written by hand,
with no per-rule dispatch. Only validated models reach the generator, and every name, string and
constant from a mapping file enters the generated code through ``repr()`` or the function's
namespace, never as code, so a mapping file cannot inject code.

Each generated function takes the input dict and a list, appends an :class:`Issue` per problem
(with the JSON pointer on the caller's side, the canonical path and the rule's file:line) and
returns the output dict.

Where the C extension ``_native`` is built, consecutive *simple* rules of one object level (a
copy with its type and length checks, a code list, a date conversion, a built-in validator) are
emitted as one native run, ``if not _run(plan, (sources), (outputs)):``, followed by their
generated Python: the run stores what the Python would store, or gives up at the first value
that is not a simple copy, and the Python then runs them all again and reports as usual.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from . import convert
from .errors import Issue
from .expr import FUNCTIONS
from .model import Mapping, Rule
from .schema import SchemaNode

__all__ = ["CompiledMapping", "compile_mapping", "native_enabled"]

Translate = Callable[[dict[str, Any], list[Issue]], dict[str, Any]]
_MISS = object()

try:  # built by `pip install` where a C compiler is available (optional extension)
    from . import _native
except ImportError:  # pragma: no cover - the pure-Python code does the same work
    _native = None  # type: ignore[assignment]

#: Whether the C fast path is built (``native_enabled`` says whether compiling uses it).
NATIVE_AVAILABLE = _native is not None
#: Consecutive simple rules below this many stay plain Python (a call costs about one rule).
_MIN_RUN = 2
_EMPTY: MappingProxyType[str, Any] = MappingProxyType({})
# Built-in validators that depend on nothing but the value (and never return warnings).
_INLINE_VALIDATORS = frozenset({"phone", "region", "credit_code", "sha256"})
_PY_TYPE = {"string": "str", "integer": "int", "boolean": "bool"}


@dataclass(slots=True)
class CompiledMapping:
    """A mapping compiled both ways; ``forward`` is city -> canonical, ``reverse`` the inverse."""

    mapping: Mapping
    forward: Translate
    reverse: Translate
    forward_source: str = field(repr=False, default="")
    reverse_source: str = field(repr=False, default="")
    #: ``zhongshan.case@3``, computed once (every translation carries it).
    ref: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.ref = self.mapping.ref

    @property
    def name(self) -> str:
        """Schema name, e.g. ``zhongshan.case``."""
        return self.mapping.name


def _ptr_key(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1").replace("{", "{{").replace("}", "}}")


def _tpl_key(key: str) -> str:
    return key.replace("{", "{{").replace("}", "}}")


def _issue_factory(table: list[tuple[str, str, str]]) -> Callable[..., Issue]:
    """``_mk(k, code, message, idx, severity)``: an Issue located by entry ``k`` of ``table``."""

    def mk(
        k: int, code: str, message: str, idx: tuple[Any, ...] = (), severity: str = "error"
    ) -> Issue:
        ptr, can, where = table[k]
        if idx:
            ptr, can = ptr.format(*idx), can.format(*idx)
        return Issue(code, ptr, can, where, message, severity)  # type: ignore[arg-type]

    return mk


#: JSON types of a city field, as the C fast path names them; reverse steps take any value.
_NATIVE_TYPES = {"string": 0, "integer": 1, "number": 2, "boolean": 3}
_T_ANY = 4
_NATIVE_POLICIES = {"error": 0, "fixed": 1, "pass": 2}
#: A step that is a list of objects, each item run through its own plan (see ``_native.c``).
_LIST_INBOUND, _LIST_OUTBOUND = 1, 2


@dataclass(frozen=True, slots=True)
class _Conv:
    """What a rule's conversion uses: a code list (with its policy for an unknown value) or a
    converter function, or neither; and whether the value is stored as its ``str()``."""

    table: dict[Any, Any] | None = None
    policy: str = "error"
    fixed: Any = None
    convert: Callable[[Any], Any] | None = None
    to_str: bool = False


@dataclass(frozen=True, slots=True)
class _Step:
    """One simple rule as a step of a native run (see ``_native.c`` for the meaning)."""

    key: str
    required: bool
    type: int
    max_len: int
    check_result: bool
    conv: _Conv
    validate: Callable[[Any], Any] | None
    out_key: str
    #: A list of objects (``_LIST_INBOUND``, ``_LIST_OUTBOUND``), each item through ``sub``.
    list: int = 0
    sub: object | None = None
    #: Inbound lists: the keys an item may have (None: any).
    allowed: frozenset[str] | None = None


class _Gen:
    """Accumulates generated lines and the namespace they refer to."""

    def __init__(self, mapping: Mapping, direction: str, native: bool = False) -> None:
        self.mapping = mapping
        self.direction = direction
        self.native = native
        #: The scope of the last list rule emitted (its items' rules), for native list steps.
        self.last_sub: _Scope | None = None
        self.lines: list[str] = []
        self.ns: dict[str, Any] = {
            "_MISS": _MISS,
            "_EMPTY": _EMPTY,
            "_VP": convert.ValueProblem,
        }
        if native:
            self.ns["_run"] = _native.run
        self.table: list[tuple[str, str, str]] = []
        self.ns["_mk"] = _issue_factory(self.table)
        for fname, (fn, *_rest) in FUNCTIONS.items():
            self.ns[f"_fn_{fname}"] = fn
        self.n = 0

    def var(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def const(self, value: Any, prefix: str = "_k") -> str:
        name = self.var(prefix)
        self.ns[name] = value
        return name

    def entry(self, ptr: str, can: str, where: str) -> int:
        self.table.append((ptr, can, where))
        return len(self.table) - 1

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)


@dataclass(slots=True)
class _Scope:
    """One object level: where values are read from and written to, with list indices."""

    src: str  # variable holding the input object at this level
    out: str  # variable holding the output object at this level
    idx: list[str]  # loop index variables of enclosing lists
    in_ptr: str  # JSON pointer template of this level on the input side
    in_can: str  # canonical path template of this level
    schema: SchemaNode  # city schema node of this level
    in_objs: dict[tuple[str, ...], str] = field(default_factory=dict)
    out_objs: dict[tuple[str, ...], str] = field(default_factory=dict)
    out_order: list[tuple[str, ...]] = field(default_factory=list)
    # Canonical targets whose built-in validator already ran where the value was copied.
    validated: set[tuple[str, ...]] = field(default_factory=set)
    # (output prefix, key, issue entry, message): required only when that object is written.
    deferred: list[tuple[tuple[str, ...], str, int, str]] = field(default_factory=list)
    # Simple rules not emitted yet, for one native run: (step, source var, output var, lines).
    run: list[tuple[_Step, str, str, list[str]]] = field(default_factory=list)
    # Native runs emitted: (plan, source vars, output vars, number of rules).
    plans: list[tuple[object, list[str], list[str], int]] = field(default_factory=list)
    # Whether checks on the filled canonical fields were emitted after the rules.
    post_checks: bool = False

    @property
    def idx_expr(self) -> str:
        if not self.idx:
            return "()"
        return "(" + ", ".join(self.idx) + ",)"


def _ptr(base: str, path: tuple[str, ...]) -> str:
    return base + "".join("/" + _ptr_key(p) for p in path)


def _can(base: str, path: tuple[str, ...]) -> str:
    joined = ".".join(_tpl_key(p) for p in path)
    return f"{base}.{joined}" if base and joined else (base or joined)


def _type_check(node: SchemaNode, v: str) -> str:
    if node.type == "number":
        return f"type({v}) in (int, float)"
    return f"type({v}) is {_PY_TYPE[node.type]}"


def _copies_a_field(r: Rule) -> bool:
    """Whether ``r`` reads one city field into one canonical field (not a constant, not an
    expression): what a native step can do."""
    return r.source is not None and r.target is not None and not r.has_const and r.expr is None


def _converts(r: Rule) -> bool:
    return r.codes is not None or r.datetime is not None or r.date is not None


def _fwd_simple(r: Rule) -> bool:
    """Whether the C fast path can run ``r`` inbound (else it stays Python only)."""
    sn, tf = r.source_node, r.target_field
    if sn is None or tf is None or not _copies_a_field(r):
        return False
    return (
        r.each is None
        and r.default is None
        and not r.validate
        and sn.type in _NATIVE_TYPES
        and (_converts(r) or not (tf.kind == "int" and sn.type == "string"))
    )


def _rev_simple(r: Rule) -> bool:
    """Whether the C fast path can run ``r`` outbound."""
    sn, tf = r.source_node, r.target_field
    if sn is None or tf is None or not _copies_a_field(r):
        return False
    return r.each is None and (_converts(r) or not (sn.type == "integer" and tf.kind == "string"))


def _list_candidate(r: Rule) -> bool:
    """Whether ``r`` is a list of objects whose items a native sub-plan may run (decided
    once its items' code is generated: :func:`_items_plan`)."""
    return r.each is not None and r.default is None and _copies_a_field(r)


def _items_plan(sub: _Scope | None, rules: list[Rule], inbound: bool) -> object | None:
    """The plan running every item of a list, when the items' scope is one native run over
    its own object and nothing else: no nested objects, no checks after the rules."""
    if sub is None or sub.in_objs or sub.out_objs or sub.deferred or sub.post_checks:
        return None
    n = sum(1 for r in rules if (r.inbound if inbound else r.outbound))
    if len(sub.plans) != 1:
        return None
    plan, srcs, outs, covered = sub.plans[0]
    if covered != n or srcs != [sub.src] or outs != [sub.out]:
        return None
    return plan


@contextmanager
def _aside(g: _Gen) -> Iterator[list[str]]:
    """Lines emitted inside the block go to the list it gives, not into the function yet."""
    saved, g.lines = g.lines, []
    try:
        yield g.lines
    finally:
        g.lines = saved


def _join(
    g: _Gen, sc: _Scope, ind: int, step: _Step | None, src: str, out: str, lines: list[str]
) -> None:
    """A rule's code generated aside joins the pending native run as ``step``, or, without a
    step, stays plain Python after the pending run."""
    if step is not None:
        sc.run.append((step, src, out, lines))
    else:
        _flush(g, sc, ind)
        g.lines.extend(lines)


def _flush(g: _Gen, sc: _Scope, ind: int) -> None:
    """Emit the scope's pending simple rules: one native run with their Python code as the
    fallback, which runs (and reports) exactly as before when the run finds anything but a
    simple copy. Runs shorter than ``_MIN_RUN`` stay plain Python."""
    run, sc.run = sc.run, []
    if len(run) < _MIN_RUN:
        for *_, lines in run:
            g.lines.extend(lines)
        return
    srcs = list(dict.fromkeys(src for _, src, _, _ in run))
    outs = list(dict.fromkeys(out for _, _, out, _ in run))
    steps = tuple(
        (
            srcs.index(src),
            st.key,
            st.required,
            st.type,
            st.max_len,
            st.check_result,
            st.conv.to_str,
            st.conv.table,
            _NATIVE_POLICIES[st.conv.policy],
            st.conv.fixed,
            st.conv.convert,
            st.validate,
            outs.index(out),
            st.out_key,
            st.list,
            st.sub,
            st.allowed,
        )
        for st, src, out, _ in run
    )
    plan_obj = _native.plan(steps)
    sc.plans.append((plan_obj, srcs, outs, len(run)))
    plan = g.const(plan_obj, "_plan")
    g.emit(ind, f"if not _run({plan}, ({', '.join(srcs)},), ({', '.join(outs)},)):")
    for *_, lines in run:
        g.lines.extend("    " + line for line in lines)


# ---------------------------------------------------------------------------------------------
# city -> canonical


def _fwd_in_obj(g: _Gen, sc: _Scope, prefix: tuple[str, ...], ind: int, where: str) -> str:
    """Variable holding the input sub-object at ``prefix`` (emitted on first use)."""
    if not prefix:
        return sc.src
    if prefix in sc.in_objs:
        return sc.in_objs[prefix]
    parent = _fwd_in_obj(g, sc, prefix[:-1], ind, where)
    v = g.var("s")
    k = g.entry(_ptr(sc.in_ptr, prefix), _can(sc.in_can, ()), where)
    g.emit(ind, f"{v} = {parent}.get({prefix[-1]!r})")
    g.emit(ind, f"if {v} is None: {v} = _EMPTY")
    g.emit(ind, f"elif type({v}) is not dict:")
    g.emit(ind + 1, f"issues.append(_mk({k}, 'WRONG_TYPE', 'expected an object', {sc.idx_expr}))")
    g.emit(ind + 1, f"{v} = _EMPTY")
    sc.in_objs[prefix] = v
    return v


def _out_obj(g: _Gen, sc: _Scope, prefix: tuple[str, ...], ind: int) -> str:
    """Variable holding the output sub-object at ``prefix`` (attached at scope end if filled)."""
    if not prefix:
        return sc.out
    if prefix in sc.out_objs:
        return sc.out_objs[prefix]
    _out_obj(g, sc, prefix[:-1], ind)
    v = g.var("o")
    g.emit(ind, f"{v} = {{}}")
    sc.out_objs[prefix] = v
    sc.out_order.append(prefix)
    return v


def _close_out(g: _Gen, sc: _Scope, ind: int) -> None:
    for prefix, key, k, msg in sc.deferred:
        obj = sc.out_objs[prefix]
        g.emit(ind, f"if {obj} and {key!r} not in {obj}:")
        g.emit(ind + 1, f"issues.append(_mk({k}, 'REQUIRED_MISSING', {msg!r}, {sc.idx_expr}))")
    for prefix in sorted(sc.out_order, key=len, reverse=True):
        parent = sc.out if len(prefix) == 1 else sc.out_objs[prefix[:-1]]
        g.emit(ind, f"if {sc.out_objs[prefix]}: {parent}[{prefix[-1]!r}] = {sc.out_objs[prefix]}")


def _unknown_fields(
    g: _Gen, sc: _Scope, node: SchemaNode, obj: str, prefix: tuple[str, ...], ind: int, where: str
) -> None:
    if node.additional or node.type != "object":
        return
    keys = g.const(frozenset(node.properties), "_keys")
    k = g.entry(_ptr(sc.in_ptr, prefix) + "/{}", _can(sc.in_can, prefix), where)
    idx = "(" + ", ".join([*sc.idx, "x_"]) + ",)"
    g.emit(ind, f"if not {keys}.issuperset({obj}):")
    g.emit(ind + 1, f"for x_ in sorted({obj}.keys() - {keys}):")
    g.emit(
        ind + 2,
        f"issues.append(_mk({k}, 'UNKNOWN_FIELD', 'field is not in the city schema', {idx}))",
    )


def _compile_forward_scope(g: _Gen, sc: _Scope, rules: list[Rule], ind: int) -> None:
    m = g.mapping
    first_where = rules[0].where if rules else m.file
    _unknown_fields(g, sc, sc.schema, sc.src, (), ind, first_where)
    # Source sub-objects first (type-checked once), in path order.
    prefixes: set[tuple[str, ...]] = set()
    for r in rules:
        if not r.inbound:
            continue
        paths = [r.source] if r.source else []
        if r.expr is not None and r.direction == "inbound":
            paths.extend(r.expr.paths)
        for p in paths:
            if p:
                for n in range(1, len(p)):
                    prefixes.add(p[:n])
    for p in sorted(prefixes, key=lambda x: (len(x), x)):
        obj = _fwd_in_obj(g, sc, p, ind, first_where)
        node = sc.schema.resolve(p)
        if isinstance(node, SchemaNode):
            _unknown_fields(g, sc, node, obj, p, ind, first_where)
    filled: dict[tuple[str, ...], tuple[Rule, int]] = {}
    for r in rules:
        if r.inbound:
            if not (g.native and (_fwd_simple(r) or _list_candidate(r))):
                _flush(g, sc, ind)
            _fwd_rule(g, sc, r, ind, filled)
    _flush(g, sc, ind)
    # Built-in validators on the canonical fields this scope filled.
    for target, (r, k) in filled.items():
        tf = r.target_field
        if tf is None or tf.validator is None or target in sc.validated:
            continue
        sc.post_checks = True
        obj = _out_obj(g, sc, target[:-1], ind)
        fn = g.const(convert.CANONICAL_VALIDATORS.get(tf.validator), "_val")
        g.emit(ind, f"v = {obj}.get({target[-1]!r})")
        g.emit(ind, "if v is not None:")
        if tf.validator == "certificate_number":
            fn = g.const(convert.check_certificate_number, "_val")
            call = f"{fn}(v, {obj}.get('certificate_type'))"
        else:
            call = f"{fn}(v)"
        g.emit(ind + 1, f"try: w = {call}")
        g.emit(
            ind + 1, f"except _VP as e: issues.append(_mk({k}, e.code, e.message, {sc.idx_expr}))"
        )
        g.emit(ind + 1, "else:")
        g.emit(
            ind + 2, f"for c_, m_ in w: issues.append(_mk({k}, c_, m_, {sc.idx_expr}, 'warning'))"
        )
    _close_out(g, sc, ind)


def _fwd_rule(
    g: _Gen, sc: _Scope, r: Rule, ind: int, filled: dict[tuple[str, ...], tuple[Rule, int]]
) -> None:
    assert r.target is not None
    ptr = _ptr(sc.in_ptr, r.source) if r.source else sc.in_ptr
    k = g.entry(ptr, _can(sc.in_can, r.target), r.where)
    out = _out_obj(g, sc, r.target[:-1], ind)
    key = repr(r.target[-1])
    filled.setdefault(r.target, (r, k))
    if g.native and _fwd_simple(r):
        assert r.source is not None
        assert r.source_node is not None
        parent = _fwd_in_obj(g, sc, r.source[:-1], ind, r.where)
        with _aside(g) as lines:  # this rule's code becomes a native run's fallback
            conv, validate = _fwd_rule_code(g, sc, r, ind, out, key, k)
        sn = r.source_node
        max_len = (sn.max_length or 0) if sn.type == "string" else 0
        step = _Step(
            r.source[-1], r.required, _NATIVE_TYPES[sn.type], max_len, False, conv, validate,
            r.target[-1],
        )  # fmt: skip
        _join(g, sc, ind, step, parent, out, lines)
        return
    if g.native and _list_candidate(r):
        assert r.source is not None
        assert r.each is not None
        parent = _fwd_in_obj(g, sc, r.source[:-1], ind, r.where)
        g.last_sub = None
        with _aside(g) as lines:
            _fwd_rule_code(g, sc, r, ind, out, key, k)
        sub = g.last_sub
        plan = _items_plan(sub, r.each, inbound=True)
        list_step = None
        if plan is not None and sub is not None:
            node = sub.schema
            allowed = (
                None if node.additional or node.type != "object" else frozenset(node.properties)
            )
            list_step = _Step(
                r.source[-1], r.required, _T_ANY, 0, False, _Conv(), None, r.target[-1],
                _LIST_INBOUND, plan, allowed,
            )  # fmt: skip
        _join(g, sc, ind, list_step, parent, out, lines)
        return
    _fwd_rule_code(g, sc, r, ind, out, key, k)


def _fwd_rule_code(
    g: _Gen, sc: _Scope, r: Rule, ind: int, out: str, key: str, k: int
) -> tuple[_Conv, Callable[[Any], Any] | None]:
    """Emit one inbound rule; for a simple rule, what its native step converts and checks."""
    assert r.target is not None
    ptr = _ptr(sc.in_ptr, r.source) if r.source else sc.in_ptr
    ix = sc.idx_expr
    g.emit(ind, f"# {r.label} ({r.where})")
    if r.has_const:
        g.emit(ind, f"{out}[{key}] = {g.const(r.const)}")
        return _Conv(), None
    if r.expr is not None:
        text = r.expr.python
        for p in sorted(r.expr.paths, key=len, reverse=True):
            obj = _fwd_in_obj(g, sc, p[:-1], ind, r.where)
            text = text.replace("_P" + repr(p), f"{obj}.get({p[-1]!r})")
        g.emit(ind, f"try: v = {text}")
        g.emit(ind, f"except _VP as e: issues.append(_mk({k}, e.code, e.message, {ix}))")
        g.emit(ind, "else:")
        g.emit(ind + 1, f"if v is not None and v != '': {out}[{key}] = v")
        return _Conv(), None
    assert r.source is not None
    assert r.source_node is not None
    assert r.target_field is not None
    parent = _fwd_in_obj(g, sc, r.source[:-1], ind, r.where)
    sn, tf = r.source_node, r.target_field
    g.emit(ind, f"v = {parent}.get({r.source[-1]!r})")
    if r.default is not None:
        g.emit(ind, f"if v is None or v == '': v = {g.const(r.default)}")
    if r.each is not None:
        assert sn.items is not None
        g.emit(ind, "if v is not None:")
        g.emit(ind + 1, "if type(v) is list:")
        lst, i, item, o = g.var("l"), g.var("i"), g.var("it"), g.var("o")
        ki = g.entry(ptr + "/{}", _can(sc.in_can, r.target) + "[{}]", r.where)
        g.emit(ind + 2, f"{lst} = []")
        g.emit(ind + 2, f"for {i}, {item} in enumerate(v):")
        sub_idx = [*sc.idx, i]
        g.emit(ind + 3, f"if type({item}) is not dict:")
        g.emit(
            ind + 4,
            f"issues.append(_mk({ki}, 'WRONG_TYPE', 'expected an object', "
            f"({', '.join(sub_idx)},)))",
        )
        g.emit(ind + 4, "continue")
        g.emit(ind + 3, f"{o} = {{}}")
        sub = _Scope(item, o, sub_idx, ptr + "/{}", _can(sc.in_can, r.target) + "[{}]", sn.items)
        _compile_forward_scope(g, sub, r.each, ind + 3)
        g.last_sub = sub
        g.emit(ind + 3, f"{lst}.append({o})")
        g.emit(ind + 2, f"if {lst}: {out}[{key}] = {lst}")
        g.emit(ind + 1, "else:")
        g.emit(ind + 2, f"issues.append(_mk({k}, 'WRONG_TYPE', 'expected a list', {ix}))")
        if r.required:
            g.emit(
                ind,
                f"else: issues.append(_mk({k}, 'REQUIRED_MISSING', 'required field is missing', {ix}))",
            )
        return _Conv(), None
    # Common case first: a present value of the declared type.
    present = f"{_type_check(sn, 'v')} and v" if sn.type == "string" else _type_check(sn, "v")
    g.emit(ind, f"if {present}:")
    body = ind + 1
    if sn.type == "string" and sn.max_length:
        g.emit(body, f"if len(v) > {sn.max_length}:")
        g.emit(
            body + 1,
            f"issues.append(_mk({k}, 'TOO_LONG', 'longer than {sn.max_length} characters', {ix}))",
        )
        g.emit(body, "else:")
        body += 1
    conv = _fwd_convert(g, r, out, key, k, ix, body)
    validate = None
    if (
        tf.validator in _INLINE_VALIDATORS
        and r.codes is None
        and r.datetime is None
        and r.date is None
        and sn.type == "string"
    ):
        # A plain copy: check the local value now instead of re-reading it after all rules.
        # These validators never warn; they raise or pass.
        validate = convert.CANONICAL_VALIDATORS[tf.validator]
        fn = g.const(validate, "_val")
        g.emit(body, f"try: {fn}(v)")
        g.emit(body, f"except _VP as e: issues.append(_mk({k}, e.code, e.message, {ix}))")
        sc.validated.add(r.target)
    for name in r.validate:
        fn = g.const(convert.CANONICAL_VALIDATORS[name], "_val")
        g.emit(body, f"try: w = {fn}(v)")
        g.emit(body, f"except _VP as e: issues.append(_mk({k}, e.code, e.message, {ix}))")
        g.emit(body, "else:")
        g.emit(body + 1, f"for c_, m_ in w: issues.append(_mk({k}, c_, m_, {ix}, 'warning'))")
    g.emit(ind, "elif v is None or v == '':")
    if r.required:
        g.emit(
            ind + 1,
            f"issues.append(_mk({k}, 'REQUIRED_MISSING', 'required field is missing', {ix}))",
        )
    else:
        g.emit(ind + 1, "pass")
    g.emit(ind, "else:")
    want = {
        "string": "a string",
        "integer": "an integer",
        "number": "a number",
        "boolean": "true or false",
    }[sn.type]
    g.emit(ind + 1, f"issues.append(_mk({k}, 'WRONG_TYPE', 'expected {want}', {ix}))")
    return conv, validate


def _fwd_convert(g: _Gen, r: Rule, out: str, key: str, k: int, ix: str, ind: int) -> _Conv:
    sn, tf = r.source_node, r.target_field
    assert sn is not None
    assert tf is not None
    tz = convert.zone(g.mapping.city.timezone)
    if r.codes is not None:
        cl = r.codes
        table = g.const(dict(cl.forward), "_cl")
        lookup = "v" if sn.type == "string" else "str(v)"
        g.emit(ind, f"r = {table}.get({lookup}, _MISS)")
        g.emit(ind, "if r is _MISS:")
        pol = cl.unknown
        if pol.kind == "fixed":
            g.emit(ind + 1, f"{out}[{key}] = {g.const(pol.value)}")
        elif pol.kind == "pass":
            g.emit(ind + 1, f"{out}[{key}] = {lookup}")
        else:
            msg = f"code is not in code list {cl.ref}"
            g.emit(ind + 1, f"issues.append(_mk({k}, 'UNKNOWN_CODE', {msg!r}, {ix}))")
        g.emit(ind, f"else: {out}[{key}] = r")
        return _Conv(g.ns[table], pol.kind, pol.value if pol.kind == "fixed" else None)
    conv = None
    if r.datetime is not None:
        conv = convert.make_datetime_parser(r.datetime, tz)
    elif r.date is not None:
        conv = convert.make_date_parser(r.date)
    if conv is not None:
        fn = g.const(conv, "_cv")
        g.emit(ind, f"try: {out}[{key}] = {fn}(v)")
        g.emit(ind, f"except _VP as e: issues.append(_mk({k}, e.code, e.message, {ix}))")
        return _Conv(convert=conv)
    if tf.kind == "int" and sn.type == "string":  # never a native step (_fwd_simple)
        g.emit(ind, f"if v.isascii() and v.isdigit(): {out}[{key}] = int(v)")
        g.emit(ind, f"else: issues.append(_mk({k}, 'WRONG_TYPE', 'expected digits', {ix}))")
    elif tf.kind == "string" and sn.type == "integer":
        g.emit(ind, f"{out}[{key}] = str(v)")
        return _Conv(to_str=True)
    else:
        g.emit(ind, f"{out}[{key}] = v")
    return _Conv()


# ---------------------------------------------------------------------------------------------
# canonical -> city


def _rev_in_obj(g: _Gen, sc: _Scope, prefix: tuple[str, ...], ind: int) -> str:
    if not prefix:
        return sc.src
    if prefix in sc.in_objs:
        return sc.in_objs[prefix]
    parent = _rev_in_obj(g, sc, prefix[:-1], ind)
    v = g.var("c")
    g.emit(ind, f"{v} = {parent}.get({prefix[-1]!r}) or _EMPTY")
    sc.in_objs[prefix] = v
    return v


def _compile_reverse_scope(g: _Gen, sc: _Scope, rules: list[Rule], ind: int) -> None:
    for r in rules:
        if r.outbound:
            if not (g.native and (_rev_simple(r) or _list_candidate(r))):
                _flush(g, sc, ind)
            _rev_rule(g, sc, r, ind)
    _flush(g, sc, ind)
    _close_out(g, sc, ind)


def _required_in_city(schema: SchemaNode, path: tuple[str, ...]) -> bool:
    node: SchemaNode | None = schema
    for name in path[:-1]:
        node = node.child(name) if node else None
        if node is None:
            return False
    return node is not None and path[-1] in node.required


def _rev_rule(g: _Gen, sc: _Scope, r: Rule, ind: int) -> None:
    assert r.source is not None
    can_ptr = _ptr(sc.in_ptr, r.target) if r.target else sc.in_ptr
    k = g.entry(can_ptr, _can(sc.in_can, r.target or ()), r.where)
    out = _out_obj(g, sc, r.source[:-1], ind)
    if g.native and _rev_simple(r):
        assert r.target is not None
        parent = _rev_in_obj(g, sc, r.target[:-1], ind)
        with _aside(g) as lines:  # this rule's code becomes a native run's fallback
            conv, max_len, required = _rev_rule_code(g, sc, r, ind, out, k, can_ptr)
        step = _Step(r.target[-1], required, _T_ANY, max_len, True, conv, None, r.source[-1])
        _join(g, sc, ind, step, parent, out, lines)
        return
    if g.native and _list_candidate(r):
        assert r.target is not None
        assert r.each is not None
        parent = _rev_in_obj(g, sc, r.target[:-1], ind)
        g.last_sub = None
        with _aside(g) as lines:
            _rev_rule_code(g, sc, r, ind, out, k, can_ptr)
        plan = _items_plan(g.last_sub, r.each, inbound=False)
        list_step = None
        if plan is not None:
            required = _required_in_city(sc.schema, r.source)
            list_step = _Step(
                r.target[-1], required, _T_ANY, 0, True, _Conv(), None, r.source[-1],
                _LIST_OUTBOUND, plan,
            )  # fmt: skip
        _join(g, sc, ind, list_step, parent, out, lines)
        return
    _rev_rule_code(g, sc, r, ind, out, k, can_ptr)


def _rev_rule_code(
    g: _Gen, sc: _Scope, r: Rule, ind: int, out: str, k: int, can_ptr: str
) -> tuple[_Conv, int, bool]:
    """Emit one outbound rule; for a simple rule, what its native step converts, the length
    its result is checked against (0: none) and whether a missing value is reported."""
    assert r.source is not None
    city_ptr = _ptr("", r.source).replace("{", "").replace("}", "")
    key = repr(r.source[-1])
    ix = sc.idx_expr
    g.emit(ind, f"# {r.label} ({r.where})")
    if r.has_const:
        g.emit(ind, f"{out}[{key}] = {g.const(r.const)}")
        return _Conv(), 0, False
    if r.expr is not None:
        text = r.expr.python
        for p in sorted(r.expr.paths, key=len, reverse=True):
            obj = _rev_in_obj(g, sc, p[:-1], ind)
            text = text.replace("_P" + repr(p), f"{obj}.get({p[-1]!r})")
        g.emit(ind, f"try: v = {text}")
        g.emit(ind, f"except _VP as e: issues.append(_mk({k}, e.code, e.message, {ix}))")
        g.emit(ind, "else:")
        g.emit(ind + 1, f"if v is not None and v != '': {out}[{key}] = v")
        return _Conv(), 0, False
    assert r.target is not None
    assert r.source_node is not None
    assert r.target_field is not None
    sn = r.source_node
    parent = _rev_in_obj(g, sc, r.target[:-1], ind)
    g.emit(ind, f"v = {parent}.get({r.target[-1]!r})")
    required = _required_in_city(sc.schema, r.source)
    if r.each is not None:
        assert sn.items is not None
        lst, i, item, o = g.var("l"), g.var("i"), g.var("it"), g.var("o")
        g.emit(ind, "if v:")
        g.emit(ind + 1, f"{lst} = []")
        g.emit(ind + 1, f"for {i}, {item} in enumerate(v):")
        g.emit(ind + 2, f"{o} = {{}}")
        sub = _Scope(
            item, o, [*sc.idx, i], can_ptr + "/{}", _can(sc.in_can, r.target) + "[{}]", sn.items
        )
        _compile_reverse_scope(g, sub, r.each, ind + 2)
        g.last_sub = sub
        g.emit(ind + 2, f"{lst}.append({o})")
        g.emit(ind + 1, f"{out}[{key}] = {lst}")
        if required:
            g.emit(ind, f"else: {out}[{key}] = []")
        return _Conv(), 0, False
    g.emit(ind, "if v is not None:")
    body = ind + 1
    tf = r.target_field
    plain = (
        r.codes is None
        and r.datetime is None
        and r.date is None
        and not (sn.type == "integer" and tf.kind == "string")
        and not (sn.type == "string" and tf.kind == "int")
    )
    conv, max_len = _Conv(), 0
    if plain:
        # A plain copy: no sentinel, no temporary.
        if sn.type == "string" and sn.max_length:
            max_len = sn.max_length
            g.emit(body, f"if type(v) is str and len(v) > {sn.max_length}:")
            g.emit(
                body + 1,
                f"issues.append(_mk({k}, 'TOO_LONG', "
                f"{'longer than ' + str(sn.max_length) + ' characters allowed in ' + city_ptr!r}, {ix}))",
            )
            g.emit(body, f"else: {out}[{key}] = v")
        else:
            g.emit(body, f"{out}[{key}] = v")
    else:
        conv, fits = _rev_convert(g, r, k, ix, body)
        if sn.type == "string" and sn.max_length and not fits:
            max_len = sn.max_length
            g.emit(body, f"if type(r) is str and len(r) > {sn.max_length}:")
            g.emit(
                body + 1,
                f"issues.append(_mk({k}, 'TOO_LONG', "
                f"{'longer than ' + str(sn.max_length) + ' characters allowed in ' + city_ptr!r}, {ix}))",
            )
            g.emit(body, f"elif r is not _MISS: {out}[{key}] = r")
        else:
            g.emit(body, f"if r is not _MISS: {out}[{key}] = r")
    if required:
        msg = f"the city schema requires {city_ptr}"
        if len(r.source) == 1:
            g.emit(ind, f"else: issues.append(_mk({k}, 'REQUIRED_MISSING', {msg!r}, {ix}))")
        else:
            sc.deferred.append((r.source[:-1], r.source[-1], k, msg))
    return conv, max_len, required and len(r.source) == 1


def _rev_convert(g: _Gen, r: Rule, k: int, ix: str, ind: int) -> tuple[_Conv, bool]:
    """Emit code that leaves the city value in ``r`` (or ``_MISS`` after an issue).

    Gives what a native step converts with, and True when every string it can leave there
    is known, at compile time, to fit the city field's ``maxLength`` (a code list whose
    codes all fit, and no pass-through): the length check is then left out of the generated
    code.
    """
    sn, tf = r.source_node, r.target_field
    assert sn is not None
    assert tf is not None
    tz = convert.zone(g.mapping.city.timezone)
    if r.codes is not None:
        cl = r.codes
        rev: dict[Any, Any] = dict(cl.reverse)
        if sn.type == "integer":
            rev = {c: int(v) for c, v in rev.items() if str(v).lstrip("-").isdigit()}
        table = g.const(rev, "_rcl")
        g.emit(ind, f"r = {table}.get(v, _MISS)")
        pol = cl.reverse_unknown
        g.emit(ind, "if r is _MISS:")
        if pol.kind == "fixed":
            g.emit(ind + 1, f"r = {g.const(pol.value)}")
        elif pol.kind == "pass":
            g.emit(ind + 1, "r = v")
        else:
            msg = f"canonical value has no code in code list {cl.ref}"
            g.emit(ind + 1, f"issues.append(_mk({k}, 'UNKNOWN_CODE', {msg!r}, {ix}))")
        left = [*rev.values(), *([pol.value] if pol.kind == "fixed" else [])]
        fits = pol.kind != "pass" and all(
            not isinstance(c, str) or sn.max_length is None or len(c) <= sn.max_length for c in left
        )
        return _Conv(rev, pol.kind, pol.value if pol.kind == "fixed" else None), fits
    conv = None
    if r.datetime is not None:
        conv = convert.make_datetime_formatter(r.datetime, tz)
    elif r.date is not None:
        conv = convert.make_date_formatter(r.date)
    if conv is not None:
        fn = g.const(conv, "_cv")
        g.emit(ind, f"try: r = {fn}(v)")
        g.emit(ind, "except _VP as e:")
        g.emit(ind + 1, f"issues.append(_mk({k}, e.code, e.message, {ix})); r = _MISS")
        return _Conv(convert=conv), False
    if sn.type == "integer" and tf.kind == "string":  # never a native step (_rev_simple)
        g.emit(ind, "if v.isascii() and v.isdigit(): r = int(v)")
        g.emit(
            ind, f"else: issues.append(_mk({k}, 'WRONG_TYPE', 'expected digits', {ix})); r = _MISS"
        )
    elif sn.type == "string" and tf.kind == "int":
        g.emit(ind, "r = str(v)")
        return _Conv(to_str=True), False
    else:
        g.emit(ind, "r = v")
    return _Conv(), False


# ---------------------------------------------------------------------------------------------


def _build(g: _Gen, name: str) -> tuple[Translate, str]:
    src = "\n".join([f"def {name}(src, issues):", "    out = {}", *g.lines, "    return out", ""])
    code = compile(src, f"<mapping {g.mapping.ref} {g.direction}>", "exec")
    exec(code, g.ns)  # noqa: S102 - generated from a validated model, see module docstring
    fn: Translate = g.ns[name]
    return fn, src


def native_enabled() -> bool:
    """Whether :func:`compile_mapping` uses the C fast path by default: when it is built,
    unless the environment says ``TONGBAN_NATIVE=0``."""
    return NATIVE_AVAILABLE and os.environ.get("TONGBAN_NATIVE", "1") != "0"


def compile_mapping(mapping: Mapping, native: bool | None = None) -> CompiledMapping:
    """Compile ``mapping`` both ways; ``native``: runs of simple rules go through the C fast
    path (default: :func:`native_enabled`)."""
    if native is None:
        native = native_enabled()
    elif native and not NATIVE_AVAILABLE:
        raise RuntimeError("the native fast path (adapters.mapping._native) is not built")
    fg = _Gen(mapping, "inbound", native)
    _compile_forward_scope(fg, _Scope("src", "out", [], "", "", mapping.schema), mapping.rules, 1)
    forward, fsrc = _build(fg, "forward")
    rg = _Gen(mapping, "outbound", native)
    _compile_reverse_scope(rg, _Scope("src", "out", [], "", "", mapping.schema), mapping.rules, 1)
    reverse, rsrc = _build(rg, "reverse")
    return CompiledMapping(mapping, forward, reverse, fsrc, rsrc)
