"""Personal data sealed at rest, on SQLite and on PostgreSQL: with ``store.keys_file`` no name,
ID number or note reaches the store in the clear, every reader (GetCase, WatchCases, delivery to
the handling city) gets it back in the clear, and ``tongban db reencrypt`` seals what was stored
before, or under an older key, without losing a concurrent change."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import grpc
import pytest
from sqlalchemy import text

from gateway.store.rekey import ReencryptIntent, sealed_counts
from gateway.store.sealing import Keyring, generate_key, key_id_of, write_keyring
from gateway.store.store import Store
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import common_pb2, records_pb2

from .conftest import ROOT, rich_error
from .test_case_exchange import SZ, ZS, ZS_CASE, Exchange, running_exchange, submit_req, wait_for

SZ_ACCEPTANCE = json.loads(
    (ROOT / "mappings/shenzhen/samples/case/04-case.json").read_text("utf-8")
)
NAME, ID_NUMBER, PHONE = ZS_CASE["SQRMC"], ZS_CASE["SQRZJHM"], ZS_CASE["SQRLXDH"]
NOTE = f"请{NAME}补充户口簿"


def new_keys(path: Path, **keys: str) -> Path:
    """A keys file whose last key is active."""
    write_keyring(path, list(keys)[-1], {k: (alg, generate_key(alg)) for k, alg in keys.items()})
    return path


def migrated(url: str) -> str:
    """``url``, migrated (a gateway migrates only its embedded SQLite store by itself)."""
    store = Store(url)
    store.migrate()
    store.dispose()
    return url


def stored(store: Store) -> tuple[list[str], list[str]]:
    """The raw canonical records and the non-empty notes, as the store holds them."""
    with store.engine.connect() as conn:
        records = [r[0] for r in conn.execute(text("SELECT canonical FROM cases ORDER BY seq"))]
        notes = [r[0] for r in conn.execute(text("SELECT note FROM events WHERE note <> ''"))]
    return records, notes


def delivered_to(ex: Exchange) -> list[dict]:
    rows = ex.sz._db.execute("SELECT payload FROM applied WHERE kind = 'case'").fetchall()
    return [json.loads(r[0]) for r in rows]


async def exchange_three_cases(ex: Exchange) -> str:
    """Zhongshan submits one case alone (prepared in the writer process) and two in a stream
    (prepared on the event loop); Shenzhen accepts the first with a note naming the applicant
    and its acceptance record. The first case's exchange id."""
    first = (await ex.stub.SubmitCase(submit_req("seal-1", ZS_CASE), metadata=ZS)).exchange_id

    async def stream():  # type: ignore[no-untyped-def]
        for i in (2, 3):
            rec = dict(ZS_CASE, SBLSH=f"442000-2026-90000{i}")
            yield cx.SubmitCasesRequest(case_request=submit_req(f"seal-{i}", rec))

    await ex.stub.SubmitCases(stream(), metadata=ZS)
    await wait_for(lambda: len(ex.sz.applied("case")) == 3)
    await ex.stub.ReportStatus(
        cx.ReportStatusRequest(
            request_id="seal-acc",
            exchange_id=first,
            status_code="ACCEPTED",
            note=NOTE,
            record=common_pb2.ForeignRecord(
                schema="shenzhen.case", json=json.dumps(SZ_ACCEPTANCE).encode()
            ),
        ),
        metadata=SZ,
    )
    return first


async def test_personal_data_is_sealed_in_the_store_and_read_in_the_clear(
    tmp_path: Path, db_url: str
) -> None:
    keys = new_keys(tmp_path / "keys.toml", k1="sm4-gcm")
    env = {"TONGBAN_STORE__URL": migrated(db_url), "TONGBAN_STORE__KEYS_FILE": str(keys)}
    async with running_exchange(tmp_path, **env) as ex:
        xid = await exchange_three_cases(ex)
        store = ex.gateway.services.store
        records, notes = stored(store)
        assert len(records) == 3
        assert len(notes) == 1
        for value in records + notes:
            assert key_id_of(value) == "k1"
            for secret in (NAME, ID_NUMBER, PHONE, "补充户口簿"):
                assert secret not in value
        # Shenzhen got each applicant in the clear, in its own schema.
        assert [p["record"]["applicant"]["name"] for p in delivered_to(ex)] == [NAME] * 3
        # Zhongshan reads the case, its acceptance (sealed again with the update) and the note.
        got = await ex.stub.GetCase(
            cx.GetCaseRequest(exchange_id=xid, schema="tongban.v1.Case"), metadata=ZS
        )
        case = got.case_view.canonical
        assert (case.applicant.name, case.applicant.certificate_number) == (NAME, ID_NUMBER)
        assert case.acceptance.unit_name == SZ_ACCEPTANCE["acceptance"]["unit"]["name"]
        assert [e.note for e in case.status_history if e.note] == [NOTE]
        watch = ex.stub.WatchCases(
            cx.WatchCasesRequest(from_beginning=True, exchange_id=xid), metadata=ZS
        )
        seen = [(await watch.read()).event for _ in range(3)]
        watch.cancel()
        assert [e.note for e in seen] == ["", "", NOTE]
        assert sealed_counts(store.engine) == {
            "cases.canonical": {"k1": 3},
            "events.note": {"k1": 1},
        }


