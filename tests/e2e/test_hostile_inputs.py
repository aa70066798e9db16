"""Hostile input, generated: every request gets a clear status, the server stays up, and a
rejected request leaves nothing behind. Runs against a real `tongban serve` subprocess."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import case_exchange_pb2_grpc as cx_grpc
from tongban.v1 import (
    common_pb2,
    identity_pb2,
    identity_pb2_grpc,
    translation_pb2,
    translation_pb2_grpc,
)

from .conftest import ROOT, TONGBAN, free_port

ZS = [("authorization", "Bearer t-zs")]
SAMPLE = json.loads((ROOT / "mappings/zhongshan/samples/case/02-case.json").read_text("utf-8"))
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.OUT_OF_RANGE,
}
NASTY = [
    "' OR 1=1 --",
    "'; DROP TABLE cases; --",
    "../../../../etc/passwd",
    "..\\..\\boot.ini",
    "%00",
    "\x00",
    "\x1b[31m",
    "\u202e",
    "${jndi:ldap://x}",
    "<script>alert(1)</script>",
    "SELECT * FROM audit",
    "4403051991031502499",
    "44030519910315024X",
    "20261131093000",
    "20260230000000",
    "99999999999999",
    "-1",
    "1e309",
    "NaN",
    "null",
    "[]",
    "{}",
    "",
]
hostile_text = st.one_of(
    st.sampled_from(NASTY),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8", categories=("Cc", "Cf", "Zs")), max_size=30),
    st.just("号" * 5000),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | hostile_text,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from([*SAMPLE.keys(), *NASTY[:6]]), inner, max_size=6)
    ),
    max_leaves=20,
)


@st.composite
def case_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        depth = draw(st.integers(50, 5000))
        return b"[" * depth + b"]" * depth
    if kind == 2:
        return json.dumps(draw(json_values)).encode()
    record = dict(SAMPLE)
    for key in draw(st.lists(st.sampled_from(sorted(SAMPLE)), min_size=1, max_size=4, unique=True)):
        record[key] = draw(json_values)
    return json.dumps(record, ensure_ascii=False).encode()


@dataclass
class Server:
    port: int
    db: Path
    accepted: set[str] = field(default_factory=set)
    statuses: dict[str, int] = field(default_factory=dict)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("hostile")
    port = free_port()
    env = {
        **os.environ,
        "TONGBAN_SERVER__PORT": str(port),
        "TONGBAN_STORE__DATA_DIR": str(tmp),
        "TONGBAN_MAPPINGS__PATH": str(ROOT / "mappings"),
        "TONGBAN_MAPPINGS__WATCH": "false",
        "TONGBAN_METRICS__ENABLED": "false",
        "TONGBAN_DELIVERY__ENABLED": "false",
        "TONGBAN_LOG__LEVEL": "ERROR",
        "TONGBAN_PURPOSES__CASE_HANDLING__PERSON_FIELDS": '["name"]',
        "TONGBAN_PARTNERS__ZS__CITY": "442000",
        "TONGBAN_PARTNERS__ZS__TOKEN": "t-zs",
        "TONGBAN_PARTNERS__ZS__ACL__PURPOSES": '["case_handling"]',
        "TONGBAN_PARTNERS__SZ__CITY": "440300",
        "TONGBAN_PARTNERS__SZ__TOKEN": "t-sz",
        "TONGBAN_PARTNERS__SZ__INBOX__TRANSPORT": "grpc",
        "TONGBAN_PARTNERS__SZ__INBOX__TARGET": "127.0.0.1:9",
    }
    log = (tmp / "gw.log").open("wb")
    proc = subprocess.Popen([*TONGBAN, "serve"], cwd=ROOT, env=env, stdout=log, stderr=log)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp / "gw.log").read_text()
            try:
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
    srv = Server(port, tmp / "tongban.db")
    yield srv
    # The server survived everything and still answers.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        assert (
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
            == 1
        )
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    log.close()
    text = (tmp / "gw.log").read_text()
    assert "internal error" not in text, text[-2000:]


def check(server: Server, call: object, *args: object, **kw: object) -> str:
    try:
        call(*args, timeout=10, **kw)  # type: ignore[operator]
    except grpc.RpcError as err:
        code = err.code()
        assert code in CLIENT_ERRORS, f"{code}: {err.details()}"  # noqa: PT017
        assert "Traceback" not in (err.details() or "")  # noqa: PT017
        return str(code.name)
    return "OK"


NOT_HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@settings(max_examples=120, deadline=None, suppress_health_check=NOT_HEALTH)
@given(
    body=case_bodies(),
    request_id=hostile_text,
    target=hostile_text | st.just("440300"),
    schema=st.sampled_from(["zhongshan.case", "shenzhen.case", "../x", ""]) | hostile_text,
)
def test_hostile_submissions(
    server: Server, body: bytes, request_id: str, target: str, schema: str
) -> None:
    with grpc.insecure_channel(
        f"127.0.0.1:{server.port}", options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as ch:
        stub = cx_grpc.CaseExchangeServiceStub(ch)
        req = cx.SubmitCaseRequest(
            request_id=request_id,
            target_city=target,
            foreign=common_pb2.ForeignRecord(schema=schema, json=body),
        )
        outcome = check(server, stub.SubmitCase, req, metadata=ZS)
        if outcome == "OK":
            server.accepted.add(request_id)
        server.statuses[outcome] = server.statuses.get(outcome, 0) + 1


@settings(max_examples=60, deadline=None, suppress_health_check=NOT_HEALTH)
@given(
    body=case_bodies(),
    source=hostile_text | st.just("guangzhou.person"),
    target=hostile_text | st.just("tongban.v1.Person"),
)
def test_hostile_translations(server: Server, body: bytes, source: str, target: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = translation_pb2_grpc.TranslationServiceStub(ch)
        check(
            server,
            stub.Translate,
            translation_pb2.TranslateRequest(
                record=common_pb2.ForeignRecord(schema=source, json=body), target_schema=target
            ),
            metadata=ZS,
        )


@settings(max_examples=40, deadline=None, suppress_health_check=NOT_HEALTH)
@given(
    raw=st.binary(max_size=300),
    method=st.sampled_from(
        [
            "/tongban.v1.CaseExchangeService/SubmitCase",
            "/tongban.v1.CaseExchangeService/GetCase",
            "/tongban.v1.CaseExchangeService/ReportStatus",
            "/tongban.v1.TranslationService/Translate",
            "/tongban.v1.IdentityService/ResolvePerson",
            "/tongban.v1.CaseExchangeService/ListCases",
        ]
    ),
)
def test_random_bytes_as_protobuf_messages(server: Server, raw: bytes, method: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        call = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
        outcome = check(server, call, raw, metadata=ZS)
        assert outcome != "OK" or method.endswith("ListCases")


INT32 = st.integers(-(2**31), 2**31 - 1)


@settings(max_examples=40, deadline=None, suppress_health_check=NOT_HEALTH)
@given(status=INT32, state=INT32, seconds=st.integers(-(2**62), 2**62), nanos=INT32)
def test_hostile_enum_numbers_and_timestamps(
    server: Server, status: int, state: int, seconds: int, nanos: int
) -> None:
    """Proto3 enums are open and Timestamps unchecked on the wire: any number can arrive."""
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = cx_grpc.CaseExchangeServiceStub(ch)
        req = cx.ReportStatusRequest(request_id="enum", exchange_id="x", status=status)
        req.occurred_at.seconds, req.occurred_at.nanos = seconds, nanos
        assert check(server, stub.ReportStatus, req, metadata=ZS) != "OK"
        listing = cx.ListCasesRequest(status=status, delivery_state=state)
        check(server, stub.ListCases, listing, metadata=ZS)


@settings(max_examples=30, deadline=None, suppress_health_check=NOT_HEALTH)
@given(number=hostile_text, purpose=hostile_text | st.just("case_handling"), schema=hostile_text)
def test_hostile_identity_queries(server: Server, number: str, purpose: str, schema: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = identity_pb2_grpc.IdentityServiceStub(ch)
        outcome = check(
            server,
            stub.ResolvePerson,
            identity_pb2.ResolvePersonRequest(
                certificate_number=number, purpose=purpose, schema=schema
            ),
            metadata=ZS,
        )
        assert outcome != "OK"


def test_zz_nothing_persisted_for_rejected_requests(server: Server) -> None:
    """Runs last in this module: only accepted submissions left rows."""
    with sqlite3.connect(server.db) as conn:
        counts = {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("cases", "requests", "events", "outbox")
        }
        audit = conn.execute("SELECT count(*) FROM audit WHERE action = 'case.submit'").fetchone()[
            0
        ]
    n = len(server.accepted)
    assert counts == {"cases": n, "requests": n, "events": n, "outbox": n}, (
        counts,
        server.statuses,
    )
    assert audit == n
    assert sum(server.statuses.values()) >= 120
