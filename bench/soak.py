"""Soak: many cases through the whole path; memory flat; per-operation cost flat in store size.

Part 1 pushes ``--cases`` cases (default 100k) through a gateway process delivering to a real
partner inbox, sampling the gateway's resident memory (VmRSS, its writer process included) at
the start, middle and end: ``rss_growth_ratio`` = end / middle (1.0 = flat). Part 2 measures
SubmitCase, ListCases (a keyset page) and an outbox claim against a store holding 1k rows and
one holding 1M rows (bulk-loaded), side by side: each round measures the small store, then the
big one (the other way round in odd rounds), so that the machine's other load moves both.
``cost_1m_vs_1k`` is the worst of the three operations' ratios (each the median of the
per-round ratios). Last line: JSON.

Usage: python bench/soak.py [--cases 100000] [--big 1000000] [--rounds 3] [--calls 150]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import grpc
from common import BENCH_TOKEN, GatewayProcess, case_payloads, partner_env, report

from gateway.partner_sim import InboxSimulator, start_simulator
from gateway.store.intents import ClaimIntent
from gateway.store.store import Store
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import case_exchange_pb2_grpc as cx_grpc
from tongban.v1 import common_pb2

META = BENCH_TOKEN


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children (the gateway's writer process included)."""
    total = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1]) / 1024
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += rss_mb(int(child))
    return total


def env_for(port: int) -> dict[str, str]:
    return {
        **partner_env(port),
        "TONGBAN_DELIVERY__WORKERS": "32",
        "TONGBAN_DELIVERY__BATCH_SIZE": "128",
    }


async def soak(cases: int) -> dict[str, float]:
    payloads = [
        cx.SubmitCaseRequest.FromString(b)
        for b in case_payloads(
            1000,
            lambda i, body: cx.SubmitCaseRequest(
                target_city="440300",
                foreign=common_pb2.ForeignRecord(schema="zhongshan.case", json=body),
            ).SerializeToString(),
        )
    ]
    with tempfile.TemporaryDirectory() as tmp:
        sim = InboxSimulator(Path(tmp) / "inbox.db")
        server, port = await start_simulator(sim)
        try:
            with GatewayProcess(env_for(port), Path(tmp) / "gw") as gw:
                samples: dict[str, float] = {}
                sent = 0
                async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
                    stub = cx_grpc.CaseExchangeServiceStub(ch)

                    async def worker(w: int) -> None:
                        nonlocal sent
                        while sent < cases:
                            i = sent
                            sent += 1
                            r = cx.SubmitCaseRequest(
                                request_id=f"soak-{i}",
                                target_city="440300",
                                foreign=payloads[i % len(payloads)].foreign,
                            )
                            await stub.SubmitCase(r, metadata=META)
                            if i == cases // 10:
                                samples["start"] = rss_mb(gw.proc.pid)
                            elif i == cases // 2:
                                samples["middle"] = rss_mb(gw.proc.pid)

                    t0 = time.time()
                    await asyncio.gather(*(worker(w) for w in range(64)))
                    while len(sim.applied("case")) < cases:
                        await asyncio.sleep(0.2)
                    samples["end"] = rss_mb(gw.proc.pid)
                    elapsed = time.time() - t0
        finally:
            await server.stop(0)
            sim.close()
    print(
        f"soak: {cases} cases in {elapsed:.0f}s; RSS start {samples['start']:.0f} MB, "
        f"middle {samples['middle']:.0f} MB, end {samples['end']:.0f} MB"
    )
    return {**samples, "seconds": elapsed}


def bulk_load(db: Path, rows: int, start: int) -> None:
    """Add ``rows`` delivered cases (with their requests, events and outbox rows) directly."""
    now = time.time()
    canonical = '{"case_number":"x","applicant":{"name":"x"}}'
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA synchronous=OFF")
        step = 50_000
        for base in range(start, start + rows, step):
            n = min(step, start + rows - base)
            ids = [f"bulk{j:028x}" for j in range(base, base + n)]
            conn.executemany(
                "INSERT INTO cases (exchange_id, submitter, receiving_city, handling_city, case_number,"
                " status, delivery_state, canonical, mapping_versions, submitted_at, updated_at)"
                " VALUES (?, 'zs', '442000', '440300', ?, 'CASE_STATUS_RECEIVED',"
                " 'DELIVERY_STATE_DELIVERED', ?, 'zhongshan.case@1', ?, ?)",
                [
                    (x, f"bulk-{j}", canonical, now, now)
                    for j, x in zip(range(base, base + n), ids, strict=True)
                ],
            )
            conn.executemany(
                "INSERT INTO requests (partner, request_id, kind, body_hash, response, created_at)"
                " VALUES ('zs', ?, 'submit', 'h', x'00', ?)",
                [(f"bulk-{j}", now) for j in range(base, base + n)],
            )
            conn.executemany(
                "INSERT INTO events (exchange_id, status, occurred_at, reported_by, note, created_at)"
                " VALUES (?, 'CASE_STATUS_RECEIVED', ?, '440300', '', ?)",
                [(x, now, now) for x in ids],
            )
            conn.executemany(
                "INSERT INTO outbox (exchange_id, kind, target_partner, target_city, state, attempts,"
                " next_attempt_at, lease_until, last_error, created_at, delivered_at, replays)"
                " VALUES (?, 'case', 'sz', '440300', 'delivered', 1, ?, 0, '', ?, ?, 0)",
                [(x, now, now, now) for x in ids],
            )


