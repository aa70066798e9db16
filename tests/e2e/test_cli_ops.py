"""Operator commands on a real store: db upgrade, backup and purge, dead-letters
list/show/replay, audit verify, outbox status, gateways, cases trace."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import pytest

from .conftest import run


def test_db_upgrade_and_dead_letter_commands(tmp_path) -> None:
    env = {"TONGBAN_STORE__DATA_DIR": str(tmp_path)}
    up = run("db", "upgrade", "--config", "tongban.toml", env=env)
    assert up.returncode == 0, up.stderr
    assert "store at revision 0012 (was empty)" in up.stdout
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


def write_chain(db: Path, actors: list[str], sm3_from: int = 0) -> str:
    """Write (or write again, as someone who can write to the store would) an audit chain of
    one entry per actor, with every hash computed; its last hash. With ``sm3_from``, entry
    ``sm3_from`` switches the chain to SM3 (as a gateway would with audit.hash_algorithm)."""
    from gateway.store.chain_hash import SWITCH_ACTION
    from gateway.store.writer import AuditEntry, audit_hash

    prev, algorithm = "0" * 64, "sha256"
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit")
        for seq, actor in enumerate(actors, 1):
            e = AuditEntry(actor, "case.submit", f"x{seq}", "accepted", "to 440300")
            if seq == sm3_from:
                e = AuditEntry("gateway", SWITCH_ACTION, "sm3", "switched", "from sha256")
            h = audit_hash(prev, seq, 1000.0 + seq, e, algorithm)
            conn.execute(
                "INSERT INTO audit (seq, ts, actor, action, subject, detail, outcome, "
                "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, 1000.0 + seq, e.actor, e.action, e.subject, e.detail, e.outcome, prev, h),
            )
            prev = h
            if seq == sm3_from:
                algorithm = "sm3"
        conn.execute(
            "UPDATE audit_head SET length = ?, hash = ?, hash_algorithm = ?",
            (len(actors), prev, algorithm),
        )
    return prev


def test_audit_verify_catches_an_edited_row(tmp_path) -> None:
    env = {"TONGBAN_STORE__DATA_DIR": str(tmp_path)}
    assert run("db", "upgrade", "--config", "tongban.toml", env=env).returncode == 0
    db = tmp_path / "tongban.db"
    write_chain(db, ["zhongshan"] * 5)
    ok = run("audit", "verify", "--config", "tongban.toml", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "intact: 5 entries" in ok.stdout
    assert "  hashed with SHA-256\n" in ok.stdout
    with sqlite3.connect(db) as conn:  # an insider rewrites who did it
        conn.execute("UPDATE audit SET actor = 'shenzhen' WHERE seq = 3")
    bad = run("audit", "verify", "--config", "tongban.toml", env=env)
    assert bad.returncode == 1
    assert "BROKEN at entry 3" in bad.stdout
    with sqlite3.connect(db) as conn:  # restoring it, then deleting the last entry
        conn.execute("UPDATE audit SET actor = 'zhongshan' WHERE seq = 3")
        conn.execute("DELETE FROM audit WHERE seq = 5")
    gone = run("audit", "verify", "--config", "tongban.toml", env=env)
    assert gone.returncode == 1
    assert "BROKEN at entry 5" in gone.stdout


def test_audit_verify_follows_a_switch_to_sm3(tmp_path) -> None:
    env = {"TONGBAN_STORE__DATA_DIR": str(tmp_path)}
    assert run("db", "upgrade", "--config", "tongban.toml", env=env).returncode == 0
    db = tmp_path / "tongban.db"
    write_chain(db, ["zhongshan"] * 6, sm3_from=2)
    ok = run("audit", "verify", "--config", "tongban.toml", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "intact: 6 entries in the store\n  hashed with SM3 (since entry 3)\n" in ok.stdout
    with sqlite3.connect(db) as conn:  # the head made to say SHA-256 again
        conn.execute("UPDATE audit_head SET hash_algorithm = 'sha256'")
    bad = run("audit", "verify", "--config", "tongban.toml", env=env)
    assert bad.returncode == 1
    assert (
        "BROKEN at entry 7: the head records the hash function sha256, the entries switched to "
        "sm3 at entry 2"
    ) in bad.stdout


@pytest.mark.parametrize(("algorithm", "name"), [("ed25519", "Ed25519"), ("sm2", "SM2 (with SM3)")])
def test_signed_checkpoints_catch_a_chain_rewritten_with_its_hashes(
    tmp_path, algorithm, name
) -> None:
    from gateway.audit_signing import Signer

    key = tmp_path / "audit.pem"
    made = run("audit", "keys", "new", "--file", str(key), "--algorithm", algorithm)
    assert made.returncode == 0, made.stderr
    assert f"wrote a new {name} audit signing key to {key}" in made.stdout
    assert key.stat().st_mode & 0o777 == 0o600
    signer = Signer.load(key)
    assert signer.algorithm == algorithm
    assert f"key id {signer.key_id}" in made.stdout
    assert (tmp_path / "audit.pem.pub").read_bytes() == signer.public_pem()
    again = run("audit", "keys", "new", "--file", str(key))
    assert again.returncode == 2
    assert "already exists" in again.stderr
    env = {"TONGBAN_STORE__DATA_DIR": str(tmp_path), "TONGBAN_AUDIT__SIGNING_KEY": str(key)}
    assert run("db", "upgrade", "--config", "tongban.toml", env=env).returncode == 0
    db = tmp_path / "tongban.db"
    cp = signer.sign(5, write_chain(db, ["zhongshan"] * 5), 2000.0)  # as a serving gateway does
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO audit_checkpoints (length, hash, ts, key_id, signature) VALUES "
            "(?, ?, ?, ?, ?)",
            (cp.length, cp.hash, cp.ts, cp.key_id, cp.signature),
        )
    ok = run("audit", "verify", "--config", "tongban.toml", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert (
        f"signed checkpoints: 1 of 1 verify (1 in the store; key {signer.key_id}); the last covers "
        "entries 1-5, signed at 1970-01-01T00:33:20Z"
    ) in ok.stdout
    listed = run("audit", "checkpoints", "--config", "tongban.toml", env=env)
    assert f"entries 1-5          signed 1970-01-01T00:33:20Z  key {signer.key_id}" in listed.stdout
    kept = tmp_path / "checkpoints.jsonl"  # copied away from the store
    kept.write_text(
        run("audit", "checkpoints", "--json", "--config", "tongban.toml", env=env).stdout
    )

    write_chain(db, ["zhongshan", "zhongshan", "shenzhen", "zhongshan", "zhongshan"])
    bad = run("audit", "verify", "--config", "tongban.toml", env=env)
    assert bad.returncode == 1
    assert (
        "audit chain BROKEN at entry 5: rewritten: the chain up to here is not the one key"
        in bad.stdout
    )
    with sqlite3.connect(db) as conn:  # and the store's checkpoints deleted too
        conn.execute("DELETE FROM audit_checkpoints")
    hidden = run("audit", "verify", "--config", "tongban.toml", env=env)
    assert hidden.returncode == 0  # but it is told that old entries are signed by nothing
    assert (
        "WARNING: entries 1-5 (the first made at 1970-01-01T00:16:41Z) are covered by no "
        "signed checkpoint, though audit.signing_key is set and a serving gateway signs "
        "within 60s: unless no gateway with the key ran since, checkpoints were deleted."
    ) in hidden.stdout
    caught = run("audit", "verify", "--checkpoints", str(kept), "--config", "tongban.toml", env=env)
    assert caught.returncode == 1
    assert "rewritten" in caught.stdout
    plain = {"TONGBAN_STORE__DATA_DIR": str(tmp_path)}  # an auditor without the private key
    blind = run(
        "audit", "verify", "--checkpoints", str(kept), "--config", "tongban.toml", env=plain
    )
    assert blind.returncode == 0
    assert "checkpoints NOT CHECKED (0 in the store, 1 from --checkpoints)" in blind.stdout
    public = str(tmp_path / "audit.pem.pub")
    audited = run(
        "audit", "verify", "--checkpoints", str(kept), "--public-key", public,
        "--config", "tongban.toml", env=plain,
    )  # fmt: skip
    assert audited.returncode == 1
    assert "rewritten" in audited.stdout
    other = tmp_path / "other.pem"
    assert run("audit", "keys", "new", "--file", str(other)).returncode == 0
    foreign = run(
        "audit", "verify", "--checkpoints", str(kept), "--public-key", f"{other}.pub",
        "--config", "tongban.toml", env=plain,
    )  # fmt: skip
    assert foreign.returncode == 1
    assert (
        f"checkpoint BROKEN: checkpoint of entries 1-5 (1970-01-01T00:33:20Z): signed by key {signer.key_id}, which is not a trusted key"
        in foreign.stdout
    )


def test_the_federated_demo_crosses_two_gateways(tmp_path) -> None:
    data = tmp_path / "fed"
    out = run(
        "demo", "--federated", "--cases", "8", "--no-progress", "--data-dir", str(data),
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "peers over mutual TLS" in out.stdout
    assert "every case delivered once and completed" in out.stdout
    # Each gateway's checkpoints are held by the other (AuditWitnessService).
    assert re.search(
        r"witnessed by the peer \.+ Zhongshan's chain: [1-9]\d* checkpoint\(s\); "
        r"Shenzhen's chain: [1-9]\d* checkpoint\(s\) held by the other city's gateway",
        out.stdout,
    ), out.stdout
    held = {}
    for gw in ("zs-gateway", "sz-gateway"):
        env = {"TONGBAN_STORE__DATA_DIR": str(data / gw)}
        ok = run("audit", "verify", "--config", "tongban.toml", env=env)
        assert ok.returncode == 0, ok.stdout
        assert "  hashed with SM3 (since entry 2)\n" in ok.stdout  # both switched at start
        with sqlite3.connect(data / gw / "tongban.db") as conn:
            held[gw] = dict(conn.execute("SELECT exchange_id, status FROM cases"))
    # One exchange id per case on both gateways, and both see it completed.
    assert len(held["zs-gateway"]) == 8
    assert held["zs-gateway"] == held["sz-gateway"]
    assert set(held["zs-gateway"].values()) == {"CASE_STATUS_COMPLETED_APPROVED"}


def test_a_real_exchange_is_traced_backed_up_purged_and_its_audit_chain_verifies(tmp_path) -> None:
    out = run(
        "demo", "--cases", "5", "--no-progress", "--data-dir", str(tmp_path / "demo"), timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"audit chain \.+ \d+ entries hashed with SM3, intact; signed", out.stdout)
    env = {"TONGBAN_STORE__DATA_DIR": str(tmp_path / "demo")}
    ok = run("audit", "verify", "--config", "tongban.toml", env=env)
    assert ok.returncode == 0, ok.stdout
    assert "intact" in ok.stdout
    # Each case traced: its state, then its events, deliveries and audit entries in time order.
    with sqlite3.connect(tmp_path / "demo" / "tongban.db") as conn:
        xids = [r[0] for r in conn.execute("SELECT exchange_id FROM cases ORDER BY seq")]
    for xid in (xids[0], xids[-1]):
        trace = run("cases", "trace", xid, "--config", "tongban.toml", env=env)
        assert trace.returncode == 0, trace.stderr
        lines = trace.stdout.splitlines()
        assert lines[0].startswith(f"exchange {xid}  case number 442000-")
        assert "status CASE_STATUS_COMPLETED_APPROVED, DELIVERY_STATE_DELIVERED" in lines[2]
        timeline = [line.split(None, 2)[1:] for line in lines[4:]]
        assert timeline[0] == ["status", "CASE_STATUS_SUBMITTED reported by 442000"]
        first_delivery = next(t[1] for t in timeline if t[0] == "outbox")
        assert first_delivery.startswith("delivery #")
        assert " of the case to shenzhen (440300): delivered at " in first_delivery
        assert sum(t[0] == "outbox" for t in timeline) == 4  # the case, then 3 statuses back
        assert sum(t[1].startswith("case.submit by zhongshan") for t in timeline) == 1
        as_json = json.loads(
            run("cases", "trace", xid, "--json", "--config", "tongban.toml", env=env).stdout
        )
        assert "canonical" not in as_json  # no personal data
        assert len(as_json["deliveries"]) == 4
        assert [e["status"] for e in as_json["events"]][-1] == "CASE_STATUS_COMPLETED_APPROVED"
    missing = run("cases", "trace", "0" * 32, "--config", "tongban.toml", env=env)
    assert missing.returncode == 1
    assert "no case 00000000000000000000000000000000 in the store" in missing.stderr
    # A backup, put in place of the store elsewhere, holds the same chain.
    backup = run(
        "db", "backup", str(tmp_path / "b" / "t.db"), "--json", "--config", "tongban.toml", env=env
    )
    assert backup.returncode == 0, backup.stderr
    assert json.loads(backup.stdout)["cases"] == 5
    again = run("db", "backup", str(tmp_path / "b" / "t.db"), "--config", "tongban.toml", env=env)
    assert again.returncode == 1
    assert "exists (use --force to replace it)" in again.stderr
    (tmp_path / "restored").mkdir()
    (tmp_path / "restored" / "tongban.db").write_bytes((tmp_path / "b" / "t.db").read_bytes())
    restored = {"TONGBAN_STORE__DATA_DIR": str(tmp_path / "restored")}
    ok = run("audit", "verify", "--config", "tongban.toml", env=restored)
    assert ok.stdout == run("audit", "verify", "--config", "tongban.toml", env=env).stdout
    # tongban.toml keeps idempotency records and delivered rows 30 days, cases for ever.
    kept = run("db", "purge", "--dry-run", "--config", "tongban.toml", env=env)
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.splitlines()[0].startswith("would purge 0 idempotency records made before")
    assert kept.stdout.splitlines()[-1] == (
        "kept for ever: cases, signed audit checkpoints (this chain's and the peers' witnessed)"
    )
    # The demo's cases are all closed and delivered: a second's retention purges them all.
    env |= {f"TONGBAN_RETENTION__{k}_DAYS": str(1 / 86400) for k in ("REQUEST", "CLOSED_CASE")}
    env["TONGBAN_RETENTION__DELIVERED_DAYS"] = str(1 / 86400)
    time.sleep(1.1)
    dry = run("db", "purge", "--dry-run", "--json", "--config", "tongban.toml", env=env)
    assert dry.returncode == 0, dry.stderr
    would = json.loads(dry.stdout)
    assert would["dry_run"] is True
    assert would["deleted"]["cases"] == 5
    assert would["deleted"]["events"] > 5  # submitted, received, accepted, approved ...
    purged = run("db", "purge", "--json", "--config", "tongban.toml", env=env)
    assert json.loads(purged.stdout)["deleted"] == would["deleted"]
    with sqlite3.connect(tmp_path / "demo" / "tongban.db") as conn:
        counts = [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES]
        actors = conn.execute("SELECT DISTINCT actor FROM audit WHERE action = 'store.purge'")
        assert actors.fetchall() == [("cli",)]
    assert counts == [0, 0, 0, 0]
    ok = run("audit", "verify", "--config", "tongban.toml", env=env)
    assert ok.returncode == 0, ok.stdout
    # The audit log archived: every entry made so far into files of 10, then checked with them.
    archives = tmp_path / "archives"
    bad = run("audit", "archive", "--before", "May 1st", "--dir", str(archives), "--config",
              "tongban.toml", env=env)  # fmt: skip
    assert (bad.returncode, bad.stderr) == (
        2, "error: --before 'May 1st': not an ISO 8601 date or time\n"
    )  # fmt: skip
    time.sleep(0.05)
    would = run("audit", "archive", "--days", "0", "--per-file", "10", "--dry-run", "--json",
                "--config", "tongban.toml", env=env)  # fmt: skip
    assert would.returncode == 0, would.stderr
    would_move = json.loads(would.stdout)
    assert not archives.exists()  # a dry run moves nothing
    moved = run("audit", "archive", "--days", "0", "--per-file", "10", "--dir", str(archives),
                "--json", "--config", "tongban.toml", env=env)  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    files = json.loads(moved.stdout)["files"]
    upto = json.loads(moved.stdout)["archived_upto"]
    assert files[0]["first"] == 1
    assert files[-1]["last"] == upto
    assert len(files) == -(-upto // 10)
    # The dry run said what moved (the entries made before its own, slightly earlier, cut-off).
    assert (would_move["first"], would_move["files"]) == (1, len(files))
    assert would_move["last"] <= upto
    nothing = run("audit", "archive", "--before", "2000-01-01", "--dry-run", "--config",
                  "tongban.toml", env=env)  # fmt: skip
    assert nothing.stdout == (
        "nothing to archive: no entry made before 2000-01-01T00:00:00Z is still in the store\n"
    )
    plain = run("audit", "verify", "--config", "tongban.toml", env=env)
    assert plain.returncode == 0, plain.stdout
    assert f"(entries {upto + 1} on; 1-{upto} archived)" in plain.stdout
    assert f"entries 1-{upto} are in archive files: check them with --archives DIR" in plain.stdout
    full = run("audit", "verify", "--archives", str(archives), "--config", "tongban.toml", env=env)
    assert full.returncode == 0, full.stdout
    assert f"archives intact: {len(files)} files, entries 1-{upto}" in full.stdout
    # A backup of the store that archived still checks its chain, from where it now starts.
    again = run("db", "backup", str(tmp_path / "b" / "t2.db"), "--config", "tongban.toml", env=env)
    assert again.returncode == 0, again.stderr
    Path(files[0]["file"]).unlink()
    gone = run("audit", "verify", "--archives", str(archives), "--config", "tongban.toml", env=env)
    assert gone.returncode == 1
    assert "archives BROKEN: entries 1..10 have no file" in gone.stdout


TABLES = ("requests", "outbox", "cases", "events")


def test_outbox_status_shows_what_waits_for_each_partner(tmp_path) -> None:
    env = {"TONGBAN_STORE__DATA_DIR": str(tmp_path)}
    assert run("db", "upgrade", "--config", "tongban.toml", env=env).returncode == 0
    now = time.time()
    rows = [
        # partner, state, attempts, next attempt, lease until, last error, created
        ("shenzhen", "pending", 5, now + 30, 0, "UNAVAILABLE: connection refused", now - 120),
        ("shenzhen", "pending", 0, now + 30, 0, "", now - 60),
        ("shenzhen", "pending", 1, now - 1, now + 20, "", now - 30),  # held by a gateway
        ("shenzhen", "delivered", 1, now - 300, 0, "", now - 300),
        ("guangzhou", "pending", 0, now - 2, 0, "", now - 2),
        ("guangzhou", "dead", 1, now - 5, 0, "INVALID_ARGUMENT: rejected", now - 5),
    ]
    with sqlite3.connect(tmp_path / "tongban.db") as conn:
        # Two gateways' heartbeats: one seen 2 s ago, one (killed) a minute ago.
        conn.executemany(
            "INSERT INTO gateways (owner, host, pid, started_at, seen_at) VALUES (?, ?, ?, ?, ?)",
            [("w-a", "gw-1", 101, now - 600, now - 2), ("w-b", "gw-2", 202, now - 600, now - 60)],
        )
        for i, (partner, state, attempts, nxt, lease, error, created) in enumerate(rows):
            conn.execute(
                "INSERT INTO outbox (exchange_id, kind, target_partner, target_city, state,"
                " attempts, next_attempt_at, lease_until, last_error, created_at, replays)"
                " VALUES (?, 'case', ?, '440300', ?, ?, ?, ?, ?, ?, 0)",
                (f"x{i}", partner, state, attempts, nxt, lease, error, created),
            )
    out = run("outbox", "status", "--config", "tongban.toml", "--json", env=env)
    assert out.returncode == 0, out.stderr
    gz, sz = json.loads(out.stdout)
    assert {k: gz[k] for k in ("partner", "city", "pending", "due", "waiting", "held")} == {
        "partner": "guangzhou",
        "city": "440100",
        "pending": 1,
        "due": 1,
        "waiting": 0,
        "held": 0,
    }
    assert gz["next_attempt_at"] == "-"
    assert {k: sz[k] for k in ("pending", "due", "waiting", "held", "oldest_attempts")} == {
        "pending": 3,
        "due": 0,
        "waiting": 2,
        "held": 1,
        "oldest_attempts": 5,
    }
    assert sz["last_error"] == "UNAVAILABLE: connection refused"
    assert sz["next_attempt_at"].endswith("Z")
    text = run("outbox", "status", "--config", "tongban.toml", env=env)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split()[:6] == ["partner", "city", "pending", "due", "waiting", "held"]
    assert lines[2].split()[:6] == ["shenzhen", "440300", "3", "0", "2", "1"]
    assert "UNAVAILABLE: connection refused" in lines[2]
    assert lines[-2] == "4 pending for 2 partner(s)"
    assert re.fullmatch(
        r"1 gateway process\(es\) delivering; gw-1 pid 101, seen \d+s ago", lines[-1]
    )
    # The same heartbeats, gateway by gateway: written by gateways of revision 0010 (no
    # settings), so nothing differs.
    found = run("gateways", "--config", "tongban.toml", env=env)
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert re.fullmatch(r"gw-1 pid 101: delivering; started \S+Z, seen \d+s ago", lines[0])
    assert lines[1:] == [
        "  (no settings recorded: a gateway before revision 0011)",
        "1 live gateway process(es), 1 delivering; 1 not seen for 15s or more (--all lists them)",
    ]
    every = run("gateways", "--all", "--json", "--config", "tongban.toml", env=env)
    assert every.returncode == 0, every.stderr
    listed = json.loads(every.stdout)
    assert [(g["host"], g["live"], g["settings"]) for g in listed["gateways"]] == [
        ("gw-1", True, {}),
        ("gw-2", False, {}),
    ]
    assert listed["settings_differ"] == []
    broken = run("gateways", "--config", "missing.toml", env=env)
    assert broken.returncode == 2


def test_gateways_says_whether_the_live_replicas_run_alike(tmp_path) -> None:
    """`tongban gateways` exits 0 while the live gateways run the settings replicas must
    share alike, delivering or not, and 1 (naming the setting) once one does not."""
    env = {"TONGBAN_STORE__DATA_DIR": str(tmp_path)}
    assert run("db", "upgrade", "--config", "tongban.toml", env=env).returncode == 0
    now = time.time()
    same = json.dumps(
        {"audit.hash_algorithm": "sm3", "store.keys": "k1 active; k1 1a2b3c", "mappings": "m1"}
    )
    with sqlite3.connect(tmp_path / "tongban.db") as conn:
        conn.executemany(
            "INSERT INTO gateways (owner, host, pid, started_at, seen_at, settings, delivers)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                # with the partners whose inboxes it knows (not compared)
                (
                    "w-a",
                    "gw-1",
                    101,
                    now - 60,
                    now - 1,
                    same[:-1] + ', "inboxes": ["sz", "gz"]}',
                    1,
                ),
                ("w-b", "gw-2", 202, now - 60, now - 2, same, 0),
            ],
        )
    alike = run("gateways", "--config", "tongban.toml", env=env)
    assert alike.returncode == 0, alike.stderr
    lines = alike.stdout.splitlines()
    assert lines[0].startswith("gw-1 pid 101: delivering; started ")
    assert lines[1:4] == [
        "  audit.hash_algorithm: sm3",
        "  store.keys: k1 active; k1 1a2b3c",
        "  mappings: m1",
    ]
    assert lines[4] == "  inboxes known: gz, sz"
    assert lines[5].startswith("gw-2 pid 202: serving, not delivering; started ")
    assert lines[-2:] == [
        "2 live gateway process(es), 1 delivering",
        "the live gateways that recorded them run the settings replicas share alike",
    ]
    other = json.dumps({**json.loads(same), "store.keys": "k2 active; k1 1a2b3c, k2 4d5e6f"})
    with sqlite3.connect(tmp_path / "tongban.db") as conn:
        conn.execute("UPDATE gateways SET settings = ? WHERE owner = 'w-b'", (other,))
    differ = run("gateways", "--config", "tongban.toml", env=env)
    assert differ.returncode == 1, differ.stderr
    assert differ.stdout.splitlines()[-1] == (
        "settings differ, store.keys: k1 active; k1 1a2b3c at gw-1 pid 101;"
        " k2 active; k1 1a2b3c, k2 4d5e6f at gw-2 pid 202"
    )
    as_json = run("gateways", "--json", "--config", "tongban.toml", env=env)
    assert as_json.returncode == 1
    found = json.loads(as_json.stdout)
    assert found["settings_differ"] == ["store.keys"]
    assert [(g["host"], g["delivers"], g["live"], g["inboxes"]) for g in found["gateways"]] == [
        ("gw-1", True, True, ["gz", "sz"]),
        ("gw-2", False, True, []),
    ]


def test_the_demo_store_is_sealed_and_its_keys_rotate(tmp_path) -> None:
    """The demo seals every case record and note; an operator rotates to a new key and moves
    every stored value to it, while the audit log records the moves and the chain holds."""
    demo = tmp_path / "demo"
    out = run("demo", "--cases", "4", "--no-progress", "--data-dir", str(demo), timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 case records and 8 notes sealed (sm4-gcm, key 'demo'), 0 in the clear" in out.stdout
    keys = demo / "keys.toml"
    assert keys.stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(demo / "tongban.db") as conn:
        (record,) = conn.execute("SELECT canonical FROM cases LIMIT 1").fetchone()
    assert record.startswith("enc1:demo:")
    env = {"TONGBAN_STORE__DATA_DIR": str(demo)}
    # Without the keys, status says which key it lacks; traces still work (no personal data).
    lacking = run("db", "keys", "status", "--config", "tongban.toml", env=env)
    assert lacking.returncode == 1
    assert "sealed with keys the keys file lacks: demo" in lacking.stderr
    assert "cases.canonical: 4 sealed with demo" in lacking.stdout
    with sqlite3.connect(demo / "tongban.db") as conn:
        (xid,) = conn.execute("SELECT exchange_id FROM cases LIMIT 1").fetchone()
    trace = run("cases", "trace", xid, "--config", "tongban.toml", env=env)
    assert trace.returncode == 0, trace.stderr
    assert "[sealed with key demo]" in trace.stdout  # the notes, by their key's name
    nothing = run("db", "reencrypt", "--config", "tongban.toml", env=env)
    assert nothing.returncode == 2
    assert "set store.keys_file" in nothing.stderr
    # A second key: made active, the first still opens what it sealed.
    env["TONGBAN_STORE__KEYS_FILE"] = str(keys)
    new = run("db", "keys", "new", "--id", "k2", "--config", "tongban.toml", env=env)
    assert new.returncode == 0, new.stderr
    assert "key k2 (aes-256-gcm) added" in new.stdout
    again = run("db", "keys", "new", "--id", "k2", "--file", str(keys))
    assert again.returncode == 2
    assert "already has a key 'k2'" in again.stderr
    assert keys.stat().st_mode & 0o777 == 0o600
    bad = run("db", "reencrypt", "--batch", "0", "--config", "tongban.toml", env=env)
    assert bad.returncode == 2
    moved = run("db", "reencrypt", "--batch", "3", "--json", "--config", "tongban.toml", env=env)
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout)["columns"] == {
        "cases.canonical": {"read": 4, "sealed": 4, "changed": 0},
        "events.note": {"read": 8, "sealed": 8, "changed": 0},
    }
    status = run("db", "keys", "status", "--json", "--config", "tongban.toml", env=env)
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    walk = shown.pop("background_walk")
    assert shown == {
        "active": "k2",
        "wrapping_key": None,
        "values": {"cases.canonical": {"k2": 4}, "events.note": {"k2": 8}},
        "missing_keys": [],
        "unused_keys": ["demo"],
    }
    # The demo's gateway walked both columns under its key (nothing to move: it sealed them).
    assert {c: (w["key"], w["sealed"], w["problem"]) for c, w in walk.items()} == {
        "cases.canonical": ("demo", 0, None),
        "events.note": ("demo", 0, None),
    }
    assert all(w["done_at"] is not None for w in walk.values()), walk
    verify = run("audit", "verify", "--config", "tongban.toml", env=env)
    assert verify.returncode == 0, verify.stdout
    with sqlite3.connect(demo / "tongban.db") as conn:
        audited = conn.execute(
            "SELECT detail FROM audit WHERE action = 'store.reencrypt' ORDER BY seq"
        ).fetchall()
    assert [d for (d,) in audited] == [
        "3 values of cases.canonical sealed with key k2",
        "1 values of cases.canonical sealed with key k2",
        "3 values of events.note sealed with key k2",
        "3 values of events.note sealed with key k2",
        "2 values of events.note sealed with key k2",
    ]
    # Others may not read the keys file: every command refuses it, naming the fix.
    keys.chmod(0o644)
    refused = run("db", "keys", "status", "--config", "tongban.toml", env=env)
    assert refused.returncode == 2
    assert "chmod 600" in refused.stderr
