"""Translating records: values, every error collected with both pointers, redaction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapters.mapping import (
    KindMismatchError,
    MalformedRecordError,
    MappingSet,
    RecordInvalidError,
    UnknownSchemaError,
)
from adapters.mapping.golden import run_golden

SAMPLES = Path(__file__).resolve().parents[2] / "mappings"


def sample(city: str, kind: str, n: int = 1) -> dict[str, Any]:
    path = SAMPLES / city / "samples" / kind / f"{n:02d}-{kind}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def errors_of(ms: MappingSet, schema: str, record: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(RecordInvalidError) as info:
        ms.to_canonical(schema, record)
    return sorted((i.code, i.pointer) for i in info.value.errors)


def test_golden_samples_all_pass(mapping_set: MappingSet) -> None:
    results = run_golden(mapping_set)
    assert len(results) >= 45
    assert [r.sample for r in results if not r.ok] == []


def test_zhongshan_to_shenzhen_values(mapping_set: MappingSet) -> None:
    result = mapping_set.translate(
        "zhongshan.case", "shenzhen.case", sample("zhongshan", "case", 2)
    )
    out = result.record
    assert out["caseNo"] == "442000-2026-000002"
    assert out["applicant"]["identity"] == {"type": "ID_CARD", "number": "442000198511021314"}
    assert out["appliedAt"] == "2026-11-20T09:30:00+08:00"
    assert out["acceptance"]["acceptedAt"] == "2026-11-21T10:00:05+08:00"
    assert out["status"] == "ACCEPTED"
    assert out["channel"] == "APP"
    assert result.versions == ("zhongshan.case@1", "shenzhen.case@1")
    # Born 1985 with region 442000 (Zhongshan exists since 1988): a warning, not an error.
    assert [w.code for w in result.warnings] == ["ID_REGION_NOT_VALID_FOR_BIRTH_YEAR"]


def test_integer_codes_and_booleans(mapping_set: MappingSet) -> None:
    out = mapping_set.translate(
        "shenzhen.case", "guangzhou.case", sample("shenzhen", "case", 3)
    ).record
    assert out["state"] == 50
    assert out["is_mailed"] == 1
    assert out["cert_expiry"] == "2031-11-22"
    assert out["process_steps"][1]["finish_time"] == "2026-11-23 11:00:00"


def test_lossy_code_uses_reverse_policy(mapping_set: MappingSet) -> None:
    rec = sample("zhongshan", "person", 1)
    rec["XB"] = "9"  # 未说明的性别: Guangzhou has only U
    assert mapping_set.translate("zhongshan.person", "guangzhou.person", rec).record["sex"] == "U"


def test_every_error_is_collected_with_pointers(mapping_set: MappingSet) -> None:
    rec = sample("zhongshan", "case", 1)
    rec["SQRZJHM"] = rec["SQRZJHM"][:-1] + ("0" if rec["SQRZJHM"][-1] != "0" else "1")
    rec["BJZT"] = "77"
    rec["SQSJ"] = "20261131093000"  # 31 November
    rec["SBLY"] = 1  # number where the schema says string
    del rec["SBLSH"]
    rec["CLXX"][1]["CLMC"] = ""
    rec["CLXX"][0]["FS"] = "two"
    rec["UNKNOWN"] = "x"
    assert errors_of(mapping_set, "zhongshan.case", rec) == sorted(
        [
            ("INVALID_ID_NUMBER", "/SQRZJHM"),
            ("UNKNOWN_CODE", "/BJZT"),
            ("BAD_DATETIME", "/SQSJ"),
            ("WRONG_TYPE", "/SBLY"),
            ("REQUIRED_MISSING", "/SBLSH"),
            ("REQUIRED_MISSING", "/CLXX/1/CLMC"),
            ("WRONG_TYPE", "/CLXX/0/FS"),
            ("UNKNOWN_FIELD", "/UNKNOWN"),
        ]
    )


def test_issue_locates_rule_and_canonical_path(mapping_set: MappingSet) -> None:
    rec = sample("shenzhen", "case", 1)
    rec["materials"][1]["type"] = "HOLOGRAM"
    with pytest.raises(RecordInvalidError) as info:
        mapping_set.to_canonical("shenzhen.case", rec)
    (issue,) = info.value.errors
    assert issue.pointer == "/materials/1/type"
    assert issue.canonical == "materials[1].kind"
    assert issue.rule.startswith("mappings/shenzhen/case.yaml:")
    assert issue.code == "UNKNOWN_CODE"


def test_error_messages_never_hold_the_value(mapping_set: MappingSet) -> None:
    rec = sample("guangzhou", "person", 1)
    bad = rec["cert_no"][:-1] + "Y"
    rec["cert_no"] = bad
    rec["phone"] = "99999"
    with pytest.raises(RecordInvalidError) as info:
        mapping_set.to_canonical("guangzhou.person", rec)
    text = " ".join(str(i) for i in info.value.issues) + str(info.value)
    assert {i.code for i in info.value.errors} == {"INVALID_ID_NUMBER", "INVALID_PHONE"}
    assert bad not in text
    assert "99999" not in text


def test_credit_code_checked(mapping_set: MappingSet) -> None:
    rec = sample("shenzhen", "enterprise", 2)
    rec["uscc"] = rec["uscc"][:-1] + ("A" if rec["uscc"][-1] != "A" else "B")
    assert errors_of(mapping_set, "shenzhen.enterprise", rec) == [("INVALID_CREDIT_CODE", "/uscc")]


def test_too_long_and_nested_wrong_type(mapping_set: MappingSet) -> None:
    rec = sample("shenzhen", "person", 1)
    rec["name"] = "x" * 101
    rec["contact"] = "13800138000"
    assert errors_of(mapping_set, "shenzhen.person", rec) == [
        ("TOO_LONG", "/name"),
        ("WRONG_TYPE", "/contact"),
    ]


def test_canonical_input_is_checked(mapping_set: MappingSet) -> None:
    canon = json.loads(
        (SAMPLES / "shenzhen/samples/person/01-person.canonical.json").read_text("utf-8")
    )
    canon["certificate_number"] = "123"
    with pytest.raises(RecordInvalidError) as info:
        mapping_set.translate("tongban.v1.Person", "zhongshan.person", canon)
    assert [(i.code, i.pointer) for i in info.value.errors] == [
        ("INVALID_ID_NUMBER", "/certificate_number")
    ]
    with pytest.raises(RecordInvalidError) as info2:
        mapping_set.translate("tongban.v1.Person", "zhongshan.person", {"sex": "SEX_ROBOT"})
    assert info2.value.errors[0].code == "INVALID_CANONICAL_RECORD"


def test_schema_errors(mapping_set: MappingSet) -> None:
    with pytest.raises(UnknownSchemaError):
        mapping_set.translate("beijing.case", "shenzhen.case", {})
    with pytest.raises(KindMismatchError):
        mapping_set.translate("zhongshan.case", "shenzhen.person", {})
    with pytest.raises(MalformedRecordError):
        mapping_set.translate_json("zhongshan.case", "shenzhen.case", b"{not json")
    with pytest.raises(MalformedRecordError):
        mapping_set.translate_json("zhongshan.case", "shenzhen.case", b"[1, 2]")
    with pytest.raises(MalformedRecordError):
        mapping_set.translate_json("zhongshan.case", "shenzhen.case", b"\xff\xfe")


def test_each_step_names_the_schema_before_the_record(mapping_set: MappingSet) -> None:
    # An unknown schema is the error even when the record is not an object either.
    for step in (mapping_set.to_canonical, mapping_set.from_canonical):
        with pytest.raises(UnknownSchemaError):
            step("beijing.case", [])  # type: ignore[arg-type]
    for schema in ("zhongshan.case", "tongban.v1.Case"):
        with pytest.raises(MalformedRecordError):
            mapping_set.to_canonical(schema, [1, 2])
    record = {"case_number": "C1"}
    same = mapping_set.from_canonical("tongban.v1.Case", record)
    assert (same.record, same.versions, same.warnings) == (record, (), ())


def test_a_translation_is_its_two_steps(mapping_set: MappingSet) -> None:
    record = sample("zhongshan", "person", 1)
    first = mapping_set.to_canonical("zhongshan.person", record)
    second = mapping_set.from_canonical("shenzhen.person", first.record)
    whole = mapping_set.translate("zhongshan.person", "shenzhen.person", record)
    assert whole.record == second.record
    assert whole.versions == first.versions + second.versions
    assert whole.versions == ("zhongshan.person@1", "shenzhen.person@1")
    assert whole.warnings == first.warnings + second.warnings
    parts = mapping_set.to_canonical_parts("zhongshan.person", record)
    assert parts == (first.record, first.versions, first.warnings)


def test_a_code_longer_than_the_city_field_is_still_refused(mappings_copy: Path) -> None:
    # The generated code checks a code's length only when the code list holds one that does
    # not fit the city field (caseType: maxLength 20); the shipped list fits, this one not.
    shipped = MappingSet.load(mappings_copy)
    canonical = shipped.to_canonical("zhongshan.case", sample("zhongshan", "case", 1)).record
    canonical["case_type"] = "CASE_TYPE_OTHER"
    assert shipped.from_canonical("shenzhen.case", canonical).record["caseType"] == "OTHER"
    codes = mappings_copy / "shenzhen/codes/case_type.yaml"
    codes.write_text(
        codes.read_text("utf-8").replace('"OTHER":', '"OTHER-WITH-A-VERY-LONG-CODE":'), "utf-8"
    )
    edited = MappingSet.load(mappings_copy)
    with pytest.raises(RecordInvalidError) as info:
        edited.from_canonical("shenzhen.case", canonical)
    assert [(i.code, i.pointer) for i in info.value.errors] == [("TOO_LONG", "/case_type")]
    canonical["case_type"] = "CASE_TYPE_IMMEDIATE"  # a code that fits still passes
    assert edited.from_canonical("shenzhen.case", canonical).record["caseType"] == "INSTANT"


def test_outbound_missing_required_field(mapping_set: MappingSet) -> None:
    canonical = mapping_set.to_canonical(
        "zhongshan.person", sample("zhongshan", "person", 1)
    ).record
    del canonical["certificate_number"]
    with pytest.raises(RecordInvalidError) as info:
        mapping_set.from_canonical("shenzhen.person", canonical)
    assert [(i.code, i.pointer) for i in info.value.errors] == [
        ("REQUIRED_MISSING", "/certificate_number")
    ]
