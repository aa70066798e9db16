"""CallBatcher: calls run at once until enough arrive together; then in windows, each caller
with its own result or error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from gateway.rpc.batching import CallBatcher


async def _together(batcher: CallBatcher[int], n: int, work: Callable[[int], int]) -> list[int]:
    return list(await asyncio.gather(*(batcher.run(lambda i=i: work(i)) for i in range(n))))


async def test_a_probe_window_runs_its_calls_together_in_arrival_order() -> None:
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


async def test_few_calls_run_at_once_between_probes() -> None:
    # A probe gathered 2 calls, fewer than min_calls: batching stays off, and until the next
    # probe a call runs at once, without waiting for a window (here a minute long).
    batcher: CallBatcher[int] = CallBatcher(0.02, 64, min_calls=4, probe_every=60)
    assert await _together(batcher, 2, lambda i: i) == [0, 1]
    assert not batcher.batching
    batcher.window = 60.0
    assert await asyncio.wait_for(batcher.run(lambda: 7), timeout=5) == 7
    assert (batcher.batches, batcher.calls) == (1, 3)


async def test_many_calls_together_turn_batching_on_and_windows_close_when_all_came() -> None:
    sizes: list[int] = []
    batcher: CallBatcher[int] = CallBatcher(0.02, 64, sizes.append, min_calls=4)
    assert await _together(batcher, 6, lambda i: i) == list(range(6))
    assert batcher.batching
    # The next window closes as soon as the 6 callers of the measured one are back, long
    # before its (now a minute long) timer.
    batcher.window = 60.0
    assert await asyncio.wait_for(_together(batcher, 6, lambda i: -i), timeout=5) == [
        0,
        -1,
        -2,
        -3,
        -4,
        -5,
    ]
    assert sizes == [6, 6]
    assert batcher.calls == 12


async def test_windows_with_few_calls_turn_batching_off() -> None:
    batcher: CallBatcher[int] = CallBatcher(
        0.01, 64, min_calls=4, probe_every=60, remeasure_every=1
    )
    await _together(batcher, 4, lambda i: i)
    assert batcher.batching
    # Lone calls, every window measured (run its length): three windows of one call (fewer
    # than 4) in a row turn batching off.
    for _ in range(3):
        assert batcher.batching
        await batcher.run(lambda: 0)
    assert not batcher.batching
    batcher.window = 60.0
    assert await asyncio.wait_for(batcher.run(lambda: 1), timeout=5) == 1  # at once again


async def test_a_lone_caller_after_a_busy_spell_does_not_wait_the_window() -> None:
    # Measured windows of one call teach the batcher to close a window at its first call.
    batcher: CallBatcher[int] = CallBatcher(0.01, 64, min_calls=4, remeasure_every=1000)
    await _together(batcher, 4, lambda i: i)
    assert batcher.batching
    await batcher.run(lambda: 0)  # runs its window's length: one call
    batcher.window = 60.0
    assert await asyncio.wait_for(batcher.run(lambda: 5), timeout=5) == 5


async def test_a_full_window_closes_at_once() -> None:
    batcher: CallBatcher[int] = CallBatcher(60.0, 3)  # the window alone would wait a minute
    assert await asyncio.wait_for(_together(batcher, 3, lambda i: i), timeout=5) == [0, 1, 2]
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
