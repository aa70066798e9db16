"""The store's sealing keys wrapped by an AES key in a hardware security module (SoftHSM2 here):
the key generated in the token and never out of it, a keys file that holds no secret, a
serving gateway sealing and opening with the unwrapped keys (writer thread and process) and
reading the file again when a wrapped key is added; a wrapped key moved, relabelled or
wrapped by another key refused, with a message naming it; the keys unwrapped again."""

from __future__ import annotations

import base64
import tomllib
from pathlib import Path

import pkcs11
import pytest
from pkcs11 import Attribute, ObjectClass

from gateway.hsm import Pkcs11Uri, logged_in
from gateway.settings import ConfigError
from gateway.store.key_wrapping import generate_wrapping_key, wrapping_uri
from gateway.store.sealing import Keyring, KeyringError, generate_key, key_id_of, write_keyring
from tongban.v1 import case_exchange_pb2 as cx

from .conftest import Hsm, make_settings, tongban
from .test_case_exchange import ZS, ZS_CASE, running_exchange, submit_req, wait_for
from .test_sealing_at_rest import NAME, new_keys, stored


def the_file(path: Path) -> dict:
    return tomllib.loads(path.read_text("utf-8"))


def test_the_cli_wraps_a_keys_file_with_a_key_it_generates_in_the_token(
    hsm: Hsm, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.toml"
    assert tongban("db", "keys", "new", "--file", str(keys), "--id", "k1").returncode == 0
    plain = Keyring.load(keys).entries()
    uri = hsm.uri("kek-cli")
    done = tongban("db", "keys", "wrap", uri, "--generate", "--file", str(keys))
    assert done.returncode == 0, done.stderr
    assert "generated an AES-256 key" in done.stdout
    assert "holds no secret" in done.stdout
    # The file names the wrapping key and holds no secret; its keys unwrap to the same ones.
    data = the_file(keys)
    assert data["wrapping_key"] == uri
    assert set(data["keys"]["k1"]) == {"algorithm", "wrapped"}
    assert plain["k1"][1] not in keys.read_text("utf-8")
    ring = Keyring.load(keys)
    assert (ring.entries(), ring.wrapping) == (plain, uri)
    # The key in the token: AES-256, sensitive, not extractable, encrypt and decrypt only.
    with hsm.session() as session:
        (kek,) = session.get_objects({Attribute.LABEL: "kek-cli"})
        flags = (Attribute.SENSITIVE, Attribute.EXTRACTABLE, Attribute.ENCRYPT)
        flags += (Attribute.DECRYPT, Attribute.WRAP, Attribute.UNWRAP, Attribute.SIGN)
        assert (kek[Attribute.CLASS], kek.key_length) == (ObjectClass.SECRET_KEY, 256)
        assert [kek[f] for f in flags] == [True, False, True, True, False, False, False]
        with pytest.raises(pkcs11.AttributeSensitive):
            kek[Attribute.VALUE]
    # A new key goes into the file wrapped as well; status says where the keys are.
    added = tongban(
        "db", "keys", "new", "--file", str(keys), "--id", "k2", "--algorithm", "sm4-gcm"
    )
    assert added.returncode == 0, added.stderr
    assert "wrapped by" in added.stdout
    assert set(the_file(keys)["keys"]["k2"]) == {"algorithm", "wrapped"}
    env = {"TONGBAN_STORE__KEYS_FILE": str(keys), "TONGBAN_STORE__DATA_DIR": str(tmp_path / "d")}
    assert tongban("db", "upgrade", **env).returncode == 0
    status = tongban("db", "keys", "status", **env)
    assert status.returncode == 0, status.stderr
    assert f"keys in {keys}: wrapped by {uri}" in status.stdout
    # The label is taken: refused, the file as it was.
    before = keys.read_bytes()
    again = tongban("db", "keys", "wrap", uri, "--generate", "--file", str(keys))
    assert again.returncode == 1
    assert "exists already" in again.stderr
    assert keys.read_bytes() == before
    # Unwrapped again: the same secrets, in the clear.
    wrapped = Keyring.load(keys).entries()
    out = tongban("db", "keys", "unwrap", "--file", str(keys))
    assert out.returncode == 0, out.stderr
    assert "in the clear" in out.stdout
    assert "wrapping_key" not in the_file(keys)
    assert (Keyring.load(keys).entries(), Keyring.load(keys).wrapping) == (wrapped, None)


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_a_gateway_seals_with_wrapped_keys_and_reads_a_wrapped_key_added(
    hsm: Hsm, tmp_path: Path, writer: str
) -> None:
    uri = hsm.uri(f"kek-serve-{writer}")
    generate_wrapping_key(wrapping_uri(uri))
    keys = tmp_path / "keys.toml"
    write_keyring(keys, "k1", {"k1": ("aes-256-gcm", generate_key("aes-256-gcm"))}, uri)
    held = {
        "TONGBAN_DELIVERY__ENABLED": "false",
        "TONGBAN_STORE__WRITER": writer,
        # the values sealed with each key are counted: no background walk moves them
        "TONGBAN_STORE__REENCRYPT_IN_BACKGROUND": "false",
    }
    async with running_exchange(tmp_path, TONGBAN_STORE__KEYS_FILE=str(keys), **held) as ex:
        store, registry = ex.gateway.services.store, ex.gateway.services.metrics.registry

        async def submit(n: int) -> str:
            rec = dict(ZS_CASE, SBLSH=f"442000-2026-81000{n}")
            return (await ex.stub.SubmitCase(submit_req(f"w-{n}", rec), metadata=ZS)).exchange_id

        ids = [await submit(1)]
        # A key added by `tongban db keys new` on the wrapped file: unwrapped and sealed with.
        entries = Keyring.load(keys).entries()
        write_keyring(keys, "k2", {**entries, "k2": ("sm4-gcm", generate_key("sm4-gcm"))}, uri)
        await wait_for(
            lambda: (
                registry.get_sample_value("tongban_store_keys_reloads_total", {"outcome": "ok"})
                == 1
            )
        )
        ids.append(await submit(2))
        records = stored(store)[0]
        assert [key_id_of(r) for r in records] == ["k1", "k2"]
        assert all(NAME not in r for r in records)
        for xid in ids:
            got = await ex.stub.GetCase(
                cx.GetCaseRequest(exchange_id=xid, schema="tongban.v1.Case"), metadata=ZS
            )
            assert got.case_view.canonical.applicant.name == NAME


def test_wrapped_keys_that_do_not_open_and_wrong_wrapping_keys_are_refused(
    hsm: Hsm, tmp_path: Path
) -> None:
    uri = hsm.uri("kek-refusals")
    generate_wrapping_key(wrapping_uri(uri))
    other = hsm.uri("kek-other")
    generate_wrapping_key(wrapping_uri(other))
    keys = new_keys(tmp_path / "plain.toml", k1="aes-256-gcm", k2="sm4-gcm")
    write_keyring(keys, "k2", Keyring.load(keys).entries(), uri)
    good = the_file(keys)

    def refused(data: dict, said: str) -> None:
        with pytest.raises(KeyringError) as caught:
            Keyring.parse(data, "keys.toml")
        assert said in str(caught.value), str(caught.value)

    k1, k2 = good["keys"]["k1"], good["keys"]["k2"]
    # k1's wrapped key moved under k2's id (algorithm made to match): it does not open there.
    refused(
        {**good, "keys": {"k1": k1, "k2": {**k1}}, "active": "k2"},
        "keys.k2.wrapped: does not open with the secret key",
    )
    # relabelled with another cipher
    refused({**good, "keys": {"k1": {**k1, "algorithm": "sm4-gcm"}, "k2": k2}}, "keys.k1.wrapped")
    # one byte altered
    blob = bytearray(base64.b64decode(k1["wrapped"]))
    blob[20] ^= 1
    altered = {"algorithm": k1["algorithm"], "wrapped": base64.b64encode(blob).decode()}
    refused({**good, "keys": {"k1": altered, "k2": k2}}, "keys.k1.wrapped: does not open")
    # wrapped by another key of the token
    refused({**good, "wrapping_key": other}, "keys.k1.wrapped: does not open")
    # a secret beside the wrapping key, or a wrapped key without one
    refused(
        {**good, "keys": {**good["keys"], "k3": {"algorithm": "aes-256-gcm", "secret": "AA=="}}},
        "keys.k3: needs exactly algorithm and wrapped (wrapping_key is set",
    )
    refused(
        {k: v for k, v in good.items() if k != "wrapping_key"}, "needs exactly algorithm and secret"
    )
    # wrapping keys that are not one
    refused(
        {**good, "wrapping_key": hsm.uri("kek-none")},
        "keys.toml: wrapping_key: pkcs11: no secret key labelled 'kek-none'",
    )
    refused({**good, "wrapping_key": "pkcs11:object=x"}, "wrapping_key: pkcs11 URI: token=")
    refused(
        {**good, "wrapping_key": uri.replace("object=", "type=private;object=")},
        "type must be secret-key",
    )
    refused({**good, "wrapping_key": "/etc/kek"}, "wrapping_key: not a PKCS#11 URI")
    # an audit signing key (an Ed25519 pair) is not a wrapping key
    from gateway.audit_pkcs11 import generate_pkcs11_key, signing_uri

    generate_pkcs11_key(signing_uri(hsm.uri("not-a-kek")))
    refused({**good, "wrapping_key": hsm.uri("not-a-kek")}, "no secret key labelled 'not-a-kek'")
    # The settings name the keys file; a good file loads.
    bad = tmp_path / "bad.toml"
    write_keyring(bad, "k2", Keyring.load(keys).entries(), uri)
    bad.write_text(bad.read_text("utf-8").replace("kek-refusals", "kek-none"), "utf-8")
    with pytest.raises(ConfigError, match=r"keys_file: .*: wrapping_key: pkcs11: no secret key"):
        make_settings(tmp_path, TONGBAN_STORE__KEYS_FILE=str(bad))
    ring = make_settings(tmp_path, TONGBAN_STORE__KEYS_FILE=str(keys)).store.keyring
    assert ring is not None
    assert (ring.active, ring.wrapping) == ("k2", uri)
    assert ring.wrapping_described() == Pkcs11Uri.parse(uri).redacted()
    # A login session the token dropped (a network HSM restarted): logged in again, unwrapped.
    logged_in(wrapping_uri(uri)).close()
    assert Keyring.load(keys).entries() == ring.entries()


def test_the_demo_seals_with_a_key_wrapped_in_the_token(hsm: Hsm, tmp_path: Path) -> None:
    uri = hsm.uri("kek-demo")
    generate_wrapping_key(wrapping_uri(uri))
    demo = ["demo", "--cases", "4", "--no-progress", "--data-dir", str(tmp_path / "d")]
    run = tongban(*demo, "--wrap-keys-with", uri)
    assert run.returncode == 0, run.stderr
    assert "4 case records and 8 notes sealed (sm4-gcm, key 'demo', wrapped by a key in a " in (
        run.stdout
    )
    assert "result: every case delivered once and completed" in run.stdout
    data = the_file(tmp_path / "d" / "keys.toml")
    assert (data["wrapping_key"], set(data["keys"]["demo"])) == (uri, {"algorithm", "wrapped"})
    federated = tongban(*demo, "--federated", "--wrap-keys-with", uri)
    assert federated.returncode == 2
    assert "--wrap-keys-with is for the hub demo" in federated.stderr
