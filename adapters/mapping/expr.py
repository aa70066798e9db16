"""The small, safe expression language for computed fields.

An expression is parsed with Python's ``ast`` module and only these forms are accepted: string and
integer literals, field paths (``SQRZJHM``, ``applicant.idNo``) and calls of the functions in
:data:`FUNCTIONS`. There are no operators, attribute calls, subscripts, comprehensions or lambdas,
so a mapping file can never run arbitrary code. An expression compiles to a Python expression
over helper functions, evaluated inside the compiled mapping.

>>> parse_expr("concat(upper(a.b), '-', c)").paths
{('a', 'b'), ('c',)}
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import convert

__all__ = ["FUNCTIONS", "Expr", "ExprError", "parse_expr"]


class ExprError(ValueError):
    """The expression is not in the safe subset."""


def _concat(*parts: Any) -> str | None:
    if any(p is None for p in parts):
        return None
    return "".join(str(p) for p in parts)


def _coalesce(*parts: Any) -> Any:
    for p in parts:
        if p is not None and p != "":
            return p
    return None


def _lift(fn: Callable[..., Any]) -> Callable[..., Any]:
    def lifted(x: Any, *rest: Any) -> Any:
        if x is None:
            return None
        if not isinstance(x, str):
            x = str(x)
        return fn(x, *rest)

    lifted.__name__ = fn.__name__
    return lifted


def _substr(x: str, start: int, end: int | None = None) -> str:
    return x[start:end]


def _looks_like_id(x: str) -> bool:
    return len(x) == 18 and x.isascii() and x[:17].isdigit()


def _id_birth_date(x: str) -> str | None:
    # Other certificates carry no birth date: the field stays absent instead of failing.
    return convert.id_birth_date(x) if _looks_like_id(x) else None


def _id_sex(x: str) -> str | None:
    return convert.id_sex(x) if _looks_like_id(x) else None


def _home_city(x: str) -> str | None:
    return convert.home_city_of_id_number(x) if _looks_like_id(x) else None


#: name -> (function, min args, max args, result kind: "string", "date" or an enum full name)
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int, str]] = {
    "concat": (_concat, 1, 16, "string"),
    "coalesce": (_coalesce, 1, 16, "string"),
    "upper": (_lift(str.upper), 1, 1, "string"),
    "lower": (_lift(str.lower), 1, 1, "string"),
    "trim": (_lift(str.strip), 1, 1, "string"),
    "substr": (_lift(_substr), 2, 3, "string"),
    "id_birth_date": (_lift(_id_birth_date), 1, 1, "date"),
    "id_sex": (_lift(_id_sex), 1, 1, "tongban.v1.Sex"),
    "id_home_city": (_lift(_home_city), 1, 1, "string"),
}


@dataclass(slots=True)
class Expr:
    """A parsed expression: its text, the paths it reads, its result kind and Python form."""

    text: str
    result: str
    paths: set[tuple[str, ...]] = field(default_factory=set)
    python: str = ""


def _path(node: ast.expr) -> tuple[str, ...] | None:
    if isinstance(node, ast.Name):
        return (node.id,)
    if isinstance(node, ast.Attribute):
        base = _path(node.value)
        return None if base is None else (*base, node.attr)
    return None


def parse_expr(text: str) -> Expr:
    """Parse ``text``; raise :class:`ExprError` naming what is not allowed."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"expression does not parse: {exc.msg}") from None
    paths: set[tuple[str, ...]] = set()

    def emit(node: ast.expr) -> str:
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str | int)
            and not isinstance(node.value, bool)
        ):
            return repr(node.value)
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                known = ", ".join(sorted(FUNCTIONS))
                raise ExprError(f"only these functions may be called: {known}")
            if node.keywords:
                raise ExprError("keyword arguments are not allowed")
            _, lo, hi, _ = FUNCTIONS[node.func.id]
            if not lo <= len(node.args) <= hi:
                raise ExprError(f"{node.func.id}() takes {lo} to {hi} arguments")
            args = ", ".join(emit(a) for a in node.args)
            return f"_fn_{node.func.id}({args})"
        p = _path(node)
        if p is not None:
            paths.add(p)
            return "_P" + repr(p)  # replaced by the compiler with a read of that path
        raise ExprError(
            f"{type(node).__name__} is not allowed: use literals, field paths and functions"
        )

    body = tree.body
    python = emit(body)
    result = "string"
    if isinstance(body, ast.Call) and isinstance(body.func, ast.Name):
        result = FUNCTIONS[body.func.id][3]
    return Expr(text=text, result=result, paths=paths, python=python)
