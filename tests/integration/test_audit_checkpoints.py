"""Signed checkpoints of the audit chain: a chain rewritten with every hash computed again, or
cut short, verifies on its own but not against its checkpoints; checkpoints that are forged,
signed by another key or contradict each other are caught; a serving gateway signs the head
while the chain grows and when it stops. On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import pickle
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from gmssl.sm2 import CryptSM2
from google.protobuf import json_format
from sqlalchemy import delete, select, update

from gateway.app import Gateway
from gateway.audit import sort_checkpoints, verify_store_chain
from gateway.audit_signing import (
    ALGORITHMS,
    Checkpoint,
    CheckpointError,
    Signer,
    SigningKeyError,
    generate_signing_key,
    load_public_keys,
    read_checkpoints,
)
from gateway.rpc.operations import checkpoints_from_response_json
from gateway.settings import ConfigError
from gateway.store.audit_archive import archive_audit, verify_archives
from gateway.store.backup import BackupError, backup_sqlite
from gateway.store.checkpoints import CheckpointIntent, sign_head, stored_checkpoints
from gateway.store.store import Store
from gateway.store.writer import AUDIT, AUDIT_CHECKPOINTS, AUDIT_HEAD, AuditEntry, audit_hash
from tongban.v1 import operations_pb2 as ops
from tongban.v1 import operations_pb2_grpc as ops_grpc

from .conftest import append_audit_entries, make_settings, rich_error, running_store


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    async with running_store(db_url) as s:
        yield s


@pytest.fixture(params=ALGORITHMS)
def signer(tmp_path: Path, request: pytest.FixtureRequest) -> Signer:
    return generate_signing_key(tmp_path / "audit.pem", request.param)[0]


def rewrite(store: Store, seq: int, actor: str) -> None:
    """What someone who can write to the store does to hide an edit: change entry ``seq`` and
    compute every hash after it again, and the head's."""
    with store.engine.begin() as conn:
        rows = conn.execute(select(AUDIT).order_by(AUDIT.c.seq)).all()
        prev = rows[0].prev_hash
        for row in rows:
            who = actor if row.seq == seq else row.actor
            e = AuditEntry(who, row.action, row.subject, row.outcome, row.detail)
            h = audit_hash(prev, row.seq, row.ts, e)
            conn.execute(
                update(AUDIT)
                .where(AUDIT.c.seq == row.seq)
                .values(actor=who, prev_hash=prev, hash=h)
            )
            prev = h
        conn.execute(update(AUDIT_HEAD).values(length=rows[-1].seq, hash=prev))


def cut(store: Store, keep: int) -> None:
    """Delete the entries after ``keep`` and make the head say so."""
    with store.engine.begin() as conn:
        last = conn.execute(select(AUDIT.c.hash).where(AUDIT.c.seq == keep)).scalar_one()
        conn.execute(delete(AUDIT).where(AUDIT.c.seq > keep))
        conn.execute(update(AUDIT_HEAD).values(length=keep, hash=last))


async def signing_gateway(tmp_path: Path, key: Path, seconds: float, **env: str) -> Gateway:
    """A started gateway signing with ``key`` every ``seconds``, delivering nothing (the
    entries the tests append are dead letters replayed to a partner it does not know)."""
    gw = Gateway(
        make_settings(
            tmp_path,
            TONGBAN_AUDIT__SIGNING_KEY=str(key),
            TONGBAN_AUDIT__CHECKPOINT_SECONDS=str(seconds),
            TONGBAN_DELIVERY__ENABLED="false",
            **env,
        )
    )
    await gw.start()
    return gw


def trusted(store: Store, signer: Signer) -> dict[int, Checkpoint]:
    found = sort_checkpoints(stored_checkpoints(store.engine), {signer.key_id: signer.public_key})
    assert found.problems == ()
    return found.trusted