async def test_reencrypt_seals_old_values_and_moves_them_to_the_active_key(
    tmp_path: Path, db_url: str
) -> None:
    # Cases exchanged before sealing was turned on: in the clear.
    async with running_exchange(tmp_path, TONGBAN_STORE__URL=migrated(db_url)) as ex:
        xid = await exchange_three_cases(ex)
    keys = new_keys(tmp_path / "keys.toml", k1="sm4-gcm")
    ring = Keyring.load(keys)
    store = Store(db_url, keyring=ring)
    store.start()
    try:
        assert sealed_counts(store.engine) == {"cases.canonical": {"": 3}, "events.note": {"": 1}}
        # Read in the clear as they are, before any re-encryption.
        case = await store.read(store.reader.case, xid)
        assert case is not None
        assert json.loads(case.canonical)["applicant"]["name"] == NAME
        # A step of 2 rows, then the rest: everything sealed with k1, audited.
        steps = [await store.write(ReencryptIntent("ops", "cases.canonical", 0, 2))]
        steps.append(await store.write(ReencryptIntent("ops", "cases.canonical", steps[0].last, 2)))
        steps.append(await store.write(ReencryptIntent("ops", "events.note", 0, 2)))
        assert [(s.read, s.sealed) for s in steps] == [(2, 2), (1, 1), (1, 1)]
        assert sealed_counts(store.engine) == {
            "cases.canonical": {"k1": 3},
            "events.note": {"k1": 1},
        }
        records, notes = stored(store)
        assert not any(NAME in v for v in records + notes)
        with store.engine.connect() as conn:
            details = conn.execute(
                text("SELECT detail FROM audit WHERE action = 'store.reencrypt' ORDER BY seq")
            ).scalars()
            assert list(details) == [
                "2 values of cases.canonical sealed with key k1",
                "1 values of cases.canonical sealed with key k1",
                "1 values of events.note sealed with key k1",
            ]
    finally:
        await store.stop()
    # A new key: k1 still opens, k2 seals; re-encryption moves everything to k2.
    write_keyring(
        keys, "k2", {**ring.entries(), "k2": ("aes-256-gcm", generate_key("aes-256-gcm"))}
    )
    store = Store(db_url, keyring=Keyring.load(keys))
    store.start()
    try:
        assert (await store.read(store.reader.events, xid))[-1].note == NOTE
        # A gateway changes a case's record between the step's read and its write: the step
        # leaves the newer value alone.
        first_seq = min(r.seq for r in store.reader.cases(["442000"], before_seq=None, limit=10))
        with store.engine.begin() as conn:
            conn.execute(
                text("UPDATE cases SET canonical = :v WHERE seq = :s"),
                {
                    "v": store.keyring.seal(b'{"case_number":"x"}', b"cases.canonical", xid),
                    "s": first_seq,
                },
            )
        step = await store.write(ReencryptIntent("ops", "cases.canonical", 0, 10))
        assert (step.read, step.sealed) == (3, 2)  # the changed one was sealed with k2 already
        await store.write(ReencryptIntent("ops", "events.note", 0, 10))
        assert sealed_counts(store.engine) == {
            "cases.canonical": {"k2": 3},
            "events.note": {"k2": 1},
        }
    finally:
        await store.stop()
    # A value sealed with a key the keyring lacks: the step stops there and names it.
    only_k3 = new_keys(tmp_path / "k3.toml", k3="aes-256-gcm")
    store = Store(db_url, keyring=Keyring.load(only_k3))
    store.start()
    try:
        step = await store.write(ReencryptIntent("ops", "cases.canonical", 0, 10))
        assert step.sealed == 0
        assert "key 'k2', which store.keys_file lacks" in step.problem
    finally:
        await store.stop()


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_a_gateway_without_the_key_shows_and_delivers_nothing_and_loses_nothing(
    tmp_path: Path, writer: str
) -> None:
    keys = new_keys(tmp_path / "keys.toml", k1="aes-256-gcm")
    held = {"TONGBAN_DELIVERY__ENABLED": "false", "TONGBAN_STORE__WRITER": writer}
    async with running_exchange(tmp_path, TONGBAN_STORE__KEYS_FILE=str(keys), **held) as ex:
        xid = (await ex.stub.SubmitCase(submit_req("k-1", ZS_CASE), metadata=ZS)).exchange_id
    other = new_keys(tmp_path / "other.toml", k9="aes-256-gcm")
    async with running_exchange(tmp_path, TONGBAN_STORE__KEYS_FILE=str(other)) as ex:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ex.stub.GetCase(cx.GetCaseRequest(exchange_id=xid), metadata=ZS)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert NAME not in (info.value.details() or "")
        # Its delivery waits in the outbox, saying why; Shenzhen was not called.
        store = ex.gateway.services.store

        def outbox() -> tuple[str, int, str]:
            with store.engine.connect() as conn:
                row = conn.execute(text("SELECT state, attempts, last_error FROM outbox")).one()
            return row.state, row.attempts, row.last_error

        await wait_for(lambda: outbox()[2] != "")
        state, attempts, error = outbox()
        assert (state, attempts) == ("pending", 0)
        assert error.startswith("SEALED: ")
        assert "'k1'" in error
        assert ex.sz.calls == 0


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_a_serving_gateway_reads_its_changed_keys_file_and_refuses_a_bad_one(
    tmp_path: Path, writer: str
) -> None:
    keys = new_keys(tmp_path / "keys.toml", k1="aes-256-gcm")
    held = {
        "TONGBAN_DELIVERY__ENABLED": "false",
        "TONGBAN_STORE__WRITER": writer,
        # the values sealed with each key are counted: no background walk moves them
        "TONGBAN_STORE__REENCRYPT_IN_BACKGROUND": "false",
    }
    async with running_exchange(tmp_path, TONGBAN_STORE__KEYS_FILE=str(keys), **held) as ex:
        store, registry = ex.gateway.services.store, ex.gateway.services.metrics.registry

        def reloads(outcome: str) -> float | None:
            return registry.get_sample_value(
                "tongban_store_keys_reloads_total", {"outcome": outcome}
            )

        async def submit(n: int) -> str:
            rec = dict(ZS_CASE, SBLSH=f"442000-2026-80000{n}")
            return (await ex.stub.SubmitCase(submit_req(f"r-{n}", rec), metadata=ZS)).exchange_id

        ids = [await submit(1)]
        # A key added and made active, as `tongban db keys new` does: sealed with from then on.
        entries = Keyring.load(keys).entries()
        write_keyring(keys, "k2", {**entries, "k2": ("sm4-gcm", generate_key("sm4-gcm"))})
        await wait_for(lambda: reloads("ok") == 1)
        ids.append(await submit(2))
        # A file that does not check out (a half-written edit): refused, the keys go on.
        keys.write_text('active = "k3"\n')
        await wait_for(lambda: reloads("rejected") == 1)
        ids.append(await submit(3))
        assert [key_id_of(r) for r in stored(store)[0]] == ["k1", "k2", "k2"]
        for xid in ids:
            got = await ex.stub.GetCase(
                cx.GetCaseRequest(exchange_id=xid, schema="tongban.v1.Case"), metadata=ZS
            )
            assert got.case_view.canonical.applicant.name == NAME
        assert reloads("ok") == 1


async def test_a_note_that_looks_sealed_is_refused(tmp_path: Path) -> None:
    """Without keys, a note stored as sent that looked like a sealed value would make its case
    unreadable (a read cannot tell it from one sealed with a key it lacks): refused, nothing
    written."""
    async with running_exchange(tmp_path, TONGBAN_DELIVERY__ENABLED="false") as ex:
        xid = (await ex.stub.SubmitCase(submit_req("n-1", ZS_CASE), metadata=ZS)).exchange_id
        forged = "enc1:k1:" + base64.b64encode(bytes(40)).decode()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ex.stub.ReportStatus(
                cx.ReportStatusRequest(
                    request_id="n-2", exchange_id=xid, status_code="ACCEPTED", note=forged
                ),
                metadata=SZ,
            )
        err = rich_error(info.value)
        assert (err["code"], err["fields"]) == (grpc.StatusCode.INVALID_ARGUMENT, ["note"])
        assert stored(ex.gateway.services.store)[1] == []
        got = await ex.stub.GetCase(cx.GetCaseRequest(exchange_id=xid), metadata=ZS)
        assert got.case_view.status == records_pb2.CASE_STATUS_SUBMITTED
