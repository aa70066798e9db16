"""The migrations build the tables the code declares, on SQLite and on PostgreSQL; 0002
drops the outbox's unread exchange index and 0003 replaces its claim index with one by
partner, without touching its rows; 0004 adds the gateways table, 0005 the audit archives
table, 0006 the audit checkpoints table, 0007 the witnessed checkpoints table, 0008 the
background re-encryption's progress, 0009 the audit chain's hash function, 0010 the status
events recorded late, 0011 the settings each delivering gateway runs with and 0012 whether a
gateway with a heartbeat delivers."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from gateway.store.checkpoints import stored_checkpoints
from gateway.store.engine import _config, current_revision, upgrade
from gateway.store.reads import GatewaySeen, StoreReader
from gateway.store.rekey import reencrypt_progress
from gateway.store.witness import witnessed_checkpoints
from gateway.store.writer import GENESIS


def _head(engine: Engine) -> str:
    head = ScriptDirectory.from_config(_config(engine)).get_current_head()
    assert head is not None
    return head


def _differences(engine: Engine) -> list[Any]:
    """What alembic's autogenerate would change to make the store match the declared tables."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, SQLModel.metadata))


def _outbox_indexes(engine: Engine) -> set[str]:
    return {str(ix["name"]) for ix in inspect(engine).get_indexes("outbox")}


def _downgrade(engine: Engine, revision: str) -> None:
    """As :func:`gateway.store.engine.upgrade` goes up."""
    cfg = _config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def test_a_new_store_has_the_declared_tables(db_engine: Engine) -> None:
    upgrade(db_engine)
    assert current_revision(db_engine) == _head(db_engine)
    assert _differences(db_engine) == []


def test_0002_drops_the_outbox_exchange_index_and_keeps_the_rows(db_engine: Engine) -> None:
    upgrade(db_engine, "0001")
    assert _outbox_indexes(db_engine) == {"ix_outbox_claim", "ix_outbox_exchange_id"}
    with db_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO outbox (exchange_id, kind, target_partner, target_city, state,"
                " attempts, next_attempt_at, lease_until, last_error, created_at, replays)"
                " VALUES ('x-1', 'case', 'sz', '440300', 'pending', 0, 5.0, 0, '', 5.0, 0)"
            )
        )
    upgrade(db_engine, "0002")
    assert _outbox_indexes(db_engine) == {"ix_outbox_claim"}
    with db_engine.connect() as conn:
        rows = conn.execute(text("SELECT exchange_id, state FROM outbox")).all()
    assert [tuple(r) for r in rows] == [("x-1", "pending")]
    _downgrade(db_engine, "0001")  # and back, for a gateway of revision 0001
    assert _outbox_indexes(db_engine) == {"ix_outbox_claim", "ix_outbox_exchange_id"}


def test_0003_indexes_the_outbox_by_partner_and_keeps_the_rows(db_engine: Engine) -> None:
    upgrade(db_engine, "0002")
    with db_engine.begin() as conn:
        for i, partner in enumerate(["sz", "gz", "sz"]):
            conn.execute(
                text(
                    "INSERT INTO outbox (exchange_id, kind, target_partner, target_city, state,"
                    " attempts, next_attempt_at, lease_until, last_error, created_at, replays)"
                    f" VALUES ('x-{i}', 'case', '{partner}', '440300', 'pending', 0, {i}, 0, '',"
                    " 5.0, 0)"
                )
            )
    upgrade(db_engine)
    assert _outbox_indexes(db_engine) == {"ix_outbox_partner_due"}
    assert _differences(db_engine) == []
    with db_engine.connect() as conn:
        rows = conn.execute(text("SELECT exchange_id FROM outbox ORDER BY id")).all()
    assert [r[0] for r in rows] == ["x-0", "x-1", "x-2"]
    _downgrade(db_engine, "0002")  # and back, for a gateway of revision 0002
    assert _outbox_indexes(db_engine) == {"ix_outbox_claim"}


