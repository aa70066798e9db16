"""A circuit breaker per partner: stop hammering a city that is down.

closed --(failure_threshold consecutive failures)--> open --(reset_seconds)--> half-open
half-open --(trial succeeds)--> closed;  half-open --(trial fails)--> open

Nobody waits on a breaker: :meth:`CircuitBreaker.admit` answers at once, either "call now" or
the time before which the partner should not be called, and the delivery puts its row back in
the outbox until then (a worker waiting here held its slot, and other cities' rows waited
behind it). In half-open one trial call goes through at a time. Being refused does not count as
a delivery attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["CircuitBreaker"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

#: While a half-open circuit's trial call is out, others are refused for this long (at most
#: ``reset_seconds``): by then the trial has usually settled the circuit one way or the other.
TRIAL_RECHECK_SECONDS = 1.0


@dataclass
class CircuitBreaker:
    """Per-partner breaker; ``transitions`` records (time, state) for observers and tests."""

    name: str
    failure_threshold: int
    reset_seconds: float
    clock: Callable[[], float]
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

    def refused_until(self) -> float | None:
        """When calls are refused now, until when; None when one may go through. Changes
        nothing (the claimer asks it to leave a refused partner's rows in the outbox)."""
        if self.state == CLOSED:
            return None
        now = self.clock()
        if self.state == OPEN:
            return self.open_until if now < self.open_until else None
        if self.trial_in_flight:
            return now + min(TRIAL_RECHECK_SECONDS, self.reset_seconds)
        return None

    def admit(self) -> float | None:
        """Take the right to call now (None), or learn until when calls are refused. An open
        circuit past its period turns half-open and admits one trial; the caller must then
        record the trial's outcome (or :meth:`release` it if it did not call)."""
        refused = self.refused_until()
        if refused is not None:
            return refused
        if self.state == OPEN:
            self._set(HALF_OPEN)
        if self.state == HALF_OPEN:
            self.trial_in_flight = True
        return None

    def release(self) -> None:
        """An admitted call was not made after all: let another trial through."""
        self.trial_in_flight = False

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
