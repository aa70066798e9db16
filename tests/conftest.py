"""Shared fixtures: the repository's mapping set, and a copy of it to break."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from adapters.mapping import MappingSet

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
