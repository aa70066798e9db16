"""IdentityService against a real home-city system: routing, minimisation, verify, cache, ACL."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from stdnum.cn import ric

from gateway.app import Gateway
from gateway.partner_sim import InboxSimulator, start_simulator
from tongban.v1 import identity_pb2 as idp
from tongban.v1 import identity_pb2_grpc as idg
from tongban.v1 import records_pb2

from .conftest import ROOT, make_settings, rich_error

ZS = [("authorization", "Bearer t-zs")]
GZ = [("authorization", "Bearer t-gz")]
SAMPLES = ROOT / "mappings/shenzhen/samples"
# A generated Beijing (110105) number with a valid check character: no partner serves Beijing.
BEIJING = "11010519900101003" + ric.calc_check_digit("110105199001010030")


def canonical(kind: str, n: int):
    data = json.loads((SAMPLES / f"{kind}/{n:02d}-{kind}.canonical.json").read_text("utf-8"))
    cls = records_pb2.Person if kind == "person" else records_pb2.Enterprise
    return json_format.ParseDict(data, cls())


@dataclass
class World:
    gw: Gateway
    stub: idg.IdentityServiceStub
    sz: InboxSimulator
    db: Path


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    sz = InboxSimulator(tmp_path / "sz.db")
    p1 = canonical("person", 1)  # 440305..., a Shenzhen resident
    sz.persons[p1.certificate_number] = p1
    e2 = canonical("enterprise", 2)  # 91440300..., registered in Shenzhen
    sz.enterprises[e2.credit_code] = e2
    server, port = await start_simulator(sz)
    env = {
        "TONGBAN_AUTH__MODE": "token",
        "TONGBAN_PURPOSES__CASE_HANDLING__PERSON_FIELDS": '["name", "sex", "birth_date", "certificate_type", "certificate_number", "household_region"]',
        "TONGBAN_PURPOSES__CASE_HANDLING__ENTERPRISE_FIELDS": '["name", "credit_code", "enterprise_type"]',
        "TONGBAN_PURPOSES__CASE_HANDLING__CACHE_TTL_SECONDS": "60",
        "TONGBAN_PURPOSES__IDENTITY_VERIFICATION__CACHE_TTL_SECONDS": "0",
        "TONGBAN_PARTNERS__ZS__CITY": "442000",
        "TONGBAN_PARTNERS__ZS__TOKEN": "t-zs",
        "TONGBAN_PARTNERS__ZS__ACL__PURPOSES": '["case_handling", "identity_verification"]',
        "TONGBAN_PARTNERS__GZ__CITY": "440100",
        "TONGBAN_PARTNERS__GZ__TOKEN": "t-gz",
        "TONGBAN_PARTNERS__GZ__ACL__PURPOSES": '["identity_verification"]',
        "TONGBAN_PARTNERS__SZ__CITY": "440300",
        "TONGBAN_PARTNERS__SZ__TOKEN": "t-sz",
        "TONGBAN_PARTNERS__SZ__INBOX__TRANSPORT": "grpc",
        "TONGBAN_PARTNERS__SZ__INBOX__TARGET": f"127.0.0.1:{port}",
    }
    gw = Gateway(make_settings(tmp_path, **env))
    await gw.start()
    async with grpc.aio.insecure_channel(gw.address) as ch:
        yield World(gw, idg.IdentityServiceStub(ch), sz, tmp_path / "data/tongban.db")
    await gw.stop(grace=0)
    await server.stop(0)
    sz.close()


async def test_resolve_person_minimised_in_callers_schema(world: World) -> None:
    p1 = canonical("person", 1)
    resp = await world.stub.ResolvePerson(
        idp.ResolvePersonRequest(certificate_number=p1.certificate_number, purpose="case_handling"),
        metadata=ZS,
    )
    assert resp.home_city == "440300"
    assert resp.foreign.schema == "zhongshan.person"
    rec = json.loads(resp.foreign.json)
    assert rec["XM"] == p1.name
    assert rec["CSRQ"] == "19910315"
    assert "LXDH" not in rec
    assert "ZZ" not in rec
    assert list(resp.disclosed_fields) == sorted(
        ["birth_date", "certificate_number", "certificate_type", "household_region", "name", "sex"]
    )
    canon = await world.stub.ResolvePerson(
        idp.ResolvePersonRequest(
            certificate_number=p1.certificate_number,
            purpose="case_handling",
            schema="tongban.v1.Person",
        ),
        metadata=ZS,
    )
    assert canon.canonical.name == p1.name
    assert canon.canonical.phone == ""


async def test_resolve_enterprise_routes_by_credit_code(world: World) -> None:
    e2 = canonical("enterprise", 2)
    resp = await world.stub.ResolveEnterprise(
        idp.ResolveEnterpriseRequest(
            credit_code=e2.credit_code, purpose="case_handling", schema="tongban.v1.Enterprise"
        ),
        metadata=ZS,
    )
    assert (resp.home_city, resp.canonical.name) == ("440300", e2.name)
    assert resp.canonical.address == ""  # not disclosed for this purpose


async def test_cache_and_verify(world: World) -> None:
    p1 = canonical("person", 1)
    req = idp.ResolvePersonRequest(
        certificate_number=p1.certificate_number, purpose="case_handling"
    )
    await world.stub.ResolvePerson(req, metadata=ZS)
    calls = world.sz.calls
    await world.stub.ResolvePerson(req, metadata=ZS)
    assert world.sz.calls == calls  # served from the cache within the purpose's TTL
    ok = await world.stub.VerifyPerson(
        idp.VerifyPersonRequest(
            certificate_number=p1.certificate_number,
            name=p1.name,
            birth_date=p1.birth_date,
            purpose="identity_verification",
        ),
        metadata=GZ,
    )
    assert ok.match is True
    assert world.sz.calls == calls + 1  # this purpose has TTL 0: asked again
    assert ok.ListFields() == [(idp.VerifyPersonResponse.DESCRIPTOR.fields_by_name["match"], True)]
    wrong = await world.stub.VerifyPerson(
        idp.VerifyPersonRequest(
            certificate_number=p1.certificate_number, name="陈嘉", purpose="identity_verification"
        ),
        metadata=GZ,
    )
    assert wrong.match is False
    born = await world.stub.VerifyPerson(
        idp.VerifyPersonRequest(
            certificate_number=p1.certificate_number,
            name=p1.name,
            birth_date="1991-03-16",
            purpose="identity_verification",
        ),
        metadata=GZ,
    )
    assert born.match is False


@pytest.mark.parametrize(
    ("meta", "request_", "code", "reason", "field"),
    [
        (
            GZ,
            idp.ResolvePersonRequest(
                certificate_number="440305199103150249", purpose="case_handling"
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_DENIED",
            "purpose",
        ),
        (
            ZS,
            idp.ResolvePersonRequest(
                certificate_number="440305199103150248", purpose="case_handling"
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ID_NUMBER",
            "certificate_number",
        ),
        (
            ZS,
            idp.ResolvePersonRequest(certificate_number=BEIJING, purpose="case_handling"),
            grpc.StatusCode.NOT_FOUND,
            "HOME_CITY_NOT_SERVED",
            "home_city",
        ),
        (
            ZS,
            idp.ResolvePersonRequest(certificate_number="440305199103150249", purpose=""),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
            "purpose",
        ),
        (
            ZS,
            idp.ResolvePersonRequest(
                certificate_number="H60123456",
                purpose="case_handling",
                certificate_type=records_pb2.CERTIFICATE_TYPE_ORDINARY_PASSPORT,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
            "certificate_type",
        ),
    ],
)
async def test_resolve_errors(world: World, meta, request_, code, reason, field) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await world.stub.ResolvePerson(request_, metadata=meta)
    err = rich_error(info.value)
    assert (err["code"], err["reason"]) == (code, reason)
    assert err["fields"] == [field]
    assert request_.certificate_number[:12] not in (info.value.details() or "")


async def test_unknown_person_and_audit_without_personal_data(world: World) -> None:
    body = "440305200001010003"
    unknown = body[:17] + ric.calc_check_digit(body)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await world.stub.ResolvePerson(
            idp.ResolvePersonRequest(certificate_number=unknown, purpose="case_handling"),
            metadata=ZS,
        )
    assert rich_error(info.value)["reason"] == "RECORD_NOT_FOUND"
    p1 = canonical("person", 1)
    await world.stub.ResolvePerson(
        idp.ResolvePersonRequest(certificate_number=p1.certificate_number, purpose="case_handling"),
        metadata=ZS,
    )
    with sqlite3.connect(world.db) as conn:
        rows = conn.execute("SELECT actor, action, subject, detail, outcome FROM audit").fetchall()
    assert (
        "zs",
        "identity.resolve_person",
        "city:440300",
        "purpose case_handling",
        "not_found",
    ) in rows
    assert (
        "zs",
        "identity.resolve_person",
        "city:440300",
        "purpose case_handling",
        "disclosed",
    ) in rows
    flat = json.dumps(rows, ensure_ascii=False)
    assert p1.certificate_number not in flat
    assert p1.name not in flat
    assert unknown not in flat
    m = world.gw.services.metrics.registry
    assert (
        m.get_sample_value(
            "tongban_identity_queries_total", {"purpose": "case_handling", "outcome": "disclosed"}
        )
        == 1
    )
