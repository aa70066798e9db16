"""Mapping throughput, side by side in one process: compiled engine vs hand-written vs jq vs JSONata.

The job: Zhongshan's person record (flat pinyin fields, yyyyMMdd dates, national codes) into the
canonical Person, on the same records for every contender:

* engine       the compiled ``zhongshan.person`` mapping (all built-in validators on);
* handwritten  the same mapping written by hand in Python, with the same checks (stdnum ID
               check, phone, region, date) and error collection: the practical limit;
* jq           the ``jq`` package running an equivalent jq program (no validation: jq has none);
* jsonata      the ``jsonata-python`` package running an equivalent JSONata expression.

Each contender's output is first checked equal to the engine's. Rates are medians of interleaved
rounds. The last line is one JSON object with the figures and the ratios.

Usage: python bench/mapping.py [--seconds 0.5] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jq  # noqa: E402
import jsonata  # noqa: E402

from adapters.mapping import Issue, MappingSet  # noqa: E402
from adapters.mapping.convert import (  # noqa: E402
    ValueProblem,
    check_certificate_number,
    check_phone,
    check_region,
)

SEX = {"1": "SEX_MALE", "2": "SEX_FEMALE", "0": "SEX_UNKNOWN", "9": "SEX_UNSTATED"}
CERT = {
    "111": "CERTIFICATE_TYPE_RESIDENT_ID_CARD",
    "112": "CERTIFICATE_TYPE_TEMPORARY_RESIDENT_ID_CARD",
    "113": "CERTIFICATE_TYPE_HOUSEHOLD_REGISTER",
    "414": "CERTIFICATE_TYPE_ORDINARY_PASSPORT",
    "511": "CERTIFICATE_TYPE_TAIWAN_RESIDENT_TRAVEL_PERMIT",
    "516": "CERTIFICATE_TYPE_HK_MACAO_RESIDENT_TRAVEL_PERMIT",
    "553": "CERTIFICATE_TYPE_FOREIGN_PERMANENT_RESIDENT_ID_CARD",
    "554": "CERTIFICATE_TYPE_FOREIGNER_RESIDENCE_PERMIT",
    "990": "CERTIFICATE_TYPE_OTHER",
}
KNOWN = frozenset(["XM", "XB", "CSRQ", "ZJLX", "ZJHM", "GJ", "LXDH", "ZZ", "HJDQH"])
RULE = "mappings/zhongshan/person.yaml"


def handwritten(src: dict[str, Any], issues: list[Issue]) -> dict[str, Any]:
    """zhongshan.person -> canonical, by hand, with the same checks as the mapping."""

    def err(field: str, canonical: str, code: str, msg: str, sev: str = "error") -> None:
        issues.append(Issue(code, "/" + field, canonical, RULE, msg, sev))  # type: ignore[arg-type]

    out: dict[str, Any] = {}
    for extra in sorted(set(src) - KNOWN):
        err(extra, "", "UNKNOWN_FIELD", "field is not in the city schema")
    name = src.get("XM")
    if name in (None, ""):
        err("XM", "name", "REQUIRED_MISSING", "required field is missing")
    elif type(name) is not str:
        err("XM", "name", "WRONG_TYPE", "expected a string")
    elif len(name) > 100:
        err("XM", "name", "TOO_LONG", "longer than 100 characters")
    else:
        out["name"] = name
    sex = src.get("XB")
    if sex not in (None, ""):
        if type(sex) is not str or len(sex) > 1:
            err("XB", "sex", "WRONG_TYPE", "expected a string")
        elif sex in SEX:
            out["sex"] = SEX[sex]
        else:
            err("XB", "sex", "UNKNOWN_CODE", "code is not in code list sex@1")
    born = src.get("CSRQ")
    if born not in (None, ""):
        if type(born) is not str or len(born) != 8 or not born.isascii() or not born.isdigit():
            err("CSRQ", "birth_date", "BAD_DATE", "expected a date as 'yyyyMMdd'")
        else:
            try:
                out["birth_date"] = date(int(born[:4]), int(born[4:6]), int(born[6:])).isoformat()
            except ValueError:
                err("CSRQ", "birth_date", "BAD_DATE", "impossible date")
    kind = src.get("ZJLX")
    if kind in (None, ""):
        err("ZJLX", "certificate_type", "REQUIRED_MISSING", "required field is missing")
    elif kind in CERT:
        out["certificate_type"] = CERT[kind]
    else:
        err("ZJLX", "certificate_type", "UNKNOWN_CODE", "code is not in code list cert_type@1")
    number = src.get("ZJHM")
    if number in (None, ""):
        err("ZJHM", "certificate_number", "REQUIRED_MISSING", "required field is missing")
    elif type(number) is not str or len(number) > 30:
        err("ZJHM", "certificate_number", "WRONG_TYPE", "expected a string")
    else:
        out["certificate_number"] = number
    nat = src.get("GJ") or "CHN"
    if type(nat) is str and len(nat) <= 3:
        out["nationality"] = nat
    else:
        err("GJ", "nationality", "WRONG_TYPE", "expected a string")
    for field, target in (("LXDH", "phone"), ("ZZ", "address"), ("HJDQH", "household_region")):
        value = src.get(field)
        if value not in (None, ""):
            if type(value) is str:
                out[target] = value
            else:
                err(field, target, "WRONG_TYPE", "expected a string")
    checks: list[tuple[str, str, Callable[[str], list[tuple[str, str]]]]] = [
        ("LXDH", "phone", check_phone),
        ("HJDQH", "household_region", check_region),
    ]
    if "certificate_number" in out:
        try:
            for code, msg in check_certificate_number(
                out["certificate_number"], out.get("certificate_type")
            ):
                err("ZJHM", "certificate_number", code, msg, "warning")
        except ValueProblem as exc:
            err("ZJHM", "certificate_number", exc.code, exc.message)
    for field, target, check in checks:
        if target in out:
            try:
                check(out[target])
            except ValueProblem as exc:
                err(field, target, exc.code, exc.message)
    return out


JQ_PROGRAM = r"""
def sex: {"1":"SEX_MALE","2":"SEX_FEMALE","0":"SEX_UNKNOWN","9":"SEX_UNSTATED"}[.];
def cert: {"111":"CERTIFICATE_TYPE_RESIDENT_ID_CARD","112":"CERTIFICATE_TYPE_TEMPORARY_RESIDENT_ID_CARD",
  "113":"CERTIFICATE_TYPE_HOUSEHOLD_REGISTER","414":"CERTIFICATE_TYPE_ORDINARY_PASSPORT",
  "511":"CERTIFICATE_TYPE_TAIWAN_RESIDENT_TRAVEL_PERMIT","516":"CERTIFICATE_TYPE_HK_MACAO_RESIDENT_TRAVEL_PERMIT",
  "553":"CERTIFICATE_TYPE_FOREIGN_PERMANENT_RESIDENT_ID_CARD","554":"CERTIFICATE_TYPE_FOREIGNER_RESIDENCE_PERMIT",
  "990":"CERTIFICATE_TYPE_OTHER"}[.];
{name: .XM, sex: (.XB | if . then sex else null end),
 birth_date: (.CSRQ | if . then (strptime("%Y%m%d") | strftime("%Y-%m-%d")) else null end),
 certificate_type: (.ZJLX | cert), certificate_number: .ZJHM, nationality: (.GJ // "CHN"),
 phone: .LXDH, address: .ZZ, household_region: .HJDQH} | with_entries(select(.value != null))
"""

JSONATA_EXPR = """
{"name": XM,
 "sex": $lookup(%s, XB),
 "birth_date": CSRQ ? $substring(CSRQ,0,4) & "-" & $substring(CSRQ,4,2) & "-" & $substring(CSRQ,6,2),
 "certificate_type": $lookup(%s, ZJLX),
 "certificate_number": ZJHM, "nationality": GJ ? GJ : "CHN",
 "phone": LXDH, "address": ZZ, "household_region": HJDQH}
""" % (json.dumps(SEX), json.dumps(CERT))


def rate(
    fn: Callable[[dict[str, Any]], Any], records: list[dict[str, Any]], seconds: float
) -> float:
    n = 0
    start = time.perf_counter()
    while True:
        for r in records:
            fn(r)
        n += len(records)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="per contender per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    ms = MappingSet.load(ROOT / "mappings")
    cm = ms.compiled["zhongshan.person"]
    folder = ROOT / "mappings/zhongshan/samples/person"
    records = [
        json.loads(p.read_text("utf-8")) for p in sorted(folder.glob("[0-9][0-9]-person.json"))
    ]
    jq_prog = jq.compile(JQ_PROGRAM)
    jsonata_expr = jsonata.Jsonata(JSONATA_EXPR)
    contenders: dict[str, Callable[[dict[str, Any]], Any]] = {
        "engine": lambda r: cm.forward(r, []),
        "handwritten": lambda r: handwritten(r, []),
        "jq": lambda r: jq_prog.input_value(r).first(),
        "jsonata": lambda r: jsonata_expr.evaluate(r),
    }
    for r in records:  # same job: identical outputs before anything is timed
        want = cm.forward(r, [])
        for name, fn in contenders.items():
            got = fn(r)
            assert got == want, f"{name} differs on {r.get('XM')}: {got} != {want}"
    samples: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            samples[name].append(rate(fn, records, args.seconds))
    med = {k: statistics.median(v) for k, v in samples.items()}
    for name, value in med.items():
        print(f"{name:<12} {value:>12,.0f} records/s")
    result = {
        "job": "zhongshan.person -> tongban.v1.Person",
        "records": len(records),
        "engine_rps": round(med["engine"]),
        "handwritten_rps": round(med["handwritten"]),
        "jq_rps": round(med["jq"]),
        "jsonata_rps": round(med["jsonata"]),
        "vs_handwritten": round(med["engine"] / med["handwritten"], 3),
        "vs_jq": round(med["engine"] / med["jq"], 2),
        "vs_jsonata": round(med["engine"] / med["jsonata"], 2),
    }
    print(f"engine / handwritten = {result['vs_handwritten']}, engine / jq = {result['vs_jq']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