async def test_a_rewritten_chain_verifies_alone_but_not_against_its_checkpoints(
    store: Store, signer: Signer
) -> None:
    keys = {signer.key_id: signer.public_key}
    assert await sign_head(store, signer, keys) == ("unchanged", 0, "")  # nothing to sign
    await append_audit_entries(store, 10, one_by_one=True)
    assert await sign_head(store, signer, keys) == ("signed", 10, "")
    assert await sign_head(store, signer, keys) == ("unchanged", 10, "")
    await append_audit_entries(store, 5, one_by_one=True)
    assert await sign_head(store, signer, keys) == ("signed", 15, "")
    signed = trusted(store, signer)
    assert sorted(signed) == [10, 15]
    assert verify_store_chain(store.reader, signed).ok

    rewrite(store, 3, "somebody-else")
    alone = verify_store_chain(store.reader)
    assert alone.ok  # every hash was computed again: the chain alone cannot tell
    report = verify_store_chain(store.reader, signed)
    assert not report.ok
    assert report.broken_seq == 10
    assert report.reason.startswith(
        f"rewritten: the chain up to here is not the one key {signer.key_id} signed at "
    )
    # A serving gateway finds it too, at its next checkpoint, and signs nothing.
    outcome, length, problem = await sign_head(store, signer, keys)
    assert (outcome, length) == ("broken", 15)
    assert problem.startswith("rewritten: entry 15 no longer ends the chain the last checkpoint")
    await append_audit_entries(store, 1)
    outcome, _, problem = await sign_head(store, signer, keys)
    assert outcome == "broken"
    assert "entry 15 no longer ends the chain" in problem
    assert sorted(trusted(store, signer)) == [10, 15]


async def test_a_chain_cut_short_is_shorter_than_what_was_signed(
    store: Store, signer: Signer
) -> None:
    keys = {signer.key_id: signer.public_key}
    await append_audit_entries(store, 8, one_by_one=True)
    await sign_head(store, signer, keys)
    cut(store, 6)
    assert verify_store_chain(store.reader).ok
    report = verify_store_chain(store.reader, trusted(store, signer))
    assert not report.ok
    assert report.broken_seq == 7
    assert report.reason.startswith(
        f"cut short: the chain holds 6 entries, but key {signer.key_id} signed 8 at "
    )
    outcome, _, problem = await sign_head(store, signer, keys)
    assert outcome == "broken"
    assert problem.startswith(
        "cut short: the chain holds 6 entries, fewer than the last checkpoint"
    )


async def test_an_entry_edited_without_its_hashes_is_signed_over_but_still_caught(
    store: Store, signer: Signer
) -> None:
    keys = {signer.key_id: signer.public_key}
    await append_audit_entries(store, 4, one_by_one=True)
    await sign_head(store, signer, keys)
    await append_audit_entries(store, 3, one_by_one=True)
    with store.engine.begin() as conn:  # entry 6 edited, without computing hashes again
        conn.execute(update(AUDIT).where(AUDIT.c.seq == 6).values(actor="somebody-else"))
    # The gateway checks only the last signed entry (entry 4 is as signed), and signs: the
    # checkpoint freezes the chain as it is, which the walk still finds broken at entry 6.
    assert await sign_head(store, signer, keys) == ("signed", 7, "")
    report = verify_store_chain(store.reader, trusted(store, signer))
    assert (report.ok, report.broken_seq) == (False, 6)
    assert report.reason == "content does not match its hash"


async def test_a_forged_last_checkpoint_stops_the_signing(store: Store, signer: Signer) -> None:
    keys = {signer.key_id: signer.public_key}
    await append_audit_entries(store, 2, one_by_one=True)
    length, head = store.reader.audit_head()
    with store.engine.begin() as conn:
        conn.execute(
            AUDIT_CHECKPOINTS.insert().values(
                length=length, hash=head, ts=1.0, key_id=signer.key_id, signature="AAAA"
            )
        )
    await append_audit_entries(store, 1)
    outcome, _, problem = await sign_head(store, signer, keys)
    assert outcome == "broken"
    assert problem.endswith(
        f"does not hold: its signature does not verify with key {signer.key_id}"
    )


async def test_forged_foreign_and_contradicting_checkpoints_are_problems(
    store: Store, signer: Signer, tmp_path: Path
) -> None:
    keys = {signer.key_id: signer.public_key}
    await append_audit_entries(store, 4, one_by_one=True)
    await sign_head(store, signer, keys)
    [real] = stored_checkpoints(store.engine)
    other = generate_signing_key(tmp_path / "other.pem")[0]
    forged = Checkpoint(real.length, real.hash, real.ts + 1, real.key_id, real.signature)
    foreign = other.sign(4, real.hash, real.ts)
    contradicting = signer.sign(4, "f" * 64, real.ts + 2)
    found = sort_checkpoints([real, forged, foreign, contradicting], keys)
    assert found.trusted == {4: real}
    assert len(found.problems) == 3
    assert found.problems[0].endswith(f"its signature does not verify with key {signer.key_id}")
    assert found.problems[1].endswith(f"signed by key {other.key_id}, which is not a trusted key")
    assert found.problems[2].startswith("two checkpoints of entries 1-4 hold different hashes")
    assert sort_checkpoints([real], {}).unchecked == 1  # no key given: nothing is trusted


