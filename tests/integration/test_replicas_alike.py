"""Replicas sharing a store notice when they run a setting they must share otherwise
(gateway.services.replicas): the audit chain's hash function here, on SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.cli_ops import cmd_gateways, cmd_outbox_status
from gateway.services import delivery
from gateway.store.engine import make_engine, upgrade

from .conftest import ROOT, make_settings


async def until(predicate: Any, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_replicas_running_another_hash_function_are_reported_until_they_agree(
    tmp_path: Path,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(delivery, "HEARTBEAT_SECONDS", 0.05)
    monkeypatch.setattr(delivery, "REPLICAS_DIFFER_LOG_SECONDS", 0.2)
    caplog.set_level(logging.INFO, logger="tongban.delivery")
    config, env = _shared_store(tmp_path, db_url)
    a = Gateway(make_settings(tmp_path / "a", **env))
    await a.start()
    try:
        await _compare_with_an_odd_replica(a, tmp_path, env, config, capsys, caplog)
        # The odd one gone, the other agrees with every live gateway again.
        da = a.services.delivery
        await until(lambda: da.live_gateways == 1, 10)
        await until(lambda: da.replica_differences == {}, 10)
        assert _gauge(a, "audit.hash_algorithm") == 0
        assert cmd_outbox_status(argparse.Namespace(config=str(config), json=False)) == 0
        assert "settings differ" not in capsys.readouterr().out
        # ... and logs it, after the warning (below).
        assert [r.getMessage() for r in _logged(caplog, logging.INFO)] == [
            "gateways sharing this store run alike again"
        ]
    finally:
        await a.stop(grace=0)


def _shared_store(tmp_path: Path, db_url: str) -> tuple[Path, dict[str, str]]:
    """The store at ``db_url``, migrated; a config file naming it (for ``tongban outbox``) and
    the environment of a gateway serving from it."""
    engine = make_engine(db_url)
    upgrade(engine)
    engine.dispose()
    config = tmp_path / "tongban.toml"
    config.write_text(f'[store]\nurl = "{db_url}"\n', "utf-8")
    return config, {"TONGBAN_STORE__URL": db_url, "TONGBAN_PARTNERS__ZS__CITY": "442000"}


def _logged(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "tongban.delivery"
        and r.levelno == level
        and r.getMessage().startswith("gateways sharing")
    ]


def _gauge(gw: Gateway, setting: str) -> float | None:
    return gw.services.metrics.registry.get_sample_value(
        "tongban_replica_settings_differ", {"setting": setting}
    )


async def _compare_with_an_odd_replica(
    a: Gateway,
    tmp_path: Path,
    env: dict[str, str],
    config: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A second gateway on ``a``'s store with the audit chain's other hash function."""
    b = Gateway(make_settings(tmp_path / "b", TONGBAN_AUDIT__HASH_ALGORITHM="sm3", **env))
    await b.start()
    try:
        da, db = a.services.delivery, b.services.delivery
        await until(lambda: da.live_gateways == 2 and db.live_gateways == 2, 10)
        await until(lambda: bool(da.replica_differences and db.replica_differences), 10)
        where = f"{socket.gethostname()} pid {os.getpid()}"
        # Each sees the other's value of the one setting they do not share; keys and
        # mappings are the same.
        assert da.replica_differences == {"audit.hash_algorithm": [f"sm3 at {where}"]}
        assert db.replica_differences == {"audit.hash_algorithm": [f"sha256 at {where}"]}
        settings = ("audit.hash_algorithm", "store.keys", "mappings", "partners", "retention")
        for gw in (a, b):
            assert [_gauge(gw, s) for s in settings] == [1, 0, 0, 0, 0]
        # The operator's view, from the store.
        assert cmd_outbox_status(argparse.Namespace(config=str(config), json=False)) == 0
        out = capsys.readouterr().out
        assert "2 gateway process(es) delivering" in out
        (line,) = [x for x in out.splitlines() if x.startswith("settings differ")]
        head, values = line.split(": ", 1)
        assert head == "settings differ, audit.hash_algorithm"
        assert sorted(values.split("; ")) == [f"sha256 at {where}", f"sm3 at {where}"]
        # Logged once it lasted (here 0.2 s), once by each, with the values here and elsewhere.
        await until(lambda: len(_logged(caplog, logging.WARNING)) == 2, 5)
        await asyncio.sleep(0.2)
        warnings = _logged(caplog, logging.WARNING)
        assert sorted(
            (
                w.settings["audit.hash_algorithm"]["here"],
                w.settings["audit.hash_algorithm"]["elsewhere"],
            )
            for w in warnings
        ) == [("sha256", [f"sm3 at {where}"]), ("sm3", [f"sha256 at {where}"])]
        assert _logged(caplog, logging.INFO) == []
    finally:
        await b.stop(grace=0)