def test_0004_adds_the_gateways_table_and_takes_it_away(db_engine: Engine) -> None:
    upgrade(db_engine, "0003")
    assert "gateways" not in inspect(db_engine).get_table_names()
    upgrade(db_engine, "0004")
    assert current_revision(db_engine) == "0004"
    _downgrade(db_engine, "0003")  # and back, for a gateway of revision 0003
    assert "gateways" not in inspect(db_engine).get_table_names()


def test_0005_adds_the_audit_archives_table_and_takes_it_away(db_engine: Engine) -> None:
    upgrade(db_engine, "0004")
    assert "audit_archives" not in inspect(db_engine).get_table_names()
    # `tongban audit verify` (which does not migrate) reads it as a store with nothing archived
    assert StoreReader(db_engine).audit_archived() == (0, GENESIS)
    assert StoreReader(db_engine).audit_archives() == []
    upgrade(db_engine, "0005")
    assert current_revision(db_engine) == "0005"
    _downgrade(db_engine, "0004")  # and back, for a gateway of revision 0004
    assert "audit_archives" not in inspect(db_engine).get_table_names()


def test_0006_adds_the_audit_checkpoints_table_and_takes_it_away(db_engine: Engine) -> None:
    upgrade(db_engine, "0005")
    assert "audit_checkpoints" not in inspect(db_engine).get_table_names()
    # `tongban audit verify` (which does not migrate) reads it as a store with no checkpoints
    assert stored_checkpoints(db_engine) == []
    upgrade(db_engine, "0006")
    assert current_revision(db_engine) == "0006"
    _downgrade(db_engine, "0005")  # and back, for a gateway of revision 0005
    assert "audit_checkpoints" not in inspect(db_engine).get_table_names()


def test_0007_adds_the_witnessed_checkpoints_table_and_takes_it_away(db_engine: Engine) -> None:
    upgrade(db_engine, "0006")
    assert "witnessed_checkpoints" not in inspect(db_engine).get_table_names()
    # `tongban audit witnessed` (which does not migrate) reads it as a store that witnessed none
    assert witnessed_checkpoints(db_engine) == []
    upgrade(db_engine, "0007")
    assert current_revision(db_engine) == "0007"
    _downgrade(db_engine, "0006")  # and back, for a gateway of revision 0006
    assert "witnessed_checkpoints" not in inspect(db_engine).get_table_names()


def test_0008_adds_the_reencrypt_progress_table_and_takes_it_away(db_engine: Engine) -> None:
    upgrade(db_engine, "0007")
    assert "reencrypt_progress" not in inspect(db_engine).get_table_names()
    # `tongban db keys status` (which does not migrate) reads it as a store not yet walked
    assert reencrypt_progress(db_engine) == []
    upgrade(db_engine, "0008")
    assert current_revision(db_engine) == "0008"
    _downgrade(db_engine, "0007")  # and back, for a gateway of revision 0007
    assert "reencrypt_progress" not in inspect(db_engine).get_table_names()


def _columns(engine: Engine, table: str) -> set[str]:
    return {str(c["name"]) for c in inspect(engine).get_columns(table)}


def _heartbeat(engine: Engine, n: int, seen_at: float, **more: Any) -> None:
    """Gateway ``n``'s heartbeat row (owner g<n>, host h<n>, pid 6 + n, started at 1.0) as a
    gateway of an earlier revision writes it: the columns ``more`` names and no others."""
    row = {"owner": f"g{n}", "host": f"h{n}", "pid": 6 + n, "started_at": 1.0, "seen_at": seen_at}
    row.update(more)
    columns = ", ".join(row)
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO gateways ({columns}) VALUES (:{', :'.join(row)})"), row)


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_0009_records_the_audit_chains_hash_function_and_takes_it_away(db_engine: Engine) -> None:
    upgrade(db_engine, "0008")
    assert "hash_algorithm" not in _columns(db_engine, "audit_head")
    # `tongban audit verify` (which does not migrate) reads its chain as SHA-256 throughout,
    # and its archives without the column
    reader = StoreReader(db_engine)
    assert reader.audit_hash_algorithms() == ("sha256", "sha256")
    assert reader.audit_archives() == []
    upgrade(db_engine, "0009")
    assert current_revision(db_engine) == "0009"
    # every chain until now was SHA-256
    assert reader.audit_hash_algorithms() == ("sha256", "sha256")
    assert "hash_algorithm" in _columns(db_engine, "audit_archives")
    _downgrade(db_engine, "0008")  # and back, for a gateway of revision 0008
    assert "hash_algorithm" not in _columns(db_engine, "audit_head")
    assert "hash_algorithm" not in _columns(db_engine, "audit_archives")


