"""The writer's INSERT statements: constants written into the SQL, every column accounted for."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table

from gateway.store import writer
from gateway.store.writer import NewRows, _literal

STATEMENTS = [v for v in vars(writer).values() if isinstance(v, NewRows)]


def test_literals() -> None:
    assert _literal(None) == "NULL"
    assert _literal("it's") == "'it''s'"
    assert _literal("") == "''"
    assert _literal(0) == "0"
    assert _literal(0.0) == "0.0"
    assert float(_literal(0.1)) == 0.1
    assert (_literal(False), _literal(True)) == ("FALSE", "TRUE")


def test_placeholders_follow_the_driver() -> None:
    t = Table("t", MetaData(), Column("a", Integer), Column("b", String), Column("c", String))
    rows = NewRows(t, ("a", "b"), c="x")
    assert rows.sql("?") == "INSERT INTO t (a, b, c) VALUES (?, ?, 'x')"
    assert rows.sql("%s") == "INSERT INTO t (a, b, c) VALUES (%s, %s, 'x')"


def test_utf8_columns_are_read_as_text() -> None:
    t = Table("t", MetaData(), Column("a", Integer), Column("b", String))
    rows = NewRows(t, ("a", "b"), utf8=("b",))
    assert rows.sql("?") == "INSERT INTO t (a, b) VALUES (?, CAST(? AS TEXT))"
    assert rows.sql("%s") == "INSERT INTO t (a, b) VALUES (%s, convert_from(%s, 'UTF8'))"
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (a INTEGER, b TEXT)")
    db.execute(rows.sql("?"), (1, '{"name":"陈嘉怡"}'.encode()))
    assert db.execute("SELECT typeof(b), b FROM t").fetchone() == ("text", '{"name":"陈嘉怡"}')


def test_an_unknown_column_is_refused() -> None:
    t = Table("t", MetaData(), Column("a", Integer))
    with pytest.raises(ValueError, match="no column"):
        NewRows(t, ("a", "b"))
    with pytest.raises(ValueError, match="no column"):
        NewRows(t, ("a",), z=1)
    with pytest.raises(ValueError, match="no column"):
        NewRows(t, ("a",), utf8=("b",))


@pytest.mark.parametrize("rows", STATEMENTS, ids=lambda r: f"{r.table.name}:{len(r.columns)}")
def test_every_column_is_written_or_generated(rows: NewRows) -> None:
    """A column added to a table must be bound or fixed by every statement that inserts into
    it, unless the database fills it (an autoincrement key) or it may stay NULL."""
    written = set(rows.columns) | set(rows.fixed)
    for column in rows.table.c:
        if column.name in written:
            continue
        generated = column.primary_key and isinstance(column.type, Integer)
        assert generated or column.nullable, f"{rows.table.name}.{column.name} is not written"
    assert len(rows.columns) + len(rows.fixed) == len(written)  # no column twice


@pytest.mark.parametrize("rows", STATEMENTS, ids=lambda r: f"{r.table.name}:{len(r.columns)}")
def test_the_largest_statement_binds_fewer_values_than_any_sqlite_allows(rows: NewRows) -> None:
    """SQLite before 3.32 takes at most 999 bound values a statement (PostgreSQL 65535)."""
    assert max(writer.ROWS_PER_INSERT) * len(rows.columns) <= 999
