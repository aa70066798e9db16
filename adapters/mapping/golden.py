"""Golden tests that live beside each mapping: ``samples/<kind>/NAME.json`` plus either

* ``NAME.canonical.json`` — the expected canonical record. The sample must translate without
  errors to exactly that record, and the expected record must translate back to the sample
  (every field the mapping writes outbound; inbound-only fields are left out of the comparison);
* ``NAME.errors.json`` — the expected errors, a list of ``{"code": ..., "pointer": ...}``. The
  sample must fail with exactly those errors.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .compiler import CompiledMapping
from .errors import Issue
from .model import Rule
from .registry import MappingSet

__all__ = ["GoldenResult", "run_golden"]


@dataclass(slots=True)
class GoldenResult:
    """Outcome of one sample."""

    schema: str
    sample: str
    ok: bool
    detail: str = ""
    warnings: list[Issue] = field(default_factory=list)


def _dumps(obj: Any) -> list[str]:
    return json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True).splitlines()


def _diff(expected: Any, actual: Any, a: str, b: str) -> str:
    return "\n".join(difflib.unified_diff(_dumps(expected), _dumps(actual), a, b, lineterm=""))


def _outbound_paths(rules: list[Rule]) -> dict[str, Any]:
    """Tree of city paths written outbound: {key: True | subtree | ("each", subtree)}."""
    tree: dict[str, Any] = {}
    for r in rules:
        if not r.outbound or r.source is None:
            continue
        node = tree
        for key in r.source[:-1]:
            node = node.setdefault(key, {})
        node[r.source[-1]] = ("each", _outbound_paths(r.each)) if r.each is not None else True
    return tree


def _project(record: Any, tree: dict[str, Any]) -> Any:
    """``record`` restricted to the paths in ``tree``, absent/empty values dropped."""
    out: dict[str, Any] = {}
    if not isinstance(record, dict):
        return record
    for key, sub in tree.items():
        if key not in record or record[key] in (None, ""):
            continue
        value = record[key]
        if sub is True:
            out[key] = value
        elif isinstance(sub, tuple):
            out[key] = [_project(v, sub[1]) for v in value]
        else:
            projected = _project(value, sub)
            if projected:
                out[key] = projected
    return out


def _run_one(ms: MappingSet, cm: CompiledMapping, src: Path) -> GoldenResult:
    name = str(src.relative_to(ms.root))
    try:
        record = json.loads(src.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return GoldenResult(cm.name, name, False, f"cannot read sample: {exc}")
    stem = src.name[: -len(".json")]
    expected_file = src.with_name(stem + ".canonical.json")
    errors_file = src.with_name(stem + ".errors.json")
    issues: list[Issue] = []
    canonical = cm.forward(record, issues)
    errors = [i for i in issues if i.severity == "error"]
    warnings = [i for i in issues if i.severity == "warning"]
    if errors_file.exists():
        want = json.loads(errors_file.read_text(encoding="utf-8"))
        got = [{"code": i.code, "pointer": i.pointer} for i in errors]
        key = lambda d: (d["pointer"], d["code"])  # noqa: E731
        if sorted(got, key=key) != sorted(want, key=key):
            return GoldenResult(
                cm.name, name, False, _diff(want, got, "expected errors", "actual errors")
            )
        return GoldenResult(cm.name, name, True, warnings=warnings)
    if not expected_file.exists():
        return GoldenResult(
            cm.name, name, False, f"missing {expected_file.name} or {errors_file.name}"
        )
    if errors:
        return GoldenResult(
            cm.name, name, False, "unexpected errors:\n" + "\n".join(map(str, errors))
        )
    expected = json.loads(expected_file.read_text(encoding="utf-8"))
    if canonical != expected:
        return GoldenResult(
            cm.name,
            name,
            False,
            _diff(expected, canonical, expected_file.name, "engine output (inbound)"),
        )
    back_issues: list[Issue] = []
    back = cm.reverse(expected, back_issues)
    back_errors = [i for i in back_issues if i.severity == "error"]
    if back_errors:
        return GoldenResult(
            cm.name, name, False, "round trip failed:\n" + "\n".join(map(str, back_errors))
        )
    want_back = _project(record, _outbound_paths(cm.mapping.rules))
    if back != want_back:
        return GoldenResult(
            cm.name, name, False, _diff(want_back, back, src.name, "engine output (outbound)")
        )
    return GoldenResult(cm.name, name, True, warnings=warnings)


def run_golden(ms: MappingSet, city: str | None = None) -> list[GoldenResult]:
    """Run every golden sample of every (or one) city."""
    results: list[GoldenResult] = []
    for schema, cm in sorted(ms.compiled.items()):
        if city and cm.mapping.city.name != city:
            continue
        folder = cm.mapping.city.folder / "samples" / cm.mapping.kind
        if not folder.is_dir():
            results.append(GoldenResult(schema, str(folder), False, "no samples for this mapping"))
            continue
        for src in sorted(folder.glob("*.json")):
            if src.name.endswith((".canonical.json", ".errors.json")):
                continue
            results.append(_run_one(ms, cm, src))
    return results
