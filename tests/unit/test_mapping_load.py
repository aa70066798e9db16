"""Broken mappings fail at load with the file and line of the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.mapping import MappingLoadError, MappingSet


def _replace(path: Path, old: str, new: str) -> int:
    """Replace ``old`` once; return the 1-based line where it was."""
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    line = text[: text.index(old)].count("\n") + 1
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return line


def _problems(root: Path) -> list[str]:
    with pytest.raises(MappingLoadError) as info:
        MappingSet.load(root)
    return [str(p) for p in info.value.problems]


def test_shipped_mappings_load(mapping_set: MappingSet) -> None:
    assert sorted(mapping_set.cities) == ["guangzhou", "shenzhen", "zhongshan"]
    assert len(mapping_set.compiled) == 9
    assert mapping_set.compiled["zhongshan.case"].ref == "zhongshan.case@1"


def test_unknown_source_path(mappings_copy: Path) -> None:
    line = _replace(mappings_copy / "zhongshan/case.yaml", "{from: SXMC,", "{from: SXMCX,")
    problems = _problems(mappings_copy)
    assert any(
        p.startswith(f"mappings/zhongshan/case.yaml:{line}:")
        and "'SXMCX' is not in the city schema" in p
        for p in problems
    ), problems


def test_unknown_canonical_field(mappings_copy: Path) -> None:
    line = _replace(mappings_copy / "shenzhen/person.yaml", "to: household_region", "to: hukou")
    problems = _problems(mappings_copy)
    assert any(
        p.startswith(f"mappings/shenzhen/person.yaml:{line}:") and "'hukou' does not exist" in p
        for p in problems
    ), problems


def test_duplicate_code(mappings_copy: Path) -> None:
    path = mappings_copy / "guangzhou/codes/sex.yaml"
    line = _replace(path, '  "F": SEX_FEMALE', '  "M": SEX_FEMALE')
    problems = _problems(mappings_copy)
    assert any(
        p.startswith(f"mappings/guangzhou/codes/sex.yaml:{line}:") and "duplicate key 'M'" in p
        for p in problems
    ), problems


def test_bad_date_pattern(mappings_copy: Path) -> None:
    line = _replace(
        mappings_copy / "zhongshan/case.yaml",
        "{from: SLSJ, to: acceptance.accepted_at, datetime: yyyyMMddHHmmss}",
        "{from: SLSJ, to: acceptance.accepted_at, datetime: yyyyMMddHHmmQQ}",
    )
    problems = _problems(mappings_copy)
    assert any(
        p.startswith(f"mappings/zhongshan/case.yaml:{line}:") and "unknown letter 'Q'" in p
        for p in problems
    ), problems


def test_wrong_type_for_enum_target(mappings_copy: Path) -> None:
    line = _replace(
        mappings_copy / "zhongshan/person.yaml",
        "{from: XB, to: sex, codes: sex}",
        "{from: XB, to: sex}",
    )
    problems = _problems(mappings_copy)
    assert any(f"person.yaml:{line}:" in p and "give a code list" in p for p in problems), problems


def test_irreversible_rule_needs_direction(mappings_copy: Path) -> None:
    line = _replace(
        mappings_copy / "zhongshan/case.yaml",
        "{from: SQSJ, to: applied_at, datetime: yyyyMMddHHmmss, required: true}",
        "{from: SQSJ, to: applied_at, datetime: yyyyMMdd, required: true}",
    )
    problems = _problems(mappings_copy)
    assert any(
        f"case.yaml:{line}:" in p and "cannot be reversed automatically" in p for p in problems
    ), problems


def test_ambiguous_code_list_refused_both_ways(mappings_copy: Path) -> None:
    _replace(
        mappings_copy / "guangzhou/codes/sex.yaml",
        '  "U": SEX_UNKNOWN',
        '  "U": SEX_UNKNOWN\n  "X": SEX_UNKNOWN',
    )
    problems = _problems(mappings_copy)
    assert any(
        "code list 'sex' is not one-to-one" in p and "add a 'reverse' table" in p for p in problems
    ), problems


def test_coverage_error_policy(mappings_copy: Path) -> None:
    text = (mappings_copy / "zhongshan/person.yaml").read_text(encoding="utf-8")
    (mappings_copy / "zhongshan/person.yaml").write_text(
        text.replace("  - {from: ZZ, to: address}\n", ""), encoding="utf-8"
    )
    problems = _problems(mappings_copy)
    assert any("source field never read: ZZ" in p for p in problems), problems
    assert any("canonical field never filled: address" in p for p in problems), problems


def test_unknown_rule_key_and_yaml_syntax(mappings_copy: Path) -> None:
    line = _replace(
        mappings_copy / "shenzhen/enterprise.yaml",
        "{from: type, to: enterprise_type}",
        "{from: type, to: enterprise_type, frm: x}",
    )
    (mappings_copy / "guangzhou/person.yaml").write_text(
        "mapping: person\nrules: [\n", encoding="utf-8"
    )
    problems = _problems(mappings_copy)
    assert any(
        f"shenzhen/enterprise.yaml:{line}:" in p and "unknown key 'frm'" in p for p in problems
    ), problems
    assert any(p.startswith("mappings/guangzhou/person.yaml:") for p in problems), problems


def test_unsafe_expression_refused(mappings_copy: Path) -> None:
    line = _replace(
        mappings_copy / "guangzhou/person.yaml",
        'expr: "id_birth_date(cert_no)"',
        "expr: \"__import__('os').getcwd()\"",
    )
    problems = _problems(mappings_copy)
    assert any(
        f"person.yaml:{line}:" in p and "only these functions may be called" in p for p in problems
    ), problems


def test_yaml_keeps_codes_as_written(mappings_copy: Path) -> None:
    # "01"-style codes unquoted stay text, never integers (YAML 1.1 would make 01 an int).
    _replace(mappings_copy / "zhongshan/codes/case_status.yaml", '"01": ', "01: ")
    ms = MappingSet.load(mappings_copy)
    table = next(
        c for c in ms.compiled["zhongshan.case"].mapping.code_lists if c.name == "case_status"
    )
    assert table.forward["01"] == "CASE_STATUS_RECEIVED"


def test_a_set_frozen_at_start_up_is_freed_after_a_reload(mappings_copy: Path) -> None:
    # `tongban serve` calls gc.freeze() once started; the collector then never looks at the
    # start-up mapping set again, so a reload must free it by reference counting alone.
    import gc
    import weakref

    from gateway.mappings import MappingRegistry

    registry = MappingRegistry(mappings_copy, run_golden_on_reload=False)
    first = weakref.ref(registry.current)
    gc.freeze()
    try:
        assert registry.reload().ok
        assert first() is None
    finally:
        gc.unfreeze()