async def test_a_replica_serving_without_delivering_is_compared_too(
    tmp_path: Path,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A replica with ``delivery.enabled = false`` serves calls (it translates cases) without
    taking a share of the deliveries: it writes its heartbeat all the same, so one running
    other mappings is seen, and it counts in no partner's ``max_in_flight_total``."""
    monkeypatch.setattr(delivery, "HEARTBEAT_SECONDS", 0.05)
    config, env = _shared_store(tmp_path, db_url)
    # The serving replica's mappings: the same files, one of them edited there only.
    edited = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", edited)
    codes = edited / "shenzhen" / "codes" / "case_type.yaml"
    codes.write_text("# edited on one replica\n" + codes.read_text("utf-8"), "utf-8")
    a = Gateway(make_settings(tmp_path / "a", **env))
    await a.start()
    b = Gateway(
        make_settings(
            tmp_path / "b",
            TONGBAN_DELIVERY__ENABLED="false",
            TONGBAN_MAPPINGS__PATH=str(edited),
            **env,
        )
    )
    try:
        await b.start()
        da, db = a.services.delivery, b.services.delivery
        await until(lambda: bool(da.replica_differences and db.replica_differences), 10)
        assert set(da.replica_differences) == set(db.replica_differences) == {"mappings"}
        assert _gauge(a, "mappings") == _gauge(b, "mappings") == 1
        # One gateway delivers: a keeps every partner's whole total.
        assert da.live_gateways == 1
        for gw in (a, b):
            live = gw.services.metrics.registry.get_sample_value("tongban_gateways_live")
            assert live == 1
        assert cmd_outbox_status(argparse.Namespace(config=str(config), json=False)) == 0
        out = capsys.readouterr().out
        where = f"{socket.gethostname()} pid {os.getpid()}"
        assert f"1 gateway process(es) delivering; {where}, seen " in out
        assert f"1 gateway process(es) serving, not delivering; {where}, seen " in out
        (line,) = [x for x in out.splitlines() if x.startswith("settings differ")]
        assert line.startswith("settings differ, mappings: files ")
        assert line.count(f" at {where}") == 2
        # `tongban gateways`: each one's settings, and exit status 1 while they differ.
        assert cmd_gateways(argparse.Namespace(config=str(config), json=False, all=False)) == 1
        out = capsys.readouterr().out
        assert f"{where}: delivering; started " in out
        assert f"{where}: serving, not delivering; started " in out
        assert out.count("  audit.hash_algorithm: sha256\n") == 2
        assert "2 live gateway process(es), 1 delivering\n" in out
        assert "\nsettings differ, mappings: files " in out
        assert cmd_gateways(argparse.Namespace(config=str(config), json=True, all=False)) == 1
        found = json.loads(capsys.readouterr().out)
        assert found["settings_differ"] == ["mappings"]
        by_owner = {g["owner"]: g for g in found["gateways"]}
        mine, serving = by_owner[da.owner], by_owner[db.owner]
        assert (mine["delivers"], serving["delivers"]) == (True, False)
        assert (mine["live"], serving["live"]) == (True, True)
        assert mine["settings"]["mappings"] != serving["settings"]["mappings"]
        assert mine["settings"]["store.keys"] == serving["settings"]["store.keys"]
    finally:
        await b.stop(grace=0)
    # Stopped, it took its heartbeat away: only the delivering gateway is left.
    await until(lambda: da.replica_differences == {}, 10)
    try:
        assert cmd_outbox_status(argparse.Namespace(config=str(config), json=False)) == 0
        out = capsys.readouterr().out
        assert "1 gateway process(es) delivering" in out
        assert "not delivering" not in out
        assert "settings differ" not in out
        assert cmd_gateways(argparse.Namespace(config=str(config), json=False, all=False)) == 0
        assert "1 live gateway process(es), 1 delivering\n" in capsys.readouterr().out
    finally:
        await a.stop(grace=0)


async def test_a_replica_that_does_not_know_a_partner_is_reported(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica started with an old configuration, without Shenzhen's inbox, would sweep up
    and dead-letter the rows the others queue for Shenzhen: the partners differ, and say so.
    Its shorter retention is reported too."""
    monkeypatch.setattr(delivery, "HEARTBEAT_SECONDS", 0.05)
    _, env = _shared_store(tmp_path, db_url)
    shenzhen = {
        "TONGBAN_PARTNERS__SZ__CITY": "440300",
        "TONGBAN_PARTNERS__SZ__INBOX__TRANSPORT": "grpc",
        "TONGBAN_PARTNERS__SZ__INBOX__TARGET": "127.0.0.1:9",
    }
    a = Gateway(make_settings(tmp_path / "a", **env, **shenzhen))
    b = Gateway(make_settings(tmp_path / "b", TONGBAN_RETENTION__REQUEST_DAYS="7", **env))
    await a.start()
    stopped = False
    try:
        await b.start()
        da, db = a.services.delivery, b.services.delivery
        await until(lambda: bool(da.replica_differences and db.replica_differences), 10)
        assert set(da.replica_differences) == {"partners", "retention"}
        where = f"{socket.gethostname()} pid {os.getpid()}"
        (theirs,) = da.replica_differences["partners"]
        assert theirs.endswith(f": zs 442000 at {where}")
        (mine,) = db.replica_differences["partners"]
        assert mine.endswith(f": sz 440300 grpc, zs 442000 at {where}")
        assert db.replica_differences["retention"] == [
            f"requests 30, delivered 30, closed cases 0, audit 0 (days; 0: kept) at {where}"
        ]
        assert [_gauge(a, s) for s in ("partners", "retention", "mappings")] == [1, 1, 0]
        await b.stop(grace=0)
        stopped = True
        await until(lambda: da.replica_differences == {}, 10)
        assert _gauge(a, "partners") == 0
    finally:
        if not stopped:
            await b.stop(grace=0)
        await a.stop(grace=0)
