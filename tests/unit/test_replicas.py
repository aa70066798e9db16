"""What replicas sharing a store compare (gateway.services.replicas), and the mapping folder's
digest it uses (adapters.mapping.registry.files_digest)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adapters.mapping import MappingSet
from adapters.mapping.registry import files_digest
from gateway.services.replicas import (
    AGREED,
    INBOXES,
    Replica,
    agreed_settings,
    differences,
    disagreements,
    inboxes_of,
    key_check_value,
    parse_settings,
)
from gateway.settings import Settings, load_settings
from gateway.store.sealing import Keyring, generate_key

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mappings() -> MappingSet:
    return MappingSet.load(ROOT / "mappings")


#: Two partners: Zhongshan submits; Shenzhen receives through a gRPC inbox.
PARTNERS = {
    "TONGBAN_PARTNERS__ZS__CITY": "442000",
    "TONGBAN_PARTNERS__SZ__CITY": "440300",
    "TONGBAN_PARTNERS__SZ__INBOX__TRANSPORT": "grpc",
    "TONGBAN_PARTNERS__SZ__INBOX__TARGET": "sz.example:443",
}


def _settings(**env: str) -> Settings:
    return load_settings(None, env={**PARTNERS, **env})


def _keyring(active: str, **keys: str) -> Keyring:
    return Keyring.parse(
        {
            "active": active,
            "keys": {k: {"algorithm": "sm4-gcm", "secret": v} for k, v in keys.items()},
        }
    )


def test_the_settings_name_the_hash_function_keys_and_mapping_versions(
    mappings: MappingSet,
) -> None:
    one, two = generate_key("sm4-gcm"), generate_key("sm4-gcm")
    keyring = _keyring("k2", k1=one, k2=two)
    sm3 = _settings(TONGBAN_AUDIT__HASH_ALGORITHM="sm3")
    got = agreed_settings(sm3, keyring, mappings)
    assert tuple(got) == AGREED
    assert got["audit.hash_algorithm"] == "sm3"
    k1, k2 = (key_check_value(keyring.keys[k].secret) for k in ("k1", "k2"))
    assert got["store.keys"] == f"k2 active; k1 {k1}, k2 {k2}"
    assert len(k1) == 6
    assert k1 != k2
    assert got["mappings"].startswith(f"files {mappings.digest[:12]}: ")
    assert "zhongshan.case@" in got["mappings"]
    assert agreed_settings(_settings(), None, mappings)["store.keys"] == (
        "none (personal data in the clear)"
    )
    # Another secret under the same id, or another active key, reads otherwise.
    assert agreed_settings(sm3, _keyring("k2", k1=one, k2=one), mappings) != got
    assert agreed_settings(sm3, _keyring("k1", k1=one, k2=two), mappings) != got
    assert agreed_settings(sm3, _keyring("k2", k1=one, k2=two), mappings) == got


def test_the_partners_and_retention_read_as_replicas_must_share_them(
    mappings: MappingSet,
) -> None:
    got = agreed_settings(_settings(), None, mappings)
    assert got["partners"].endswith(": sz 440300 grpc, zs 442000")
    assert got["partners"].startswith("digest ")
    assert got["retention"] == (
        "requests 30, delivered 30, closed cases 0, audit 0 (days; 0: kept)"
    )

    def partners(**env: str) -> str:
        return agreed_settings(_settings(**env), None, mappings)["partners"]

    # What routes cases or decides calls reads otherwise, named or not ...
    for env in (
        {"TONGBAN_PARTNERS__GZ__CITY": "440100"},  # one more partner
        {"TONGBAN_PARTNERS__SZ__INBOX__TARGET": "sz2.example:443"},
        {"TONGBAN_PARTNERS__ZS__ACL__TARGET_CITIES": '["440300"]'},
        {"TONGBAN_PARTNERS__ZS__OPERATOR": "true"},
        {"TONGBAN_PARTNERS__SZ__MAX_IN_FLIGHT_TOTAL": "4"},
        {"TONGBAN_AUTH__MODE": "none"},
    ):
        assert partners(**env) != got["partners"], env
    # ... what each process tunes for itself, or keeps in its own files, does not.
    for env in (
        {"TONGBAN_PARTNERS__SZ__MAX_IN_FLIGHT": "2"},
        {"TONGBAN_PARTNERS__ZS__RATE_LIMIT__BURST": "10"},
        {"TONGBAN_PARTNERS__ZS__TOKEN": "another"},
        {"TONGBAN_PARTNERS__SZ__RETRY__MAX_ATTEMPTS": "3"},
    ):
        assert partners(**env) == got["partners"], env
    shorter = agreed_settings(_settings(TONGBAN_RETENTION__CLOSED_CASE_DAYS="90"), None, mappings)
    assert shorter["retention"] == (
        "requests 30, delivered 30, closed cases 90, audit 0 (days; 0: kept)"
    )


def test_differences_name_what_others_run_otherwise_and_skip_those_that_recorded_none() -> None:
    mine = {"audit.hash_algorithm": "sm3", "store.keys": "k1 active; k1 aaaaaa", "mappings": "m1"}
    others = [
        Replica("h1", 1, dict(mine)),
        Replica("h2", 2, {**mine, "audit.hash_algorithm": "sha256", "mappings": "m2"}),
        Replica("h3", 3, {**mine, "mappings": "m2"}),
        Replica("h4", 4, {}),  # a gateway before 0011
    ]
    assert differences(mine, others) == {
        "audit.hash_algorithm": ["sha256 at h2 pid 2"],
        "mappings": ["m2 at h2 pid 2", "m2 at h3 pid 3"],
    }
    assert differences(mine, others[:1] + others[3:]) == {}
    everyone = [Replica("h0", 9, mine), *others]
    assert disagreements(everyone) == {
        "audit.hash_algorithm": ["sm3 at h0 pid 9, h1 pid 1, h3 pid 3", "sha256 at h2 pid 2"],
        "mappings": ["m1 at h0 pid 9, h1 pid 1", "m2 at h2 pid 2, h3 pid 3"],
    }
    assert disagreements(everyone[:2]) == {}


@pytest.mark.parametrize(
    "text",
    ["", "not json", "[1, 2]", '{"audit.hash_algorithm": 3}', '{"unknown": "x"}'],
)
def test_settings_that_do_not_read_are_left_out(text: str) -> None:
    assert parse_settings(text) == {}


def test_settings_read_back_as_written(mappings: MappingSet) -> None:
    mine = agreed_settings(_settings(), None, mappings)
    # As a heartbeat writes them: with the partners whose inboxes it knows, not compared.
    written = json.dumps({**mine, INBOXES: ["sz"]}, ensure_ascii=False)
    assert parse_settings(written) == mine
    assert inboxes_of(written) == {"sz"}


@pytest.mark.parametrize(
    "text", ["", "not json", "[1]", '{"inboxes": "sz"}', json.dumps(AGREED), '{"x": 1}']
)
def test_inboxes_that_do_not_read_are_none(text: str) -> None:
    assert inboxes_of(text) == frozenset()


def test_the_mapping_digest_follows_the_files_translations_come_from(tmp_path: Path) -> None:
    root = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", root)
    first = files_digest(root)
    assert first == MappingSet.load(root).digest == files_digest(ROOT / "mappings")
    # Golden samples and hidden files do not translate anything.
    sample = next((root / "zhongshan" / "samples").rglob("*.json"))
    sample.write_text(sample.read_text("utf-8") + "\n", "utf-8")
    (root / "zhongshan" / ".notes").write_text("x", "utf-8")
    assert files_digest(root) == first
    # A code list does, so does a file's name.
    codes = root / "zhongshan" / "codes" / "sex.yaml"
    codes.write_text(codes.read_text("utf-8") + "\n# edited\n", "utf-8")
    edited = files_digest(root)
    assert edited != first
    codes.rename(codes.with_name("sex2.yaml"))
    assert files_digest(root) not in (first, edited)
