"""Observability for real: Prometheus scrapes a gateway; health follows PostgreSQL access."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.app import Gateway
from gateway.partner_sim import InboxSimulator, start_simulator
from gateway.settings import load_settings
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import case_exchange_pb2_grpc as cx_grpc
from tongban.v1 import common_pb2, translation_pb2, translation_pb2_grpc

from .conftest import ROOT, free_port

ZS = [("authorization", "Bearer t-zs")]
ZS_CASE = json.loads((ROOT / "mappings/zhongshan/samples/case/01-case.json").read_text("utf-8"))


def settings_env(tmp_path: Path, sz_port: int, **extra: str) -> dict[str, str]:
    return {
        "TONGBAN_SERVER__PORT": "0",
        "TONGBAN_STORE__DATA_DIR": str(tmp_path / "data"),
        "TONGBAN_MAPPINGS__PATH": str(ROOT / "mappings"),
        "TONGBAN_MAPPINGS__WATCH": "false",
        "TONGBAN_PARTNERS__ZS__CITY": "442000",
        "TONGBAN_PARTNERS__ZS__TOKEN": "t-zs",
        "TONGBAN_PARTNERS__SZ__CITY": "440300",
        "TONGBAN_PARTNERS__SZ__TOKEN": "t-sz",
        "TONGBAN_PARTNERS__SZ__INBOX__TRANSPORT": "grpc",
        "TONGBAN_PARTNERS__SZ__INBOX__TARGET": f"127.0.0.1:{sz_port}",
        **extra,
    }


@pytest.fixture
async def rejecting_shenzhen(tmp_path: Path) -> AsyncIterator[tuple[InboxSimulator, int]]:
    sim = InboxSimulator(tmp_path / "sz.db", reject=lambda p: "applicant not registered here")
    server, port = await start_simulator(sim)
    yield sim, port
    await server.stop(0)
    sim.close()


async def query(client: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
    resp = await client.get("/api/v1/query", params={"query": expr})
    resp.raise_for_status()
    return list(resp.json()["data"]["result"])


async def eventually(
    client: httpx.AsyncClient, expr: str, want: float, timeout: float = 40
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        last = await query(client, expr)
        if last and float(last[0]["value"][1]) == want:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{expr} = {last}, wanted {want}")


@pytest.mark.slow
async def test_prometheus_scrapes_metrics_and_fires_an_alert(
    tmp_path: Path, rejecting_shenzhen: tuple[InboxSimulator, int]
) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "the Prometheus server (Debian package prometheus) is required"
    _, sz_port = rejecting_shenzhen
    metrics_port, prom_port = free_port(), free_port()
    settings = load_settings(
        None, env=settings_env(tmp_path, sz_port, TONGBAN_METRICS__PORT=str(metrics_port))
    )
    gw = Gateway(settings)
    await gw.start()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{ROOT}/monitoring/rules/recording.yml', '{ROOT}/monitoring/rules/alerts.yml']\n"
        "scrape_configs:\n"
        f"  - job_name: tongban\n    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=log,
        stderr=log,
    )
    try:
        async with grpc.aio.insecure_channel(gw.address) as ch:
            stub = cx_grpc.CaseExchangeServiceStub(ch)
            for i in range(5):
                await stub.SubmitCase(
                    cx.SubmitCaseRequest(
                        request_id=f"p{i}",
                        target_city="440300",
                        foreign=common_pb2.ForeignRecord(
                            schema="zhongshan.case",
                            json=json.dumps(dict(ZS_CASE, SBLSH=f"442000-2026-p{i:04d}")).encode(),
                        ),
                    ),
                    metadata=ZS,
                )
            with pytest.raises(grpc.aio.AioRpcError):
                await translation_pb2_grpc.TranslationServiceStub(ch).Translate(
                    translation_pb2.TranslateRequest(
                        record=common_pb2.ForeignRecord(schema="zhongshan.case", json=b"{}"),
                        target_schema="shenzhen.case",
                    ),
                    metadata=ZS,
                )
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{prom_port}", timeout=5) as client:
            await eventually(client, 'up{job="tongban"}', 1)
            await eventually(
                client, 'sum(grpc_server_handled_total{grpc_method="SubmitCase",grpc_code="OK"})', 5
            )
            await eventually(
                client,
                'sum(grpc_server_handled_total{grpc_method="Translate",grpc_code="INVALID_ARGUMENT"})',
                1,
            )
            await eventually(
                client,
                'sum(grpc_server_handled_total{grpc_service="grpc.health.v1.Health",grpc_code="OK"})',
                1,
            )
            await eventually(
                client,
                'sum(tongban_delivery_attempts_total{target_city="440300",outcome="permanent"})',
                5,
            )
            await eventually(
                client, 'sum(tongban_deliveries_total{target_city="440300",outcome="dead"})', 5
            )
            await eventually(client, "max(tongban_dead_letters)", 5)
            await eventually(
                client,
                'sum(tongban_translation_failures_total{schema="zhongshan.case",code="REQUIRED_MISSING"})',
                1,
            )
            await eventually(
                client, 'count(ALERTS{alertname="TongbanDeadLetters",alertstate="firing"})', 1
            )
            no_alert = await query(client, 'ALERTS{alertname="TongbanStoreDown"}')
            assert no_alert == []
    finally:
        prom.terminate()
        prom.wait(timeout=20)
        log.close()
        await gw.stop(grace=0)


@pytest.fixture
def pg_role() -> AsyncIterator[str]:
    role = f"tb_h_{uuid.uuid4().hex[:8]}"
    with psycopg.connect("host=127.0.0.1 dbname=test", autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'CREATE SCHEMA "{role}" AUTHORIZATION "{role}"')
    yield role
    with psycopg.connect("host=127.0.0.1 dbname=test", autocommit=True) as conn:
        conn.execute(f'ALTER ROLE "{role}" LOGIN')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
        conn.execute(f'DROP SCHEMA "{role}" CASCADE')
        conn.execute(f'DROP ROLE "{role}"')


def set_login(role: str, allowed: bool) -> None:
    with psycopg.connect("host=127.0.0.1 dbname=test", autocommit=True) as conn:
        conn.execute(f'ALTER ROLE "{role}" {"LOGIN" if allowed else "NOLOGIN"}')
        if not allowed:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
            )


@pytest.mark.postgres
async def test_health_follows_postgres_access(tmp_path: Path, pg_role: str) -> None:
    url = f"postgresql+psycopg://{pg_role}@127.0.0.1:5432/test"
    settings = load_settings(
        None,
        env=settings_env(
            tmp_path,
            9,
            TONGBAN_STORE__URL=url,
            TONGBAN_METRICS__ENABLED="false",
            TONGBAN_DELIVERY__ENABLED="false",
        ),
    )
    gw = Gateway(settings)
    gw.services.store.migrate()
    await gw.start()
    try:
        async with grpc.aio.insecure_channel(gw.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)

            async def status() -> int:
                return int((await health.Check(health_pb2.HealthCheckRequest())).status)

            async def wait_status(want: int, timeout: float = 20) -> None:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + timeout
                while await status() != want:
                    assert loop.time() < deadline, f"health never became {want}"
                    await asyncio.sleep(0.2)

            await wait_status(health_pb2.HealthCheckResponse.SERVING)
            set_login(pg_role, allowed=False)
            await wait_status(health_pb2.HealthCheckResponse.NOT_SERVING)
            assert gw.services.metrics.registry.get_sample_value("tongban_store_up") == 0
            set_login(pg_role, allowed=True)
            await wait_status(health_pb2.HealthCheckResponse.SERVING)
    finally:
        await gw.stop(grace=0)
