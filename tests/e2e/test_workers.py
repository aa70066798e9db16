"""`tongban serve --workers 2`: two processes on one port, one store, aggregated metrics, one\nswitch of the audit chain's hash function between them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import case_exchange_pb2_grpc as cx_grpc
from tongban.v1 import common_pb2

from .conftest import ROOT, TONGBAN, free_port

ZS_CASE = json.loads((ROOT / "mappings/zhongshan/samples/case/01-case.json").read_text("utf-8"))


def test_two_workers_share_port_store_and_metrics(tmp_path) -> None:
    port, mport = free_port(), free_port()
    env = {
        **os.environ,
        "TONGBAN_SERVER__PORT": str(port),
        "TONGBAN_METRICS__PORT": str(mport),
        "TONGBAN_STORE__DATA_DIR": str(tmp_path),
        "TONGBAN_DELIVERY__ENABLED": "false",
        "TONGBAN_MAPPINGS__WATCH": "false",
        "TONGBAN_PARTNERS__SHENZHEN__INBOX__TRANSPORT": "grpc",
        "TONGBAN_PARTNERS__SHENZHEN__INBOX__TARGET": "127.0.0.1:9",
        "TONGBAN_LOG__LEVEL": "INFO",
        "TONGBAN_LOG__FORMAT": "json",
        # The workers on uvloop (server.event_loop): forked, each runs its own.
        "TONGBAN_SERVER__EVENT_LOOP": "uvloop",
        # Both workers find the new store's chain on SHA-256: one of them switches it.
        "TONGBAN_AUDIT__HASH_ALGORITHM": "sm3",
    }
    log = (tmp_path / "gw.log").open("wb")
    proc = subprocess.Popen(
        [*TONGBAN, "serve", "--config", "tongban.toml", "--workers", "2"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 40
        while True:
            assert proc.poll() is None, (tmp_path / "gw.log").read_text()
            try:
                with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                    if (
                        health_pb2_grpc.HealthStub(ch)
                        .Check(health_pb2.HealthCheckRequest(), timeout=1)
                        .status
                        == 1
                    ):
                        break
            except grpc.RpcError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        time.sleep(1.0)  # let the second worker bind too
        for i in range(40):  # a new connection each time: the kernel spreads them
            with grpc.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            ) as ch:
                cx_grpc.CaseExchangeServiceStub(ch).SubmitCase(
                    cx.SubmitCaseRequest(
                        request_id=f"w{i}",
                        target_city="440300",
                        foreign=common_pb2.ForeignRecord(
                            schema="zhongshan.case",
                            json=json.dumps(dict(ZS_CASE, SBLSH=f"442000-2026-w{i:04d}")).encode(),
                        ),
                    ),
                    metadata=[("authorization", "Bearer dev-token-zhongshan")],
                    timeout=10,
                )
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
        )
        handled = [
            line
            for line in text.splitlines()
            if line.startswith("grpc_server_handled_total")
            and 'grpc_method="SubmitCase"' in line
            and 'grpc_code="OK"' in line
        ]
        assert handled
        assert float(handled[0].rsplit(" ", 1)[1]) == 40.0  # summed over both workers
        started = [
            line
            for line in text.splitlines()
            if line.startswith("grpc_server_started_total") and 'grpc_method="SubmitCase"' in line
        ]
        assert started
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        log.close()
    assert code == 0
    out = (tmp_path / "gw.log").read_text()
    assert out.count("tongban serving on") == 3  # the parent and both workers, on one port
    assert out.count("(uvloop)") == 2  # each worker runs on the loop it was asked for
    # Each forked worker logs from its own background writer, flushed when it exits.
    accepted = [
        json.loads(line)
        for line in out.splitlines()
        if line.startswith("{") and '"case accepted"' in line
    ]
    assert len(accepted) == 40
    assert len({a["exchange_id"] for a in accepted}) == 40
    assert len({a["pid"] for a in accepted}) == 2  # both workers served and logged
    import sqlite3

    with sqlite3.connect(tmp_path / "tongban.db") as conn:
        assert conn.execute("SELECT count(*) FROM cases").fetchone()[0] == 40
        switches = conn.execute("SELECT seq FROM audit WHERE action = 'audit.hash'").fetchall()
    assert switches == [(1,)]  # once, before any case, by whichever worker started first
    assert out.count("audit chain switched to another hash function") == 1
    verified = subprocess.run(
        [*TONGBAN, "audit", "verify", "--config", "tongban.toml"],
        check=False,
        cwd=ROOT,
        env={**os.environ, "TONGBAN_STORE__DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "intact: 41 entries in the store\n  hashed with SM3 (since entry 2)\n" in verified.stdout
