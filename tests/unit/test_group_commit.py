"""The writer's commit delay: concurrent writes wait to share a commit (until the previous
commit's callers are back; the longer, the more callers it served, up to a cap), a lone write
never."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.errors import BackendUnavailable
from gateway.store.writer import Executor, Intent, StoreWriter


class _Write(Intent):
    def __init__(self, n: int) -> None:
        self.n = n


class _Recorder:
    """An executor that commits instantly and remembers each batch."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    async def __call__(self, intents: list[Intent], now: float) -> list[Any]:
        self.batches.append([i.n for i in intents])  # type: ignore[attr-defined]
        return [i.n for i in intents]  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def running(
    executor: Executor | None = None, **options: Any
) -> AsyncIterator[tuple[StoreWriter, _Recorder]]:
    """A started writer (on ``executor``, else a recorder) and the recorder; stopped after."""
    rec = _Recorder()
    writer = StoreWriter(None, lambda: 0.0, executor=executor or rec, **options)  # type: ignore[arg-type]
    writer.start()
    try:
        yield writer, rec
    finally:
        await writer.stop()


async def test_writes_arriving_during_the_delay_share_one_commit() -> None:
    async with running(commit_delay=0.2, commit_delay_per_caller=1.0) as (writer, rec):
        # Five at once: one batch (nothing before it, so no delay).
        assert await asyncio.gather(*(writer.submit(_Write(i)) for i in range(5))) == list(range(5))
        # The previous batch held several writes: the next one waits for company.
        first = writer.enqueue(_Write(10))
        await asyncio.sleep(0.05)  # well inside the writer's 0.2 s wait
        late = [writer.enqueue(_Write(n)) for n in (11, 12, 13)]
        assert await asyncio.gather(first, *late) == [10, 11, 12, 13]
        assert rec.batches == [[0, 1, 2, 3, 4], [10, 11, 12, 13]]


async def _after_batch_of(writer: StoreWriter, callers: int, late_after: float) -> None:
    """A batch of ``callers`` writes, then one write and, ``late_after`` seconds later, another."""
    await asyncio.gather(*(writer.submit(_Write(i)) for i in range(callers)))
    first = writer.enqueue(_Write(100))
    await asyncio.sleep(late_after)
    await asyncio.wait_for(asyncio.gather(first, writer.enqueue(_Write(101))), 5)


@pytest.mark.parametrize(
    ("callers", "shared"),
    [
        (2, False),  # waits 2 x 0.05 s: the write 0.3 s later comes too late
        (10, True),  # waits 10 x 0.05 s: the write 0.3 s later joins the same commit
    ],
)
async def test_the_delay_grows_with_the_callers_of_the_previous_commit(
    callers: int, shared: bool
) -> None:
    async with running(commit_delay=5.0, commit_delay_per_caller=0.05) as (writer, rec):
        await _after_batch_of(writer, callers, 0.3)
        assert rec.batches[1:] == ([[100, 101]] if shared else [[100], [101]])


async def test_the_wait_ends_once_the_previous_commits_callers_are_back() -> None:
    # 5 callers x 10 s, capped at 30 s: the wait would outlast the test if it ran its course.
    async with running(commit_delay=30.0, commit_delay_per_caller=10.0) as (writer, rec):
        assert await asyncio.gather(*(writer.submit(_Write(i)) for i in range(5))) == list(range(5))
        first = writer.enqueue(_Write(10))
        await asyncio.sleep(0.05)
        assert rec.batches == [[0, 1, 2, 3, 4]]  # the writer is waiting for company
        late = [writer.enqueue(_Write(n)) for n in (11, 12, 13, 14)]
        assert await asyncio.wait_for(asyncio.gather(first, *late), 5) == [10, 11, 12, 13, 14]
        assert rec.batches == [[0, 1, 2, 3, 4], [10, 11, 12, 13, 14]]


async def test_the_delay_is_capped() -> None:
    # 10 callers x 1 s would be 10 s; the cap is 0.1 s.
    async with running(commit_delay=0.1, commit_delay_per_caller=1.0) as (writer, rec):
        await _after_batch_of(writer, 10, 0.5)
        assert rec.batches[1:] == [[100], [101]]


async def test_a_lone_write_does_not_wait() -> None:
    async with running(commit_delay=30.0, commit_delay_per_caller=30.0) as (writer, rec):
        for n in range(3):
            # Would take 30 s if the delay applied; the previous batch held one write.
            assert await asyncio.wait_for(writer.submit(_Write(n)), 5) == n
        assert rec.batches == [[0], [1], [2]]


async def test_a_broken_executor_fails_its_batch_and_the_writer_goes_on() -> None:
    calls = []

    async def executor(intents: list[Intent], now: float) -> list[Any]:
        calls.append(len(intents))
        if len(calls) == 1:
            return []  # a bug: no result per intent
        return [i.n for i in intents]  # type: ignore[attr-defined]

    async with running(executor) as (writer, _):
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(writer.submit(_Write(1)), 5)
        assert await asyncio.wait_for(writer.submit(_Write(2)), 5) == 2


async def test_submit_many_queues_groups_and_keeps_each_result_in_order() -> None:
    rec = _Recorder()

    async def executor(intents: list[Intent], now: float) -> list[Any]:
        out = await rec(intents, now)
        return [ValueError(n) if n == 5 else n for n in out]

    async with running(executor, max_batch=4) as (writer, _):
        results = await writer.submit_many([_Write(n) for n in range(10)])
        assert [r if not isinstance(r, Exception) else "error" for r in results] == [
            0,
            1,
            2,
            3,
            4,
            "error",
            6,
            7,
            8,
            9,
        ]
        # Groups of at most max_batch; the first transaction took the first group only.
        assert rec.batches[0] == [0, 1, 2, 3]
        assert sorted(n for b in rec.batches for n in b) == list(range(10))


async def test_a_lone_stream_does_not_wait_between_its_groups() -> None:
    options = {"max_batch": 4, "commit_delay": 30.0, "commit_delay_per_caller": 30.0}
    async with running(**options) as (writer, _):
        # One caller's stream of 10 cases: three groups, each committed without waiting.
        results = await asyncio.wait_for(writer.submit_many([_Write(n) for n in range(10)]), 5)
        assert results == list(range(10))
        assert await asyncio.wait_for(writer.submit(_Write(10)), 5) == 10