async def test_the_writer_records_a_checkpoint_only_of_the_chain_it_holds(
    store: Store, signer: Signer
) -> None:
    await append_audit_entries(store, 3, one_by_one=True)
    length, head = store.reader.audit_head()
    cp = signer.sign(length, head, 1.0)
    fields = (cp.length, cp.hash, cp.ts, cp.key_id, cp.signature)
    assert await store.write(CheckpointIntent(*fields)) == "signed"
    assert await store.write(CheckpointIntent(*fields)) == "exists"
    wrong = signer.sign(2, "0" * 64, 1.0)
    assert (
        await store.write(
            CheckpointIntent(wrong.length, wrong.hash, wrong.ts, wrong.key_id, wrong.signature)
        )
        == "differs"
    )
    assert await store.write(CheckpointIntent(9, head, 1.0, cp.key_id, cp.signature)) == "gone"
    with store.engine.connect() as conn:
        assert conn.execute(select(AUDIT_CHECKPOINTS.c.length)).scalars().all() == [3]


async def test_checkpoints_of_archived_entries_are_checked_in_the_files(
    store: Store, signer: Signer, tmp_path: Path
) -> None:
    await append_audit_entries(store, 12, one_by_one=True)
    _length, head = store.reader.audit_head()
    files = await archive_audit(store, tmp_path / "a", 1e12, 5, "ops")
    assert files[-1].last == 12
    archived = (files[-1].last, files[-1].last_hash)
    recorded = {r.file: r.sha256 for r in store.reader.audit_archives()}
    good = signer.sign(12, head, 1.0)
    assert verify_archives(tmp_path / "a", archived, recorded, {12: good}).ok
    # A checkpoint of entry 7 the files contradict: the chain once ended differently there.
    other_past = signer.sign(7, "e" * 64, 1.0)
    report = verify_archives(tmp_path / "a", archived, recorded, {7: other_past})
    assert not report.ok
    assert report.problem.startswith("audit-000000000006.jsonl.gz: entry 7: rewritten")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_a_serving_gateway_signs_while_the_chain_grows_and_when_it_stops(
    tmp_path: Path, algorithm: str
) -> None:
    signer, _ = generate_signing_key(tmp_path / "audit.pem", algorithm)
    gw = await signing_gateway(tmp_path, tmp_path / "audit.pem", 3600)
    try:
        store = gw.services.store
        assert await gw.checkpoint() == "unchanged"  # an empty chain
        await append_audit_entries(store, 3)
        assert await gw.checkpoint() == "signed"
        assert await gw.checkpoint() == "unchanged"
        await append_audit_entries(store, 2)
        metrics = gw.services.metrics
        assert metrics.audit_checkpoints.labels("signed")._value.get() == 1
        assert metrics.audit_signed_length._value.get() == 3
    finally:
        await gw.stop(grace=0)
    cps = stored_checkpoints(store.engine)
    assert [(c.length, c.key_id) for c in cps] == [(3, signer.key_id), (5, signer.key_id)]
    found = sort_checkpoints(cps, load_public_keys([tmp_path / "audit.pem.pub"]))
    assert found.problems == ()
    assert sorted(found.trusted) == [3, 5]
    store.dispose()


async def test_a_serving_gateway_counts_a_broken_chain_and_signs_nothing(tmp_path: Path) -> None:
    generate_signing_key(tmp_path / "audit.pem")
    gw = await signing_gateway(tmp_path, tmp_path / "audit.pem", 3600)
    try:
        store = gw.services.store
        await append_audit_entries(store, 3, one_by_one=True)
        assert await gw.checkpoint() == "signed"
        rewrite(store, 2, "somebody-else")
        await append_audit_entries(store, 1)
        assert await gw.checkpoint() == "broken"
        assert gw.services.metrics.audit_checkpoints.labels("broken")._value.get() == 1
    finally:
        await gw.stop(grace=0)  # its last checkpoint is refused too
    assert [c.length for c in stored_checkpoints(store.engine)] == [3]
    assert gw.services.metrics.audit_checkpoints.labels("broken")._value.get() == 2
    store.dispose()


