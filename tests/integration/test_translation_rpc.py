"""TranslationService over a real gRPC server: answers and every error path."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tongban.v1 import common_pb2, translation_pb2, translation_pb2_grpc

from .conftest import ROOT, rich_error

ZS_CASE = (ROOT / "mappings/zhongshan/samples/case/01-case.json").read_bytes()


def req(schema: str, body: bytes, target: str) -> translation_pb2.TranslateRequest:
    return translation_pb2.TranslateRequest(
        record=common_pb2.ForeignRecord(schema=schema, json=body), target_schema=target
    )


async def fails(channel: grpc.aio.Channel, request: translation_pb2.TranslateRequest) -> dict:
    stub = translation_pb2_grpc.TranslationServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Translate(request)
    return rich_error(info.value)


async def test_health_and_reflection(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    resp = await health.Check(health_pb2.HealthCheckRequest())
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    resp = await health.Check(
        health_pb2.HealthCheckRequest(service="tongban.v1.TranslationService")
    )
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = refl.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    answer = await call.read()
    await call.done_writing()
    names = {s.name for s in answer.list_services_response.service}
    assert {
        "tongban.v1.CaseExchangeService",
        "tongban.v1.IdentityService",
        "tongban.v1.TranslationService",
        "tongban.v1.PartnerInboxService",
    } <= names


async def test_translate_zhongshan_to_guangzhou(channel: grpc.aio.Channel) -> None:
    stub = translation_pb2_grpc.TranslationServiceStub(channel)
    resp = await stub.Translate(req("zhongshan.case", ZS_CASE, "guangzhou.case"))
    out = json.loads(resp.record.json)
    assert resp.record.schema == "guangzhou.case"
    assert out["case_id"] == "442000-2026-000001"
    assert out["apply_time"] == "2026-11-20 09:30:00"
    assert out["applicant_sex"] == "F"
    assert list(resp.mapping_versions) == ["zhongshan.case@1", "guangzhou.case@1"]


async def test_translate_to_canonical_and_back(channel: grpc.aio.Channel) -> None:
    stub = translation_pb2_grpc.TranslationServiceStub(channel)
    canon = await stub.Translate(req("zhongshan.case", ZS_CASE, "tongban.v1.Case"))
    assert json.loads(canon.record.json)["applied_at"] == "2026-11-20T01:30:00Z"
    back = await stub.Translate(req("tongban.v1.Case", canon.record.json, "zhongshan.case"))
    assert json.loads(back.record.json) == json.loads(ZS_CASE)


async def test_warning_is_returned(channel: grpc.aio.Channel) -> None:
    stub = translation_pb2_grpc.TranslationServiceStub(channel)
    body = (ROOT / "mappings/zhongshan/samples/person/02-person.json").read_bytes()
    resp = await stub.Translate(req("zhongshan.person", body, "shenzhen.person"))
    assert [(w.code, w.field) for w in resp.warnings] == [
        ("ID_REGION_NOT_VALID_FOR_BIRTH_YEAR", "/ZJHM")
    ]


async def test_unknown_source_schema(channel: grpc.aio.Channel) -> None:
    err = await fails(channel, req("beijing.case", ZS_CASE, "shenzhen.case"))
    assert err["code"] == grpc.StatusCode.NOT_FOUND
    assert err["reason"] == "UNKNOWN_SCHEMA"
    assert err["fields"] == ["record.schema"]


async def test_unknown_target_schema(channel: grpc.aio.Channel) -> None:
    err = await fails(channel, req("zhongshan.case", ZS_CASE, "shenzhen.cases"))
    assert (err["code"], err["reason"], err["fields"]) == (
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_SCHEMA",
        ["target_schema"],
    )


async def test_malformed_record(channel: grpc.aio.Channel) -> None:
    err = await fails(channel, req("zhongshan.case", b'{"SBLSH": ', "shenzhen.case"))
    assert (err["code"], err["reason"]) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_RECORD")


async def test_invalid_id_number_names_the_callers_field(channel: grpc.aio.Channel) -> None:
    rec = json.loads(ZS_CASE)
    rec["SQRZJHM"] = rec["SQRZJHM"][:-1] + ("1" if rec["SQRZJHM"][-1] != "1" else "2")
    err = await fails(channel, req("zhongshan.case", json.dumps(rec).encode(), "shenzhen.case"))
    assert err["code"] == grpc.StatusCode.INVALID_ARGUMENT
    assert err["reason"] == "INVALID_ID_NUMBER"
    assert err["fields"] == ["/SQRZJHM"]


async def test_several_mapping_errors(channel: grpc.aio.Channel) -> None:
    rec = json.loads((ROOT / "mappings/shenzhen/samples/case/02-case.json").read_text("utf-8"))
    rec["status"] = "SLEEPING"
    rec["appliedAt"] = "2026-11-20 09:30"
    err = await fails(channel, req("shenzhen.case", json.dumps(rec).encode(), "zhongshan.case"))
    assert (err["code"], err["reason"]) == (grpc.StatusCode.INVALID_ARGUMENT, "MAPPING_FAILED")
    assert sorted(err["fields"]) == ["/appliedAt", "/status"]


async def test_missing_fields_and_limits(channel: grpc.aio.Channel) -> None:
    err = await fails(channel, translation_pb2.TranslateRequest(target_schema="shenzhen.case"))
    assert (err["code"], err["reason"], err["fields"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        ["record"],
    )
    err = await fails(channel, req("zhongshan.case", ZS_CASE, ""))
    assert err["fields"] == ["target_schema"]
    err = await fails(channel, req("zhongshan.case", b" " * (300 * 1024), "shenzhen.case"))
    assert (err["reason"], err["fields"]) == ("RECORD_TOO_LARGE", ["record.json"])
    err = await fails(channel, req("zhongshan.case", ZS_CASE, "shenzhen.person"))
    assert (err["code"], err["reason"]) == (grpc.StatusCode.INVALID_ARGUMENT, "KIND_MISMATCH")


async def test_list_schemas_pages(channel: grpc.aio.Channel) -> None:
    stub = translation_pb2_grpc.TranslationServiceStub(channel)
    names: list[str] = []
    token = ""
    while True:
        page = await stub.ListSchemas(
            translation_pb2.ListSchemasRequest(page_size=5, page_token=token)
        )
        names += [s.name for s in page.schemas]
        token = page.next_page_token
        if not token:
            break
    assert len(names) == 12
    assert names == sorted(names)
    zs = await stub.ListSchemas(translation_pb2.ListSchemasRequest(city="442000"))
    assert [s.name for s in zs.schemas] == [
        "zhongshan.case",
        "zhongshan.enterprise",
        "zhongshan.person",
    ]
    assert zs.schemas[0].mapping_version == 1
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListSchemas(translation_pb2.ListSchemasRequest(page_token="!!"))
    assert rich_error(info.value)["reason"] == "INVALID_PAGE_TOKEN"
    first = await stub.ListSchemas(translation_pb2.ListSchemasRequest(page_size=5))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        # A token from an unfiltered query used with a city filter: a different query.
        await stub.ListSchemas(
            translation_pb2.ListSchemasRequest(city="440300", page_token=first.next_page_token)
        )
    assert rich_error(info.value)["fields"] == ["page_token"]


async def test_hot_reload_keeps_good_set(tmp_path: Path) -> None:
    import shutil

    from gateway.mappings import MappingRegistry

    shutil.copytree(ROOT / "mappings", tmp_path / "m")
    reg = MappingRegistry(tmp_path / "m")
    before = reg.current
    case_yaml = tmp_path / "m/zhongshan/case.yaml"
    good = case_yaml.read_text("utf-8")
    case_yaml.write_text(good.replace("to: service_item_name", "to: service_name"), "utf-8")
    outcome = reg.reload()
    assert not outcome.ok
    assert any("service_name" in p and "case.yaml:" in p for p in outcome.problems)
    assert reg.current is before
    case_yaml.write_text(good.replace("version: 1", "version: 2", 1), "utf-8")
    assert reg.reload().ok
    assert reg.current.compiled["zhongshan.case"].ref == "zhongshan.case@2"