async def costs(db_dir: Path, rounds: int = 300) -> dict[str, float]:
    """Median seconds of SubmitCase, ListCases page and claim against the store as it is."""
    payload = case_payloads(1, lambda i, body: body)[0]
    with GatewayProcess(env_for(9) | {"TONGBAN_DELIVERY__ENABLED": "false"}, db_dir) as gw:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
            stub = cx_grpc.CaseExchangeServiceStub(ch)
            sub, lst = [], []
            tag = time.time_ns()
            for i in range(rounds):
                t = time.perf_counter()
                await stub.SubmitCase(
                    cx.SubmitCaseRequest(
                        request_id=f"c{tag}-{i}",
                        target_city="440300",
                        foreign=common_pb2.ForeignRecord(schema="zhongshan.case", json=payload),
                    ),
                    metadata=META,
                )
                sub.append(time.perf_counter() - t)
                t = time.perf_counter()
                await stub.ListCases(
                    cx.ListCasesRequest(page_size=50, schema="none"), metadata=META
                )
                lst.append(time.perf_counter() - t)
    store = Store(f"sqlite:///{db_dir / 'tongban.db'}")
    store.start()
    claim = []
    for _ in range(rounds):
        t = time.perf_counter()
        # As a gateway claims: partner by partner (the one inbox of partner_env).
        await store.write(ClaimIntent("bench", 32, 0.001, (), ("sz",)))
        claim.append(time.perf_counter() - t)
    await store.stop()
    return {
        "submit": statistics.median(sub),
        "list": statistics.median(lst),
        "claim": statistics.median(claim),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--big", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=150, help="calls of each kind per round")
    args = p.parse_args()
    s = asyncio.run(soak(args.cases))
    per_round: list[tuple[dict[str, float], dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        small_dir, big_dir = Path(tmp) / "small", Path(tmp) / "big"
        for d, rows in ((small_dir, 1000), (big_dir, args.big)):
            d.mkdir()
            Store(f"sqlite:///{d / 'tongban.db'}").migrate()
            bulk_load(d / "tongban.db", rows, 0)
        for r in range(args.rounds):
            # Alternate which store goes first, so that neither always follows a gateway's
            # shutdown or always starts on a cold machine.
            if r % 2 == 0:
                small = asyncio.run(costs(small_dir, args.calls))
                big = asyncio.run(costs(big_dir, args.calls))
            else:
                big = asyncio.run(costs(big_dir, args.calls))
                small = asyncio.run(costs(small_dir, args.calls))
            per_round.append((small, big))
            print(f"round {r}: " + ", ".join(f"{k} {big[k] / small[k]:.2f}x" for k in small))
    ops = list(per_round[0][0])
    ratios = {k: statistics.median(b[k] / sm[k] for sm, b in per_round) for k in ops}
    for k in ops:
        sm_ms = 1e3 * statistics.median(sm[k] for sm, _ in per_round)
        big_ms = 1e3 * statistics.median(b[k] for _, b in per_round)
        print(
            f"{k}: {sm_ms:.2f} ms at 1k rows, {big_ms:.2f} ms at {args.big:,} rows "
            f"(median of the rounds' ratios {ratios[k]:.2f}x)"
        )
    report(
        {
            "bench": "soak",
            "cases": args.cases,
            "rss_mb": {k: round(v, 1) for k, v in s.items() if k != "seconds"},
            "rss_growth_ratio": round(s["end"] / s["middle"], 3),
            "big_rows": args.big,
            "cost_ratios": {k: round(v, 3) for k, v in ratios.items()},
            "cost_1m_vs_1k": round(max(ratios.values()), 3),
        }
    )


if __name__ == "__main__":
    main()
