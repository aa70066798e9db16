"""The audit signing key held in a hardware security module, through PKCS#11 (SoftHSM2 here,
Debian's package): generated in the token and never out of it, loaded from an RFC 7512 URI,
signing a serving gateway's checkpoints that verify with the public key like a file key's;
every wrong URI, PIN, token or key refused with a message naming it; a forked process and a
lost session sign again; a token that cannot sign counts a failed checkpoint."""

from __future__ import annotations

import base64
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pkcs11
import pytest
from pkcs11 import Attribute, ObjectClass

from gateway.app import Gateway
from gateway.audit import sort_checkpoints
from gateway.audit_pkcs11 import Pkcs11Signer, generate_pkcs11_key
from gateway.audit_signing import (
    Signer,
    SigningKeyError,
    load_public_keys,
    signature_problem,
)
from gateway.hsm import Pkcs11Uri, logged_in
from gateway.settings import ConfigError, load_settings
from gateway.store.checkpoints import stored_checkpoints

from .conftest import MODULE, PIN, TONGBAN, Hsm, append_audit_entries, make_settings, tongban


async def signing_gateway(tmp_path: Path, uri: str) -> Gateway:
    """A started gateway signing with the token's key ``uri`` when told to, delivering nothing."""
    gw = Gateway(
        make_settings(
            tmp_path,
            TONGBAN_AUDIT__SIGNING_KEY=uri,
            TONGBAN_AUDIT__CHECKPOINT_SECONDS="3600",
            TONGBAN_DELIVERY__ENABLED="false",
        )
    )
    await gw.start()
    return gw


def test_a_key_generated_in_the_token_never_leaves_it_and_signs_like_a_file_key(
    hsm: Hsm, tmp_path: Path
) -> None:
    uri = hsm.uri("audit-new")
    out = tongban("audit", "keys", "new", "--pkcs11", uri, "--public-file", str(tmp_path / "p"))
    assert out.returncode == 0, out.stderr
    assert "sensitive, not extractable" in out.stdout
    signer = Signer.load(uri)
    assert isinstance(signer, Pkcs11Signer)
    assert f"key id {signer.key_id}" in out.stdout
    assert list(load_public_keys([tmp_path / "p"])) == [signer.key_id]
    with hsm.session() as s:
        (private,) = s.get_objects(
            {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: "audit-new"}
        )
        assert private[Attribute.SENSITIVE]
        assert not private[Attribute.EXTRACTABLE]
        assert private[Attribute.SIGN]
        assert not private[Attribute.DECRYPT]
        with pytest.raises(pkcs11.PKCS11Error):  # the token will not hand its value out
            private[Attribute.VALUE]
    cp = signer.sign(7, "ab" * 32, 1_700_000_000.123)
    assert signature_problem(cp, load_public_keys([tmp_path / "p"])) == ""
    forged = cp.__class__(8, cp.hash, cp.ts, cp.key_id, cp.signature)
    assert "does not verify" in signature_problem(forged, {signer.key_id: signer.public_key})
    assert len(base64.b64decode(cp.signature)) == 64
    # `audit keys public` prints the same public key, from the token
    shown = tongban("audit", "keys", "public", TONGBAN_AUDIT__SIGNING_KEY=uri)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == (tmp_path / "p").read_text()
    assert f"key id {signer.key_id}" in shown.stderr
    # a second key under the same label is refused, and so is --pkcs11 without --public-file
    again = tongban("audit", "keys", "new", "--pkcs11", uri, "--public-file", str(tmp_path / "q"))
    assert again.returncode == 2
    assert "labelled 'audit-new' on token 'tongban' exists already" in again.stderr
    assert not (tmp_path / "q").exists()
    bare = tongban("audit", "keys", "new", "--pkcs11", uri)
    assert bare.returncode == 2
    assert "--public-file" in bare.stderr
    # SM2 keys are file keys: PKCS#11 3.0 defines no SM2 mechanism
    sm2 = tongban(
        "audit", "keys", "new", "--pkcs11", uri, "--public-file", str(tmp_path / "r"),
        "--algorithm", "sm2",
    )  # fmt: skip
    assert sm2.returncode == 2
    assert "--pkcs11 generates Ed25519 keys only" in sm2.stderr
    assert not (tmp_path / "r").exists()


