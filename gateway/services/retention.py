"""Retention: purge what the store no longer needs to keep, now and then or on demand.

Shared by the serving gateway (every ``retention.interval_seconds``) and ``tongban db purge``.
The statements and what they never touch: :mod:`gateway.store.retention`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..settings import RetentionSettings
from ..store.audit_archive import ArchiveFile, ArchiveRaced, archive_audit
from ..store.retention import (
    PURGED,
    THINNED,
    PurgeIntent,
    ThinIntent,
    purge_bound,
    purge_counts,
    thinned_keys,
)
from ..store.store import Store

__all__ = ["PurgeReport", "RetentionService"]

log = logging.getLogger("tongban.retention")

DAY = 86400.0
#: A serving gateway's first purge, after it starts (or the interval, if shorter).
FIRST_PURGE_SECONDS = 60.0
#: The most of its writer's time a serving gateway's purge takes (see RetentionService.purge).
PACED_SHARE = 0.5


@dataclass
class PurgeReport:
    """Rows deleted (or, for a dry run, that would be), per table and ``events``."""

    cuts: dict[str, float]
    deleted: dict[str, int] = field(default_factory=dict)
    skipped: bool = False  # another replica was purging (PostgreSQL): nothing done this time

    @property
    def total(self) -> int:
        """Every row deleted."""
        return sum(self.deleted.values())


class RetentionService:
    """Purges idempotency records, delivered outbox rows and closed cases past their time."""

    def __init__(
        self,
        settings: RetentionSettings,
        store: Store,
        *,
        on_purged: Callable[[str, int], None] | None = None,
        on_done: Callable[[float], None] | None = None,
        on_archive_failed: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.on_purged = on_purged
        self.on_done = on_done  # a serving gateway's purge ended (or another replica's did)
        self.on_archive_failed = on_archive_failed

    def cuts(self, now: float) -> dict[str, float]:
        """Each purged table's cut-off time (UNIX seconds); a table kept for ever is absent."""
        days = {
            "requests": self.settings.request_days,
            "outbox": self.settings.delivered_days,
            "cases": self.settings.closed_case_days,
        }
        cuts = {t: now - days[t] * DAY for t in PURGED if days[t] > 0}
        if self.settings.checkpoint_days > 0:
            cuts |= dict.fromkeys(THINNED, now - self.settings.checkpoint_days * DAY)
        return cuts

    @property
    def enabled(self) -> bool:
        """Whether anything is ever purged (or archived)."""
        return bool(self.cuts(0.0)) or self.archives

    @property
    def archives(self) -> bool:
        """Whether audit entries are moved to archive files (``audit_days``)."""
        return self.settings.audit_days > 0 and self.settings.audit_archive_dir is not None

    async def archive(
        self, actor: str = "gateway", *, share: float = 1.0, stop: asyncio.Event | None = None
    ) -> list[ArchiveFile]:
        """Move audit entries older than ``audit_days`` into ``audit_archive_dir``."""
        directory = self.settings.audit_archive_dir
        if not self.archives or directory is None:
            return []
        files = await archive_audit(
            self.store,
            directory,
            self.store.clock() - self.settings.audit_days * DAY,
            self.settings.audit_entries_per_file,
            actor,
            share=share,
            stop=stop,
        )
        n = sum(f.entries for f in files)
        if n and self.on_purged is not None:
            self.on_purged("audit", n)
        return files

    async def dry_run(self) -> PurgeReport:
        """What a purge would delete now, deleting nothing."""
        cuts = self.cuts(self.store.clock())
        purged = {t: c for t, c in cuts.items() if t in PURGED}
        counts = await self.store.read(purge_counts, self.store.read_engine, purged)
        for table in THINNED.keys() & cuts.keys():
            keys = await self.store.read(thinned_keys, self.store.read_engine, table, cuts[table])
            counts[table] = len(keys)
        return PurgeReport(cuts, counts)

    async def purge(
        self, actor: str = "gateway", *, share: float = 1.0, stop: asyncio.Event | None = None
    ) -> PurgeReport:
        """Purge every table past its cut-off, ``batch_rows`` rows a transaction.

        ``share`` < 1 paces it: after each transaction it waits until that transaction's time
        is ``share`` of the time since it began, so the writer's other callers (submissions,
        deliveries' outcomes) are not held behind a long purge (a first purge of a large store:
        ~40k rows/s on SQLite). It ends between two transactions once ``stop`` is set (the
        gateway is stopping): the rest waits for the next purge."""
        report = PurgeReport(self.cuts(self.store.clock()))
        for table, cut in report.cuts.items():
            if table in THINNED:
                await self._thin(actor, table, cut, report, share)
                if stop is not None and stop.is_set():
                    return report
                continue
            bound = await self.store.read(purge_bound, self.store.read_engine, table, cut)
            after = 0
            while True:
                started = time.monotonic()
                step = await self.store.write(
                    PurgeIntent(actor, table, cut, after, bound, self.settings.batch_rows)
                )
                if share < 1.0:
                    await asyncio.sleep((time.monotonic() - started) * (1.0 / share - 1.0))
                if step.skipped:
                    report.skipped = True
                    return report
                self._count(report, table, step.deleted)
                if table == "cases":
                    self._count(report, "events", step.events)
                if stop is not None and stop.is_set():
                    return report
                if not step.more:
                    break
                after = step.last
        return report

    async def _thin(
        self, actor: str, table: str, cut: float, report: PurgeReport, share: float
    ) -> None:
        """Thin ``table``'s checkpoints signed before ``cut`` (listed in one read, deleted
        ``batch_rows`` a transaction, paced like the purge)."""
        keys = await self.store.read(thinned_keys, self.store.read_engine, table, cut)
        size = self.settings.batch_rows
        for start in range(0, len(keys), size):
            began = time.monotonic()
            step = await self.store.write(ThinIntent(actor, table, cut, keys[start : start + size]))
            if share < 1.0:
                await asyncio.sleep((time.monotonic() - began) * (1.0 / share - 1.0))
            self._count(report, table, step.deleted)
        report.deleted.setdefault(table, 0)

    def _count(self, report: PurgeReport, table: str, n: int) -> None:
        report.deleted[table] = report.deleted.get(table, 0) + n
        if n and self.on_purged is not None:
            self.on_purged(table, n)

    async def run(self, stop: asyncio.Event) -> None:
        """Purge a minute after the start, then every ``interval_seconds``, until ``stop``;
        paced to half of the writer's time."""
        interval = self.settings.interval_seconds
        if interval <= 0 or not self.enabled:
            return
        wait = min(FIRST_PURGE_SECONDS, interval)
        if self.on_done is not None:
            self.on_done(time.time())  # nothing purged since the start: not late yet
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if stop.is_set():
                return
            wait = interval
            try:
                report = await self.purge(share=PACED_SHARE, stop=stop)
            except Exception as exc:  # noqa: BLE001 - the store is down: try at the next turn
                log.warning("purge failed", extra={"error": f"{type(exc).__name__}: {exc}"})
                continue
            files: list[ArchiveFile] = []
            try:
                files = await self.archive(share=PACED_SHARE, stop=stop)
            except ArchiveRaced as exc:  # another replica archives into a shared directory
                log.info("audit archive skipped", extra={"reason": str(exc)})
            except Exception as exc:  # noqa: BLE001 - a broken chain, a full disk, the store
                # down: logged and counted (an alert), and the next turn tries again
                log.warning("audit archive failed", extra={"error": f"{type(exc).__name__}: {exc}"})
                if self.on_archive_failed is not None:
                    self.on_archive_failed()
            if files:
                log.info(
                    "audit entries archived",
                    extra={
                        "entries": sum(f.entries for f in files),
                        "files": [f.path.name for f in files],
                    },
                )
            if self.on_done is not None:
                self.on_done(time.time())
            if report.total or report.skipped:
                log.info(
                    "store purged",
                    extra={"deleted": report.deleted, "skipped": report.skipped},
                )
