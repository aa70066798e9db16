"""The C fast path of compiled mappings (adapters/mapping/_native.c) against the Python alone.

Compiled with ``native=True``, runs of simple rules go through ``_native.run`` and fall back to
the same generated Python when a value is anything but a simple copy. Every record must come
out identical (same keys in the same order, same values) with the same issues in the same order
as with ``native=False``: on every golden sample, both ways, and on samples broken at random.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.mapping import MappingSet
from adapters.mapping.compiler import NATIVE_AVAILABLE, CompiledMapping, compile_mapping

pytestmark = pytest.mark.skipif(not NATIVE_AVAILABLE, reason="the C extension is not built")

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"


@pytest.fixture(scope="module")
def both(mapping_set: MappingSet) -> dict[str, tuple[CompiledMapping, CompiledMapping]]:
    """Schema name -> (native, pure) compilations of the shipped mapping."""
    return {
        name: (compile_mapping(cm.mapping, native=True), compile_mapping(cm.mapping, native=False))
        for name, cm in mapping_set.compiled.items()
    }


def _samples(kind_suffix: str) -> list[tuple[str, Path]]:
    out = []
    for path in sorted(MAPPINGS.glob(f"*/samples/*/*{kind_suffix}")):
        city, kind = path.parts[-4], path.parts[-2]
        if kind_suffix == ".json" and path.name.count(".") > 1:
            continue  # NAME.canonical.json / NAME.errors.json
        out.append((f"{city}.{kind}", path))
    return out


def _outcome(fn: Any, record: Any) -> tuple[Any, list[Any]]:
    """(the record as JSON bytes, or the exception's type and text; the issues)."""
    issues: list[Any] = []
    try:
        # orjson keeps key order: equal bytes means equal keys, order and values
        return orjson.dumps(fn(record, issues)), issues
    except Exception as exc:  # e.g. a list where a code is looked up: both must raise alike
        return (type(exc), str(exc)), issues


def _same(native: CompiledMapping, pure: CompiledMapping, direction: str, record: Any) -> None:
    got = _outcome(getattr(native, direction), record)
    want = _outcome(getattr(pure, direction), record)
    assert got == want


def test_the_native_path_is_compiled_in(
    both: dict[str, tuple[CompiledMapping, CompiledMapping]],
) -> None:
    native, pure = both["zhongshan.case"]
    assert "_run(" in native.forward_source
    assert "_run(" in native.reverse_source
    assert "_run(" not in pure.forward_source
    assert "_run(" not in pure.reverse_source


@pytest.mark.parametrize(("schema", "path"), _samples(".json"), ids=str)
def test_city_samples_translate_identically(
    both: dict[str, tuple[CompiledMapping, CompiledMapping]], schema: str, path: Path
) -> None:
    native, pure = both[schema]
    record = json.loads(path.read_text("utf-8"))
    _same(native, pure, "forward", record)
    canonical = pure.forward(record, [])
    _same(native, pure, "reverse", canonical)


@pytest.mark.parametrize(("schema", "path"), _samples(".canonical.json"), ids=str)
def test_canonical_samples_translate_identically(
    both: dict[str, tuple[CompiledMapping, CompiledMapping]], schema: str, path: Path
) -> None:
    native, pure = both[schema]
    _same(native, pure, "reverse", json.loads(path.read_text("utf-8")))


# Values that are not simple copies: each must send the run back to the Python code.
ODD = [None, "", " ", 0, -1, 1.5, True, False, [], {}, ["x"], {"a": 1}, "x" * 600, "Z", "99",
       "20261131093000", "2026-02-30", "20261120256000", "440305199103150248", "1", "2", "00",
       "SEX_FEMALE", "CASE_STATUS_SUBMITTED", "2026-11-20T01:30:00Z", "not a timestamp"]  # fmt: skip


def _mutate(rnd: random.Random, record: Any, depth: int = 0) -> Any:
    """``record`` with some of its fields (at any depth) removed or replaced by odd values.

    Drawn from a seeded ``random.Random``, not from hypothesis strategies one by one: those
    lean towards the first choice ("keep"), and a record would rarely be broken at all."""
    if isinstance(record, list):
        return [_mutate(rnd, item, depth + 1) for item in record]
    if not isinstance(record, dict):
        return record
    out: dict[str, Any] = {}
    for key, value in record.items():
        action = rnd.choice(["keep", "keep", "keep", "drop", "odd", "deeper"])
        if action == "odd":
            out[key] = rnd.choice(ODD)
        elif action == "deeper" and depth < 3:
            out[key] = _mutate(rnd, value, depth + 1)
        elif action != "drop":
            out[key] = value
    if rnd.random() < 0.3:
        out[rnd.choice(["EXTRA", "name", "status"])] = rnd.choice(ODD)
    return out


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_broken_records_translate_identically(
    both: dict[str, tuple[CompiledMapping, CompiledMapping]], seed: int
) -> None:
    rnd = random.Random(seed)
    schema, path = rnd.choice(_samples(".json"))
    native, pure = both[schema]
    record = json.loads(path.read_text("utf-8"))
    _same(native, pure, "forward", _mutate(rnd, record))
    canonical = json.loads(
        path.with_name(path.name.replace(".json", ".canonical.json")).read_text("utf-8")
    )
    _same(native, pure, "reverse", _mutate(rnd, canonical))


def _paths(record: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key and list index path in ``record``."""
    items = record.items() if isinstance(record, dict) else enumerate(record)
    out = []
    for key, value in items:
        out.append((*prefix, key))
        if isinstance(value, (dict, list)):
            out.extend(_paths(value, (*prefix, key)))
    return out


def _replaced(record: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A copy of ``record`` with the value at ``path`` replaced (``_DROP``: removed)."""
    copy = json.loads(json.dumps(record))
    node = copy
    for key in path[:-1]:
        node = node[key]
    if value is _DROP:
        node.pop(path[-1]) if isinstance(node, dict) else node.__delitem__(path[-1])
    else:
        node[path[-1]] = value
    return copy


_DROP = object()


@pytest.mark.parametrize(("schema", "path"), _samples(".json"), ids=str)
def test_every_single_break_translates_identically(
    both: dict[str, tuple[CompiledMapping, CompiledMapping]], schema: str, path: Path
) -> None:
    """Each field of each sample, alone, removed or replaced by each odd value: a run that
    fails on one field while the rest is simple is where a fast path would go wrong."""
    native, pure = both[schema]
    for direction, record in (
        ("forward", json.loads(path.read_text("utf-8"))),
        (
            "reverse",
            json.loads(
                path.with_name(path.name.replace(".json", ".canonical.json")).read_text("utf-8")
            ),
        ),
    ):
        for where in _paths(record):
            for value in [_DROP, *ODD]:
                _same(native, pure, direction, _replaced(record, where, value))


# -- the extension's own contract ---------------------------------------------------------


def _step(**kw: Any) -> tuple[Any, ...]:
    """A plan step: (src, key, required, type, max_len, check_result, to_str, table, policy,
    fixed, convert, validate, out, out_key, list, sub, allowed)."""
    base: dict[str, Any] = {
        "src": 0, "key": "a", "required": False, "type": 0, "max_len": 0, "check_result": False,
        "to_str": False, "table": None, "policy": 0, "fixed": None, "convert": None,
        "validate": None, "out": 0, "out_key": "b", "list": 0, "sub": None, "allowed": None,
    }  # fmt: skip
    base.update(kw)
    return tuple(base.values())


def test_a_run_copies_converts_and_skips() -> None:
    from adapters.mapping import _native

    plan = _native.plan(
        (
            _step(key="a", out_key="A", max_len=3),
            _step(key="b", out_key="B", table={"1": "ONE"}),
            _step(key="c", out_key="C", table={}, policy=1, fixed="DEFAULT"),
            _step(key="d", out_key="D", convert=str.upper, out=1),
            _step(key="e", out_key="E", type=1, to_str=True),
            _step(key="missing", out_key="M"),
            _step(key="empty", out_key="X"),
        )
    )
    out: dict[str, Any] = {}
    sub: dict[str, Any] = {}
    src = {"a": "abc", "b": "1", "c": "?", "d": "xy", "e": 7, "empty": ""}
    assert _native.run(plan, (src,), (out, sub)) is True
    assert out == {"A": "abc", "B": "ONE", "C": "DEFAULT", "E": "7"}
    assert sub == {"D": "XY"}


@pytest.mark.parametrize(
    ("step", "src"),
    [
        (_step(required=True), {}),  # required and missing
        (_step(required=True), {"a": ""}),  # required and empty
        (_step(), {"a": 1}),  # wrong type
        (_step(type=1), {"a": True}),  # a bool is not an integer
        (_step(max_len=2), {"a": "abc"}),  # too long
        (_step(table={"1": "ONE"}), {"a": "2"}),  # unknown code
        (_step(convert=int), {"a": "x"}),  # the converter raises
        (_step(validate=lambda v: [("W", "a warning")]), {"a": "x"}),  # a warning
        (_step(type=4, check_result=True, max_len=2, convert=str.upper), {"a": "abc"}),
    ],
)
def test_anything_but_a_simple_copy_is_left_to_python(step: tuple[Any, ...], src: Any) -> None:
    from adapters.mapping import _native

    assert _native.run(_native.plan((step,)), (src,), ({},)) is False


def test_a_source_that_is_not_an_object_is_left_to_python() -> None:
    from types import MappingProxyType

    from adapters.mapping import _native

    plan = _native.plan((_step(),))
    assert _native.run(plan, (["a"],), ({},)) is False
    assert _native.run(plan, (MappingProxyType({}),), ({},)) is True  # the generated _EMPTY


def test_interrupts_are_not_swallowed() -> None:
    from adapters.mapping import _native

    def interrupted(value: str) -> str:
        raise KeyboardInterrupt

    plan = _native.plan((_step(convert=interrupted),))
    with pytest.raises(KeyboardInterrupt):
        _native.run(plan, ({"a": "x"},), ({},))


@pytest.mark.parametrize(
    "steps",
    [
        [("too", "short")],
        [_step(table=[1, 2])],
        [_step(policy=7)],
        [_step(src=-1)],
    ],
)
def test_bad_plans_are_refused(steps: list[Any]) -> None:
    from adapters.mapping import _native

    with pytest.raises((TypeError, ValueError)):
        _native.plan(tuple(steps))


def test_run_checks_its_arguments() -> None:
    from adapters.mapping import _native

    plan = _native.plan((_step(src=1, out=1),))
    with pytest.raises(TypeError):
        _native.run(plan, ({},), ({}, {}))  # one source short
    with pytest.raises(TypeError):
        _native.run(plan, [{}, {}], ({}, {}))
    with pytest.raises((TypeError, ValueError)):
        _native.run("not a plan", ({}, {}), ({}, {}))


def test_tongban_native_0_compiles_without_the_fast_path(
    mapping_set: MappingSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adapters.mapping.compiler import native_enabled

    mapping = mapping_set.compiled["zhongshan.case"].mapping
    monkeypatch.delenv("TONGBAN_NATIVE", raising=False)
    assert native_enabled()
    assert "_run(" in compile_mapping(mapping).forward_source
    monkeypatch.setenv("TONGBAN_NATIVE", "0")
    assert not native_enabled()
    assert "_run(" not in compile_mapping(mapping).forward_source


def test_a_list_step_runs_each_item_through_its_sub_plan() -> None:
    from adapters.mapping import _native

    item_plan = _native.plan((_step(key="n", out_key="name"),))
    forward = _native.plan(
        (_step(key="items", out_key="list", list=1, sub=item_plan, allowed=frozenset({"n"})),)
    )
    out: dict[str, Any] = {}
    assert _native.run(forward, ({"items": [{"n": "a"}, {}]},), (out,)) is True
    assert out == {"list": [{"name": "a"}, {}]}
    out = {}
    assert _native.run(forward, ({"items": []},), (out,)) is True
    assert out == {}  # an empty list is not written inbound
    assert _native.run(forward, ({"items": [{"n": "a", "x": 1}]},), ({},)) is False  # unknown key
    assert _native.run(forward, ({"items": ["a"]},), ({},)) is False  # not an object
    assert _native.run(forward, ({"items": ({"n": "a"},)},), ({},)) is False  # not a list
    reverse = _native.plan(
        (_step(key="list", out_key="items", list=2, sub=item_plan, required=True),)
    )
    out = {}
    assert _native.run(reverse, ({},), (out,)) is True
    assert out == {"items": []}  # the city schema requires it


@pytest.mark.parametrize(
    "step",
    [
        _step(list=1, sub="not a plan"),
        _step(list=1, sub=None),
        _step(allowed={"a"}),  # a set, not a frozenset
        _step(list=3),
    ],
)
def test_bad_list_steps_are_refused(step: tuple[Any, ...]) -> None:
    from adapters.mapping import _native

    with pytest.raises((TypeError, ValueError)):
        _native.plan((step,))
    two_sources = _native.plan((_step(src=1),))
    with pytest.raises(TypeError):
        _native.plan((_step(list=1, sub=two_sources),))
