"""Re-encryption in the background: a serving gateway moves every sealed value to the active
key by itself, after a rotation and after sealing is turned on (docs/security.md#rotating-keys).

The walk goes through each sealed column (``cases.canonical``, then ``events.note``) in steps
of ``store.reencrypt_batch_rows`` rows, each a transaction of the store's writer that seals what
is in the clear or under another key, with an audit entry (``store.reencrypt``), and records
how far it got (:class:`~gateway.store.rekey.WalkIntent`). It is paced like retention's purge,
to at most half of the writer's time, so submissions are not held behind it.

It walks once when the gateway starts (a walk that is done under the active key costs one
small transaction) and again when the keys file, read again while serving, names another
active key, after ``store.reencrypt_settle_seconds``: every gateway sharing the store reads the
file within a second, and the values they seal meanwhile with the old key are then behind
the walk. A gateway that reads the new key later than that (an old copy of the file) may
have sealed with the old key after the walk ended: it walks on from where the walk ended.

A value that does not open (altered, or sealed with a key the file lacks) stops the walk
there, named in the gateway's log, in ``tongban db keys status`` and by
``tongban_store_reencrypt_stopped``; it is tried again when the keys file changes.
``tongban db reencrypt`` remains for doing it all at once, by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from ..store.rekey import WalkIntent, WalkStep
from ..store.sealing import Keyring
from ..store.store import Store

__all__ = ["CHECK_SECONDS", "PACED_SHARE", "RETRY_SECONDS", "ReencryptService"]

log = logging.getLogger("tongban.reencrypt")

#: How often a serving gateway looks whether its keys changed (no store access).
CHECK_SECONDS = 1.0
#: How long after a walk failed (the store down) it is tried again.
RETRY_SECONDS = 30.0
#: The most of its writer's time the walk takes (as retention's purge).
PACED_SHARE = 0.5


class ReencryptService:
    """Walks the sealed columns to the active key, in the background (see the module)."""

    def __init__(
        self,
        store: Store,
        *,
        batch_rows: int = 200,
        settle_seconds: float = 10.0,
        actor: str = "gateway",
        on_sealed: Callable[[str, int], None] | None = None,
        on_stopped: Callable[[bool], None] | None = None,
    ) -> None:
        self.store = store
        self.batch_rows = batch_rows
        self.settle_seconds = settle_seconds
        self.actor = actor
        self.on_sealed = on_sealed  # (column, values sealed by one step)
        self.on_stopped = on_stopped  # the walk stopped at a value that does not open, or not

    async def walk(
        self,
        *,
        retry: bool = False,
        tail: bool = False,
        share: float = 1.0,
        stop: asyncio.Event | None = None,
    ) -> tuple[WalkStep, int]:
        """Step until every column is done under the active key, the walk stops at a value
        that does not open, or ``stop`` is set; the last step, and the values sealed.
        ``retry`` and ``tail`` are :class:`~gateway.store.rekey.WalkIntent`'s, for the first
        step; ``share`` < 1 paces the walk (after each step, a wait until the step's time is
        ``share`` of the time since it began)."""
        sealed = 0
        while True:
            started = time.monotonic()
            step: WalkStep = await self.store.write(
                WalkIntent(self.actor, self.batch_rows, retry, tail)
            )
            retry = tail = False
            for column, n in step.sealed:
                if n:
                    sealed += n
                    log.debug("values re-encrypted", extra={"column": column, "sealed": n})
                    if self.on_sealed is not None:
                        self.on_sealed(column, n)
            if step.done or step.problem:
                return step, sealed
            if share < 1.0:
                await asyncio.sleep((time.monotonic() - started) * (1.0 / share - 1.0))
            if stop is not None and stop.is_set():
                return step, sealed

    async def run(self, stop: asyncio.Event) -> None:
        """Walk at the start and after each change of the keys, paced, until ``stop``."""
        walked: Keyring | None = None  # the keys of the last walk that ended
        seen: Keyring | None = None  # the keys last looked at, and since when
        seen_at = retry_at = 0.0
        # Whether this gateway sealed with another key than the active one since its last walk:
        # if the other gateways' walk ended meanwhile, what it wrote since is behind that walk.
        tail = False
        while not stop.is_set():
            keyring, now = self.store.keyring, time.monotonic()
            if keyring is not seen:
                if seen is not None and keyring is not None and seen.active != keyring.active:
                    tail = True
                seen, seen_at, retry_at = keyring, now, 0.0
            wait = CHECK_SECONDS
            if keyring is not None and keyring is not walked and now >= retry_at:
                # A new active key read while serving: the other gateways read it within a
                # second; what they seal with the old key until then is to be behind the walk.
                settling = walked is not None and keyring.active != walked.active
                left = seen_at + self.settle_seconds - now if settling else 0.0
                if left > 0:
                    wait = min(wait, left)
                elif await self._walk(keyring, stop, tail):
                    walked, tail = keyring, False
                else:
                    retry_at = time.monotonic() + RETRY_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)

    async def _walk(self, keyring: Keyring, stop: asyncio.Event, tail: bool) -> bool:
        """One paced walk, logged; whether it ended (done, or stopped at a value)."""
        try:
            step, sealed = await self.walk(retry=True, tail=tail, share=PACED_SHARE, stop=stop)
        except Exception as exc:  # noqa: BLE001 - the store down: tried again later
            log.warning(
                "re-encryption paused; trying again",
                extra={"error": f"{type(exc).__name__}: {exc}"},
            )
            return False
        if step.problem:
            log.error(
                "re-encryption stopped at a value that does not open; it goes on when the "
                "keys file changes",
                extra={"problem": step.problem, "sealed": sealed},
            )
        elif step.done:
            log.info(
                "every sealed value is under the active key",
                extra={"sealing_key": keyring.active, "sealed": sealed},
            )
        else:
            return False  # the gateway is stopping
        if self.on_stopped is not None:
            self.on_stopped(bool(step.problem))
        return True
