"""The instruction-count benchmark: reading callgrind's count, and workloads that run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from instructions import PERSON, WORKLOADS, _workload, collected, per_call

ROOT = Path(__file__).resolve().parents[2]

CALLGRIND = """==8192== Callgrind, a call-graph generating cache profiler
==8192== Events    : Ir
==8192== Collected : 3480112623
==8192==
==8192== I   refs:      3,480,112,623
"""


def test_the_count_is_read_from_callgrinds_report() -> None:
    assert collected(CALLGRIND) == 3_480_112_623
    with pytest.raises(RuntimeError, match="no instruction count"):
        collected("==1== valgrind: cannot start")


def test_per_call_subtracts_the_run_without_calls() -> None:
    assert per_call(3_000_000_400, 3_240_000_400, 1000) == 240_000


@pytest.mark.parametrize("name", [*WORKLOADS, *PERSON])
def test_every_workload_runs_and_answers(name: str) -> None:
    fn = _workload(name, ROOT)
    first, other = fn(0), fn(1)
    assert first is not None
    assert other is not None
    if name == "prepare":  # distinct cases get distinct exchange ids
        assert first.exchange_id != other.exchange_id
    if name == "write":  # a batch of 200 new cases, stored
        assert len(first) == 200
        assert all(isinstance(r, tuple) and r[1] is False for r in first)
    if name == "unary":  # a batch of 40 unary cases, prepared in the writer and stored
        assert len(first) == 40
        assert all(r.result[1] is False and r.observed for r in first)
        assert len({r.result[0] for r in first}) == 40  # each its own answer (exchange id)
    if name == "stream":  # a stream of 200 cases, every one accepted
        assert (first.accepted_count, first.rejected_count) == (200, 0)
    if name == "translate":
        assert first.versions == ("zhongshan.case@1", "shenzhen.case@1")
