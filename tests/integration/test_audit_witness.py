"""Peer gateways witness each other's signed audit checkpoints (gateway/services/witness.py):
each keeps copies of the other's, out of reach of whoever can write to the other's store; a
gateway whose chain was rewritten below what a peer witnessed (with every hash computed again
and its own checkpoints deleted) stops signing at its next checkpoint, and the peer's copies
show the rewrite to `tongban audit verify`. Bad checkpoints get clear statuses. Two gateways
over mutual TLS, on SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from sqlalchemy import delete, func, select

from gateway.app import Gateway
from gateway.audit import sort_checkpoints, verify_store_chain
from gateway.audit_signing import Signer, generate_signing_key
from gateway.cli import main as cli
from gateway.demo import make_federation_pki
from gateway.services.witness import checkpoint_to_proto
from gateway.settings import ConfigError, load_settings
from gateway.store.checkpoints import stored_checkpoints
from gateway.store.store import Store
from gateway.store.witness import WitnessIntent, witnessed_checkpoints
from gateway.store.writer import AUDIT, AUDIT_CHECKPOINTS
from tongban.v1 import operations_pb2 as ops
from tongban.v1 import witness_pb2
from tongban.v1 import witness_pb2_grpc as witness_grpc

from .conftest import append_audit_entries, make_settings, rich_error, running_store
from .test_audit_checkpoints import rewrite
from .test_federation import _gateway_env, _secure, _stores, free_port

ZS, SZ = "zs-gateway", "sz-gateway"


@dataclass
class Pair:
    """Zhongshan's gateway and Shenzhen's, each signing its chain and witnessing the other's."""

    pki: Path
    zs: Gateway
    sz: Gateway
    zs_key: Signer
    sz_key: Signer


def _env(
    pki: Path, me: str, port: int, peer_port: int, key: Path, peer_pub: Path | None
) -> dict[str, str]:
    peer = SZ if me == ZS else ZS
    local = (
        ("zhongshan", "442000", free_port()) if me == ZS else ("shenzhen", "440300", free_port())
    )
    env = _gateway_env(pki, me, port, local, (peer, "440300" if me == ZS else "442000", peer_port))
    env |= {
        "TONGBAN_DELIVERY__ENABLED": "false",
        "TONGBAN_AUDIT__SIGNING_KEY": str(key),
        "TONGBAN_AUDIT__CHECKPOINT_SECONDS": "3600",  # the tests call checkpoint() themselves
    }
    if peer_pub is not None:
        env[f"TONGBAN_PARTNERS__{peer.upper()}__AUDIT_PUBLIC_KEYS"] = f'["{peer_pub}"]'
    return env


@contextlib.asynccontextmanager
async def _pair(
    tmp_path: Path, urls: dict[str, str], *, sz_holds_zs_key: bool = True
) -> AsyncIterator[Pair]:
    pki = make_federation_pki(tmp_path / "pki", ("zhongshan", "shenzhen"))
    # Zhongshan signs with SM2 (GB/T 32918.2), Shenzhen with Ed25519: each checks the other's.
    zs_key, zs_pub = generate_signing_key(tmp_path / "zs-audit.pem", "sm2")
    sz_key, sz_pub = generate_signing_key(tmp_path / "sz-audit.pem")
    zs_port, sz_port = free_port(), free_port()
    zs_env = _env(pki, ZS, zs_port, sz_port, tmp_path / "zs-audit.pem", sz_pub)
    sz_env = _env(
        pki, SZ, sz_port, zs_port, tmp_path / "sz-audit.pem", zs_pub if sz_holds_zs_key else None
    )
    for gw, env in ((ZS, zs_env), (SZ, sz_env)):
        if gw in urls:
            env["TONGBAN_STORE__URL"] = urls[gw]
    zs = Gateway(make_settings(tmp_path / "zs-gw", **zs_env))
    sz = Gateway(make_settings(tmp_path / "sz-gw", **sz_env))
    pair = Pair(pki, zs, sz, zs_key, sz_key)
    await sz.start()
    try:
        await zs.start()
        try:
            yield pair
        finally:
            await pair.zs.stop(grace=0)  # a test may have restarted it
    finally:
        await pair.sz.stop(grace=0)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def pair(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Pair]:
    with _stores(request.param) as urls:
        async with _pair(tmp_path, urls) as p:
            yield p