def test_0010_marks_events_recorded_late_and_takes_the_mark_away(db_engine: Engine) -> None:
    upgrade(db_engine, "0009")
    with db_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO events (exchange_id, status, occurred_at, reported_by, note, "
                "created_at) VALUES ('x1', 'CASE_STATUS_SUBMITTED', 1.0, '442000', '', 1.0)"
            )
        )
    # `tongban cases trace` (which does not migrate) reads its history as never late
    (event,) = StoreReader(db_engine).events("x1", lenient=True)
    assert event.status == "CASE_STATUS_SUBMITTED"
    assert event.late is False
    upgrade(db_engine)
    assert current_revision(db_engine) == _head(db_engine)
    assert _differences(db_engine) == []
    # an event stored before was applied
    (event,) = StoreReader(db_engine).events("x1")
    assert event.status == "CASE_STATUS_SUBMITTED"
    assert event.late is False
    _downgrade(db_engine, "0009")  # and back, for a gateway of revision 0009
    assert "late" not in _columns(db_engine, "events")
    assert _count(db_engine, "events") == 1


def test_0011_records_each_gateway_s_settings_and_takes_them_away(db_engine: Engine) -> None:
    upgrade(db_engine, "0010")
    _heartbeat(db_engine, 1, 2.0)  # a gateway of 0010's heartbeat
    # `tongban outbox status` (which does not migrate) reads it as one that recorded none
    # (and, before 0012, as a delivering one)
    g1 = GatewaySeen("g1", "h1", 7, 1.0, 2.0, "", True)
    assert StoreReader(db_engine).gateways() == [g1]
    upgrade(db_engine, "0011")
    assert current_revision(db_engine) == "0011"
    assert StoreReader(db_engine).gateways() == [g1]
    _heartbeat(db_engine, 2, 3.0)  # a gateway of 0010 on a store at 0011
    assert StoreReader(db_engine).gateways()[0] == GatewaySeen("g2", "h2", 8, 1.0, 3.0, "", True)
    _downgrade(db_engine, "0010")  # and back, for a gateway of revision 0010
    assert "settings" not in _columns(db_engine, "gateways")
    assert _count(db_engine, "gateways") == 2


def test_0012_says_which_gateways_deliver_and_takes_it_away(db_engine: Engine) -> None:
    upgrade(db_engine, "0011")
    _heartbeat(db_engine, 1, 2.0, settings="{}")  # a gateway of 0011's heartbeat: it delivers
    g1 = GatewaySeen("g1", "h1", 7, 1.0, 2.0, "{}", True)
    assert StoreReader(db_engine).gateways() == [g1]  # read without the column
    upgrade(db_engine)
    assert current_revision(db_engine) == _head(db_engine) == "0012"
    assert _differences(db_engine) == []
    assert StoreReader(db_engine).gateways() == [g1]  # the rows before it delivered
    _heartbeat(db_engine, 2, 3.0, settings="{}")  # a gateway of 0011 on a store at 0012
    _heartbeat(db_engine, 3, 4.0, settings="{}", delivers=False)  # one of 0012, serving only
    assert [(g.owner, g.delivers) for g in StoreReader(db_engine).gateways()] == [
        ("g3", False),
        ("g2", True),
        ("g1", True),
    ]
    _downgrade(db_engine, "0011")  # and back, for a gateway of revision 0011
    assert "delivers" not in _columns(db_engine, "gateways")
    assert _count(db_engine, "gateways") == 3
