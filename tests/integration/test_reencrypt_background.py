"""Re-encryption in the background, on SQLite and on PostgreSQL: a serving gateway seals what
was stored in the clear and moves what an older key sealed to the active one by itself, at its
start and after a new active key; it keeps its place across restarts and replicas, stops at a
value that does not open (saying which), and goes on once the keys file can open it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.cli import main as cli
from gateway.services.reencrypt import ReencryptService
from gateway.store.rekey import WalkIntent, reencrypt_progress, sealed_counts
from gateway.store.sealing import Keyring, generate_key, write_keyring
from gateway.store.store import Store

from .test_case_exchange import ZS, ZS_CASE, running_exchange, submit_req, wait_for
from .test_sealing_at_rest import exchange_three_cases, migrated, new_keys

IN_CLEAR = {"cases.canonical": {"": 3}, "events.note": {"": 1}}


def under(key: str) -> dict[str, dict[str, int]]:
    return {"cases.canonical": {key: 3}, "events.note": {key: 1}}


def audited(store: Store) -> list[tuple[str, str]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT actor, detail FROM audit WHERE action = 'store.reencrypt' ORDER BY seq")
        ).all()
    return [(r.actor, r.detail) for r in rows]


async def test_a_serving_gateway_seals_old_values_and_follows_a_new_key(
    tmp_path: Path, db_url: str
) -> None:
    # Three cases and a note exchanged before sealing was turned on: in the clear.
    async with running_exchange(tmp_path, TONGBAN_STORE__URL=migrated(db_url)) as ex:
        await exchange_three_cases(ex)
        assert sealed_counts(ex.gateway.services.store.engine) == IN_CLEAR
    keys = new_keys(tmp_path / "keys.toml", k1="sm4-gcm")
    env = {
        "TONGBAN_STORE__URL": db_url,
        "TONGBAN_STORE__KEYS_FILE": str(keys),
        "TONGBAN_STORE__REENCRYPT_BATCH_ROWS": "2",  # several steps per column
        "TONGBAN_STORE__REENCRYPT_SETTLE_SECONDS": "0.3",
        "TONGBAN_DELIVERY__ENABLED": "false",
    }
    async with running_exchange(tmp_path, **env) as ex:
        services = ex.gateway.services
        store, registry = services.store, services.metrics.registry

        def sealed(column: str) -> float | None:
            return registry.get_sample_value(
                "tongban_store_reencrypted_values_total", {"column": column}
            )

        # At its start, without being asked: every value sealed with k1, each step audited.
        await wait_for(lambda: sealed_counts(store.engine) == under("k1"))
        await wait_for(lambda: all(p.done_at for p in reencrypt_progress(store.engine)))
        # (counted once the walk's last step is back from the writer: after its commit)
        await wait_for(lambda: (sealed("cases.canonical"), sealed("events.note")) == (3, 1))
        await wait_for(lambda: registry.get_sample_value("tongban_store_reencrypt_stopped") == 0)
        assert audited(store) == [
            ("gateway", "2 values of cases.canonical sealed with key k1"),
            ("gateway", "1 values of cases.canonical sealed with key k1"),
            ("gateway", "1 values of events.note sealed with key k1"),
        ]
        assert [
            (p.column, p.key_id, p.sealed, p.problem) for p in reencrypt_progress(store.engine)
        ] == [
            ("cases.canonical", "k1", 3, ""),
            ("events.note", "k1", 1, ""),
        ]
        # A new active key, as `tongban db keys new` writes it: read within a second, and
        # after the settling time every value moves to it.
        ring = Keyring.load(keys)
        write_keyring(
            keys, "k2", {**ring.entries(), "k2": ("aes-256-gcm", generate_key("aes-256-gcm"))}
        )
        await wait_for(lambda: sealed_counts(store.engine) == under("k2"))
        await wait_for(
            lambda: (
                [(p.key_id, p.sealed, bool(p.done_at)) for p in reencrypt_progress(store.engine)]
                == [("k2", 3, True), ("k2", 1, True)]
            )
        )
        await wait_for(lambda: (sealed("cases.canonical"), sealed("events.note")) == (6, 2))
        # What it sealed opens: the cases read back in the clear.
        assert len(audited(store)) == 6


async def test_the_walk_goes_on_where_it_was_and_replicas_share_it(
    tmp_path: Path, db_url: str
) -> None:
    async with running_exchange(tmp_path, TONGBAN_STORE__URL=migrated(db_url)) as ex:
        await exchange_three_cases(ex)
    ring = Keyring.load(new_keys(tmp_path / "keys.toml", k1="aes-256-gcm"))
    store = Store(db_url, keyring=ring)
    store.start()
    try:
        first = await store.write(WalkIntent("gateway", 2))
        assert (first.read, first.sealed, first.done) == (2, (("cases.canonical", 2),), False)
        assert sealed_counts(store.engine)["cases.canonical"] == {"": 1, "k1": 2}
    finally:
        await store.stop()
    # Two replicas (a restarted gateway and another) go on from the third case: no value is
    # read twice, and together they finish the walk.
    replicas = [Store(db_url, keyring=ring), Store(db_url, keyring=ring)]
    for r in replicas:
        r.start()
    try:
        steps = await asyncio.gather(*(r.write(WalkIntent("gateway", 2)) for r in replicas))
        steps += await asyncio.gather(*(r.write(WalkIntent("gateway", 2)) for r in replicas))
        assert sum(s.read for s in steps) == 2  # the third case and the note, once each
        assert sum(s.sealed_values for s in steps) == 2
        assert any(s.done for s in steps)
        assert sealed_counts(replicas[0].engine) == under("k1")
        done = await replicas[0].write(WalkIntent("gateway", 2))
        assert (done.read, done.sealed, done.done) == (0, (), True)  # nothing left: one read
    finally:
        for r in replicas:
            await r.stop()


async def test_a_value_that_does_not_open_stops_the_walk_until_the_keys_can_open_it(
    tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    k1 = new_keys(tmp_path / "k1.toml", k1="sm4-gcm")
    async with running_exchange(
        tmp_path, TONGBAN_STORE__URL=migrated(db_url), TONGBAN_STORE__KEYS_FILE=str(k1)
    ) as ex:
        await exchange_three_cases(ex)
        await wait_for(
            lambda: all(p.done_at for p in reencrypt_progress(ex.gateway.services.store.engine))
        )
    # A gateway given only a new key k9 (k1 left out of its file by mistake).
    keys = new_keys(tmp_path / "keys.toml", k9="aes-256-gcm")
    env = {
        "TONGBAN_STORE__URL": db_url,
        "TONGBAN_STORE__KEYS_FILE": str(keys),
        "TONGBAN_DELIVERY__ENABLED": "false",
    }
    async with running_exchange(tmp_path, **env) as ex:
        store, registry = ex.gateway.services.store, ex.gateway.services.metrics.registry
        await wait_for(lambda: registry.get_sample_value("tongban_store_reencrypt_stopped") == 1)
        canonical = reencrypt_progress(store.engine)[0]
        assert canonical.key_id == "k9"
        assert canonical.sealed == 0
        assert "key 'k1', which store.keys_file lacks" in canonical.problem
        assert canonical.problem.startswith("cases.canonical of case ")
        assert canonical.done_at is None
        assert sealed_counts(store.engine) == under("k1")  # nothing changed
        # What `tongban db keys status` tells the operator: the missing key, where the walk is.
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert cli(["db", "keys", "status"]) == 1
        shown = capsys.readouterr()
        assert "values are sealed with keys the keys file lacks: k1" in shown.err
        assert (
            "cases.canonical: background re-encryption to key k9 stopped at cases.canonical of "
            "case " in shown.out
        )
        assert "events.note: background re-encryption to key k1 done " in shown.out
        # The operator adds k1 back (k9 still active): the walk goes on and finishes.
        write_keyring(
            keys,
            "k9",
            {**Keyring.load(keys).entries(), **Keyring.load(k1).entries()},
        )
        await wait_for(lambda: sealed_counts(store.engine) == under("k9"))
        await wait_for(lambda: registry.get_sample_value("tongban_store_reencrypt_stopped") == 0)
        assert [p.problem for p in reencrypt_progress(store.engine)] == ["", ""]
        assert cli(["db", "keys", "status", "--json"]) == 0
        walk = json.loads(capsys.readouterr().out)["background_walk"]
        assert {c: (w["key"], w["sealed"], w["problem"]) for c, w in walk.items()} == {
            "cases.canonical": ("k9", 3, None),
            "events.note": ("k9", 1, None),
        }


async def test_the_walk_can_be_turned_off(tmp_path: Path) -> None:
    async with running_exchange(tmp_path) as ex:
        await exchange_three_cases(ex)
    keys = new_keys(tmp_path / "keys.toml", k1="sm4-gcm")
    env = {
        "TONGBAN_STORE__KEYS_FILE": str(keys),
        "TONGBAN_STORE__REENCRYPT_IN_BACKGROUND": "false",
    }
    async with running_exchange(tmp_path, **env) as ex:
        assert ex.gateway.services.reencrypt is None
        await asyncio.sleep(0.5)
        assert sealed_counts(ex.gateway.services.store.engine) == IN_CLEAR
        assert reencrypt_progress(ex.gateway.services.store.engine) == []


async def test_a_gateway_that_read_the_new_key_late_moves_what_it_sealed_since_the_walk(
    tmp_path: Path, db_url: str
) -> None:
    """The other gateways walked the store to k2 while this one still sealed with k1 (an old
    copy of the keys file): what it wrote after their walk ended is behind that walk. When it
    reads k2 at last, it goes on from where their walk ended, and only from there."""
    keys = new_keys(tmp_path / "keys.toml", k1="sm4-gcm")
    env = {
        "TONGBAN_STORE__URL": migrated(db_url),
        "TONGBAN_STORE__KEYS_FILE": str(keys),
        "TONGBAN_STORE__REENCRYPT_SETTLE_SECONDS": "0.2",
    }
    async with running_exchange(tmp_path, **env) as ex:
        store = ex.gateway.services.store
        await exchange_three_cases(ex)
        await wait_for(lambda: all(p.done_at for p in reencrypt_progress(store.engine)))
        # The other gateways (one Store here) have k2 and walk the store to it.
        k1 = Keyring.load(keys)
        k2 = write_keyring(
            tmp_path / "others.toml",
            "k2",
            {**k1.entries(), "k2": ("aes-256-gcm", generate_key("aes-256-gcm"))},
        )
        others = Store(db_url, keyring=k2)
        others.start()
        try:
            step, _ = await ReencryptService(others).walk()
            assert step.done
            assert sealed_counts(store.engine) == under("k2")
            ended = {p.column: p.last_seq for p in reencrypt_progress(store.engine)}
        finally:
            await others.stop()
        # This gateway, still on k1, takes one more case.
        late = dict(ZS_CASE, SBLSH="442000-2026-900009")
        await ex.stub.SubmitCase(submit_req("seal-late", late), metadata=ZS)
        assert sealed_counts(store.engine)["cases.canonical"] == {"k1": 1, "k2": 3}
        # Its keys file gets k2 at last: it walks on from where the others' walk ended.
        write_keyring(keys, "k2", k2.entries())
        await wait_for(
            lambda: sealed_counts(store.engine)["cases.canonical"] == {"k2": 4}, timeout=15
        )
        tail = {p.column: p for p in reencrypt_progress(store.engine)}
        await wait_for(lambda: all(p.done_at for p in reencrypt_progress(store.engine)))
        assert tail["cases.canonical"].last_seq > ended["cases.canonical"]
        # Only the late case was read again: the audit says one value, not the store's four.
        assert audited(store)[-1] == ("gateway", "1 values of cases.canonical sealed with key k2")