async def test_operators_list_the_checkpoints_over_grpc_and_verify_with_the_answer(
    tmp_path: Path,
) -> None:
    _, public = generate_signing_key(tmp_path / "audit.pem")
    gw = await signing_gateway(
        tmp_path,
        tmp_path / "audit.pem",
        3600,
        TONGBAN_AUTH__MODE="token",
        TONGBAN_PARTNERS__OPS__CITY="440000",
        TONGBAN_PARTNERS__OPS__TOKEN="t-ops",
        TONGBAN_PARTNERS__OPS__OPERATOR="true",
        TONGBAN_PARTNERS__ZHONGSHAN__CITY="442000",
        TONGBAN_PARTNERS__ZHONGSHAN__TOKEN="t-zs",
    )
    ops_meta = [("authorization", "Bearer t-ops")]
    try:
        store = gw.services.store
        for n in (3, 2, 1):
            await append_audit_entries(store, n)
            assert await gw.checkpoint() == "signed"
        async with grpc.aio.insecure_channel(gw.address) as ch:
            stub = ops_grpc.OperationsServiceStub(ch)
            first = await stub.ListAuditCheckpoints(
                ops.ListAuditCheckpointsRequest(page_size=2), metadata=ops_meta
            )
            assert [c.length for c in first.checkpoints] == [3, 5]
            assert first.next_page_token == "5"
            second = await stub.ListAuditCheckpoints(
                ops.ListAuditCheckpointsRequest(page_size=2, page_token=first.next_page_token),
                metadata=ops_meta,
            )
            assert [c.length for c in second.checkpoints] == [6]
            assert second.next_page_token == ""
            since = await stub.ListAuditCheckpoints(
                ops.ListAuditCheckpointsRequest(after_length=3), metadata=ops_meta
            )
            assert [c.length for c in since.checkpoints] == [5, 6]
            for request, meta, code, field in (
                (ops.ListAuditCheckpointsRequest(), [("authorization", "Bearer t-zs")],
                 grpc.StatusCode.PERMISSION_DENIED, None),
                (ops.ListAuditCheckpointsRequest(page_size=-1), ops_meta,
                 grpc.StatusCode.INVALID_ARGUMENT, "page_size"),
                (ops.ListAuditCheckpointsRequest(page_token="x5"), ops_meta,
                 grpc.StatusCode.INVALID_ARGUMENT, "page_token"),
                (ops.ListAuditCheckpointsRequest(after_length=5, page_token="3"), ops_meta,
                 grpc.StatusCode.INVALID_ARGUMENT, "page_token"),
            ):  # fmt: skip
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.ListAuditCheckpoints(request, metadata=meta)
                assert err.value.code() == code
                if field:
                    assert rich_error(err.value)["fields"] == [field]
        stored = stored_checkpoints(store.engine)
    finally:
        await gw.stop(grace=0)
        store.dispose()
    # The answers as grpcurl prints them, one page after the other in one file: what an
    # auditor keeps, and checks with the public key alone.
    kept = tmp_path / "kept.json"
    kept.write_text("\n".join(json_format.MessageToJson(r) for r in (first, second)))
    got = read_checkpoints(kept, checkpoints_from_response_json)
    assert got == stored
    found = sort_checkpoints(got, load_public_keys([public]))
    assert found.problems == ()
    assert sorted(found.trusted) == [3, 5, 6]
    bad = tmp_path / "bad.json"
    bad.write_text('{"checkpoints": [{"length": "x"}]}')
    with pytest.raises(
        CheckpointError, match=r"bad\.json, line 1: not a ListAuditCheckpointsResponse"
    ):
        read_checkpoints(bad, checkpoints_from_response_json)


