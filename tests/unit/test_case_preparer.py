"""CasePreparer: the cases of one batch share what was worked out once (target checks, schema
checks, the answer's common part), and each is prepared, or refused, as it would be alone."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import grpc
import pytest

from adapters.mapping import MappingSet
from gateway.auth import Caller
from gateway.errors import InvalidRequest
from gateway.rpc.errors import status_for
from gateway.rpc.translation import warnings_to_proto
from gateway.services.submission import CasePreparer, SubmitContext, SubmitRules, prepare_case
from gateway.settings import AclSettings
from gateway.timestamps import timestamp
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import common_pb2, records_pb2

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_790_000_000.123
RULES = SubmitRules(4096, {"440300": "sz", "442000": "zs"})


def _case(n: int) -> dict[str, Any]:
    path = ROOT / f"mappings/zhongshan/samples/case/0{n}-case.json"
    return dict(json.loads(path.read_text("utf-8")))


def _request(
    rid: str, record: Any, *, schema: str = "zhongshan.case", target: str = "440300"
) -> Any:
    body = record if isinstance(record, bytes) else json.dumps(record).encode()
    return cx.SubmitCaseRequest(
        request_id=rid,
        target_city=target,
        foreign=common_pb2.ForeignRecord(schema=schema, json=body),
    )


def _outcome(prepare: Any, request: cx.SubmitCaseRequest) -> Any:
    """The intent's fields but its random exchange id, or the refusal as its gRPC status."""
    try:
        intent = prepare(request)
    except Exception as exc:  # compared by the caller
        code, message, st = status_for(exc)
        return type(exc), code, message, st.SerializeToString(deterministic=True)
    fields = dict(vars(intent))
    fields.pop("exchange_id")
    answer = cx.SubmitCaseResponse.FromString(fields.pop("response"))
    answer.ClearField("exchange_id")
    return fields, answer.SerializeToString(deterministic=True)


@pytest.mark.parametrize("sample", [1, 2])
def test_the_answer_is_the_whole_answer_serialized(mapping_set: MappingSet, sample: int) -> None:
    # Sample 2 carries a warning (an ID number's region younger than its holder).
    prepare = CasePreparer(mapping_set, RULES, Caller("zs", "442000"), NOW, random.Random(1))
    intent = prepare(_request("a-1", _case(sample)))
    result = mapping_set.to_canonical("zhongshan.case", _case(sample))
    whole = cx.SubmitCaseResponse(
        exchange_id=intent.exchange_id,
        status=records_pb2.CASE_STATUS_SUBMITTED,
        accepted_at=timestamp(NOW),
        warnings=warnings_to_proto(result.warnings),
    )
    assert bool(whole.warnings) == (sample == 2)
    assert intent.response == whole.SerializeToString()
    assert intent.response == whole.SerializeToString(deterministic=True)
    # Ids: the batch's milliseconds, then 80 random bits; never the same twice.
    second = prepare(_request("a-2", _case(sample)))
    assert intent.exchange_id[:12] == second.exchange_id[:12] == f"{int(NOW * 1000):012x}"
    assert intent.exchange_id != second.exchange_id


@pytest.mark.parametrize("now", [NOW, 0.001, 2**48 / 1000 + 0.5])
def test_every_answer_is_its_own_answer_serialized(mapping_set: MappingSet, now: float) -> None:
    # Each answer is the batch's serialization with the case's id put in the stand-in's place:
    # ids of every time (leading zeros, the 48 bits' wrap) and random bits keep its length.
    prepare = CasePreparer(mapping_set, RULES, Caller("zs", "442000"), now, random.Random(3))
    for i in range(200):
        intent = prepare(_request(f"n-{i}", dict(_case(1), SBLSH=f"442000-2026-{i:06d}")))
        assert len(intent.exchange_id) == 32
        whole = cx.SubmitCaseResponse(
            exchange_id=intent.exchange_id,
            status=records_pb2.CASE_STATUS_SUBMITTED,
            accepted_at=timestamp(now),
        )
        assert intent.response == whole.SerializeToString(deterministic=True)


