"""One city's outage does not hold back deliveries to another, with a real `tongban serve` and
real partner inboxes over gRPC: Shenzhen's address refuses connections, Guangzhou's answers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc

from gateway.partner_sim import InboxSimulator, start_simulator
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import case_exchange_pb2_grpc as cx_grpc
from tongban.v1 import common_pb2

from .conftest import free_port
from .test_crash_and_replicas import ZS, ZS_CASE, gateway_env, serving, start, stop, until


def request(i: int, tag: str, city: str) -> cx.SubmitCaseRequest:
    rec = dict(ZS_CASE, SBLSH=f"442000-2026-{tag}{i:05d}", BLD=city)
    return cx.SubmitCaseRequest(
        request_id=f"{tag}-{i}",
        target_city=city,
        foreign=common_pb2.ForeignRecord(schema="zhongshan.case", json=json.dumps(rec).encode()),
    )


async def test_a_city_down_does_not_hold_back_another(tmp_path: Path) -> None:
    gz = InboxSimulator(tmp_path / "gz.db")
    gz_server, gz_port = await start_simulator(gz)
    sz = InboxSimulator(tmp_path / "sz.db")
    sz_port = free_port()  # nothing listens there yet: Shenzhen is down
    port = free_port()
    env = gateway_env(port, sz_port, {"TONGBAN_STORE__DATA_DIR": str(tmp_path / "data")})
    env.update(
        {
            # The delivery defaults, but for a policy that keeps retrying while the test runs.
            "TONGBAN_DELIVERY__LEASE_SECONDS": "30",
            "TONGBAN_DELIVERY__RETRY__INITIAL_BACKOFF_SECONDS": "0.2",
            "TONGBAN_DELIVERY__RETRY__MAX_BACKOFF_SECONDS": "1",
            "TONGBAN_DELIVERY__CIRCUIT__RESET_SECONDS": "1",
            "TONGBAN_PARTNERS__GZ__CITY": "440100",
            "TONGBAN_PARTNERS__GZ__INBOX__TRANSPORT": "grpc",
            "TONGBAN_PARTNERS__GZ__INBOX__TARGET": f"127.0.0.1:{gz_port}",
        }
    )
    proc = start(env, tmp_path / "gw.log")
    sz_server = None
    try:
        await serving(port, proc)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = cx_grpc.CaseExchangeServiceStub(ch)
            waiting = [
                (await stub.SubmitCase(request(i, "down", "440300"), metadata=ZS)).exchange_id
                for i in range(30)
            ]
            await asyncio.sleep(1.0)  # Shenzhen's rows are failing, backing off, its circuit open
            loop = asyncio.get_running_loop()
            sent = loop.time()
            answer = await stub.SubmitCase(request(0, "up", "440100"), metadata=ZS)
            await until(lambda: answer.exchange_id in gz.applied("case"), 5)
            took = loop.time() - sent
        assert sz.applied("case") == {}
        assert took < 5
        # Shenzhen comes back: every case reaches it, once.
        sz_server, _ = await start_simulator(sz, sz_port)
        await until(lambda: set(sz.applied("case")) == set(waiting), 30)
        assert set(sz.applied("case").values()) == {1}
        assert list(gz.applied("case").values()) == [1]
    finally:
        stop(proc)
        if sz_server is not None:
            await sz_server.stop(0)
        await gz_server.stop(0)
        sz.close()
        gz.close()