async def test_a_serving_gateway_signs_its_checkpoints_in_the_token(
    hsm: Hsm, tmp_path: Path
) -> None:
    uri = hsm.uri("audit-serving")
    signer = generate_pkcs11_key(Pkcs11Uri.parse(uri))
    (tmp_path / "p").write_bytes(signer.public_pem())
    gw = await signing_gateway(tmp_path, uri)
    try:
        store = gw.services.store
        await append_audit_entries(store, 3)
        assert await gw.checkpoint() == "signed"
        await append_audit_entries(store, 2)
        assert await gw.checkpoint() == "signed"
        assert gw.services.metrics.audit_checkpoints.labels("signed")._value.get() == 2
    finally:
        await gw.stop(grace=0)
    cps = stored_checkpoints(store.engine)
    assert [(c.length, c.key_id) for c in cps] == [(3, signer.key_id), (5, signer.key_id)]
    found = sort_checkpoints(cps, load_public_keys([tmp_path / "p"]))
    assert found.problems == ()
    assert sorted(found.trusted) == [3, 5]
    store.dispose()


async def test_a_token_key_rotated_while_serving_signs_the_next_checkpoint_no_restart(
    hsm: Hsm, tmp_path: Path
) -> None:
    uri = hsm.uri("audit-rotating")
    old = generate_pkcs11_key(Pkcs11Uri.parse(uri))
    gw = await signing_gateway(tmp_path, uri)
    try:
        store = gw.services.store
        await append_audit_entries(store, 3)
        assert await gw.checkpoint() == "signed"
        # `tongban audit keys rotate`, in its own process, while the gateway serves.
        new_pem, old_pem = tmp_path / "new.pem", tmp_path / "old.pem"
        out = tongban(
            "audit", "keys", "rotate", "--pkcs11", uri,
            "--public-file", str(new_pem), "--retired-public-file", str(old_pem),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert f"the old key {old.key_id} is kept in the token as " in out.stdout
        assert list(load_public_keys([old_pem])) == [old.key_id]
        (new_id,) = load_public_keys([new_pem])
        assert new_id != old.key_id
        # The token: the new pair under the label, the old one under its retired label.
        with hsm.session() as s:
            for label, kid in (
                ("audit-rotating", new_id),
                (f"audit-rotating.retired-{old.key_id}", old.key_id),
            ):
                (private,) = s.get_objects(
                    {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label}
                )
                assert private[Attribute.SENSITIVE]
                assert not private[Attribute.EXTRACTABLE]
                public = Pkcs11Signer.open(Pkcs11Uri.parse(hsm.uri(label))).key_id
                assert public == kid
        await append_audit_entries(store, 2)
        # The next checkpoint is signed with the new key, after checking the old one's.
        assert await gw.checkpoint() == "signed"
        assert gw.services.metrics.audit_checkpoints.labels("signed")._value.get() == 2
    finally:
        await gw.stop(grace=0)
    cps = stored_checkpoints(store.engine)
    assert [(c.length, c.key_id) for c in cps] == [(3, old.key_id), (5, new_id)]
    found = sort_checkpoints(cps, load_public_keys([old_pem, new_pem]))
    assert found.problems == ()
    # The old signer, still open in this process, refuses to sign with what its label names
    # now: a key that changed under a signer is never taken for it.
    old._key = old._key_session = None  # as after a lost session: it searches by label again
    with pytest.raises(SigningKeyError, match="is no longer key"):
        old.sign(9, "ab" * 32, 1_700_000_000.0)
    # Rotating a key the token does not hold, or to a retired label that is taken, is refused.
    gone = tongban(
        "audit", "keys", "rotate", "--pkcs11", hsm.uri("audit-none"),
        "--public-file", str(tmp_path / "a"), "--retired-public-file", str(tmp_path / "b"),
    )  # fmt: skip
    assert gone.returncode == 2
    assert "no private key labelled 'audit-none'" in gone.stderr
    assert not (tmp_path / "a").exists()
    store.dispose()


def test_a_key_whose_label_the_token_will_not_change_is_not_rotated(
    hsm: Hsm, tmp_path: Path
) -> None:
    from pkcs11 import KeyType, Mechanism

    with hsm.session(rw=True) as s:  # a pair made elsewhere, its attributes read-only
        common = {
            Attribute.TOKEN: True,
            Attribute.LABEL: "audit-fixed",
            Attribute.MODIFIABLE: False,
        }
        params = s.create_domain_parameters(
            KeyType.EC_EDWARDS, {Attribute.EC_PARAMS: bytes.fromhex("06032b6570")}, local=True
        )
        params.generate_keypair(
            mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
            store=True,
            public_template={**common, Attribute.VERIFY: True},
            private_template={**common, Attribute.PRIVATE: True, Attribute.SIGN: True},
        )
    before = Signer.load(hsm.uri("audit-fixed")).key_id
    out = tongban(
        "audit", "keys", "rotate", "--pkcs11", hsm.uri("audit-fixed"),
        "--public-file", str(tmp_path / "a"), "--retired-public-file", str(tmp_path / "b"),
    )  # fmt: skip
    assert out.returncode == 2
    assert "would not relabel the key" in out.stderr
    # Nothing changed: the label names the same key, and no new pair was made.
    assert Signer.load(hsm.uri("audit-fixed")).key_id == before
    with hsm.session() as s:
        assert len(list(s.get_objects({Attribute.LABEL: "audit-fixed"}))) == 2
        assert not list(s.get_objects({Attribute.LABEL: f"audit-fixed.retired-{before}"}))
    assert not (tmp_path / "a").exists()


async def test_a_token_that_cannot_sign_counts_a_failed_checkpoint_and_serving_goes_on(
    hsm: Hsm, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = hsm.uri("audit-deleted")
    generate_pkcs11_key(Pkcs11Uri.parse(uri))
    gw = await signing_gateway(tmp_path, uri)
    try:
        await append_audit_entries(gw.services.store, 2)
        with hsm.session(rw=True) as s:  # an operator removes the key from the token
            for key in s.get_objects({Attribute.LABEL: "audit-deleted"}):
                key.destroy()
        assert await gw.checkpoint() == "failed"
        assert gw.services.metrics.audit_checkpoints.labels("failed")._value.get() == 1
        failed = [r for r in caplog.records if r.getMessage() == "audit checkpoint failed"]
        assert "no private key labelled 'audit-deleted'" in failed[-1].problem  # type: ignore[attr-defined]
    finally:
        await gw.stop(grace=0)
    assert stored_checkpoints(gw.services.store.engine) == []
    gw.services.store.dispose()


# `tongban serve --workers`: the library initialized and signing in a process that then forks
# (before any gRPC object exists, as serve forks), the child signing and the parent after it.
# In a fresh interpreter: forking pytest's process, whose earlier tests left gRPC's threads
# running, hung the child now and then (fork with other threads running is not what serve does).
_FORKED = """
import json, multiprocessing, sys
from gateway.audit_pkcs11 import Pkcs11Signer, signing_uri
signer = Pkcs11Signer.open(signing_uri(sys.argv[1]))
before = signer.sign(2, "cd" * 32, 1_700_000_001.0).signature
queue = multiprocessing.get_context("fork").SimpleQueue()
def child():
    try:
        queue.put(signer.sign(2, "cd" * 32, 1_700_000_001.0).signature)
    except Exception as exc:
        queue.put(repr(exc))
worker = multiprocessing.get_context("fork").Process(target=child)
worker.start()
worker.join(60)
got = queue.get() if worker.exitcode == 0 else None
after = signer.sign(3, "ef" * 32, 1_700_000_002.0).signature
print(json.dumps({"exitcode": worker.exitcode, "before": before, "child": got, "after": after}))
"""


def test_a_forked_worker_a_pickled_copy_and_a_lost_session_sign_again(hsm: Hsm) -> None:
    uri = hsm.uri("audit-fork")
    signer = generate_pkcs11_key(Pkcs11Uri.parse(uri))
    keys = {signer.key_id: signer.public_key}
    assert signature_problem(signer.sign(1, "ef" * 32, 1_700_000_000.0), keys) == ""
    run = subprocess.run(
        [sys.executable, "-c", _FORKED, uri],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    forked = json.loads(run.stdout)
    assert forked["exitcode"] == 0
    cp = signer.sign(2, "cd" * 32, 1_700_000_001.0)
    # Ed25519 is deterministic: the child and its parent used the same key as this process
    assert forked["child"] == forked["before"] == cp.signature
    # the parent still signing after the child's C_Initialize
    after = signer.sign(3, "ef" * 32, 1_700_000_002.0)
    assert forked["after"] == after.signature
    assert signature_problem(after, keys) == ""
    # the settings cross to the writer process pickled: the copy opens the token itself
    copy = pickle.loads(pickle.dumps(signer))
    assert copy.key_id == signer.key_id
    assert copy.sign(4, "ef" * 32, 1.0) == signer.sign(4, "ef" * 32, 1.0)
    # a session the token dropped (a network HSM restarted) is opened again
    logged_in(signer.uri).close()
    assert signature_problem(signer.sign(5, "ef" * 32, 1_700_000_003.0), keys) == ""


def test_settings_name_what_is_wrong_with_the_uri_the_pin_the_token_or_the_key(
    hsm: Hsm, tmp_path: Path
) -> None:
    generate_pkcs11_key(Pkcs11Uri.parse(hsm.uri("audit-settings")))
    loose = tmp_path / "loose-pin"
    loose.write_text(PIN)
    loose.chmod(0o644)
    module = f"module-path={MODULE}"
    cases = {
        hsm.uri("audit-settings").replace(f"{module}&", ""): "module-path=",
        hsm.uri("audit-settings", **{"module-path": "/nonexistent/lib.so"}): (
            "module-path /nonexistent/lib.so: no such file"
        ),
        hsm.uri("audit-settings").replace("token=tongban;", ""): "token=LABEL is required",
        hsm.uri("audit-settings").replace("object=audit-settings", "slot-id=1"): (
            "attribute 'slot-id' is not understood"
        ),
        hsm.uri("audit-settings").replace("object=", "type=public;object="): "type must be private",
        hsm.uri("audit-settings", **{"pin-value": PIN}): "pin-source or pin-value, not both",
        hsm.uri("audit-settings").replace("token=tongban", "token=elsewhere"): (
            "no token labelled 'elsewhere'"
        ),
        hsm.uri("audit-settings", **{"pin-source": str(loose)}): "readable by others",
        hsm.uri("nobody"): "no private key labelled 'nobody' on token 'tongban'",
        hsm.uri("audit-settings").replace("object=audit-settings", "id=%ff%00"): (
            "no private key with id ff00"
        ),
    }
    for uri, said in cases.items():
        with pytest.raises(ConfigError) as caught:
            make_settings(tmp_path, TONGBAN_AUDIT__SIGNING_KEY=uri)
        assert "signing_key" in str(caught.value), uri
        assert said in str(caught.value), (uri, str(caught.value))
        assert "0000" not in str(caught.value)  # a PIN in the URI is never repeated
    # a wrong PIN, in a process of its own (a login belongs to the process: this one is
    # logged in to the token already)
    wrong = hsm.uri("audit-settings", **{"pin-source": "", "pin-value": "0000"})
    shown = tongban("audit", "keys", "public", TONGBAN_AUDIT__SIGNING_KEY=wrong)
    assert shown.returncode == 2
    assert "signing_key: pkcs11: token 'tongban' refused the PIN" in shown.stderr
    assert "0000" not in shown.stderr
    # a URI in a config file is kept as written (paths there are relative to the file)
    config = tmp_path / "etc" / "tongban.toml"
    config.parent.mkdir()
    uri = hsm.uri("audit-settings")
    config.write_text(f'[audit]\nsigning_key = "{uri}"\n[store]\ndata_dir = "data"\n')
    settings = load_settings(config, env={})
    assert settings.audit.signing_key == uri
    assert isinstance(settings.audit.signer, Pkcs11Signer)
    assert settings.store.data_dir == config.parent / "data"
    with pytest.raises(SigningKeyError, match="names the new key"):
        generate_pkcs11_key(Pkcs11Uri.parse(uri.replace("object=audit-settings", "id=%01")))


def test_the_demo_signs_its_chain_in_the_token(hsm: Hsm, tmp_path: Path) -> None:
    uri = hsm.uri("audit-demo")
    signer = generate_pkcs11_key(Pkcs11Uri.parse(uri))
    demo = ["demo", "--cases", "4", "--no-progress", "--data-dir", str(tmp_path / "d")]
    run = subprocess.run(
        [*TONGBAN, *demo, "--audit-signing-key", uri],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"(Ed25519 checkpoint, key {signer.key_id}, in a PKCS#11 token)" in run.stdout
    assert not (tmp_path / "d" / "audit-signing.pem").exists()  # no development key made
    federated = tongban("demo", "--federated", "--audit-signing-key", uri)
    assert federated.returncode == 2
    assert "not --federated" in federated.stderr
