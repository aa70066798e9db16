"""Runs of simple mapping rules in C (adapters/mapping/_native.c)."""

from collections.abc import Mapping
from typing import Any

def plan(steps: tuple[tuple[Any, ...], ...], /) -> object:
    """A compiled run of simple rules; each step is a 17-tuple (see _native.c)."""

def run(
    plan: object, sources: tuple[Mapping[str, Any], ...], outputs: tuple[dict[str, Any], ...], /
) -> bool:
    """True when every rule of ``plan`` was a simple copy and is stored in ``outputs``."""
