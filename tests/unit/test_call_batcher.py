"""CallBatcher: calls of one window run together, each with its own result or error."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.rpc.batching import CallBatcher


async def test_a_window_runs_its_calls_together_in_arrival_order() -> None:
    batcher: CallBatcher[int] = CallBatcher(0.05, 64)
    ran: list[int] = []

    def work(n: int) -> int:
        ran.append(n)
        return n * n

    started = time.perf_counter()
    calls = [asyncio.ensure_future(batcher.run(lambda n=n: work(n))) for n in range(5)]
    await asyncio.sleep(0)
    assert ran == []  # nothing runs before the window closes
    assert batcher.waiting == 5
    assert await asyncio.gather(*calls) == [0, 1, 4, 9, 16]
    assert time.perf_counter() - started >= 0.045
    assert ran == [0, 1, 2, 3, 4]
    assert (batcher.batches, batcher.calls, batcher.waiting) == (1, 5, 0)
    # The next call opens a new window.
    assert await batcher.run(lambda: work(7)) == 49
    assert (batcher.batches, batcher.calls) == (2, 6)


async def test_a_full_window_closes_at_once() -> None:
    batcher: CallBatcher[int] = CallBatcher(60.0, 3)  # the window alone would wait a minute
    results = await asyncio.wait_for(
        asyncio.gather(*(batcher.run(lambda n=n: n) for n in range(3))), timeout=5
    )
    assert results == [0, 1, 2]
    assert batcher.batches == 1


async def test_each_caller_gets_its_own_error() -> None:
    batcher: CallBatcher[str] = CallBatcher(0.01, 64)

    def bad() -> str:
        raise ValueError("record 2 is bad")

    calls = [batcher.run(lambda: "a"), batcher.run(bad), batcher.run(lambda: "c")]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[0] == "a"
    assert results[2] == "c"
    assert isinstance(results[1], ValueError)
    assert str(results[1]) == "record 2 is bad"


async def test_the_work_of_a_cancelled_call_is_not_run() -> None:
    batcher: CallBatcher[int] = CallBatcher(0.05, 64)
    ran: list[int] = []

    def work(n: int) -> int:
        ran.append(n)
        return n

    kept = asyncio.ensure_future(batcher.run(lambda: work(1)))
    gone = asyncio.ensure_future(batcher.run(lambda: work(2)))
    await asyncio.sleep(0)
    gone.cancel()
    assert await kept == 1
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert ran == [1]


def test_a_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        CallBatcher(0, 64)
    with pytest.raises(ValueError, match="at least one"):
        CallBatcher(0.01, 0)