def test_a_batch_refuses_each_case_as_it_would_alone(mapping_set: MappingSet) -> None:
    # A caller that may submit for Shenzhen only, and for Zhongshan (its own city) by rule.
    caller = Caller("zs", "442000", AclSettings(target_cities=["440300"]))
    ok = _case(1)
    refused = [
        _request("r-city", ok, target="999999"),
        _request("r-acl", ok, target="442000"),  # served, but not for this caller
        _request("r-target", ok, target=""),
        _request("r-kind", _case(1), schema="zhongshan.person"),
        _request("r-unknown", ok, schema="nowhere.case"),
        _request("r-large", dict(ok, SQRDZ="x" * 5000)),
        _request("r-invalid", {k: v for k, v in ok.items() if k != "SBLSH"}),
        _request("r-receiving", dict(ok, SJD="440100")),
        _request("", ok),
    ]
    # Every refusal comes after an accepted case, so that the target and the schema it
    # shares with that case were already checked and remembered by the batch.
    stream = []
    for i, request in enumerate(refused):
        stream.append(_request(f"ok-{i}", dict(ok, SBLSH=f"442000-2026-p{i:06d}")))
        stream.append(request)
    batch = CasePreparer(mapping_set, RULES, caller, NOW, random.Random(2))
    for request in stream:
        alone = _outcome(
            lambda r: prepare_case(mapping_set, RULES, caller, r, NOW, random.Random(3)), request
        )
        assert _outcome(batch, request) == alone, request.request_id
        if request.request_id.startswith("ok-"):
            assert isinstance(alone[0], dict)
        else:
            assert isinstance(alone[0], type)
            assert issubclass(alone[0], Exception)


@pytest.mark.parametrize(
    ("change", "message", "pointer"),
    [
        (
            {"SJD": "440100"},
            "receiving_city in the record (440100) does not match the caller (442000)",
            "/SJD",
        ),
        (
            {"BLD": "440100"},
            "handling_city in the record (440100) does not match target_city (440300)",
            "/BLD",
        ),
    ],
)
def test_the_exchange_owns_routing(
    mapping_set: MappingSet, change: dict[str, str], message: str, pointer: str
) -> None:
    """A record naming another receiving or handling city than the call's is refused, with
    the city field of the caller's schema; one naming none or the same gets the call's."""
    caller = Caller("zs", "442000")
    prepare = CasePreparer(mapping_set, RULES, caller, NOW, random.Random(4))
    with pytest.raises(InvalidRequest) as err:
        prepare(_request("r-route", dict(_case(1), **change)))
    code, text, st = status_for(err.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert text == message
    assert pointer.encode() in st.SerializeToString()
    same = prepare(_request("r-same", dict(_case(1), SJD="442000", BLD="440300")))
    none = prepare(
        _request("r-none", {k: v for k, v in _case(1).items() if k not in ("SJD", "BLD")})
    )
    for intent in (same, none):
        record = json.loads(intent.canonical)
        assert (record["receiving_city"], record["handling_city"]) == ("442000", "440300")
        assert (intent.receiving_city, intent.handling_city) == ("442000", "440300")


def test_a_writer_batch_shares_one_preparer_per_caller(mapping_set: MappingSet) -> None:
    """Unary cases prepared in the writer: one preparer per caller for a batch's time, a new
    one for another caller or time; each answer is stamped with its batch's time."""
    ctx = SubmitContext(1, mapping_set, RULES)
    zs, zs_again, sz = Caller("zs", "442000"), Caller("zs", "442000"), Caller("sz", "440300")
    first = ctx.preparer(zs, NOW)
    assert ctx.preparer(zs, NOW) is first
    assert ctx.preparer(zs_again, NOW) is not first  # another caller object: its own
    assert ctx.preparer(sz, NOW).caller is sz
    later = ctx.preparer(zs, NOW + 1)
    assert later is not first
    assert later.now == NOW + 1
    for prepare, at in ((first, NOW), (later, NOW + 1)):
        intent = prepare(_request(f"w-{at}", _case(1)))
        answer = cx.SubmitCaseResponse.FromString(intent.response)
        assert answer.accepted_at == timestamp(at)
        assert intent.exchange_id[:12] == f"{int(at * 1000):012x}"
