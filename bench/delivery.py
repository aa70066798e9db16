"""Delivery: cases accepted -> delivered per second, and the accepted-to-delivered delay.

A gateway process (SQLite, then PostgreSQL) delivers to a real partner inbox (gRPC) that records
when each idempotency key first arrives. Phase 1 submits N cases as fast as 64 clients can
(giving the durable submit rate) and times until all are delivered (the delivery rate). Phase 2
submits at half of the measured submit rate (or at ``--rate`` cases/s, the same load for two
checkouts compared side by side) for ``--seconds`` and reports p50/p99 of accepted-to-delivered.
Last line: JSON with ``vs_submit``, ``p99_ms`` and ``pg_vs_submit``.

Usage: python bench/delivery.py [--cases 3000] [--seconds 5] [--rate CASES_PER_S] [--no-pg]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
from common import BENCH_TOKEN, GatewayProcess, case_payloads, partner_env, pg_schema, report

from gateway.partner_sim import InboxSimulator, start_simulator
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import case_exchange_pb2_grpc as cx_grpc
from tongban.v1 import common_pb2

META = BENCH_TOKEN


class TimedInbox(InboxSimulator):
    """The partner inbox, noting when each key first arrived."""

    arrived: dict[str, float]

    async def DeliverCase(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.arrived.setdefault(request.idempotency_key, time.time())
        return await super().DeliverCase(request, context)


def env_for(port: int, store: dict[str, str]) -> dict[str, str]:
    return {
        **partner_env(port),
        "TONGBAN_DELIVERY__WORKERS": "32",
        "TONGBAN_DELIVERY__BATCH_SIZE": "128",
        "TONGBAN_DELIVERY__POLL_INTERVAL_SECONDS": "0.05",
        **store,
    }


async def run(
    store: dict[str, str], label: str, cases: int, seconds: float, fixed_rate: float | None
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        sim = TimedInbox(Path(tmp) / "inbox.db")
        sim.arrived = {}
        server, port = await start_simulator(sim)
        try:
            with GatewayProcess(env_for(port, store), Path(tmp) / "gw") as gw:
                reqs = [
                    cx.SubmitCaseRequest.FromString(b)
                    for b in case_payloads(
                        cases,
                        lambda i, body: cx.SubmitCaseRequest(
                            request_id=f"{label}-{i}",
                            target_city="440300",
                            foreign=common_pb2.ForeignRecord(schema="zhongshan.case", json=body),
                        ).SerializeToString(),
                    )
                ]
                accepted: dict[str, float] = {}
                async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
                    stub = cx_grpc.CaseExchangeServiceStub(ch)
                    queue = list(reversed(reqs))

                    async def worker() -> None:
                        while queue:
                            r = queue.pop()
                            resp = await stub.SubmitCase(r, metadata=META)
                            accepted[resp.exchange_id] = time.time()

                    t0 = time.time()
                    await asyncio.gather(*(worker() for _ in range(64)))
                    submit_rate = cases / (time.time() - t0)
                    while len(set(accepted) & set(sim.arrived)) < cases:
                        await asyncio.sleep(0.05)
                    delivered_all = max(sim.arrived[x] for x in accepted)
                    delivery_rate = cases / (delivered_all - t0)
                    # Phase 2: steady load at half the submit rate, or at the rate asked for.
                    rate = fixed_rate or submit_rate / 2
                    paced: dict[str, float] = {}
                    n = int(rate * seconds)
                    extra = [
                        cx.SubmitCaseRequest(
                            request_id=f"{label}-p{i}-{uuid.uuid4().hex[:6]}",
                            target_city="440300",
                            foreign=reqs[i % len(reqs)].foreign,
                        )
                        for i in range(n)
                    ]
                    start = time.time()
                    pending = []
                    for i, r in enumerate(extra):
                        delay = start + i / rate - time.time()
                        if delay > 0:
                            await asyncio.sleep(delay)

                        async def one(r: cx.SubmitCaseRequest = r) -> None:
                            resp = await stub.SubmitCase(r, metadata=META)
                            paced[resp.exchange_id] = time.time()

                        pending.append(asyncio.create_task(one()))
                    await asyncio.gather(*pending)
                    while len(set(paced) & set(sim.arrived)) < n:
                        await asyncio.sleep(0.05)
                delays = sorted(1000 * (sim.arrived[x] - t) for x, t in paced.items())
                p50 = statistics.median(delays)
                p99 = delays[max(0, int(len(delays) * 0.99) - 1)]
        finally:
            await server.stop(0)
            sim.close()
    print(
        f"{label}: submit {submit_rate:,.0f}/s, delivered {delivery_rate:,.0f}/s "
        f"({delivery_rate / submit_rate:.3f}); at {rate:,.0f}/s p50 {p50:.0f} ms p99 {p99:.0f} ms"
    )
    return {
        "submit": submit_rate,
        "delivery": delivery_rate,
        "rate": rate,
        "p50": p50,
        "p99": p99,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=3000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument(
        "--rate", type=float, help="phase 2's cases/s (default: half the measured submit rate)"
    )
    p.add_argument("--no-pg", action="store_true")
    args = p.parse_args()
    sqlite = asyncio.run(run({}, "sqlite", args.cases, args.seconds, args.rate))
    figures: dict[str, Any] = {
        "bench": "delivery",
        "cases": args.cases,
        "sqlite_submit_rps": round(sqlite["submit"]),
        "sqlite_delivered_rps": round(sqlite["delivery"]),
        "vs_submit": round(sqlite["delivery"] / sqlite["submit"], 3),
        "load_rps": round(sqlite["rate"]),  # phase 2's
        "p50_ms": round(sqlite["p50"], 1),
        "p99_ms": round(sqlite["p99"], 1),
    }
    if not args.no_pg:
        with pg_schema() as url:
            pg = asyncio.run(
                run({"TONGBAN_STORE__URL": url}, "postgres", args.cases, args.seconds, args.rate)
            )
        figures.update(
            {
                "pg_submit_rps": round(pg["submit"]),
                "pg_delivered_rps": round(pg["delivery"]),
                "pg_vs_submit": round(pg["delivery"] / pg["submit"], 3),
                "pg_load_rps": round(pg["rate"]),
                "pg_p99_ms": round(pg["p99"], 1),
            }
        )
    report(figures)


if __name__ == "__main__":
    main()
