"""The writer's multi-row INSERTs: every row once, in order, with its values, whatever the
number of rows, on SQLite and on PostgreSQL; and few statements for many rows."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, Text, create_engine
from sqlalchemy.engine import Engine

from gateway.store.writer import ROWS_PER_INSERT, Batch, NewRows

SIZES = [0, 1, 2, 3, 7, 8, 9, 10, 63, 64, 65, 73, 74, 75, 128, 200, 257]


def _table() -> Table:
    return Table(
        "t",
        MetaData(),
        Column("seq", Integer, primary_key=True, autoincrement=True),
        Column("a", Integer, nullable=False),
        Column("b", Text, nullable=False),
        Column("c", String(10), nullable=False),
        Column("d", Integer, nullable=True),
    )


def _insert(engine: Engine, table: Table, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    table.metadata.drop_all(engine)
    table.metadata.create_all(engine)
    into = NewRows(table, ("a", "b", "d"), utf8=("b",), c="fixed")
    with engine.begin() as conn:
        Batch(conn, 0.0, engine.dialect.name == "postgresql")._insert_many(into, rows)
    with engine.connect() as conn:
        return [
            tuple(r) for r in conn.exec_driver_sql("SELECT seq, a, b, c, d FROM t ORDER BY seq")
        ]


def test_every_row_once_in_order_with_its_values(db_engine: Engine) -> None:
    table = _table()
    for n in SIZES:
        rows = [
            (i, f'{{"i":{i},"name":"陈嘉怡"}}'.encode(), i if i % 3 else None) for i in range(n)
        ]
        got = _insert(db_engine, table, rows)
        want = [
            (i + 1, i, f'{{"i":{i},"name":"陈嘉怡"}}', "fixed", r[2]) for i, r in enumerate(rows)
        ]
        assert got == want, n


def test_many_rows_take_few_statements(tmp_path: Any) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'rows.db'}")
    table = _table()
    table.metadata.create_all(engine)
    inserts: list[str] = []
    into = NewRows(table, ("a", "b", "d"), utf8=("b",), c="fixed")
    with engine.begin() as conn:
        driver = conn.connection.driver_connection
        assert driver is not None
        driver.set_trace_callback(lambda sql: inserts.append(sql) if "INSERT" in sql else None)
        rows = [(i, b"{}", None) for i in range(200)]
        Batch(conn, 0.0, False)._insert_many(into, rows)
        driver.set_trace_callback(None)
    # 200 rows: 3 statements of 64 rows, 1 of 8.
    assert ROWS_PER_INSERT == (64, 8, 2)
    assert [s.count("'fixed')") for s in inserts] == [64, 64, 64, 8]  # a group's last value
    engine.dispose()


def test_statements_name_each_row_s_values() -> None:
    into = NewRows(_table(), ("a", "b"), utf8=("b",), c="x")
    assert (
        into.sql("?", 1)
        == into.sql("?")
        == "INSERT INTO t (a, b, c) VALUES (?, CAST(? AS TEXT), 'x')"
    )
    assert into.sql("?", 2) == (
        "INSERT INTO t (a, b, c) VALUES (?, CAST(? AS TEXT), 'x'), (?, CAST(? AS TEXT), 'x')"
    )
    assert into.sql("%s", 2) == (
        "INSERT INTO t (a, b, c) VALUES (%s, convert_from(%s, 'UTF8'), 'x'), "
        "(%s, convert_from(%s, 'UTF8'), 'x')"
    )
