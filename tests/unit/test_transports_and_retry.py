"""HTTP transport outcomes, and the delivery retry schedule with an injected sleep."""

from __future__ import annotations

import ssl

import httpx
import pytest

from adapters.transports import HttpInboxTransport, TransportError
from gateway.domain.breaker import CircuitBreaker
from tongban.v1 import common_pb2
from tongban.v1 import partner_inbox_pb2 as inbox


def transport(handler) -> HttpInboxTransport:
    return HttpInboxTransport(
        "http://partner.test/api", httpx.AsyncClient(transport=httpx.MockTransport(handler))
    )


REQ = inbox.DeliverCaseRequest(
    idempotency_key="x1",
    source_city="442000",
    foreign=common_pb2.ForeignRecord(schema="shenzhen.case", json=b'{"a": 1}'),
)


async def test_http_success_sends_key_and_record() -> None:
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["key"] = request.headers["idempotency-key"]
        seen["url"] = str(request.url)
        seen["body"] = request.read()
        return httpx.Response(200, json={"reference": "SZ-9", "duplicate": True})

    resp = await transport(handler).deliver_case(REQ, 1.0)
    assert (resp.partner_reference, resp.duplicate) == ("SZ-9", True)
    assert seen["key"] == "x1"
    assert seen["url"] == "http://partner.test/api/cases"
    assert b'"record":{"a":1}' in seen["body"].replace(b" ", b"")


async def test_http_status_change_carries_its_codes_and_late_mark() -> None:
    import json

    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert str(request.url) == "http://partner.test/api/statuses"
        bodies.append(json.loads(request.read()))
        return httpx.Response(200, json={"duplicate": False})

    change = inbox.DeliverStatusRequest(
        idempotency_key="x1:7", exchange_id="x1", status_code="05", reported_by="440300"
    )
    await transport(handler).deliver_status(change, 1.0)
    change.late = True
    await transport(handler).deliver_status(change, 1.0)
    assert [(b["status_code"], b.get("late")) for b in bodies] == [("05", None), ("05", True)]


@pytest.mark.parametrize(
    ("status", "retryable"), [(503, True), (429, True), (408, True), (400, False), (409, False)]
)
async def test_http_status_classification(status: int, retryable: bool) -> None:
    t = transport(lambda r: httpx.Response(status, headers={"Retry-After": "7"}, text="nope"))
    with pytest.raises(TransportError) as info:
        await t.deliver_case(REQ, 1.0)
    assert info.value.retryable is retryable
    assert info.value.code == f"HTTP_{status}"
    assert info.value.retry_after == 7.0


async def test_http_connection_error_is_retryable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(TransportError) as info:
        await transport(handler).deliver_case(REQ, 1.0)
    assert info.value.retryable


async def test_a_tls_alert_after_the_handshake_is_a_transport_error() -> None:
    # TLS 1.3: a partner that refuses our client certificate says so after the handshake, with
    # the first read; httpx lets that ssl.SSLError through unmapped.
    def handler(request: httpx.Request) -> httpx.Response:
        err = ssl.SSLError(1, "tlsv13 alert certificate required")
        err.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
        raise err

    with pytest.raises(TransportError) as info:
        await transport(handler).deliver_case(REQ, 1.0)
    assert info.value.retryable
    assert info.value.code == "TLS"
    assert "CERTIFICATE_REQUIRED" in info.value.message


def test_breaker_refuses_until_its_period_ends_then_lets_one_trial_through() -> None:
    now = [0.0]
    b = CircuitBreaker("sz", failure_threshold=2, reset_seconds=5, clock=lambda: now[0])
    assert b.admit() is None
    b.record_failure()
    assert b.state == "closed"
    b.record_failure()
    assert b.state == "open"
    # Refused, without waiting: the caller learns until when.
    assert b.refused_until() == 5.0
    assert b.admit() == 5.0
    now[0] = 5.0
    assert b.refused_until() is None
    assert b.admit() is None  # the one trial
    assert b.state == "half_open"
    assert b.admit() == 6.0  # others are refused while it is out (1 s, at most reset_seconds)
    b.record_failure()  # the trial failed: open again
    assert (b.state, b.open_until) == ("open", 10.0)
    now[0] = 10.0
    assert b.admit() is None
    b.release()  # that trial did not call after all: the next caller is the trial
    assert b.admit() is None
    assert b.admit() == 11.0
    b.record_success()
    assert b.admit() is None
    assert [s for _, s in b.transitions] == ["open", "half_open", "open", "half_open", "closed"]


def test_error_details_stay_bounded_for_hostile_records() -> None:
    from adapters.mapping import Issue, RecordInvalidError
    from gateway.errors import UnknownCity
    from gateway.rpc.errors import status_for

    many = RecordInvalidError(
        "zhongshan.case",
        [
            Issue(
                "UNKNOWN_FIELD",
                "/" + "号" * 300 + str(i),
                "",
                "r",
                "field is not in the city schema",
            )
            for i in range(5000)
        ],
    )
    _, message, st = status_for(many)
    assert st.ByteSize() < 12_000  # base64 in a trailer: stays under gRPC's 16 KiB limit
    assert len(message) <= 500
    _, _, st2 = status_for(UnknownCity("号" * 50_000, "target_city"))
    assert st2.ByteSize() < 4_000
