"""Running the synchronous work of concurrent calls together (``server.translate_batch_window_ms``).

Under many calls in flight on one connection, gRPC's per-call work (waking the loop, reading,
sending) and a call's own work (the same code and tables for every call) alternate call by call,
and both run slower for it: a translation cost ~60 µs of CPU inside the busy server against
~25 µs in a warm loop. In a *window*, calls wait for each other; when it closes, their work runs
back to back and the callers resume together, so their answers leave in one pass of the loop
(Translate at 64 in flight: server CPU per call ~382 -> ~272 µs, docs/performance.md).

Waiting only pays when calls queue up, and the server cannot see gRPC's queue: from the event
loop, 64 clients and 4 look alike (calls arrive one per loop pass). So the batcher measures:

* **Off** (calls run at once) until a *probe*: every ``probe_every`` seconds, the next call
  opens a full window. A window that gathered at least ``min_calls`` turns batching on.
* **On**: a window closes as soon as it holds as many calls as the last measured window did
  (the callers that were there will be there again), at ``max_calls``, or when ``window``
  runs out. Every ``remeasure_every``-th window runs its full length to measure again (so the
  batch grows with the load). Three measured windows (run to their end, or full) in a row
  with fewer than ``min_calls`` calls turn batching off: a few clients in lock step, each
  waiting for the others, lose more than they gain.

Clients with few calls in flight pay the probes: a call now and then waits up to one window
(up to one window every 100 ms; 0-4% of their throughput at 2-4 calls in flight, measured).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["CallBatcher"]

T = TypeVar("T")


class CallBatcher(Generic[T]):
    """Runs calls' work at once, or in windows once enough calls arrive together (see the
    module docstring). Each caller gets its own result or its own exception; the work of a
    call cancelled while it waited (its client went away, its deadline passed) is not run."""

    def __init__(
        self,
        window: float,
        max_calls: int,
        on_close: Callable[[int], None] | None = None,
        *,
        min_calls: int = 8,
        probe_every: float = 0.1,
        remeasure_every: int = 16,
    ) -> None:
        if window <= 0 or max_calls < 1 or min_calls < 1:
            raise ValueError("a batch window must be positive and hold at least one call")
        self.window = window
        self.max_calls = max_calls
        self.min_calls = min_calls
        self.probe_every = probe_every
        self.remeasure_every = remeasure_every
        #: Told how many calls each window held (the gateway's tongban_translate_batch_calls).
        self.on_close = on_close
        self._pending: list[tuple[asyncio.Future[T], Callable[[], T]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._batching = False
        self._target = max_calls  # the open window closes when it holds this many calls
        self._learned = max_calls  # calls the last measured window held (at most max_calls)
        self._small = 0  # measured windows in a row under min_calls
        self._next_probe = 0.0
        #: Windows closed, and calls run (in windows or at once), so far.
        self.batches = 0
        self.calls = 0

    @property
    def batching(self) -> bool:
        """Whether calls wait in windows now."""
        return self._batching

    @property
    def waiting(self) -> int:
        """Calls in the open window."""
        return len(self._pending)

    async def run(self, work: Callable[[], T]) -> T:
        """``work()``: at once while batching is off, else with the other calls of a window."""
        loop = asyncio.get_running_loop()
        if not self._pending and not self._batching and loop.time() < self._next_probe:
            self.calls += 1
            return work()
        fut: asyncio.Future[T] = loop.create_future()
        if not self._pending:
            # A probe, and every remeasure_every-th window, run their whole length (or fill up).
            full = not self._batching or self.batches % self.remeasure_every == 0
            self._target = self.max_calls if full else self._learned
        self._pending.append((fut, work))
        if len(self._pending) >= self._target:
            self._close(loop, expired=False)
        elif self._timer is None:
            self._timer = loop.call_later(self.window, self._close, loop, True)
        return await fut

    def _close(self, loop: asyncio.AbstractEventLoop, expired: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        n = len(batch)
        self.batches += 1
        if expired or n >= self.max_calls:
            self._measured(loop, n)
        if self.on_close is not None:
            self.on_close(n)
        for fut, work in batch:
            if fut.done():  # cancelled while waiting
                continue
            self.calls += 1
            try:
                result = work()
            except Exception as exc:  # noqa: BLE001 - each caller gets its own error
                fut.set_exception(exc)
            else:
                fut.set_result(result)

    def _measured(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        """A window that ran its length (or filled up) held ``n`` calls: the load."""
        self._learned = max(n, 1)
        if not self._batching:
            self._batching = n >= self.min_calls
        elif n < self.min_calls:
            self._small += 1
            if self._small >= 3:
                self._batching = False
                self._small = 0
        else:
            self._small = 0
        if not self._batching:
            self._next_probe = loop.time() + self.probe_every
