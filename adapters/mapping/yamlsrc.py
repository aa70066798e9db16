"""Line-aware, strict YAML loading for mapping files.

Mapping files are data written by integrators, so the loader is stricter than YAML 1.1:
mapping keys are kept as the text written (``01:`` stays ``"01"``, never the integer 1),
duplicate keys are errors, ``yes``/``no``/``on``/``off`` stay strings, and dates stay strings.
Every mapping and list remembers the line of each entry, so later checks can name file:line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import MappingLoadError, Problem

__all__ = ["LDict", "LList", "line_of", "load_yaml"]


class LDict(dict[str, Any]):
    """A dict that knows the line of itself and of each of its keys (1-based)."""

    line: int = 0
    lines: dict[str, int]


class LList(list[Any]):
    """A list that knows the line of itself and of each item (1-based)."""

    line: int = 0
    lines: list[int]


def line_of(obj: object, key: str | int | None = None, default: int = 0) -> int:
    """The line of ``obj`` (or of its entry ``key``) when known, else ``default``."""
    if key is not None:
        lines = getattr(obj, "lines", None)
        if isinstance(lines, dict) and key in lines:
            return int(lines[key])
        if isinstance(lines, list) and isinstance(key, int) and 0 <= key < len(lines):
            return int(lines[key])
    return int(getattr(obj, "line", default) or default)


class _Loader(yaml.SafeLoader):
    """SafeLoader with strict scalars and line tracking."""


# Keep only the implicit types a mapping needs: null, true/false, decimal ints, floats.
_Loader.yaml_implicit_resolvers = {}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9]*\.[0-9]+(?:[eE][-+]?[0-9]+)?)$"),
    list("-+0123456789"),
)


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LDict:
    result = LDict()
    result.line = node.start_mark.line + 1
    result.lines = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be plain text", key_node.start_mark
            )
        key = str(key_node.value)  # the text as written: "01" stays "01"
        if key in result.lines:
            raise _DuplicateKey(
                None,
                None,
                f"duplicate key {key!r} (first at line {result.lines[key]})",
                key_node.start_mark,
            )
        result.lines[key] = key_node.start_mark.line + 1
        result[key] = loader.construct_object(value_node, deep=True)
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LList:
    result = LList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def load_yaml(path: Path, display: str | None = None) -> Any:
    """Load one YAML file; syntax errors and duplicate keys raise MappingLoadError with the line."""
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingLoadError([Problem(name, 0, f"cannot read file: {exc}")]) from exc
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise MappingLoadError([Problem(name, line, str(exc.problem or exc))]) from exc
    except yaml.YAMLError as exc:
        raise MappingLoadError([Problem(name, 0, f"invalid YAML: {exc}")]) from exc
