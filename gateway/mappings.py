"""The mapping set a running gateway serves, swapped atomically on reload.

A reload builds a complete new :class:`MappingSet` (load, check, compile, golden samples) off to
the side; only a set that passed everything replaces the serving one, in one assignment. A bad
set is rejected with its problems logged, and the old set keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from adapters.mapping import MappingLoadError, MappingSet, Problem
from adapters.mapping.golden import run_golden

__all__ = ["MappingRegistry", "ReloadOutcome", "TranslationObserver"]

log = logging.getLogger("tongban.mappings")


class TranslationObserver(Protocol):
    """Told of translations: ``n`` records of ``schema`` translated in ``direction``, each
    failing with ``code`` (None: they passed). The serving set calls it per record; a
    SubmitCases stream once per outcome, with its count."""

    def __call__(self, schema: str, direction: str, code: str | None, n: int = 1) -> None: ...


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What a reload did."""

    ok: bool
    generation: int
    problems: tuple[str, ...] = ()


class MappingRegistry:
    """Holds the serving mapping set; :meth:`reload` swaps in a new one only if it is sound."""

    def __init__(
        self,
        path: Path,
        *,
        run_golden_on_reload: bool = True,
        on_translation: TranslationObserver | None = None,
        on_reload: Callable[[bool], None] | None = None,
    ) -> None:
        self.path = path
        self.run_golden_on_reload = run_golden_on_reload
        self.on_translation = on_translation
        self.on_reload = on_reload
        self._current = self._build()  # a bad set at start-up is fatal: MappingLoadError
        self.generation = 1

    @property
    def current(self) -> MappingSet:
        """The mapping set serving now."""
        return self._current

    def _build(self) -> MappingSet:
        """Load, check and compile the set, then run its golden samples."""
        ms = MappingSet.load(self.path)
        if self.run_golden_on_reload:
            failed = [r for r in run_golden(ms) if not r.ok]
            if failed:
                raise MappingLoadError(
                    [Problem(r.sample, 0, f"golden sample failed: {r.detail}") for r in failed]
                )
        ms.observer = self.on_translation
        return ms

    def reload(self) -> ReloadOutcome:
        """Build a new set from disk and swap it in if every check passes."""
        try:
            ms = self._build()
        except MappingLoadError as exc:
            problems = tuple(str(p) for p in exc.problems)
            if self.on_reload:
                self.on_reload(False)
            log.error(
                "mapping reload rejected; the previous set keeps serving",
                extra={"problems": list(problems[:20]), "generation": self.generation},
            )
            return ReloadOutcome(False, self.generation, problems)
        self._current = ms
        self.generation += 1
        if self.on_reload:
            self.on_reload(True)
        log.info(
            "mapping set reloaded",
            extra={"generation": self.generation, "schemas": len(ms.compiled)},
        )
        return ReloadOutcome(True, self.generation)

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload whenever files under the mapping folder change, until ``stop`` is set."""
        from watchfiles import awatch

        async for _changes in awatch(self.path, stop_event=stop, debounce=300, step=100):
            self.reload()
