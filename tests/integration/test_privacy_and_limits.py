"""Personal data never leaves in logs, metrics, errors or dead letters; limits answer clearly."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sqlite3
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from prometheus_client import generate_latest

from gateway.app import Gateway
from gateway.logs import JsonFormatter
from gateway.partner_sim import InboxSimulator, start_simulator
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import case_exchange_pb2_grpc as cx_grpc
from tongban.v1 import (
    common_pb2,
    identity_pb2,
    identity_pb2_grpc,
    records_pb2,
    translation_pb2,
    translation_pb2_grpc,
)

from .conftest import ROOT, make_settings, rich_error

ZS = [("authorization", "Bearer t-zs")]
CASE = json.loads((ROOT / "mappings/zhongshan/samples/case/01-case.json").read_text("utf-8"))
PERSON = json.loads(
    (ROOT / "mappings/shenzhen/samples/person/01-person.canonical.json").read_text("utf-8")
)
ID, NAME, PHONE = CASE["SQRZJHM"], CASE["SQRMC"], CASE["SQRLXDH"]


def base_env(sz_port: int, **extra: str) -> dict[str, str]:
    return {
        "TONGBAN_AUTH__MODE": "token",
        "TONGBAN_METRICS__ENABLED": "false",
        "TONGBAN_DELIVERY__RETRY__INITIAL_BACKOFF_SECONDS": "0.01",
        "TONGBAN_PURPOSES__CASE_HANDLING__PERSON_FIELDS": '["name", "certificate_number", "certificate_type"]',
        "TONGBAN_PARTNERS__ZS__CITY": "442000",
        "TONGBAN_PARTNERS__ZS__TOKEN": "t-zs",
        "TONGBAN_PARTNERS__ZS__ACL__PURPOSES": '["case_handling"]',
        "TONGBAN_PARTNERS__SZ__CITY": "440300",
        "TONGBAN_PARTNERS__SZ__TOKEN": "t-sz",
        "TONGBAN_PARTNERS__SZ__INBOX__TRANSPORT": "grpc",
        "TONGBAN_PARTNERS__SZ__INBOX__TARGET": f"127.0.0.1:{sz_port}",
        **extra,
    }


async def test_no_personal_data_in_logs_metrics_errors_or_dead_letters(tmp_path: Path) -> None:
    # A careless partner quotes the applicant's ID number and phone in its rejection.
    sim = InboxSimulator(
        tmp_path / "sz.db",
        reject=lambda p: (
            f"applicant {p['record']['applicant']['identity']['number']} "
            f"tel {p['record']['applicant'].get('mobile', '')} unknown here"
        ),
    )
    sim.persons[PERSON["certificate_number"]] = json_format.ParseDict(PERSON, records_pb2.Person())
    server, port = await start_simulator(sim)
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tongban")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    gw = Gateway(make_settings(tmp_path, **base_env(port)))
    await gw.start()
    errors: list[str] = []
    try:
        async with grpc.aio.insecure_channel(gw.address) as ch:
            stub = cx_grpc.CaseExchangeServiceStub(ch)
            await stub.SubmitCase(
                cx.SubmitCaseRequest(
                    request_id="ok",
                    target_city="440300",
                    foreign=common_pb2.ForeignRecord(
                        schema="zhongshan.case", json=json.dumps(CASE).encode()
                    ),
                ),
                metadata=ZS,
            )
            bad = dict(CASE, SQRZJHM=ID[:-1] + ("0" if ID[-1] != "0" else "1"))
            for req in (
                cx.SubmitCaseRequest(
                    request_id="bad",
                    target_city="440300",
                    foreign=common_pb2.ForeignRecord(
                        schema="zhongshan.case", json=json.dumps(bad).encode()
                    ),
                ),
                cx.SubmitCaseRequest(
                    request_id="bad2",
                    target_city=ID,
                    foreign=common_pb2.ForeignRecord(schema=NAME, json=b"{}"),
                ),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.SubmitCase(req, metadata=ZS)
                errors.append(info.value.details() or "")
                errors.append(str(rich_error(info.value)))
                errors.append(repr(info.value.trailing_metadata()))
            tr = translation_pb2_grpc.TranslationServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await tr.Translate(
                    translation_pb2.TranslateRequest(
                        record=common_pb2.ForeignRecord(
                            schema="shenzhen.person",
                            json=json.dumps(
                                {
                                    "name": NAME,
                                    "identity": {"type": "ID_CARD", "number": ID + "1"},
                                    "contact": {"mobile": PHONE + "9"},
                                }
                            ).encode(),
                        ),
                        target_schema="zhongshan.person",
                    ),
                    metadata=ZS,
                )
            errors.append(str(rich_error(info.value)) + (info.value.details() or ""))
            ident = identity_pb2_grpc.IdentityServiceStub(ch)
            await ident.ResolvePerson(
                identity_pb2.ResolvePersonRequest(
                    certificate_number=PERSON["certificate_number"], purpose="case_handling"
                ),
                metadata=ZS,
            )
        for _ in range(100):
            if await gw.services.store.read(gw.services.store.reader.dead_letters):
                break
            await asyncio.sleep(0.05)
        letters = await gw.services.store.read(gw.services.store.reader.dead_letters)
        assert len(letters) == 1
        assert "4403" in letters[0].last_error  # the reason is kept, masked
    finally:
        await gw.stop(grace=0)
        await server.stop(0)
        sim.close()
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    with sqlite3.connect(tmp_path / "data/tongban.db") as conn:
        audit = json.dumps(conn.execute("SELECT * FROM audit").fetchall(), ensure_ascii=False)
    outputs = {
        "logs": captured.getvalue(),
        "metrics": generate_latest(gw.services.metrics.registry).decode(),
        "errors": "\n".join(errors),
        "dead letters": letters[0].last_error,
        "audit": audit,
    }
    assert "case accepted" in outputs["logs"]  # the capture did see the gateway's logs
    for where, text in outputs.items():
        for secret in (ID, NAME, PHONE, PERSON["certificate_number"], PERSON["name"]):
            assert secret not in text, f"{secret[:4]}... appears in {where}"


async def test_rate_limit_answers_resource_exhausted_with_retry_info(tmp_path: Path) -> None:
    gw = Gateway(
        make_settings(
            tmp_path,
            **base_env(
                9,
                TONGBAN_DELIVERY__ENABLED="false",
                TONGBAN_PARTNERS__ZS__RATE_LIMIT__RATE_PER_SECOND="0.5",
                TONGBAN_PARTNERS__ZS__RATE_LIMIT__BURST="2",
            ),
        )
    )
    await gw.start()
    try:
        async with grpc.aio.insecure_channel(gw.address) as ch:
            stub = cx_grpc.CaseExchangeServiceStub(ch)
            for _ in range(2):
                await stub.ListCases(cx.ListCasesRequest(), metadata=ZS)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ListCases(cx.ListCasesRequest(), metadata=ZS)
            err = rich_error(info.value)
            assert (err["code"], err["reason"]) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "RATE_LIMITED",
            )
            assert 0 < err["retry"] <= 2.0
    finally:
        await gw.stop(grace=0)


async def test_message_size_and_deadline_cap(tmp_path: Path) -> None:
    gw = Gateway(
        make_settings(
            tmp_path,
            **base_env(
                9,
                TONGBAN_DELIVERY__ENABLED="false",
                TONGBAN_SERVER__MAX_MESSAGE_BYTES="4096",
                TONGBAN_SERVER__MAX_DEADLINE_SECONDS="0.2",
            ),
        )
    )
    await gw.start()
    try:
        async with grpc.aio.insecure_channel(gw.address) as ch:
            stub = cx_grpc.CaseExchangeServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.SubmitCase(
                    cx.SubmitCaseRequest(
                        request_id="x",
                        target_city="440300",
                        foreign=common_pb2.ForeignRecord(schema="zhongshan.case", json=b" " * 8000),
                    ),
                    metadata=ZS,
                )
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # A stalled store: another connection holds the write lock, so the submission
            # cannot commit; the server's 0.2 s cap answers instead of the caller waiting.
            lock = sqlite3.connect(tmp_path / "data/tongban.db", isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")
            try:
                started = asyncio.get_running_loop().time()
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.SubmitCase(
                        cx.SubmitCaseRequest(
                            request_id="y",
                            target_city="440300",
                            foreign=common_pb2.ForeignRecord(
                                schema="zhongshan.case", json=json.dumps(CASE).encode()
                            ),
                        ),
                        metadata=ZS,
                        timeout=10,
                    )
                waited = asyncio.get_running_loop().time() - started
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert 0.2 <= waited < 5
    finally:
        await gw.stop(grace=0)
