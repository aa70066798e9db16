"""Re-encryption in the background: how fast the walk seals, and what it costs the writes that
share its writer.

A SQLite store (writer process, as in the gateway) is bulk-loaded with ``--cases`` cases whose
canonical records (~1 kB) are in the clear, and ``--notes`` status notes. A probe writes a small
intent through the writer every 10 ms and times it: with nothing else going on, then during
the walk that seals everything with a first key, paced as a serving gateway paces it (half of
the writer's time), then during an unpaced walk to a second key (as fast as the writer goes),
then a walk with nothing left to move. Figures: values sealed per second, and the probe's
p50/p99 in each phase. Last line: JSON.

Usage: python bench/reencrypt.py [--cases 100000] [--notes 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

from common import pct, report, write_probe

from gateway.services.reencrypt import PACED_SHARE, ReencryptService
from gateway.store.sealing import Keyring, generate_key, write_keyring
from gateway.store.store import Store


def load(db: Path, cases: int, notes: int) -> None:
    """``cases`` cases with records in the clear, the first ``notes`` with a status note."""
    t = time.time()
    canonical = '{"applicant":{"name":"x","id_number":"x"}}' * 20
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA synchronous=OFF")
        for base in range(0, cases, 50_000):
            ids = [f"b{j:031x}" for j in range(base, min(base + 50_000, cases))]
            conn.executemany(
                "INSERT INTO cases (exchange_id, submitter, receiving_city, handling_city,"
                " case_number, status, delivery_state, canonical, mapping_versions, submitted_at,"
                " updated_at) VALUES (?, 'zs', '442000', '440300', ?, 'CASE_STATUS_ACCEPTED',"
                " 'DELIVERY_STATE_DELIVERED', ?, 'm', ?, ?)",
                [(x, x, canonical, t, t) for x in ids],
            )
            conn.executemany(
                "INSERT INTO events (exchange_id, status, occurred_at, reported_by, note,"
                " created_at) VALUES (?, 'CASE_STATUS_ACCEPTED', ?, '440300', ?, ?)",
                [(x, t, "请补充户口簿" if base + n < notes else "", t) for n, x in enumerate(ids)],
            )


async def walk(store: Store, share: float, expected: int) -> tuple[float, list[float]]:
    """One walk with the probe beside it: (seconds, the probe's times)."""
    async with write_probe(store) as times:
        t = time.perf_counter()
        step, sealed = await ReencryptService(store).walk(retry=True, share=share)
        took = time.perf_counter() - t
    assert step.done, step
    assert not step.problem, step
    assert sealed == expected, (sealed, expected)
    return took, times


async def run(tmp: Path, cases: int, notes: int) -> dict[str, float]:
    db, keys = tmp / "store.db", tmp / "keys.toml"
    made = Store(f"sqlite:///{db}")
    made.migrate()
    made.dispose()
    load(db, cases, notes)
    write_keyring(keys, "k1", {"k1": ("sm4-gcm", generate_key("sm4-gcm"))})
    store = Store(f"sqlite:///{db}", writer="process", keyring=Keyring.load(keys))
    store.start()
    figures: dict[str, float] = {}
    try:
        async with write_probe(store) as idle:
            await asyncio.sleep(2)
        figures |= {"idle_p50_ms": pct(idle, 0.5), "idle_p99_ms": pct(idle, 0.99)}
        values = cases + notes
        took, times = await walk(store, PACED_SHARE, values)
        figures |= {
            "paced_values_per_s": round(values / took),
            "paced_p50_ms": pct(times, 0.5),
            "paced_p99_ms": pct(times, 0.99),
        }
        ring = Keyring.load(keys)
        ring = write_keyring(
            keys, "k2", {**ring.entries(), "k2": ("aes-256-gcm", generate_key("aes-256-gcm"))}
        )
        store.set_keyring(ring)
        took, times = await walk(store, 1.0, values)
        figures |= {
            "unpaced_values_per_s": round(values / took),
            "unpaced_p50_ms": pct(times, 0.5),
            "unpaced_p99_ms": pct(times, 0.99),
        }
        t = time.perf_counter()
        await walk(store, 1.0, 0)
        figures["nothing_left_ms"] = round(1000 * (time.perf_counter() - t), 1)
    finally:
        await store.stop()
    print(
        f"{values:,} values; a write through the writer: idle p50 {figures['idle_p50_ms']} ms,"
        f" p99 {figures['idle_p99_ms']} ms\n"
        f"paced walk from the clear: {figures['paced_values_per_s']:,.0f} values/s, the write"
        f" p50 {figures['paced_p50_ms']} ms, p99 {figures['paced_p99_ms']} ms\n"
        f"unpaced walk to a new key: {figures['unpaced_values_per_s']:,.0f} values/s, the write"
        f" p50 {figures['unpaced_p50_ms']} ms, p99 {figures['unpaced_p99_ms']} ms\n"
        f"a walk with nothing left to move: {figures['nothing_left_ms']} ms"
    )
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--notes", type=int, default=20_000)
    args = p.parse_args()
    if not 0 <= args.notes <= args.cases:
        p.error("--notes must be between 0 and --cases")
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(run(Path(tmp), args.cases, args.notes))
    report({"bench": "reencrypt", "cases": args.cases, "notes": args.notes, **figures})


if __name__ == "__main__":
    main()
