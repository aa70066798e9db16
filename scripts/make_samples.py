"""Write the golden samples under ``mappings/<city>/samples/`` from canonical records.

The canonical records below are the expected outputs. Each city's input is rendered by a small
hand-written function per city (independent of the mapping engine), so ``tongban mapping test``
compares the engine against a second implementation. Identity numbers and credit codes are
generated with valid check characters (python-stdnum); they belong to no real person or company.

Usage: python scripts/make_samples.py
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from stdnum.cn import ric, uscc

ROOT = Path(__file__).resolve().parent.parent / "mappings"
CST = timezone(timedelta(hours=8))


def id_number(region: str, birth: str, seq: int) -> str:
    """A GB 11643 number with a valid check character (odd seq: male)."""
    body = f"{region}{birth}{seq:03d}"
    return body + ric.calc_check_digit(body + "0")


def credit_code(region: str, org: str) -> str:
    """A GB 32100 code: 9 (registered with market regulation), 1 (enterprise), region, org code."""
    body = f"91{region}{org}"
    return body + uscc.calc_check_digit(body)


def ts(local: str) -> str:
    """Canonical UTC timestamp from a Beijing-time 'YYYY-MM-DD HH:MM:SS'."""
    dt = datetime.strptime(local, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CST)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


SHA = ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
       "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752",
       "fd61a03af4f77d870fc21e05e7e80678095c92d808cfb3b5c279ee04c74aca13"]

P1 = {"name": "陈嘉怡", "sex": "SEX_FEMALE", "birth_date": "1991-03-15",
      "certificate_type": "CERTIFICATE_TYPE_RESIDENT_ID_CARD",
      "certificate_number": id_number("440305", "19910315", 24), "nationality": "CHN",
      "phone": "13800138000", "address": "深圳市南山区科技园南区1栋", "household_region": "440305"}
P2 = {"name": "黄志强", "sex": "SEX_MALE", "birth_date": "1985-11-02",
      "certificate_type": "CERTIFICATE_TYPE_RESIDENT_ID_CARD",
      "certificate_number": id_number("442000", "19851102", 131), "nationality": "CHN",
      "phone": "13922334455", "address": "中山市石岐区孙文中路8号", "household_region": "442000"}
P3 = {"name": "李明", "sex": "SEX_MALE", "birth_date": "2000-07-30",
      "certificate_type": "CERTIFICATE_TYPE_RESIDENT_ID_CARD",
      "certificate_number": id_number("440106", "20000730", 57), "nationality": "CHN",
      "phone": "020-83335555", "address": "广州市天河区体育西路100号", "household_region": "440106"}
P4 = {"name": "WONG KA MING", "sex": "SEX_MALE", "birth_date": "1979-01-21",
      "certificate_type": "CERTIFICATE_TYPE_HK_MACAO_RESIDENT_TRAVEL_PERMIT",
      "certificate_number": "H60123456", "nationality": "CHN", "phone": "13711112222"}
P5 = {"name": "周小燕", "sex": "SEX_FEMALE", "birth_date": "1995-12-31",
      "certificate_type": "CERTIFICATE_TYPE_RESIDENT_ID_CARD",
      "certificate_number": id_number("442000", "19951231", 88), "nationality": "CHN",
      "household_region": "442000"}
PERSONS = [P1, P2, P3, P4, P5]

ENTERPRISES = [
    {"name": "中山市岐江智能制造有限公司", "credit_code": credit_code("442000", "MA4W7K2L3"),
     "enterprise_type": "有限责任公司", "legal_representative": {"name": P2["name"],
     "certificate_type": P2["certificate_type"], "certificate_number": P2["certificate_number"]},
     "registered_region": "442000", "address": "中山市火炬开发区江陵西路3号", "phone": "0760-88881234"},
    {"name": "深圳市前海云链科技有限公司", "credit_code": credit_code("440300", "MA5F8N1Q0"),
     "enterprise_type": "有限责任公司", "legal_representative": {"name": P1["name"],
     "certificate_type": P1["certificate_type"], "certificate_number": P1["certificate_number"]},
     "registered_region": "440300", "address": "深圳市前海深港合作区前湾一路1号", "phone": "0755-26661234"},
    {"name": "广州天河数字服务有限公司", "credit_code": credit_code("440106", "MA9Y3C5D1"),
     "enterprise_type": "有限责任公司", "legal_representative": {"name": P3["name"],
     "certificate_type": P3["certificate_type"], "certificate_number": P3["certificate_number"]},
     "registered_region": "440106", "address": "广州市天河区珠江新城华夏路10号"},
    {"name": "中山港澳贸易商行", "credit_code": credit_code("442000", "L22345678"),
     "enterprise_type": "个人独资企业", "legal_representative": {"name": P4["name"],
     "certificate_type": P4["certificate_type"], "certificate_number": P4["certificate_number"]},
     "registered_region": "442000"},
    {"name": "深圳市南山区社区服务中心", "credit_code": credit_code("440305", "MJ1234560"),
     "enterprise_type": "事业单位", "phone": "13800138000"},
]


def case(n: int, receiving: str, handling: str, applicant: dict[str, Any], status: str,
         **extra: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "case_number": f"{receiving}-2026-{n:06d}", "receiving_city": receiving,
        "handling_city": handling, "service_item_code": "11440300MB2C92137L4442111002000",
        "service_item_name": "个体工商户设立登记", "case_type": "CASE_TYPE_PROMISED",
        "handling_mode": "HANDLING_MODE_COLLECT_HERE_HANDLE_THERE",
        "applicant": {k: applicant[k] for k in ("name", "sex", "certificate_type",
                      "certificate_number", "phone", "address") if k in applicant},
        "channel": "SUBMISSION_CHANNEL_WINDOW", "applied_at": ts("2026-11-20 09:30:00"),
        "status": status,
    }
    c.update(extra)
    return c


ACCEPT = {"unit_name": "深圳市市场监督管理局", "unit_credit_code": credit_code("440300", "MB2C92137"),
          "clerk": "王芳", "accepted_at": ts("2026-11-21 10:00:05"),
          "promised_completion_at": ts("2026-11-28 17:30:00")}
CASES = [
    case(1, "442000", "440300", P1, "CASE_STATUS_SUBMITTED",
         materials=[{"name": "身份证复印件", "kind": "MATERIAL_KIND_COPY", "sha256": SHA[0],
                     "reference": "https://zs.example/m/1", "copies": 1},
                    {"name": "经营场所证明", "kind": "MATERIAL_KIND_ELECTRONIC", "sha256": SHA[1],
                     "reference": "https://zs.example/m/2", "copies": 1}]),
    case(2, "442000", "440300", P2, "CASE_STATUS_ACCEPTED", acceptance=ACCEPT,
         agent={"name": P5["name"], "certificate_type": P5["certificate_type"],
                "certificate_number": P5["certificate_number"], "phone": "13566667777"},
         channel="SUBMISSION_CHANNEL_MOBILE",
         steps=[{"name": "受理", "handler": "王芳", "opinion": "材料齐全，予以受理",
                 "started_at": ts("2026-11-21 09:00:00"), "ended_at": ts("2026-11-21 10:00:05")}]),
    case(3, "440300", "442000", P3, "CASE_STATUS_COMPLETED_APPROVED", acceptance=ACCEPT,
         case_type="CASE_TYPE_IMMEDIATE", handling_mode="HANDLING_MODE_FULLY_ONLINE",
         channel="SUBMISSION_CHANNEL_PC",
         steps=[{"name": "审核", "handler": "刘洋", "opinion": "同意",
                 "started_at": ts("2026-11-21 10:00:05"), "ended_at": ts("2026-11-22 15:20:00")},
                {"name": "决定", "handler": "赵静", "opinion": "准予登记",
                 "started_at": ts("2026-11-22 15:20:00"), "ended_at": ts("2026-11-23 11:00:00")}],
         completion={"completed_at": ts("2026-11-23 11:00:00"), "licence_name": "营业执照",
                     "licence_number": "92440300MA5GXXXX1", "licence_valid_until": "2031-11-22",
                     "issuing_unit": "深圳市市场监督管理局", "mailed": True},
         materials=[{"name": "申请书", "kind": "MATERIAL_KIND_ORIGINAL", "copies": 2}]),
    case(4, "440100", "440300", P4, "CASE_STATUS_SUPPLEMENT_REQUIRED", acceptance=ACCEPT,
         channel="SUBMISSION_CHANNEL_EXPRESS", remarks="请补充经营场所租赁合同",
         materials=[{"name": "港澳居民来往内地通行证", "kind": "MATERIAL_KIND_ELECTRONIC_LICENCE",
                     "sha256": SHA[2], "reference": "https://gz.example/lic/9"}]),
    case(5, "440300", "440100", P5, "CASE_STATUS_COMPLETED_DENIED", acceptance=ACCEPT,
         case_type="CASE_TYPE_OTHER", handling_mode="HANDLING_MODE_JOINT",
         channel="SUBMISSION_CHANNEL_OTHER",
         completion={"completed_at": ts("2026-11-24 16:45:30"), "issuing_unit": "广州市人力资源和社会保障局",
                     "mailed": False}),
]

# --------------------------------------------------------------------------- city renderers
ZS_CERT = {"CERTIFICATE_TYPE_RESIDENT_ID_CARD": "111", "CERTIFICATE_TYPE_HK_MACAO_RESIDENT_TRAVEL_PERMIT": "516"}
SZ_CERT = {"CERTIFICATE_TYPE_RESIDENT_ID_CARD": "ID_CARD", "CERTIFICATE_TYPE_HK_MACAO_RESIDENT_TRAVEL_PERMIT": "HKMO_PERMIT"}
GZ_CERT = {"CERTIFICATE_TYPE_RESIDENT_ID_CARD": "SFZ", "CERTIFICATE_TYPE_HK_MACAO_RESIDENT_TRAVEL_PERMIT": "GATXZ"}
ZS_SEX = {"SEX_MALE": "1", "SEX_FEMALE": "2"}
SZ_SEX = {"SEX_MALE": "MALE", "SEX_FEMALE": "FEMALE"}
GZ_SEX = {"SEX_MALE": "M", "SEX_FEMALE": "F"}
STATUS_ORDER = ["CASE_STATUS_SUBMITTED", "CASE_STATUS_RECEIVED", "CASE_STATUS_ACCEPTED",
                "CASE_STATUS_NOT_ACCEPTED", "CASE_STATUS_IN_PROGRESS",
                "CASE_STATUS_SUPPLEMENT_REQUIRED", "CASE_STATUS_COMPLETED_APPROVED",
                "CASE_STATUS_COMPLETED_DENIED", "CASE_STATUS_COMPLETED_RETURNED",
                "CASE_STATUS_WITHDRAWN"]
SZ_STATUS = ["SUBMITTED", "RECEIVED", "ACCEPTED", "REJECTED", "PROCESSING", "NEED_SUPPLEMENT",
             "APPROVED", "DENIED", "RETURNED", "WITHDRAWN"]
GZ_STATUS = [10, 20, 30, 31, 40, 41, 50, 51, 52, 90]
TYPES = ["CASE_TYPE_IMMEDIATE", "CASE_TYPE_PROMISED", "CASE_TYPE_OTHER"]
MODES = ["HANDLING_MODE_COLLECT_HERE_HANDLE_THERE", "HANDLING_MODE_FULLY_ONLINE", "HANDLING_MODE_JOINT"]
CHANNELS = ["SUBMISSION_CHANNEL_WINDOW", "SUBMISSION_CHANNEL_PC", "SUBMISSION_CHANNEL_MOBILE",
            "SUBMISSION_CHANNEL_EXPRESS", "SUBMISSION_CHANNEL_OTHER"]
KINDS = ["MATERIAL_KIND_ORIGINAL", "MATERIAL_KIND_COPY", "MATERIAL_KIND_ELECTRONIC",
         "MATERIAL_KIND_ELECTRONIC_LICENCE"]


def local(value: str, fmt: str) -> str:
    dt = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).astimezone(CST)
    return dt.strftime(fmt)


def iso(value: str) -> str:
    return local(value, "%Y-%m-%dT%H:%M:%S+08:00")


def put(d: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        d[key] = value


def zs_case(c: dict[str, Any]) -> dict[str, Any]:
    z = "%Y%m%d%H%M%S"
    a, g = c["applicant"], c.get("agent", {})
    acc, comp = c.get("acceptance", {}), c.get("completion", {})
    out: dict[str, Any] = {"SBLSH": c["case_number"], "SJD": c["receiving_city"], "BLD": c["handling_city"],
                           "SXBM": c["service_item_code"], "SXMC": c["service_item_name"],
                           "BJLX": str([1, 2, 9][TYPES.index(c["case_type"])]),
                           "TBMS": str(MODES.index(c["handling_mode"]) + 1),
                           "SQRMC": a["name"], "SQRXB": ZS_SEX[a["sex"]],
                           "SQRZJLX": ZS_CERT[a["certificate_type"]], "SQRZJHM": a["certificate_number"]}
    put(out, "SQRLXDH", a.get("phone"))
    put(out, "SQRDZ", a.get("address"))
    if g:
        out.update({"DLRMC": g["name"], "DLRZJLX": ZS_CERT[g["certificate_type"]],
                    "DLRZJHM": g["certificate_number"], "DLRLXDH": g["phone"]})
    out["SBLY"] = str([1, 2, 3, 4, 9][CHANNELS.index(c["channel"])])
    out["SQSJ"] = local(c["applied_at"], z)
    if acc:
        out.update({"SLBMMC": acc["unit_name"], "SLBMDM": acc["unit_credit_code"], "SLRXM": acc["clerk"],
                    "SLSJ": local(acc["accepted_at"], z), "CNBJSJ": local(acc["promised_completion_at"], z)})
    if comp:
        out["BJSJ"] = local(comp["completed_at"], z)
        put(out, "ZZMC", comp.get("licence_name"))
        put(out, "ZZBH", comp.get("licence_number"))
        if "licence_valid_until" in comp:
            out["ZZYXQ"] = comp["licence_valid_until"].replace("-", "")
        put(out, "FZDW", comp.get("issuing_unit"))
        out["SFYJ"] = "1" if comp.get("mailed") else "0"
    out["BJZT"] = f"{STATUS_ORDER.index(c['status']):02d}"
    put(out, "BZ", c.get("remarks"))
    if "materials" in c:
        out["CLXX"] = []
        for m in c["materials"]:
            item = {"CLMC": m["name"], "CLLX": str(KINDS.index(m["kind"]) + 1)}
            put(item, "CLHX", m.get("sha256"))
            put(item, "CLDZ", m.get("reference"))
            put(item, "FS", m.get("copies"))
            out["CLXX"].append(item)
    if "steps" in c:
        out["HJXX"] = [{"HJMC": s["name"], "BLR": s["handler"], "BLYJ": s["opinion"],
                        "KSSJ": local(s["started_at"], z), "JSSJ": local(s["ended_at"], z)} for s in c["steps"]]
    return out


def sz_ident(p: dict[str, Any]) -> dict[str, Any]:
    return {"type": SZ_CERT[p["certificate_type"]], "number": p["certificate_number"]}


def sz_case(c: dict[str, Any]) -> dict[str, Any]:
    a, g = c["applicant"], c.get("agent", {})
    acc, comp = c.get("acceptance", {}), c.get("completion", {})
    app: dict[str, Any] = {"name": a["name"], "gender": SZ_SEX[a["sex"]], "identity": sz_ident(a)}
    put(app, "mobile", a.get("phone"))
    put(app, "address", a.get("address"))
    out: dict[str, Any] = {"caseNo": c["case_number"], "receivingCity": c["receiving_city"],
                           "handlingCity": c["handling_city"],
                           "serviceItem": {"code": c["service_item_code"], "name": c["service_item_name"]},
                           "caseType": ["INSTANT", "COMMITTED", "OTHER"][TYPES.index(c["case_type"])],
                           "handlingMode": ["CROSS_CITY", "ONLINE", "JOINT"][MODES.index(c["handling_mode"])],
                           "applicant": app}
    if g:
        out["agent"] = {"name": g["name"], "identity": sz_ident(g), "mobile": g["phone"]}
    out["channel"] = ["COUNTER", "WEB", "APP", "POST", "OTHER"][CHANNELS.index(c["channel"])]
    out["appliedAt"] = iso(c["applied_at"])
    if acc:
        out["acceptance"] = {"unit": {"name": acc["unit_name"], "creditCode": acc["unit_credit_code"]},
                             "clerk": acc["clerk"], "acceptedAt": iso(acc["accepted_at"]),
                             "promisedBy": iso(acc["promised_completion_at"])}
    if "steps" in c:
        out["steps"] = [{"name": s["name"], "handler": s["handler"], "opinion": s["opinion"],
                         "startedAt": iso(s["started_at"]), "endedAt": iso(s["ended_at"])} for s in c["steps"]]
    if comp:
        cp: dict[str, Any] = {"completedAt": iso(comp["completed_at"])}
        lic: dict[str, Any] = {}
        put(lic, "name", comp.get("licence_name"))
        put(lic, "number", comp.get("licence_number"))
        put(lic, "validUntil", comp.get("licence_valid_until"))
        if lic:
            cp["licence"] = lic
        put(cp, "issuer", comp.get("issuing_unit"))
        cp["mailed"] = comp.get("mailed", False)
        out["completion"] = cp
    if "materials" in c:
        out["materials"] = []
        for m in c["materials"]:
            item = {"title": m["name"], "type": ["ORIGINAL", "COPY", "SCAN", "E_LICENCE"][KINDS.index(m["kind"])]}
            put(item, "sha256", m.get("sha256"))
            put(item, "url", m.get("reference"))
            put(item, "copies", m.get("copies"))
            out["materials"].append(item)
    out["status"] = SZ_STATUS[STATUS_ORDER.index(c["status"])]
    put(out, "remark", c.get("remarks"))
    return out


def gz_case(c: dict[str, Any]) -> dict[str, Any]:
    z = "%Y-%m-%d %H:%M:%S"
    a, g = c["applicant"], c.get("agent", {})
    acc, comp = c.get("acceptance", {}), c.get("completion", {})
    out: dict[str, Any] = {"case_id": c["case_number"], "accept_city_code": c["receiving_city"],
                           "handle_city_code": c["handling_city"], "item_code": c["service_item_code"],
                           "item_name": c["service_item_name"],
                           "case_kind": ["即办件", "承诺件", "其他"][TYPES.index(c["case_type"])],
                           "mode": ["代收代办", "全程网办", "多地联办"][MODES.index(c["handling_mode"])],
                           "applicant_name": a["name"], "applicant_sex": GZ_SEX[a["sex"]],
                           "applicant_cert_type": GZ_CERT[a["certificate_type"]],
                           "applicant_cert_no": a["certificate_number"]}
    put(out, "applicant_phone", a.get("phone"))
    put(out, "applicant_addr", a.get("address"))
    if g:
        out.update({"agent_name": g["name"], "agent_cert_type": GZ_CERT[g["certificate_type"]],
                    "agent_cert_no": g["certificate_number"], "agent_phone": g["phone"]})
    out["source"] = ["window", "web", "app", "post", "other"][CHANNELS.index(c["channel"])]
    out["apply_time"] = local(c["applied_at"], z)
    if acc:
        out.update({"accept_org": acc["unit_name"], "accept_org_uscc": acc["unit_credit_code"],
                    "accept_user": acc["clerk"], "accept_time": local(acc["accepted_at"], z),
                    "promise_time": local(acc["promised_completion_at"], z)})
    if comp:
        out["finish_time"] = local(comp["completed_at"], z)
        put(out, "cert_name", comp.get("licence_name"))
        put(out, "cert_no", comp.get("licence_number"))
        put(out, "cert_expiry", comp.get("licence_valid_until"))
        put(out, "issue_org", comp.get("issuing_unit"))
        out["is_mailed"] = 1 if comp.get("mailed") else 0
    if "materials" in c:
        out["materials"] = []
        for m in c["materials"]:
            item = {"material_name": m["name"],
                    "material_type": ["original", "copy", "electronic", "elicense"][KINDS.index(m["kind"])]}
            put(item, "hash", m.get("sha256"))
            put(item, "file_url", m.get("reference"))
            put(item, "count", m.get("copies"))
            out["materials"].append(item)
    if "steps" in c:
        out["process_steps"] = [{"step_name": s["name"], "operator": s["handler"], "comment": s["opinion"],
                                 "begin_time": local(s["started_at"], z), "finish_time": local(s["ended_at"], z)}
                                for s in c["steps"]]
    out["state"] = GZ_STATUS[STATUS_ORDER.index(c["status"])]
    put(out, "remark", c.get("remarks"))
    return out


def gz_case_expected(c: dict[str, Any]) -> dict[str, Any]:
    # Guangzhou derives the applicant's birth date from a resident ID number.
    out = json.loads(json.dumps(c))
    a = out["applicant"]
    if a["certificate_type"] == "CERTIFICATE_TYPE_RESIDENT_ID_CARD":
        n = a["certificate_number"]
        a["birth_date"] = f"{n[6:10]}-{n[10:12]}-{n[12:14]}"
    return out


def zs_person(p: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"XM": p["name"], "XB": ZS_SEX[p["sex"]], "CSRQ": p["birth_date"].replace("-", ""),
                           "ZJLX": ZS_CERT[p["certificate_type"]], "ZJHM": p["certificate_number"],
                           "GJ": p["nationality"]}
    put(out, "LXDH", p.get("phone"))
    put(out, "ZZ", p.get("address"))
    put(out, "HJDQH", p.get("household_region"))
    return out


def sz_person(p: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": p["name"], "gender": SZ_SEX[p["sex"]], "birthDate": p["birth_date"],
                           "identity": sz_ident(p), "nationality": p["nationality"]}
    contact: dict[str, Any] = {}
    put(contact, "mobile", p.get("phone"))
    put(contact, "address", p.get("address"))
    if contact:
        out["contact"] = contact
    put(out, "householdRegion", p.get("household_region"))
    return out


def gz_person(p: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"full_name": p["name"], "sex": GZ_SEX[p["sex"]],
                           "cert_type": GZ_CERT[p["certificate_type"]], "cert_no": p["certificate_number"],
                           "nationality": p["nationality"]}
    put(out, "phone", p.get("phone"))
    put(out, "address", p.get("address"))
    put(out, "hukou_region", p.get("household_region"))
    return out


def gz_person_expected(p: dict[str, Any]) -> dict[str, Any]:
    out = dict(p)
    if p["certificate_type"] != "CERTIFICATE_TYPE_RESIDENT_ID_CARD":
        del out["birth_date"]  # no birth-date field in Guangzhou, nothing to derive it from
    return out


def zs_ent(e: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"QYMC": e["name"], "TYSHXYDM": e["credit_code"], "QYLX": e["enterprise_type"]}
    lr = e.get("legal_representative")
    if lr:
        out.update({"FDDBRXM": lr["name"], "FDDBRZJLX": ZS_CERT[lr["certificate_type"]],
                    "FDDBRZJHM": lr["certificate_number"]})
    put(out, "ZCDQH", e.get("registered_region"))
    put(out, "ZCDZ", e.get("address"))
    put(out, "LXDH", e.get("phone"))
    return out


def sz_ent(e: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": e["name"], "uscc": e["credit_code"], "type": e["enterprise_type"]}
    lr = e.get("legal_representative")
    if lr:
        out["legalRepresentative"] = {"name": lr["name"], "identity": sz_ident(lr)}
    put(out, "region", e.get("registered_region"))
    put(out, "address", e.get("address"))
    put(out, "phone", e.get("phone"))
    return out


def gz_ent(e: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"ent_name": e["name"], "credit_code": e["credit_code"], "ent_type": e["enterprise_type"]}
    lr = e.get("legal_representative")
    if lr:
        out.update({"legal_person_name": lr["name"], "legal_person_cert_type": GZ_CERT[lr["certificate_type"]],
                    "legal_person_cert_no": lr["certificate_number"]})
    put(out, "reg_region", e.get("registered_region"))
    put(out, "reg_addr", e.get("address"))
    put(out, "contact_phone", e.get("phone"))
    return out


def same(x: dict[str, Any]) -> dict[str, Any]:
    return x


RENDER = {
    "zhongshan": {"case": (zs_case, same), "person": (zs_person, same), "enterprise": (zs_ent, same)},
    "shenzhen": {"case": (sz_case, same), "person": (sz_person, same), "enterprise": (sz_ent, same)},
    "guangzhou": {"case": (gz_case, gz_case_expected), "person": (gz_person, gz_person_expected),
                  "enterprise": (gz_ent, same)},
}
RECORDS = {"case": CASES, "person": PERSONS, "enterprise": ENTERPRISES}


def dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    for city, kinds in RENDER.items():
        for kind, (render, expect) in kinds.items():
            folder = ROOT / city / "samples" / kind
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.glob("[0-9][0-9]-*.json"):
                old.unlink()
            for i, record in enumerate(RECORDS[kind], start=1):
                dump(folder / f"{i:02d}-{kind}.json", render(record))
                dump(folder / f"{i:02d}-{kind}.canonical.json", expect(record))
    print("samples written under", ROOT)


if __name__ == "__main__":
    main()
