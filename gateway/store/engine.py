"""Engines and migrations for SQLite (embedded, WAL) and PostgreSQL.

SQLite write transactions start with ``BEGIN IMMEDIATE`` so two writers never deadlock on a
lock upgrade; ``synchronous=FULL`` keeps a committed case through a power cut (group commit pays
for the fsync once per batch). PostgreSQL uses psycopg 3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect

__all__ = ["current_revision", "make_engine", "upgrade"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _normalise(url: str) -> str:
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, *, pool_size: int = 5, write: bool = True) -> Engine:
    """An engine for ``url``; for SQLite, ``write`` engines begin IMMEDIATE transactions."""
    url = _normalise(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        begin = "BEGIN IMMEDIATE" if write else "BEGIN"

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # Straight to the driver: through SQLAlchemy's statement execution, this BEGIN cost
            # a store read as much as its query (GetCase: ~15% of the gateway's samples).
            conn.connection.driver_connection.execute(begin)

        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def _config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision``."""
    with engine.begin() as conn:
        cfg = _config(engine)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    """The schema revision of the store, or None before any migration."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        row = conn.exec_driver_sql("SELECT version_num FROM alembic_version").first()
        return str(row[0]) if row else None
