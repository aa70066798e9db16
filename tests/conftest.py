"""Shared fixtures: the repository's mapping set, a copy of it to break, and a new database
(a SQLite file, a PostgreSQL schema of a test's own) with an engine on it."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import Engine

from adapters.mapping import MappingSet
from gateway.store.engine import make_engine

ROOT = Path(__file__).resolve().parent.parent
MAPPINGS = ROOT / "mappings"


@pytest.fixture(scope="session")
def mapping_set() -> MappingSet:
    """The mappings shipped in the repository, loaded once."""
    return MappingSet.load(MAPPINGS)


@pytest.fixture
def mappings_copy(tmp_path: Path) -> Path:
    """A private copy of the shipped mappings that a test may edit."""
    dest = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, dest)
    return dest


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A new schema in the ``test`` database, dropped with what it holds after the test; a
    store's URL reaches it with ``?options=-csearch_path%3D<name>``."""
    name = f"tb_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("host=127.0.0.1 dbname=test", autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    yield name
    with psycopg.connect("host=127.0.0.1 dbname=test", autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{name}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The URL of a new, empty database: a SQLite file, then (marked ``postgres``) a schema of
    the test's own on the PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{request.getfixturevalue('tmp_path') / 'store.db'}"
    schema = request.getfixturevalue("pg_schema")
    return f"postgresql+psycopg://127.0.0.1:5432/test?options=-csearch_path%3D{schema}"


@pytest.fixture
def db_engine(db_url: str) -> Iterator[Engine]:
    """An engine on :func:`db_url`'s database, made as the gateway makes its own, disposed
    after the test."""
    engine = make_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()
