"""A city's declared record schema: the subset of JSON Schema the engine checks mappings against.

Supported keywords: ``type`` (object, array, string, integer, number, boolean, or a list with
``"null"``), ``properties``, ``items``, ``required``, ``additionalProperties`` (boolean),
``maxLength``, ``title``, ``description``, ``$schema``, ``$id``, ``examples``. Anything else is a
load error, so a schema never promises a check the engine does not make.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MappingLoadError, Problem

__all__ = ["SchemaNode", "load_schema"]

_TYPES = {"object", "array", "string", "integer", "number", "boolean"}
_KNOWN = {
    "type",
    "properties",
    "items",
    "required",
    "additionalProperties",
    "maxLength",
    "title",
    "description",
    "$schema",
    "$id",
    "examples",
    "format",
}


@dataclass(slots=True)
class SchemaNode:
    """One node of a city schema."""

    type: str
    nullable: bool = False
    properties: dict[str, SchemaNode] = field(default_factory=dict)
    items: SchemaNode | None = None
    required: frozenset[str] = frozenset()
    additional: bool = True
    max_length: int | None = None

    def child(self, name: str) -> SchemaNode | None:
        """The property ``name`` of an object node."""
        return self.properties.get(name)

    def resolve(self, path: tuple[str, ...]) -> SchemaNode | str:
        """The node at ``path`` below this object, or a message saying why there is none."""
        node: SchemaNode = self
        for i, name in enumerate(path):
            if node.type != "object":
                return f"source field {'.'.join(path[:i])!r} is {node.type}, not an object"
            nxt = node.properties.get(name)
            if nxt is None:
                known = ", ".join(sorted(node.properties)) or "none"
                where = ".".join(path[: i + 1])
                return f"source field {where!r} is not in the city schema (known: {known})"
            node = nxt
        return node

    def leaf_paths(self, prefix: str = "") -> list[str]:
        """Every leaf path below this node (lists shown as ``name[]``), for coverage."""
        out: list[str] = []
        for name, node in self.properties.items():
            p = f"{prefix}{name}"
            if node.type == "object":
                out.extend(node.leaf_paths(p + "."))
            elif node.type == "array" and node.items is not None and node.items.type == "object":
                out.extend(node.items.leaf_paths(p + "[]."))
            else:
                out.append(p)
        return out


def load_schema(path: Path, display: str) -> SchemaNode:
    """Load and check a city schema file (JSON). Problems name the file and the JSON path."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingLoadError([Problem(display, 0, f"cannot read schema: {exc}")]) from exc
    except json.JSONDecodeError as exc:
        raise MappingLoadError([Problem(display, exc.lineno, f"invalid JSON: {exc.msg}")]) from exc
    problems: list[Problem] = []
    node = _node(raw, "#", display, problems)
    if node is not None and node.type != "object":
        problems.append(Problem(display, 1, "the top of a record schema must be an object"))
    if problems or node is None:
        raise MappingLoadError(problems)
    return node


def _node(raw: object, where: str, display: str, problems: list[Problem]) -> SchemaNode | None:
    def bad(msg: str) -> None:
        problems.append(Problem(display, 0, f"{where}: {msg}"))

    if not isinstance(raw, dict):
        bad("a schema node must be an object")
        return None
    unknown = set(raw) - _KNOWN
    if unknown:
        bad(f"unsupported keyword(s) {sorted(unknown)}")
    t = raw.get("type")
    nullable = False
    if isinstance(t, list):
        nullable = "null" in t
        rest = [x for x in t if x != "null"]
        t = rest[0] if len(rest) == 1 else None
    if t not in _TYPES:
        bad(f"'type' must be one of {sorted(_TYPES)} (optionally with \"null\")")
        return None
    node = SchemaNode(type=str(t), nullable=nullable)
    if "maxLength" in raw:
        if not isinstance(raw["maxLength"], int) or raw["maxLength"] < 1:
            bad("'maxLength' must be a positive integer")
        else:
            node.max_length = raw["maxLength"]
    if t == "object":
        props = raw.get("properties", {})
        if not isinstance(props, dict):
            bad("'properties' must be an object")
            props = {}
        for name, sub in props.items():
            child = _node(sub, f"{where}/properties/{name}", display, problems)
            if child is not None:
                node.properties[name] = child
        req = raw.get("required", [])
        if not isinstance(req, list) or not all(isinstance(r, str) for r in req):
            bad("'required' must be a list of property names")
            req = []
        for r in req:
            if r not in node.properties:
                bad(f"required property {r!r} is not declared in 'properties'")
        node.required = frozenset(req)
        add = raw.get("additionalProperties", True)
        if not isinstance(add, bool):
            bad("'additionalProperties' must be true or false")
        else:
            node.additional = add
    elif t == "array":
        if "items" not in raw:
            bad("an array needs 'items'")
        else:
            node.items = _node(raw["items"], f"{where}/items", display, problems)
    return node
