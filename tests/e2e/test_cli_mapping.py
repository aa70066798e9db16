"""The integrator's command line, run as a subprocess: output and exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .conftest import ROOT, run


def test_check_and_test_pass_on_shipped_mappings() -> None:
    check = run("mapping", "check", "mappings")
    assert check.returncode == 0, check.stderr
    assert "9 mappings in 3 cities" in check.stdout
    test = run("mapping", "test", "mappings")
    assert test.returncode == 0, test.stdout
    assert "45 passed, 0 failed" in test.stdout


def test_check_reports_file_and_line(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "mappings", tmp_path / "mappings")
    f = tmp_path / "mappings/shenzhen/case.yaml"
    f.write_text(
        f.read_text("utf-8").replace("{from: remark, to: remarks}", "{from: remarks, to: remarks}"),
        "utf-8",
    )
    line = next(
        i for i, t in enumerate(f.read_text("utf-8").splitlines(), 1) if "from: remarks" in t
    )
    out = run("mapping", "check", str(tmp_path / "mappings"))
    assert out.returncode == 1
    assert f"mappings/shenzhen/case.yaml:{line}:" in out.stderr
    assert "'remarks' is not in the city schema" in out.stderr


def test_golden_failure_shows_a_diff(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "mappings", tmp_path / "mappings")
    exp = tmp_path / "mappings/guangzhou/samples/person/01-person.canonical.json"
    data = json.loads(exp.read_text("utf-8"))
    data["name"] = "张三"
    exp.write_text(json.dumps(data, ensure_ascii=False), "utf-8")
    out = run("mapping", "test", str(tmp_path / "mappings"), "--city", "guangzhou")
    assert out.returncode == 1
    assert "FAIL guangzhou/samples/person/01-person.json" in out.stdout
    assert '-  "name": "张三",' in out.stdout
    assert "1 failed" in out.stdout


def test_coverage_lists_unmapped_fields(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "mappings", tmp_path / "mappings")
    f = tmp_path / "mappings/zhongshan/enterprise.yaml"
    f.write_text(
        f.read_text("utf-8")
        .replace("source: error", "source: warn")
        .replace("  - {from: LXDH, to: phone}\n", ""),
        "utf-8",
    )
    out = run("mapping", "coverage", "zhongshan", "--dir", str(tmp_path / "mappings"), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)["zhongshan.enterprise"]
    assert report["source_fields_never_read"] == ["LXDH"]
    assert report["canonical_fields_never_filled"] == ["phone"]
    bad = run("mapping", "coverage", "beijing")
    assert bad.returncode == 2
    assert "unknown city or schema 'beijing'" in bad.stderr
    assert "zhongshan.enterprise" in bad.stderr  # the schemas it knows
    # One schema: only that mapping's coverage.
    one = run(
        "mapping", "coverage", "zhongshan.enterprise", "--dir", str(tmp_path / "mappings"), "--json"
    )
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout) == {"zhongshan.enterprise": report}


def test_translate_offline_file_and_stdin() -> None:
    src = ROOT / "mappings/shenzhen/samples/person/01-person.json"
    out = run("translate", "--from", "shenzhen.person", "--to", "zhongshan.person", str(src))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["XM"] == "陈嘉怡"
    piped = run(
        "translate",
        "--from",
        "shenzhen.person",
        "--to",
        "tongban.v1.Person",
        "-",
        stdin=src.read_bytes(),
    )
    assert json.loads(piped.stdout)["certificate_type"] == "CERTIFICATE_TYPE_RESIDENT_ID_CARD"


def test_translate_exit_codes() -> None:
    bad = run(
        "translate",
        "--from",
        "shenzhen.person",
        "--to",
        "zhongshan.person",
        "-",
        stdin=b'{"name": "x", "identity": {"type": "ID_CARD", "number": "123"}}',
    )
    assert bad.returncode == 1
    assert "INVALID_ID_NUMBER" in bad.stderr
    assert "/identity/number" in bad.stderr
    unknown = run(
        "translate", "--from", "nowhere.person", "--to", "zhongshan.person", "-", stdin=b"{}"
    )
    assert unknown.returncode == 2
    missing = run(
        "translate", "--from", "shenzhen.person", "--to", "zhongshan.person", "/nonexistent.json"
    )
    assert missing.returncode == 2
