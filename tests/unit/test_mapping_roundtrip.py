"""Property tests: records survive Zhongshan -> Shenzhen -> Guangzhou -> Zhongshan unchanged.

Generated canonical records hold only values every city can express (Guangzhou has one letter for
both "unknown" and "unstated" sex, and keeps no birth date on a case), so whatever one city writes,
the next reads back exactly.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum.cn import ric, uscc

from adapters.mapping import MappingSet

REGIONS = ["440305", "440106", "442000", "440304", "441900", "440604"]
text = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "N"), max_codepoint=0x9FFF),
    min_size=1,
    max_size=20,
)


@st.composite
def id_numbers(draw: st.DrawFn) -> str:
    born = draw(
        st.dates(min_value=datetime(1990, 1, 1).date(), max_value=datetime(2008, 12, 31).date())
    )
    body = f"{draw(st.sampled_from(REGIONS))}{born:%Y%m%d}{draw(st.integers(0, 999)):03d}"
    return body + ric.calc_check_digit(body + "0")


@st.composite
def credit_codes(draw: st.DrawFn) -> str:
    org = draw(st.text(alphabet="0123456789ABCDEFGHJKLMNPQRTUWXY", min_size=9, max_size=9))
    body = f"91{draw(st.sampled_from(REGIONS))}{org}"
    return body + uscc.calc_check_digit(body)


def timestamps() -> st.SearchStrategy[str]:
    base = datetime(2020, 1, 1, tzinfo=UTC)
    return st.integers(0, 10 * 365 * 86400).map(
        lambda s: (base + timedelta(seconds=s)).strftime("%Y-%m-%dT%H:%M:%SZ")
    )


phones = st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True)
sexes = st.sampled_from(["SEX_MALE", "SEX_FEMALE", "SEX_UNKNOWN"])
cert_types = st.sampled_from(
    ["CERTIFICATE_TYPE_ORDINARY_PASSPORT", "CERTIFICATE_TYPE_HK_MACAO_RESIDENT_TRAVEL_PERMIT"]
)


@st.composite
def person_ref(draw: st.DrawFn, with_sex: bool = True) -> dict[str, Any]:
    p: dict[str, Any] = {"name": draw(text)}
    if draw(st.booleans()):
        p["certificate_type"] = "CERTIFICATE_TYPE_RESIDENT_ID_CARD"
        p["certificate_number"] = draw(id_numbers())
    else:
        p["certificate_type"] = draw(cert_types)
        p["certificate_number"] = draw(st.from_regex(r"[A-Z][0-9]{8}", fullmatch=True))
    if with_sex:
        p["sex"] = draw(sexes)
    if draw(st.booleans()):
        p["phone"] = draw(phones)
    return p


def optional(
    draw: st.DrawFn, d: dict[str, Any], key: str, strategy: st.SearchStrategy[Any]
) -> None:
    if draw(st.booleans()):
        d[key] = draw(strategy)


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    c: dict[str, Any] = {
        "case_number": draw(st.from_regex(r"[0-9A-Z-]{6,30}", fullmatch=True)),
        "receiving_city": draw(st.sampled_from(["442000", "440300", "440100"])),
        "handling_city": draw(st.sampled_from(["442000", "440300", "440100"])),
        "service_item_code": draw(st.from_regex(r"[0-9A-Z]{10,31}", fullmatch=True)),
        "applicant": draw(person_ref()),
        "applied_at": draw(timestamps()),
        "status": draw(
            st.sampled_from(
                [
                    "CASE_STATUS_SUBMITTED",
                    "CASE_STATUS_RECEIVED",
                    "CASE_STATUS_ACCEPTED",
                    "CASE_STATUS_NOT_ACCEPTED",
                    "CASE_STATUS_IN_PROGRESS",
                    "CASE_STATUS_SUPPLEMENT_REQUIRED",
                    "CASE_STATUS_COMPLETED_APPROVED",
                    "CASE_STATUS_COMPLETED_DENIED",
                    "CASE_STATUS_COMPLETED_RETURNED",
                    "CASE_STATUS_WITHDRAWN",
                ]
            )
        ),
    }
    optional(draw, c, "service_item_name", text)
    optional(
        draw,
        c,
        "case_type",
        st.sampled_from(["CASE_TYPE_IMMEDIATE", "CASE_TYPE_PROMISED", "CASE_TYPE_OTHER"]),
    )
    optional(
        draw,
        c,
        "channel",
        st.sampled_from(
            [
                "SUBMISSION_CHANNEL_WINDOW",
                "SUBMISSION_CHANNEL_PC",
                "SUBMISSION_CHANNEL_MOBILE",
                "SUBMISSION_CHANNEL_EXPRESS",
                "SUBMISSION_CHANNEL_OTHER",
            ]
        ),
    )
    optional(draw, c, "remarks", text)
    if draw(st.booleans()):
        c["agent"] = draw(person_ref(with_sex=False))
    if draw(st.booleans()):
        acc: dict[str, Any] = {"unit_name": draw(text), "accepted_at": draw(timestamps())}
        optional(draw, acc, "unit_credit_code", credit_codes())
        optional(draw, acc, "promised_completion_at", timestamps())
        c["acceptance"] = acc
    if draw(st.booleans()):
        comp: dict[str, Any] = {"completed_at": draw(timestamps()), "mailed": True}
        optional(draw, comp, "licence_number", text)
        optional(
            draw,
            comp,
            "licence_valid_until",
            st.dates(min_value=datetime(2020, 1, 1).date()).map(lambda d: d.isoformat()),
        )
        c["completion"] = comp
    materials = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "name": text,
                    "kind": st.sampled_from(
                        [
                            "MATERIAL_KIND_ORIGINAL",
                            "MATERIAL_KIND_COPY",
                            "MATERIAL_KIND_ELECTRONIC",
                            "MATERIAL_KIND_ELECTRONIC_LICENCE",
                        ]
                    ),
                },
                optional={
                    "sha256": st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
                    "copies": st.integers(1, 99),
                },
            ),
            max_size=4,
        )
    )
    if materials:
        c["materials"] = materials
    steps = draw(
        st.lists(
            st.fixed_dictionaries(
                {"name": text, "started_at": timestamps()},
                optional={"handler": text, "opinion": text},
            ),
            max_size=3,
        )
    )
    if steps:
        c["steps"] = steps
    return c


@st.composite
def persons(draw: st.DrawFn) -> dict[str, Any]:
    p = draw(person_ref())
    n = p["certificate_number"]
    if p["certificate_type"] == "CERTIFICATE_TYPE_RESIDENT_ID_CARD":
        # Guangzhou derives the birth date from the ID number; it must agree with it.
        p["birth_date"] = f"{n[6:10]}-{n[10:12]}-{n[12:14]}"
    # Zhongshan defaults a missing nationality to CHN, so a record always has one.
    p["nationality"] = draw(st.sampled_from(["CHN", "HKG", "USA"]))
    optional(draw, p, "address", text)
    optional(draw, p, "household_region", st.sampled_from(REGIONS))
    return p


@st.composite
def enterprises(draw: st.DrawFn) -> dict[str, Any]:
    e: dict[str, Any] = {"name": draw(text), "credit_code": draw(credit_codes())}
    optional(draw, e, "enterprise_type", text)
    optional(draw, e, "registered_region", st.sampled_from(REGIONS))
    optional(draw, e, "address", text)
    optional(draw, e, "phone", phones)
    if draw(st.booleans()):
        lr = draw(person_ref(with_sex=False))
        lr.pop("phone", None)
        e["legal_representative"] = lr
    return e


def _tour(ms: MappingSet, kind: str, record: dict[str, Any]) -> dict[str, Any]:
    zs = ms.from_canonical(f"zhongshan.{kind}", record).record
    sz = ms.translate(f"zhongshan.{kind}", f"shenzhen.{kind}", zs).record
    gz = ms.translate(f"shenzhen.{kind}", f"guangzhou.{kind}", sz).record
    back = ms.translate(f"guangzhou.{kind}", f"zhongshan.{kind}", gz).record
    assert back == zs
    return ms.to_canonical(f"zhongshan.{kind}", back).record


@settings(max_examples=150, deadline=None)
@given(cases())
def test_case_round_trip_three_cities(mapping_set: MappingSet, record: dict[str, Any]) -> None:
    assert _tour(mapping_set, "case", record) == record


@settings(max_examples=150, deadline=None)
@given(persons())
def test_person_round_trip_three_cities(mapping_set: MappingSet, record: dict[str, Any]) -> None:
    assert _tour(mapping_set, "person", record) == record


@settings(max_examples=150, deadline=None)
@given(enterprises())
def test_enterprise_round_trip_three_cities(
    mapping_set: MappingSet, record: dict[str, Any]
) -> None:
    assert _tour(mapping_set, "enterprise", record) == record