def _store(gw: Gateway) -> Store:
    return gw.services.store


def _count(gw: Gateway, name: str, **labels: str) -> float:
    value = gw.services.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def _held(gw: Gateway, peer: str) -> list[tuple[int, str]]:
    return [
        (w.checkpoint.length, w.checkpoint.hash)
        for w in witnessed_checkpoints(_store(gw).engine, peer)
    ]


async def test_each_gateway_keeps_the_others_checkpoints(pair: Pair) -> None:
    zs = _store(pair.zs)
    await append_audit_entries(zs, 5, one_by_one=True)
    assert await pair.zs.checkpoint() == "signed"
    signed = stored_checkpoints(zs.engine)
    assert [(cp.length, cp.hash) for cp in signed] == [(5, signed[0].hash)]
    # Shenzhen's gateway holds Zhongshan's checkpoint as signed, signature and all.
    held = witnessed_checkpoints(_store(pair.sz).engine, ZS)
    assert [w.checkpoint for w in held] == signed
    assert (
        _count(pair.zs, "tongban_audit_witness_handovers_total", peer=SZ, outcome="witnessed") == 1
    )
    assert _count(pair.zs, "tongban_audit_witnessed_length", peer=SZ) == 5
    assert _count(pair.sz, "tongban_audit_witnessed_total", peer=ZS, outcome="kept") == 1
    # Nothing new: the last checkpoint is handed over again, and is known there.
    assert await pair.zs.checkpoint() == "unchanged"
    assert _count(pair.zs, "tongban_audit_witness_handovers_total", peer=SZ, outcome="known") == 1
    await append_audit_entries(zs, 3, one_by_one=True)
    assert await pair.zs.checkpoint() == "signed"
    assert [n for n, _ in _held(pair.sz, ZS)] == [5, 8]
    # And the other way: Shenzhen's chain, witnessed by Zhongshan's gateway.
    await append_audit_entries(_store(pair.sz), 2, one_by_one=True)
    assert await pair.sz.checkpoint() == "signed"
    assert [n for n, _ in _held(pair.zs, SZ)] == [2]
    # Witnessing writes no audit entry (each chain would grow by the other's checkpoints).
    with zs.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(AUDIT)).scalar() == 8


