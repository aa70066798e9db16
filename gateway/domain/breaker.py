"""A circuit breaker per partner: stop hammering a city that is down.

closed --(failure_threshold consecutive failures)--> open --(reset_seconds)--> half-open
half-open --(trial succeeds)--> closed;  half-open --(trial fails)--> open

While open, callers wait (with the injected ``sleep``) instead of calling; in half-open one trial
call goes through at a time. Waiting does not count as a delivery attempt.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["CircuitBreaker"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass
class CircuitBreaker:
    """Per-partner breaker; ``transitions`` records (time, state) for observers and tests."""

    name: str
    failure_threshold: int
    reset_seconds: float
    clock: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]
    state: str = CLOSED
    failures: int = 0
    open_until: float = 0.0
    trial_in_flight: bool = False
    transitions: list[tuple[float, str]] = field(default_factory=list)
    on_change: Callable[[str, str], None] | None = None

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.transitions.append((self.clock(), state))
            if self.on_change:
                self.on_change(self.name, state)

    async def before_call(self) -> None:
        """Return when a call may go through; wait while the circuit is open."""
        while True:
            if self.state == CLOSED:
                return
            now = self.clock()
            if self.state == OPEN:
                if now < self.open_until:
                    await self.sleep(self.open_until - now)
                    continue
                self._set(HALF_OPEN)
                self.trial_in_flight = False
            if not self.trial_in_flight:
                self.trial_in_flight = True
                return
            await self.sleep(min(0.05, self.reset_seconds))

    def record_success(self) -> None:
        """A call succeeded."""
        self.failures = 0
        self.trial_in_flight = False
        self._set(CLOSED)

    def record_failure(self) -> None:
        """A call failed with a retryable error."""
        self.failures += 1
        self.trial_in_flight = False
        if self.state == HALF_OPEN or self.failures >= self.failure_threshold:
            self.open_until = self.clock() + self.reset_seconds
            self._set(OPEN)
