"""Operator commands on a real store: db upgrade, dead-letters list/show/replay."""

from __future__ import annotations

import json
import sqlite3
import time

from .conftest import run


def test_db_upgrade_and_dead_letter_commands(tmp_path) -> None:
    env = {"TONGBAN_STORE__DATA_DIR": str(tmp_path)}
    up = run("db", "upgrade", "--config", "tongban.toml", env=env)
    assert up.returncode == 0, up.stderr
    assert "revision 0001" in up.stdout
    db = tmp_path / "tongban.db"
    now = time.time()
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO outbox (exchange_id, kind, target_partner, target_city, state, attempts, "
            "next_attempt_at, lease_until, last_error, created_at, dead_at, replays) VALUES "
            "('abc', 'case', 'shenzhen', '440300', 'dead', 3, ?, 0, 'INVALID_ARGUMENT: rejected', ?, ?, 0)",
            (now, now, now),
        )
    listed = run("dead-letters", "list", "--config", "tongban.toml", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert (row["exchange_id"], row["reason"]) == ("abc", "INVALID_ARGUMENT: rejected")
    shown = run("dead-letters", "show", str(row["id"]), "--config", "tongban.toml", env=env)
    assert json.loads(shown.stdout)["attempts"] == 3
    assert run("dead-letters", "show", "999", "--config", "tongban.toml", env=env).returncode == 1
    replay = run("dead-letters", "replay", "--all", "--config", "tongban.toml", env=env)
    assert replay.returncode == 0, replay.stderr
    assert f"replayed 1: {row['id']}" in replay.stdout
    with sqlite3.connect(db) as conn:
        state, replays = conn.execute("SELECT state, replays FROM outbox").fetchone()
        audit = conn.execute("SELECT action FROM audit").fetchall()
    assert (state, replays) == ("pending", 1)
    assert ("delivery.replay",) in audit
    assert run("dead-letters", "replay", "--config", "tongban.toml", env=env).returncode == 2