async def test_a_stopping_gateway_does_not_hand_its_peer_what_it_answered_for_already(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    """Peers stop one after the other: the last to stop finds the other gone. With nothing new
    to sign since its peer answered for its last checkpoint, it does not call it (nor warn
    that it could not); a checkpoint the peer has not seen is handed over, and missed."""
    for gw in (pair.zs, pair.sz):
        await append_audit_entries(_store(gw), 2, one_by_one=True)
        assert await gw.checkpoint() == "signed"
    await pair.zs.stop(grace=0)
    with caplog.at_level(logging.WARNING, logger="tongban"):
        assert await pair.sz.checkpoint(timeout=1, stopping=True) == "unchanged"
    assert not [r for r in caplog.records if "does not witness" in r.getMessage()]
    assert _count(pair.sz, "tongban_audit_witness_handovers_total", peer=ZS, outcome="failed") == 0
    # The chain grew: its new checkpoint goes to the peer, which is gone, and that is said.
    await append_audit_entries(_store(pair.sz), 1)
    with caplog.at_level(logging.WARNING, logger="tongban"):
        assert await pair.sz.checkpoint(timeout=1, stopping=True) == "signed"
    assert [r.__dict__["peer"] for r in caplog.records if "does not witness" in r.getMessage()] == [
        ZS
    ]
    assert _count(pair.sz, "tongban_audit_witness_handovers_total", peer=ZS, outcome="failed") == 1
    # Not stopping, a gateway checks its chain against its peers at every checkpoint.
    assert await pair.sz.checkpoint(timeout=1) == "unchanged"
    assert _count(pair.sz, "tongban_audit_witness_handovers_total", peer=ZS, outcome="failed") == 2


async def test_a_chain_rewritten_below_a_witnessed_checkpoint_is_not_signed_again(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    """Someone who can write to Zhongshan's store rewrites entry 3, computes every hash again
    and deletes the store's checkpoints: alone, the store shows nothing. Zhongshan's gateway
    finds it at its next checkpoint from what Shenzhen's witnessed, and signs nothing more,
    checkpoint after checkpoint; Shenzhen's copies show the rewrite to `audit verify`."""
    zs = _store(pair.zs)
    await append_audit_entries(zs, 6, one_by_one=True)
    assert await pair.zs.checkpoint() == "signed"
    await append_audit_entries(zs, 4, one_by_one=True)
    assert await pair.zs.checkpoint() == "signed"
    rewrite(zs, 3, "somebody-else")
    with zs.engine.begin() as conn:
        conn.execute(delete(AUDIT_CHECKPOINTS))
    assert verify_store_chain(zs.reader).ok  # the chain alone holds
    await append_audit_entries(zs, 2, one_by_one=True)
    with caplog.at_level(logging.ERROR, logger="tongban.server"):
        assert await pair.zs.checkpoint() == "broken"
    problem = next(r.problem for r in caplog.records if hasattr(r, "problem"))  # type: ignore[attr-defined]
    assert "rewritten: entry 10" in problem
    assert f"peer {SZ} witnessed" in problem
    # The store had no checkpoint left: the gateway signed the chain as it found it, handed
    # that over, and learnt from the answer that the chain lost what the witness held.
    assert [cp.length for cp in stored_checkpoints(zs.engine)] == [12]
    assert _count(pair.zs, "tongban_audit_checkpoints_total", outcome="broken") == 1
    assert (
        _count(pair.zs, "tongban_audit_witness_handovers_total", peer=SZ, outcome="contradicted")
        == 1
    )
    # Nothing more is signed: at the next checkpoint, and after a restart (the witness's copy
    # stays, and is found again before signing).
    await append_audit_entries(zs, 1, one_by_one=True)
    assert await pair.zs.checkpoint() == "broken"
    await pair.zs.stop(grace=0)
    pair.zs = Gateway(pair.zs.settings)
    await pair.zs.start()
    zs = _store(pair.zs)
    await append_audit_entries(zs, 1, one_by_one=True)
    assert await pair.zs.checkpoint() == "broken"
    assert [cp.length for cp in stored_checkpoints(zs.engine)] == [12]
    # What Shenzhen's gateway witnessed shows the rewrite to anyone verifying the chain.
    copies = [w.checkpoint for w in witnessed_checkpoints(_store(pair.sz).engine, ZS)]
    found = sort_checkpoints(copies, {pair.zs_key.key_id: pair.zs_key.public_key})
    assert found.problems == ()
    assert sorted(found.trusted) == [6, 10, 12]  # 12: the rewritten chain, signed as found
    report = verify_store_chain(zs.reader, found.trusted)
    assert not report.ok
    assert (report.broken_seq, report.reason[:10]) == (6, "rewritten:")  # the first copy


async def test_the_signing_gateway_checks_the_witness_before_it_signs(pair: Pair) -> None:
    """A rewrite found before a checkpoint is signed: the store's last checkpoint, signed
    before the rewrite by another gateway of the store, is handed over and the witness's
    previous one is not in the chain any more."""
    zs = _store(pair.zs)
    await append_audit_entries(zs, 4, one_by_one=True)
    assert await pair.zs.checkpoint() == "signed"
    await append_audit_entries(zs, 4, one_by_one=True)
    assert await pair.zs.checkpoint() == "signed"
    rewrite(zs, 2, "somebody-else")
    with zs.engine.begin() as conn:  # the rewriter keeps only a checkpoint they re-signed ...
        conn.execute(delete(AUDIT_CHECKPOINTS))
    # ... with the key, as if a gateway signed the rewritten chain (the key was not stolen:
    # the gateway signs what it finds when the store has no checkpoint).
    length, head = zs.reader.audit_head()
    forged = pair.zs_key.sign(length, head, 1_900_000_000.0)
    with zs.engine.begin() as conn:
        conn.execute(
            AUDIT_CHECKPOINTS.insert().values(
                length=forged.length,
                hash=forged.hash,
                ts=forged.ts,
                key_id=forged.key_id,
                signature=forged.signature,
            )
        )
    await append_audit_entries(zs, 1, one_by_one=True)
    assert await pair.zs.checkpoint() == "broken"
    assert [cp.length for cp in stored_checkpoints(zs.engine)] == [8]  # nothing new signed
    # The witness holds both checkpoints of 8 entries: the peer signed two chains.
    held = _held(pair.sz, ZS)
    assert [n for n, _ in held] == [4, 8, 8]
    assert held[1][1] != held[2][1]
    assert _count(pair.sz, "tongban_audit_witnessed_total", peer=ZS, outcome="conflict") >= 1


async def test_a_peer_without_the_key_refuses_and_signing_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with _pair(tmp_path, {}, sz_holds_zs_key=False) as p:
        await append_audit_entries(_store(p.zs), 3, one_by_one=True)
        with caplog.at_level(logging.WARNING, logger="tongban.witness"):
            assert await p.zs.checkpoint() == "signed"
            await append_audit_entries(_store(p.zs), 1)
            assert await p.zs.checkpoint() == "signed"
        refused = [r for r in caplog.records if "does not witness" in r.getMessage()]
        assert len(refused) == 1  # logged when it starts, not at every checkpoint
        assert "FAILED_PRECONDITION" in refused[0].error  # type: ignore[attr-defined]
        assert (
            _count(p.zs, "tongban_audit_witness_handovers_total", peer=SZ, outcome="refused") == 3
        )  # the first checkpoint once signed; the second before signing and after
        assert _held(p.sz, ZS) == []


async def test_bad_checkpoints_get_clear_statuses(pair: Pair) -> None:
    zs = _store(pair.zs)
    await append_audit_entries(zs, 3, one_by_one=True)
    length, head = zs.reader.audit_head()
    good = checkpoint_to_proto(pair.zs_key.sign(length, head, 1_800_000_000.5))

    def changed(**fields: object) -> witness_pb2.WitnessCheckpointRequest:
        cp = ops.AuditCheckpoint()
        cp.CopyFrom(good)
        for name, value in fields.items():
            if name == "signed_at":
                cp.ClearField("signed_at")
            else:
                setattr(cp, name, value)
        return witness_pb2.WitnessCheckpointRequest(checkpoint=cp)

    cases = [
        (witness_pb2.WitnessCheckpointRequest(), "INVALID_ARGUMENT", "checkpoint"),
        (changed(length=0), "INVALID_ARGUMENT", "checkpoint.length"),
        (changed(hash="x" * 64), "INVALID_ARGUMENT", "checkpoint.hash"),
        (changed(hash=head[:-1]), "INVALID_ARGUMENT", "checkpoint.hash"),
        (changed(key_id="nothex!!nothex!!"), "INVALID_ARGUMENT", "checkpoint.key_id"),
        (changed(signature=b""), "INVALID_ARGUMENT", "checkpoint.signature"),
        (changed(signature=b"\x30" * 73), "INVALID_ARGUMENT", "checkpoint.signature"),
        (changed(signature=b"\x00" * 10), "INVALID_ARGUMENT", "checkpoint.signature"),
        (changed(signed_at=None), "INVALID_ARGUMENT", "checkpoint.signed_at"),
        (changed(signature=b"\x00" * 64), "INVALID_ARGUMENT", "checkpoint.signature"),
        (changed(length=length + 1), "INVALID_ARGUMENT", "checkpoint.signature"),
        (changed(key_id=pair.sz_key.key_id), "FAILED_PRECONDITION", "checkpoint.key_id"),
    ]
    async with _secure(pair.sz.address, pair.pki, ZS) as ch:
        stub = witness_grpc.AuditWitnessServiceStub(ch)
        for request, code, field in cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.WitnessCheckpoint(request, timeout=10)
            e = rich_error(err.value)
            assert (e["code"].name, e["fields"]) == (code, [field]), request
            if code == "FAILED_PRECONDITION":
                assert e["reason"] == "AUDIT_KEY_UNKNOWN"
                assert f"partners.{ZS}.audit_public_keys" in (err.value.details() or "")
        assert _held(pair.sz, ZS) == []  # nothing refused was kept
        first = await stub.WitnessCheckpoint(changed(), timeout=10)
        assert not first.already_witnessed
        assert not first.HasField("previous")
        again = await stub.WitnessCheckpoint(changed(), timeout=10)
        assert again.already_witnessed
        # Another hash for the same length, signed with the same key: kept, answered
        # ALREADY_EXISTS, and the conflict audited in the witness's own chain.
        other = pair.zs_key.sign(length, "ab" * 32, 1_800_000_001.0)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.WitnessCheckpoint(
                witness_pb2.WitnessCheckpointRequest(checkpoint=checkpoint_to_proto(other)),
                timeout=10,
            )
        e = rich_error(err.value)
        assert (e["code"], e["reason"], e["fields"]) == (
            grpc.StatusCode.ALREADY_EXISTS,
            "AUDIT_CHECKPOINT_CONFLICT",
            ["checkpoint.hash"],
        )
        assert sorted(_held(pair.sz, ZS)) == sorted([(length, head), (length, "ab" * 32)])
        with _store(pair.sz).engine.connect() as conn:
            entry = conn.execute(select(AUDIT).where(AUDIT.c.action == "audit.witness")).one()
        assert (entry.actor, entry.outcome) == (ZS, "conflict")
        # A longer checkpoint is answered with the longest held below it.
        later = pair.zs_key.sign(length + 5, "cd" * 32, 1_800_000_002.0)
        answer = await stub.WitnessCheckpoint(
            witness_pb2.WitnessCheckpointRequest(checkpoint=checkpoint_to_proto(later)),
            timeout=10,
        )
        assert answer.previous.length == length
        assert answer.previous.signature in (good.signature, checkpoint_to_proto(other).signature)
    # A partner that is not a peer gateway may not call it.
    async with _secure(pair.sz.address, pair.pki, "shenzhen") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await witness_grpc.AuditWitnessServiceStub(ch).WitnessCheckpoint(changed(), timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_witnessed_checkpoints_are_listed_and_verify_the_peers_chain(
    pair: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tongban audit witnessed --peer P --json` at the witness writes the file that
    `tongban audit verify --checkpoints FILE` reads at P."""
    zs = _store(pair.zs)
    await append_audit_entries(zs, 4, one_by_one=True)
    assert await pair.zs.checkpoint() == "signed"
    sz_dir = pair.sz.settings.store.data_dir
    env = {"TONGBAN_STORE__DATA_DIR": str(sz_dir)}
    if pair.sz.settings.store.url:
        env = {"TONGBAN_STORE__URL": pair.sz.settings.store.url}
    with _environ(env):
        assert cli(["audit", "witnessed"]) == 0
        listed = capsys.readouterr().out
        assert f"{ZS:<16} entries 1-4" in listed
        assert "1 witnessed checkpoint(s) of 1 peer" in listed
        assert cli(["audit", "witnessed", "--peer", ZS, "--json"]) == 0
    kept = tmp_path / "witnessed.jsonl"
    kept.write_text(capsys.readouterr().out)
    assert kept.read_text().count("\n") == 1
    zs_env = {"TONGBAN_STORE__DATA_DIR": str(pair.zs.settings.store.data_dir)}
    if pair.zs.settings.store.url:
        zs_env = {"TONGBAN_STORE__URL": pair.zs.settings.store.url}
    pub = str(pair.zs.settings.audit.signing_key) + ".pub"
    with _environ(zs_env):
        assert cli(["audit", "verify", "--checkpoints", str(kept), "--public-key", pub]) == 0
        assert "signed checkpoints: 2 of 2 verify" in capsys.readouterr().out
        rewrite(zs, 2, "somebody-else")
        with zs.engine.begin() as conn:
            conn.execute(delete(AUDIT_CHECKPOINTS))
        assert cli(["audit", "verify", "--checkpoints", str(kept), "--public-key", pub]) == 1
        assert "BROKEN at entry 4: rewritten" in capsys.readouterr().out


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        for name in ("TONGBAN_STORE__URL", "TONGBAN_STORE__DATA_DIR"):
            mp.delenv(name, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        yield


async def test_the_witness_intent_keeps_conflicts_and_answers_the_one_before(
    db_url: str,
) -> None:
    async with running_store(db_url) as store:

        def intent(length: int, h: str, t: float) -> WitnessIntent:
            return WitnessIntent(
                ZS, length, h, t, "k" * 16, base64.b64encode(b"s" * 64).decode(), t
            )

        assert await store.write(intent(5, "a" * 64, 1.0)) == ("kept", None)
        assert await store.write(intent(5, "a" * 64, 2.0)) == ("known", None)
        assert (await store.write(intent(9, "b" * 64, 3.0)))[1][:2] == (5, "a" * 64)  # type: ignore[index]
        assert (await store.write(intent(5, "c" * 64, 4.0)))[0] == "conflict"
        assert (await store.write(intent(7, "d" * 64, 5.0)))[1][:2] == (5, "a" * 64)  # type: ignore[index]
        # Another peer's checkpoints are another chain's.
        other = WitnessIntent(SZ, 5, "e" * 64, 6.0, "k" * 16, "c2ln", 6.0)
        assert await store.write(other) == ("kept", None)
        held = [(w.peer, w.checkpoint.length) for w in witnessed_checkpoints(store.engine)]
        assert held == [(SZ, 5), (ZS, 5), (ZS, 5), (ZS, 7), (ZS, 9)]


def test_settings_refuse_witnesses_that_are_not_peers(tmp_path: Path) -> None:
    pub = generate_signing_key(tmp_path / "k.pem")[1]
    with pytest.raises(ConfigError, match=r"audit.witnesses: zhongshan not peer gateways"):
        make_settings(
            tmp_path,
            TONGBAN_PARTNERS__ZHONGSHAN__CITY="442000",
            TONGBAN_AUDIT__WITNESSES='["zhongshan"]',
        )
    with pytest.raises(ConfigError, match="audit_public_keys: only a peer gateway"):
        make_settings(
            tmp_path,
            TONGBAN_PARTNERS__ZHONGSHAN__CITY="442000",
            TONGBAN_PARTNERS__ZHONGSHAN__AUDIT_PUBLIC_KEYS=f'["{pub}"]',
        )
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    with pytest.raises(ConfigError, match=r"audit_public_keys: .*not a PEM public key"):
        make_settings(
            tmp_path,
            TONGBAN_PARTNERS__ZHONGSHAN__CITY="442000",
            TONGBAN_PARTNERS__ZHONGSHAN__AUDIT_PUBLIC_KEYS=f'["{bad}"]',
        )


def test_audit_public_keys_in_a_config_file_are_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    generate_signing_key(tmp_path / "conf" / "peer.pem")
    config = tmp_path / "conf" / "tongban.toml"
    config.write_text(
        '[partners.zhongshan]\ncity = "442000"\naudit_public_keys = ["peer.pem.pub"]\n',
        encoding="utf-8",
    )
    # Read from conf/, not from the working directory: the key loads, and the partner is then
    # refused for not being a peer (a key not found would be refused as unreadable).
    with pytest.raises(ConfigError, match=r"audit_public_keys: only a peer gateway"):
        load_settings(config, env={})
