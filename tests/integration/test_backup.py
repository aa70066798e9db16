"""Online backups of the embedded store (gateway/store/backup.py): taken while a gateway
commits cases, each copy is a consistent snapshot (every case whole: its outbox row, its
idempotency record and its audit entry, or none of them), passes its checks, and serves again
once put in place of the store."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import grpc
import pytest

from gateway.app import Gateway
from gateway.store.backup import BackupError, backup_sqlite
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import case_exchange_pb2_grpc as cx_grpc

from .conftest import WRITER_PROCESS_ENV, make_settings
from .test_case_exchange import ZS_CASE, submit_req, wait_for

META = [("authorization", "Bearer t")]


def snapshot(path: Path) -> dict[str, set[str]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {
            "cases": {r[0] for r in conn.execute("SELECT exchange_id FROM cases")},
            "outbox": {r[0] for r in conn.execute("SELECT exchange_id FROM outbox")},
            "audit": {
                r[0] for r in conn.execute("SELECT subject FROM audit WHERE action = 'case.submit'")
            },
            "requests": {
                r[0] for r in conn.execute("SELECT request_id FROM requests WHERE kind = 'submit'")
            },
        }


async def test_backups_taken_under_load_are_whole_and_serve_again(tmp_path: Path) -> None:
    env = WRITER_PROCESS_ENV | {
        "TONGBAN_DELIVERY__ENABLED": "false",
        "TONGBAN_PARTNERS__ZS__RATE_LIMIT__RATE_PER_SECOND": "100000",
        "TONGBAN_PARTNERS__ZS__RATE_LIMIT__BURST": "100000",
    }
    gw = Gateway(make_settings(tmp_path, **env))
    await gw.start()
    store = tmp_path / "data" / "tongban.db"
    accepted: list[str] = []
    stop = asyncio.Event()

    async def caller(stub: cx_grpc.CaseExchangeServiceStub, n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            rid = f"c{n}-{i}"
            record = dict(ZS_CASE, SBLSH=f"442000-2026-{n:02d}{i:04d}")
            resp = await stub.SubmitCase(submit_req(rid, record), metadata=META)
            accepted.append(resp.exchange_id)

    try:
        async with grpc.aio.insecure_channel(gw.address) as ch:
            stub = cx_grpc.CaseExchangeServiceStub(ch)
            callers = [asyncio.create_task(caller(stub, n)) for n in range(8)]
            copies = []
            await wait_for(lambda: len(accepted) >= 8)
            for k in range(3):
                await asyncio.sleep(0.3)
                dest = tmp_path / "backups" / f"b{k}.db"
                answered = len(accepted)
                report = await asyncio.to_thread(backup_sqlite, store, dest)
                copies.append((dest, report, answered))
            stop.set()
            await asyncio.gather(*callers)
    finally:
        await gw.stop(grace=0)
    sizes = []
    for dest, report, answered in copies:
        held = snapshot(dest)
        assert held["cases"] == held["outbox"] == held["audit"]  # whole cases only
        assert len(held["requests"]) == len(held["cases"]) == report.cases
        assert report.pending == report.cases  # delivery is off: every case waits
        assert report.audit_entries == report.cases
        assert report.cases >= answered  # every case answered before the copy began
        assert dest.stat().st_mode & 0o777 == 0o600
        assert not dest.with_name(dest.name + "-wal").exists()
        sizes.append(report.cases)
    assert sizes == sorted(sizes)
    assert sizes[0] > 0
    assert sizes[-1] < len(accepted)  # taken while cases were still coming in
    with pytest.raises(BackupError, match="exists"):
        backup_sqlite(store, copies[0][0])

    # Restored: the last copy in place of the store, a gateway serves its cases.
    last = copies[-1][0]
    restored = tmp_path / "restored"
    (restored / "data").mkdir(parents=True)
    (restored / "data" / "tongban.db").write_bytes(last.read_bytes())
    gw = Gateway(make_settings(restored, **env))
    await gw.start()
    try:
        async with grpc.aio.insecure_channel(gw.address) as ch:
            stub = cx_grpc.CaseExchangeServiceStub(ch)
            xid = sorted(snapshot(last)["cases"])[0]
            got = await stub.GetCase(cx.GetCaseRequest(exchange_id=xid), metadata=META)
            assert got.case_view.exchange_id == xid
    finally:
        await gw.stop(grace=0)


def test_a_backup_is_refused_where_it_cannot_be_whole(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="no store there"):
        backup_sqlite(tmp_path / "none.db", tmp_path / "b.db")
    db = tmp_path / "s.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(BackupError, match="is the store itself"):
        backup_sqlite(db, db, replace=True)
    with pytest.raises(BackupError, match="no such table: cases"):
        backup_sqlite(db, tmp_path / "b.db")  # not a Tongban store: nothing kept
    assert list(tmp_path.iterdir()) == [db]
    with pytest.raises(BackupError, match="is a folder"):
        backup_sqlite(db, tmp_path, replace=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(BackupError, match="cannot write"):
        backup_sqlite(db, tmp_path / "file" / "b.db")  # below a file: no folder there
