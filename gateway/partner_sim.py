"""A partner city's system: a real gRPC PartnerInboxService server, for the demo and tests.

It applies each idempotency key once (a SQLite dedup table, committed with the payload), answers
a repeated key with ``duplicate=True``, and can misbehave on purpose: fail the first N calls of
each key, fail a share of calls at random (UNAVAILABLE, retryable), be down entirely, or reject
cases permanently (INVALID_ARGUMENT with a reason).

Run alone: ``python -m gateway.partner_sim --port 50061 --db inbox.db [--fail-rate 0.3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tongban.v1 import partner_inbox_pb2 as inbox
from tongban.v1 import partner_inbox_pb2_grpc as inbox_grpc
from tongban.v1 import records_pb2

__all__ = ["InboxSimulator", "Received", "start_simulator"]


@dataclass(frozen=True, slots=True)
class Received:
    """Something applied by the partner (first delivery of a key)."""

    kind: str  # "case" or "status"
    key: str
    payload: dict[str, Any]


@dataclass
class InboxSimulator(inbox_grpc.PartnerInboxServiceServicer):
    """PartnerInboxService with a dedup table and failure injection."""

    db_path: Path
    fail_first: int = 0
    fail_rate: float = 0.0
    seed: int = 7
    down: bool = False
    reject: Callable[[dict[str, Any]], str | None] | None = None
    # The city's identity registers, canonical records keyed by certificate number / credit code.
    persons: dict[str, records_pb2.Person] = field(default_factory=dict)
    enterprises: dict[str, records_pb2.Enterprise] = field(default_factory=dict)
    calls: int = 0
    failures_injected: int = 0
    received: asyncio.Queue[Received] = field(default_factory=asyncio.Queue)
    _tries: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)  # noqa: S311 - failure injection, not crypto
        self._db = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS applied (key TEXT PRIMARY KEY, kind TEXT NOT NULL, "
            "payload TEXT NOT NULL, received_at REAL NOT NULL, deliveries INTEGER NOT NULL)"
        )

    async def _misbehave(self, key: str, context: grpc.aio.ServicerContext) -> None:
        self.calls += 1
        self._tries[key] = self._tries.get(key, 0) + 1
        if self.down:
            self.failures_injected += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "partner system is down")
        if self._tries[key] <= self.fail_first or self._rng.random() < self.fail_rate:
            self.failures_injected += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "partner system busy, try again")

    def _apply(self, kind: str, key: str, payload: dict[str, Any]) -> bool:
        """Store the key and payload in one statement; True if it was new."""
        cur = self._db.execute(
            "INSERT INTO applied (key, kind, payload, received_at, deliveries) VALUES (?, ?, ?, ?, 1) "
            "ON CONFLICT(key) DO UPDATE SET deliveries = deliveries + 1",
            (key, kind, json.dumps(payload, ensure_ascii=False), time.time()),
        )
        del cur
        row = self._db.execute("SELECT deliveries FROM applied WHERE key = ?", (key,)).fetchone()
        return bool(row[0] == 1)

    async def DeliverCase(
        self,
        request: inbox.DeliverCaseRequest,
        context: grpc.aio.ServicerContext,
    ) -> inbox.DeliverCaseResponse:
        """Receive a case in this city's schema."""
        key = request.idempotency_key
        await self._misbehave(key, context)
        if request.HasField("foreign"):
            payload = {"schema": request.foreign.schema, "record": json.loads(request.foreign.json)}
        else:
            payload = {"schema": "tongban.v1.Case", "record": {}}
        payload["source_city"] = request.source_city
        if self.reject is not None:
            reason = self.reject(payload)
            if reason:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)
        new = self._apply("case", key, payload)
        if new:
            self.received.put_nowait(Received("case", key, payload))
        return inbox.DeliverCaseResponse(partner_reference=f"P-{key[:12]}", duplicate=not new)

    async def DeliverStatus(
        self,
        request: inbox.DeliverStatusRequest,
        context: grpc.aio.ServicerContext,
    ) -> inbox.DeliverStatusResponse:
        """Receive a status change in this city's codes."""
        key = request.idempotency_key
        await self._misbehave(key, context)
        payload: dict[str, Any] = {
            "exchange_id": request.exchange_id,
            "case_number": request.case_number,
            "status_code": request.status_code,
            "reported_by": request.reported_by,
        }
        if request.late:  # history only: the case has moved on
            payload["late"] = True
        new = self._apply("status", key, payload)
        if new:
            self.received.put_nowait(Received("status", key, payload))
        return inbox.DeliverStatusResponse(duplicate=not new)

    async def LookupPerson(
        self, request: inbox.LookupPersonRequest, context: grpc.aio.ServicerContext
    ) -> inbox.LookupPersonResponse:
        """Answer from this city's person register."""
        await self._misbehave(f"person:{request.certificate_number}", context)
        found = self.persons.get(request.certificate_number)
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such person in this city")
        return inbox.LookupPersonResponse(canonical=found)

    async def LookupEnterprise(
        self, request: inbox.LookupEnterpriseRequest, context: grpc.aio.ServicerContext
    ) -> inbox.LookupEnterpriseResponse:
        """Answer from this city's enterprise register."""
        await self._misbehave(f"enterprise:{request.credit_code}", context)
        found = self.enterprises.get(request.credit_code)
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such enterprise in this city")
        return inbox.LookupEnterpriseResponse(canonical=found)

    def applied(self, kind: str | None = None) -> dict[str, int]:
        """key -> number of deliveries seen (1 = applied once, never duplicated)."""
        if kind is None:
            rows = self._db.execute("SELECT key, deliveries FROM applied").fetchall()
        else:
            rows = self._db.execute(
                "SELECT key, deliveries FROM applied WHERE kind = ?", (kind,)
            ).fetchall()
        return dict(rows)

    def statuses(self) -> list[dict[str, Any]]:
        """Payloads of the status changes applied, oldest first."""
        rows = self._db.execute(
            "SELECT payload FROM applied WHERE kind = 'status' ORDER BY received_at"
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        """Close the dedup database."""
        self._db.close()


async def start_simulator(
    sim: InboxSimulator,
    port: int = 0,
    host: str = "127.0.0.1",
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Serve ``sim`` on ``host:port`` (over TLS with ``credentials``); return the started
    server and its port."""
    server = grpc.aio.server()
    inbox_grpc.add_PartnerInboxServiceServicer_to_server(sim, server)
    address = f"{host}:{port}"
    bound = (
        server.add_secure_port(address, credentials)
        if credentials is not None
        else server.add_insecure_port(address)
    )
    await server.start()
    return server, bound


async def _main(args: argparse.Namespace) -> None:
    sim = InboxSimulator(Path(args.db), fail_first=args.fail_first, fail_rate=args.fail_rate)
    server, port = await start_simulator(sim, args.port)
    print(f"partner inbox on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
    sim.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--db", required=True)
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--fail-rate", type=float, default=0.0)
    asyncio.run(_main(p.parse_args()))