async def test_the_gateway_signs_every_interval_and_goes_on_with_a_key_rotated_in_place(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.pem"
    first, _ = generate_signing_key(path)
    gw = await signing_gateway(tmp_path, path, 0.1)
    store = gw.services.store

    async def signed_up_to(n: int) -> list[Checkpoint]:
        for _ in range(100):
            cps = stored_checkpoints(store.engine)
            if cps and cps[-1].length == n:
                return cps
            await asyncio.sleep(0.05)
        raise AssertionError(f"no checkpoint of {n} entries: {cps}")

    try:
        await append_audit_entries(store, 2)
        assert [c.key_id for c in await signed_up_to(2)] == [first.key_id]
        # The file replaced while serving, by an SM2 key: a move to GB/T 32918 signatures.
        second, _ = generate_signing_key(tmp_path / "next.pem", "sm2")
        os.replace(tmp_path / "next.pem", path)
        await append_audit_entries(store, 2)
        cps = await signed_up_to(4)
        # The old key's checkpoint still holds (the gateway kept its public half); the new
        # one signs from now on.
        assert [(c.length, c.key_id) for c in cps] == [(2, first.key_id), (4, second.key_id)]
        assert gw.services.metrics.audit_checkpoints.labels("broken")._value.get() == 0
    finally:
        await gw.stop(grace=0)
    store.dispose()


async def test_a_backup_is_kept_only_if_its_chain_holds_to_its_checkpoints(
    tmp_path: Path, signer: Signer
) -> None:
    keys = {signer.key_id: signer.public_key}
    db = tmp_path / "s.db"
    async with running_store(f"sqlite:///{db}") as store:
        await append_audit_entries(store, 5, one_by_one=True)
        await sign_head(store, signer, keys)
        report = backup_sqlite(db, tmp_path / "good.db", keys=keys)
        assert (report.audit_entries, report.checkpoints) == (5, 1)
        rewrite(store, 2, "somebody-else")
        with pytest.raises(BackupError, match="audit chain is broken at entry 5: rewritten"):
            backup_sqlite(db, tmp_path / "bad.db", keys=keys)
        assert not (tmp_path / "bad.db").exists()
        # Without the keys, the copy's chain alone checks out (what signing is for).
        assert backup_sqlite(db, tmp_path / "blind.db").checkpoints == 0
        store.dispose()


def test_a_signing_key_others_may_read_or_neither_ed25519_nor_sm2_is_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.pem"
    generate_signing_key(path)
    with pytest.raises(SigningKeyError, match="already exists"):
        generate_signing_key(path)
    path.chmod(0o640)
    with pytest.raises(ConfigError, match=r"audit: Value error, signing_key: .*readable by others"):
        make_settings(tmp_path, TONGBAN_AUDIT__SIGNING_KEY=str(path))
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ec_key.chmod(0o600)
    with pytest.raises(SigningKeyError, match="not an Ed25519 or SM2 key"):
        Signer.load(ec_key)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    junk.chmod(0o600)
    with pytest.raises(SigningKeyError, match="not an unencrypted PEM private key"):
        Signer.load(junk)
    with pytest.raises(SigningKeyError, match="not a PEM public key"):
        load_public_keys([junk])


def test_a_signer_crosses_to_the_writer_process_and_signs_the_same(signer: Signer) -> None:
    copy = pickle.loads(pickle.dumps(signer))
    assert (copy.key_id, copy.algorithm) == (signer.key_id, signer.algorithm)
    keys = {signer.key_id: signer.public_key}
    assert sort_checkpoints([copy.sign(1, "a" * 64, 2.0)], keys).problems == ()
    if signer.algorithm == "ed25519":  # deterministic; SM2 draws a nonce per signature
        assert copy.sign(1, "a" * 64, 2.0) == signer.sign(1, "a" * 64, 2.0)


def test_what_is_signed_is_the_documented_text_any_ed25519_library_checks(tmp_path: Path) -> None:
    signer = generate_signing_key(tmp_path / "audit.pem")[0]
    cp = signer.sign(42, "ab" * 32, 1_795_808_583.1604996)
    assert cp.ts == 1_795_808_583.16  # kept to the millisecond
    text = f"tongban-audit-checkpoint/1\n42\n{'ab' * 32}\n1795808583160\n".encode()
    public = serialization.load_pem_public_key((tmp_path / "audit.pem.pub").read_bytes())
    public.verify(base64.b64decode(cp.signature), text)  # type: ignore[union-attr, call-arg]
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert cp.key_id == hashlib.sha256(raw).hexdigest()[:16]
    # From JSON and back (tongban audit checkpoints --json), the signature still holds.
    again = Checkpoint.from_json(json.loads(json.dumps(cp.to_json())), "line 1")
    assert sort_checkpoints([again], {signer.key_id: signer.public_key}).trusted == {42: again}


def test_an_sm2_checkpoint_is_the_documented_text_openssl_and_gmssl_check(tmp_path: Path) -> None:
    """An SM2 checkpoint is checked by the openssl command, as docs/security.md shows, and by
    gmssl, an SM2 written apart from OpenSSL (its Z from the default identifier, the curve and
    the key, as GB/T 32918.2 defines it)."""
    signer = generate_signing_key(tmp_path / "audit.pem", "sm2")[0]
    cp = signer.sign(42, "ab" * 32, 1_795_808_583.1604996)
    text = f"tongban-audit-checkpoint/1\n42\n{'ab' * 32}\n1795808583160\n".encode()
    (tmp_path / "text").write_bytes(text)
    (tmp_path / "sig").write_bytes(base64.b64decode(cp.signature))

    def openssl_verify(text_file: Path) -> subprocess.CompletedProcess[str]:
        public, sig = str(tmp_path / "audit.pem.pub"), str(tmp_path / "sig")
        return subprocess.run(
            [
                *("openssl", "pkeyutl", "-verify", "-pubin", "-inkey", public, "-rawin"),
                *("-digest", "sm3", "-pkeyopt", "distid:1234567812345678"),
                *("-in", str(text_file), "-sigfile", sig),
            ],
            capture_output=True,
            text=True,
            check=False,
        )

    assert openssl_verify(tmp_path / "text").stdout.strip() == "Signature Verified Successfully"
    (tmp_path / "other").write_bytes(text.replace(b"\n42\n", b"\n43\n"))
    assert openssl_verify(tmp_path / "other").returncode != 0

    point = signer.public_key.point()  # type: ignore[union-attr]
    assert cp.key_id == hashlib.sha256(point).hexdigest()[:16]
    r, s = decode_dss_signature(base64.b64decode(cp.signature))
    gm = CryptSM2(private_key=None, public_key=point[1:].hex())
    assert gm.verify_with_sm3(f"{r:064x}{s:064x}", text)
    assert not gm.verify_with_sm3(f"{r:064x}{s:064x}", text + b"x")
    # From JSON and back, it still holds.
    again = Checkpoint.from_json(json.loads(json.dumps(cp.to_json())), "line 1")
    assert sort_checkpoints([again], {signer.key_id: signer.public_key}).trusted == {42: again}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("not json", "line 2: not JSON"),
        ('{"format": "other/1"}', "line 2: not a tongban-audit-checkpoint/1 object"),
        ('{"length": 1}', "line 2: not a tongban-audit-checkpoint/1 object"),
        ("[1, 2]", "line 2: not a tongban-audit-checkpoint/1 object"),
        ('{"format": "tongban-audit-checkpoint/1", "length": 0}', "length must be a positive"),
        ('{"format": "tongban-audit-checkpoint/1", "length": true}', "length must be a positive"),
        (
            '{"format": "tongban-audit-checkpoint/1", "length": 1, "hash": "' + "g" * 64 + '"}',
            "hash must be 64 hex digits",
        ),
        (
            '{"format": "tongban-audit-checkpoint/1", "length": 1, "hash": "' + "a" * 64 + '", '
            '"ts": NaN}',
            "ts must be Unix seconds",
        ),
        (
            '{"format": "tongban-audit-checkpoint/1", "length": 1, "hash": "' + "a" * 64 + '", '
            '"ts": 1e300}',
            "ts must be Unix seconds",
        ),
        (
            '{"format": "tongban-audit-checkpoint/1", "length": 1, "hash": "' + "a" * 64 + '", '
            '"ts": 1.5, "key_id": 7, "signature": ""}',
            "key_id and signature must be strings",
        ),
    ],
)
def test_a_malformed_file_of_checkpoints_is_refused_naming_the_line(
    tmp_path: Path, signer: Signer, line: str, problem: str
) -> None:
    good = json.dumps(signer.sign(1, "a" * 64, 1.0).to_json())
    path = tmp_path / "kept.jsonl"
    path.write_text(f"{good}\n{line}\n")
    with pytest.raises(CheckpointError) as err:
        read_checkpoints(path, checkpoints_from_response_json)
    assert str(err.value).startswith(f"{path}, line 2: ")
    assert problem in str(err.value)
