"""Reliability with real processes: kill -9 mid-flight on SQLite, two replicas on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.partner_sim import InboxSimulator, start_simulator
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import case_exchange_pb2_grpc as cx_grpc
from tongban.v1 import common_pb2

from .conftest import ROOT, TONGBAN, free_port

ZS = [("authorization", "Bearer t-zs")]
ZS_CASE = json.loads((ROOT / "mappings/zhongshan/samples/case/01-case.json").read_text("utf-8"))
PG = "postgresql+psycopg://127.0.0.1:5432/test"


def gateway_env(port: int, sz_port: int, store: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        **store,
        "TONGBAN_SERVER__PORT": str(port),
        "TONGBAN_SERVER__GRACE_SECONDS": "0",
        "TONGBAN_MAPPINGS__PATH": str(ROOT / "mappings"),
        "TONGBAN_MAPPINGS__WATCH": "false",
        "TONGBAN_METRICS__ENABLED": "false",
        "TONGBAN_LOG__LEVEL": "WARNING",
        "TONGBAN_DELIVERY__LEASE_SECONDS": "2",
        "TONGBAN_DELIVERY__RETRY__INITIAL_BACKOFF_SECONDS": "0.02",
        "TONGBAN_DELIVERY__RETRY__MAX_BACKOFF_SECONDS": "0.3",
        "TONGBAN_DELIVERY__RETRY__MAX_ATTEMPTS": "200",
        "TONGBAN_PARTNERS__ZS__CITY": "442000",
        "TONGBAN_PARTNERS__ZS__TOKEN": "t-zs",
        "TONGBAN_PARTNERS__SZ__CITY": "440300",
        "TONGBAN_PARTNERS__SZ__TOKEN": "t-sz",
        "TONGBAN_PARTNERS__SZ__INBOX__TRANSPORT": "grpc",
        "TONGBAN_PARTNERS__SZ__INBOX__TARGET": f"127.0.0.1:{sz_port}",
    }


def start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([*TONGBAN, "serve"], cwd=ROOT, env=env, stdout=out, stderr=out)


async def serving(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while loop.time() < deadline:
            assert proc.poll() is None, "gateway exited"
            try:
                if (await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)).status == 1:
                    return
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
    raise AssertionError("gateway did not become SERVING")


def case_request(i: int, tag: str) -> cx.SubmitCaseRequest:
    rec = dict(ZS_CASE, SBLSH=f"442000-2026-{tag}{i:05d}")
    return cx.SubmitCaseRequest(
        request_id=f"{tag}-{i}",
        target_city="440300",
        foreign=common_pb2.ForeignRecord(schema="zhongshan.case", json=json.dumps(rec).encode()),
    )


async def until(predicate, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


@pytest.fixture
async def shenzhen(tmp_path: Path) -> AsyncIterator[tuple[InboxSimulator, int]]:
    sim = InboxSimulator(tmp_path / "sz.db", fail_rate=0.3, seed=5)
    server, port = await start_simulator(sim)
    yield sim, port
    await server.stop(0)
    sim.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
async def test_kill_9_in_flight_then_restart(
    tmp_path: Path, shenzhen: tuple[InboxSimulator, int]
) -> None:
    sim, sz_port = shenzhen
    port = free_port()
    env = gateway_env(port, sz_port, {"TONGBAN_STORE__DATA_DIR": str(tmp_path / "data")})
    proc = start(env, tmp_path / "gw.log")
    accepted: list[str] = []
    try:
        await serving(port, proc)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = cx_grpc.CaseExchangeServiceStub(ch)
            calls = [stub.SubmitCase(case_request(i, "k"), metadata=ZS) for i in range(300)]
            for coro in asyncio.as_completed(calls):
                try:
                    accepted.append((await coro).exchange_id)
                except grpc.aio.AioRpcError:
                    pass  # not accepted: the gateway owes nothing for it
                if len(accepted) == 250:
                    proc.send_signal(signal.SIGKILL)  # mid-flight, without warning
    finally:
        proc.wait()
    in_flight = len(accepted) - len(sim.applied("case"))
    assert len(accepted) >= 250
    assert in_flight > 0, "the kill came too late to test anything"
    proc = start(env, tmp_path / "gw.log")
    try:
        await serving(port, proc)
        await until(lambda: set(accepted) <= set(sim.applied("case")), 90)
        applied = sim.applied("case")
        # Every accepted case arrived; each idempotency key was applied once by the partner
        # (redeliveries after the crash were recognised as duplicates, not applied again).
        assert set(accepted) <= set(applied)
        assert len([k for k in applied if k in set(accepted)]) == len(accepted)
    finally:
        stop(proc)


@pytest.mark.slow
@pytest.mark.postgres
async def test_two_replicas_share_one_postgres_outbox(
    tmp_path: Path, shenzhen: tuple[InboxSimulator, int], pg_schema: str
) -> None:
    sim, sz_port = shenzhen
    url = f"{PG}?options=-csearch_path%3D{pg_schema}"
    ports = [free_port(), free_port()]
    envs = [gateway_env(p, sz_port, {"TONGBAN_STORE__URL": url}) for p in ports]
    up = subprocess.run(
        [*TONGBAN, "db", "upgrade"],
        cwd=ROOT,
        env=envs[0],
        capture_output=True,
        text=True,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    procs = [start(env, tmp_path / f"gw{i}.log") for i, env in enumerate(envs)]
    try:
        for port, proc in zip(ports, procs, strict=True):
            await serving(port, proc)
        accepted: list[str] = []
        for i, port in enumerate(ports):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = cx_grpc.CaseExchangeServiceStub(ch)
                replies = await asyncio.gather(
                    *[stub.SubmitCase(case_request(j, f"r{i}"), metadata=ZS) for j in range(100)]
                )
                accepted += [r.exchange_id for r in replies]
        assert len(set(accepted)) == 200
        await until(lambda: set(accepted) <= set(sim.applied("case")), 90)
        applied = sim.applied("case")
        # Exactly once at the partner's dedup table: no key was delivered twice successfully.
        assert {k: v for k, v in applied.items() if v != 1} == {}
        # The partner has applied every case; each replica records its deliveries in its next
        # commit, a moment later: none may stay stuck or dead.
        with psycopg.connect("host=127.0.0.1 dbname=test", autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{pg_schema}"')

            def states() -> dict[str, int]:
                rows = conn.execute(
                    "SELECT state, count(*) FROM outbox WHERE kind = 'case' GROUP BY state"
                ).fetchall()
                return dict(rows)

            with contextlib.suppress(AssertionError):
                await until(lambda: states() == {"delivered": 200}, 30)
            assert states() == {"delivered": 200}  # none stuck, none dead
    finally:
        for proc in procs:
            stop(proc)
