"""Retention: how fast a purge deletes, and what it costs the writes that share its writer.

A SQLite store (writer process, as in the gateway) is bulk-loaded with ``--cases`` closed cases
made 100 days ago (each with its idempotency record, two status events and a delivered outbox
row), plus ``--open`` open cases of 90 days whose outbox rows are pending (kept, and walked
past). A probe writes a small intent through the writer every 10 ms and times it: first with
nothing else going on, then during a purge paced as a serving gateway paces it (half of the
writer's time), then, on a store loaded the same way again, during an unpaced purge (as
``tongban db purge`` runs). Then a purge with nothing left to delete. Figures: rows deleted per
second, and the probe's p50/p99 in each phase. Last line: JSON.

Usage: python bench/retention.py [--cases 200000] [--open 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

from common import pct, report, write_probe

from gateway.services.retention import PACED_SHARE, RetentionService
from gateway.settings import RetentionSettings
from gateway.store.store import Store

DAY = 86400.0
POLICY = RetentionSettings(request_days=30, delivered_days=30, closed_case_days=60)


def load(db: Path, n: int, start: int, age_days: float, status: str, state: str) -> None:
    """``n`` cases made ``age_days`` ago, with their rows in every table."""
    t = time.time() - age_days * DAY
    canonical = '{"applicant":{"name":"x","id_number":"x"}}' * 20
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA synchronous=OFF")
        for base in range(start, start + n, 50_000):
            ids = [f"b{j:031x}" for j in range(base, min(base + 50_000, start + n))]
            conn.executemany(
                "INSERT INTO cases (exchange_id, submitter, receiving_city, handling_city,"
                " case_number, status, delivery_state, canonical, mapping_versions, submitted_at,"
                " updated_at) VALUES (?, 'zs', '442000', '440300', ?, ?,"
                " 'DELIVERY_STATE_DELIVERED', ?, 'm', ?, ?)",
                [(x, x, status, canonical, t, t) for x in ids],
            )
            conn.executemany(
                "INSERT INTO requests (partner, request_id, kind, body_hash, response, created_at)"
                " VALUES ('zs', ?, 'submit', 'h', x'00', ?)",
                [(x, t) for x in ids],
            )
            for _ in range(2):
                conn.executemany(
                    "INSERT INTO events (exchange_id, status, occurred_at, reported_by, note,"
                    " created_at) VALUES (?, ?, ?, '440300', '', ?)",
                    [(x, status, t, t) for x in ids],
                )
            delivered = t if state == "delivered" else None
            conn.executemany(
                "INSERT INTO outbox (exchange_id, kind, target_partner, target_city, state,"
                " attempts, next_attempt_at, lease_until, last_error, created_at, delivered_at,"
                " replays) VALUES (?, 'case', 'sz', '440300', ?, 1, ?, 0, '', ?, ?, 0)",
                [(x, state, t, t, delivered) for x in ids],
            )


async def phase(db_dir: Path, cases: int, open_cases: int, share: float) -> dict[str, float]:
    db = db_dir / "store.db"
    store = Store(f"sqlite:///{db}", writer="process")
    store.migrate()
    load(db, cases, 0, 100, "CASE_STATUS_COMPLETED_APPROVED", "delivered")
    load(db, open_cases, cases, 90, "CASE_STATUS_IN_PROGRESS", "pending")
    store.start()
    svc = RetentionService(POLICY, store)
    async with write_probe(store) as idle:
        await asyncio.sleep(2)
    async with write_probe(store) as during:
        t = time.perf_counter()
        done = await svc.purge("bench", share=share)
        took = time.perf_counter() - t
    t = time.perf_counter()
    again = await svc.purge("bench")
    nothing = time.perf_counter() - t
    await store.stop()
    assert again.total == 0, again.deleted
    expected = {"requests": cases + open_cases, "outbox": cases, "cases": cases}
    assert done.deleted == expected | {"events": 2 * cases}, done.deleted
    print(
        f"share {share}: {done.total:,} rows in {took:.1f}s ({done.total / took:,.0f}/s); a write"
        f" through the writer: idle p50 {pct(idle, 0.5)} ms, p99 {pct(idle, 0.99)} ms; during"
        f" the purge p50 {pct(during, 0.5)} ms, p99 {pct(during, 0.99)} ms; a purge with"
        f" nothing to delete {1000 * nothing:.0f} ms"
    )
    return {
        "rows_per_s": round(done.total / took),
        "idle_p50_ms": pct(idle, 0.5),
        "idle_p99_ms": pct(idle, 0.99),
        "during_p50_ms": pct(during, 0.5),
        "during_p99_ms": pct(during, 0.99),
        "nothing_left_ms": round(1000 * nothing, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=200_000)
    p.add_argument("--open", type=int, default=10_000)
    args = p.parse_args()
    figures: dict[str, object] = {"bench": "retention", "cases": args.cases, "open": args.open}
    for name, share in (("paced", PACED_SHARE), ("unpaced", 1.0)):
        with tempfile.TemporaryDirectory() as tmp:
            result = asyncio.run(phase(Path(tmp), args.cases, args.open, share))
        figures |= {f"{name}_{k}": v for k, v in result.items()}
    report(figures)


if __name__ == "__main__":
    main()
