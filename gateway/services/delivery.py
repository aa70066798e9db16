"""Delivery workers: claim outbox rows, translate, deliver with retries, settle the outcome.

Each worker process runs one claimer and ``delivery.workers`` concurrent deliveries. Claims take
each partner's due rows in turn, at most 4 x its ``max_in_flight`` held at once, and a partner
gets at most ``max_in_flight`` calls at once: one city's backlog or slowness does not hold back
deliveries to the others. With ``max_in_flight_total`` the processes delivering from the store
(each writes a heartbeat there every few seconds) share a partner's calls between them. Rows are
leased (PostgreSQL claims use FOR UPDATE SKIP LOCKED, so replicas never take the same row); a
lease that is not settled in time returns the row to the pool, so a crashed process loses
nothing. Before each attempt a delivery makes sure its lease outlasts the attempt's timeout by
half a lease (extending it, owner-checked, when it would not: a claimed row may wait behind
others in its process's queue), and stops when the lease was lost to another worker, so a live
replica does not deliver a row that another has claimed since. Delivery is at least once, with
the exchange id as the idempotency key, which makes it effectively once at a partner that
honours the key.

Retries use tenacity: exponential backoff with jitter per partner policy, only on retryable
outcomes (gRPC UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED; HTTP 408/429/5xx),
honouring the partner's RetryInfo / Retry-After. A worker waits out short backoffs itself (up to
``retry.hold_max_seconds``); a longer one puts the row back in the outbox with its next attempt
time, and so does a partner's open circuit (which also defers that partner's other due rows at
once, and keeps claims off them): a city that is down never holds the workers that deliver to
the others. Attempts are persisted, so a restart continues the count. Permanent errors and
exhausted retries go to the dead-letter queue with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base
from tenacity.wait import wait_exponential_jitter

from adapters.mapping import MappingError, RecordInvalidError
from adapters.mapping.canonical_io import case_message
from adapters.transports import PartnerTransport, TransportError
from tongban.v1 import common_pb2, records_pb2
from tongban.v1 import partner_inbox_pb2 as inbox

from ..domain.breaker import CircuitBreaker
from ..mappings import MappingRegistry
from ..privacy import scrub
from ..settings import RetryPolicy, Settings
from ..store.intents import (
    ClaimedRow,
    ClaimIntent,
    DeferPartnerIntent,
    DeliveredIntent,
    ExtendLeaseIntent,
    FailedIntent,
    HeartbeatIntent,
    ReleaseIntent,
    RetireIntent,
)
from ..store.reads import CaseRecord, EventRecord
from ..store.sealing import SealError
from ..store.store import Store
from ..timestamps import timestamp
from .replicas import INBOXES, Replica, agreed_settings, differences

__all__ = ["DeliveryObserver", "DeliveryService"]

log = logging.getLogger("tongban.delivery")

#: Retryable outcomes that do not count against a partner's circuit: it answered, and only this
#: request must come again later (ABORTED: a peer gateway's OUT_OF_ORDER, a status that came
#: before an earlier one of its case). A burst of them would otherwise open the circuit and
#: hold back every delivery to a partner that is up.
_ANSWERED = frozenset({"ABORTED"})


class _Permanent(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _LeaseLost(Exception):
    """The row's lease expired and another worker claimed it: that worker delivers it."""


class _Refused(Exception):
    """The partner's circuit refuses calls until ``until``: the row waits in the outbox."""

    def __init__(self, until: float) -> None:
        super().__init__(until)
        self.until = until


class _WaitLongerThan(stop_base):
    """Stop retrying in place when the next wait is longer than ``seconds`` (the row is then
    put back in the outbox for its next attempt, and the worker is free)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, retry_state: RetryCallState) -> bool:
        return retry_state.upcoming_sleep > self.seconds


@dataclass
class DeliveryObserver:
    """Counts what deliveries do (metrics plug in here); also handy in tests."""

    attempts: dict[tuple[str, str], int] = field(default_factory=dict)  # (city, outcome)
    deferrals: dict[tuple[str, str], int] = field(default_factory=dict)  # (city, reason)
    retry_delays: list[float] = field(default_factory=list)

    def attempt(self, city: str, outcome: str) -> None:
        """One call to a partner ended with ``outcome`` (ok, retryable, permanent)."""
        self.attempts[(city, outcome)] = self.attempts.get((city, outcome), 0) + 1

    def retry_delay(self, city: str, seconds: float) -> None:
        """A retry is scheduled after ``seconds``."""
        self.retry_delays.append(seconds)

    def settled(self, city: str, outcome: str) -> None:
        """A row was settled: delivered or dead."""

    def deferred(self, city: str, reason: str, n: int = 1) -> None:
        """``n`` rows were put back in the outbox for a later attempt (``backoff``, or
        ``circuit_open``)."""
        self.deferrals[(city, reason)] = self.deferrals.get((city, reason), 0) + n

    def circuit(self, partner: str, state: str) -> None:
        """A partner's circuit changed state."""

    def calls(self, partner: str, n: int) -> None:
        """``n`` calls to ``partner`` are in progress in this process."""

    def gateways(self, n: int) -> None:
        """``n`` gateway processes deliver from the store (this one included, if it does)."""

    def replicas(self, differ: set[str]) -> None:
        """Other live gateways run the settings in ``differ`` (of replicas.AGREED) otherwise."""


#: How often a gateway process writes its heartbeat, and how long one counts it as live.
HEARTBEAT_SECONDS = 5.0
LIVE_SECONDS = 15.0
#: How long other gateways must run a shared setting otherwise before it is logged.
REPLICAS_DIFFER_LOG_SECONDS = 60.0
#: Rows of gateways not seen for this long (killed) are removed when another one stops.
FORGET_SECONDS = 86400.0

#: How long a claimed row's case, read with its claim, may be used for its first attempt.
PREFETCH_FRESH_SECONDS = 1.0

#: How often a claim also takes rows of partners no longer configured (to dead-letter them),
#: unless another live gateway knows their inboxes (a rolling change of the partners).
SWEEP_SECONDS = 10.0

#: How long a row whose case's sealed record does not open here waits before it is tried again.
SEALED_RETRY_SECONDS = 60.0


async def _lost() -> str:
    return "lost"


class DeliveryService:
    """Delivers outbox rows to partner transports."""

    def __init__(
        self,
        settings: Settings,
        mappings: MappingRegistry,
        store: Store,
        transports: dict[str, PartnerTransport],
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        observer: DeliveryObserver | None = None,
        owner: str | None = None,
    ) -> None:
        self.settings = settings
        self.mappings = mappings
        self.store = store
        self.transports = transports
        self.clock = clock
        self.sleep = sleep
        self.observer = observer or DeliveryObserver()
        self.owner = owner or f"w-{uuid.uuid4().hex[:12]}"
        self.breakers: dict[str, CircuitBreaker] = {}
        self._queue: asyncio.Queue[ClaimedRow] = asyncio.Queue()
        # Claimed rows not yet settled (queued, being delivered, or their outcome committing).
        # Row id -> its partner while it waits for or is in a call; "" once its outcome is
        # committing (it no longer counts against its partner's room in claims).
        self._inflight: dict[int, str] = {}
        # Outcomes being committed, and open circuits' deferrals: awaited before the store closes.
        self._settling: set[asyncio.Task[Any]] = set()
        # Claimed rows' cases and events, read for a whole claim at once (row id -> when read,
        # case, event); a row's first attempt uses them while fresh, later attempts read again.
        self._prefetched: dict[int, tuple[float, CaseRecord | None, EventRecord | None]] = {}
        self._next_sweep = 0.0
        # Partners with an inbox that other live gateways know and this one does not (their
        # heartbeats): their rows are left to those gateways, not swept up and dead-lettered.
        # None until this process's first heartbeat has told it; it sweeps nothing before.
        self._known_elsewhere: frozenset[str] | None = None
        # Only partners with an inbox have rows to claim. Each gets at most its max_in_flight
        # calls at once; by default every worker but one when other partners have inboxes too
        # (a slow partner then leaves a worker to the others), else every worker.
        self._peers = settings.peers
        self._inboxes = tuple(
            p for p, c in settings.partners.items() if c.inbox.transport != "none"
        )
        workers = settings.delivery.workers
        self._default_cap = max(workers - 1, 1) if len(self._inboxes) > 1 else workers
        self._caps = {
            p: c.max_in_flight for p, c in settings.partners.items() if c.max_in_flight is not None
        }
        # Partners whose calls are capped across every gateway delivering from the store: each
        # of the gateways seen lately (heartbeats in the store) takes an equal share.
        self._totals = {
            p: c.max_in_flight_total
            for p, c in settings.partners.items()
            if c.max_in_flight_total is not None
        }
        self.live_gateways = 1
        self.heartbeat_seconds = HEARTBEAT_SECONDS
        # What the other live gateways run otherwise, of replicas.AGREED (at the last heartbeat).
        self.replica_differences: dict[str, list[str]] = {}
        self._differ_since: float | None = None  # since when they have (monotonic)
        self._differ_logged: frozenset[str] = frozenset()  # the settings the last WARNING named
        # Calls in progress per partner, and rows waiting for a partner's call to end (it had
        # max_in_flight of them when they were taken from the queue).
        self._calls: dict[str, int] = {}
        self._parked: dict[str, deque[ClaimedRow]] = {}

    def breaker(self, partner: str) -> CircuitBreaker:
        """The circuit breaker of one partner."""
        if partner not in self.breakers:
            cfg = self.settings.partners[partner].circuit or self.settings.delivery.circuit
            self.breakers[partner] = CircuitBreaker(
                partner,
                cfg.failure_threshold,
                cfg.reset_seconds,
                self.clock,
                on_change=self._circuit_changed,
            )
        return self.breakers[partner]

    def _circuit_changed(self, partner: str, state: str) -> None:
        self.observer.circuit(partner, state)
        if state == "open":
            self._background(self._defer_partner(partner, self.breakers[partner].open_until))

    def _background(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _defer_partner(self, partner: str, until: float) -> int:
        """Move the partner's due rows past its open circuit in one statement: claimed, they
        would only be refused and put back one by one, and ahead of other cities' rows."""
        try:
            n: int = await self.store.write(DeferPartnerIntent(partner, until))
        except Exception as exc:  # noqa: BLE001 - its rows are then refused one at a time
            log.warning(
                "deferring a partner's deliveries failed",
                extra={"partner": partner, "error": type(exc).__name__},
            )
            return 0
        if n:
            self.observer.deferred(self.settings.partners[partner].city, "circuit_open", n)
            log.info(
                "circuit open: deliveries deferred",
                extra={"partner": partner, "rows": n, "seconds": round(until - self.clock(), 3)},
            )
        return n

    def policy(self, partner: str) -> RetryPolicy:
        """The retry policy for deliveries to ``partner``."""
        return self.settings.partners[partner].retry or self.settings.delivery.retry

    # -- loop --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and deliver until ``stop`` is set."""
        cfg = self.settings.delivery
        workers = [
            asyncio.create_task(self._worker(stop), name=f"delivery-{i}")
            for i in range(cfg.workers)
        ]
        workers.append(
            asyncio.create_task(self._heartbeat(stop, delivers=True), name="delivery-heartbeat")
        )
        try:
            while not stop.is_set():
                free = cfg.batch_size - self._queue.qsize()
                claimed: list[ClaimedRow] = []
                if free > 0 and len(self._inflight) < cfg.workers * 4:
                    try:
                        claimed = await self._claim(free)
                    except Exception as exc:  # noqa: BLE001 - store down: wait and retry
                        log.warning("claim failed", extra={"error": type(exc).__name__})
                fresh = [row for row in claimed if row.id not in self._inflight]
                if fresh:
                    await self._prefetch(fresh)
                for row in fresh:
                    self._inflight[row.id] = row.target_partner
                    self._queue.put_nowait(row)
                if not claimed:
                    # Woken at once by a new outbox row in this process; polling covers others.
                    self.store.outbox_ready.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self.store.outbox_ready.wait(), cfg.poll_interval_seconds
                        )
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            # Outcomes the partners gave are committed before the store closes.
            await asyncio.gather(*self._settling, return_exceptions=True)
            await self._release()
            await self._retire()

    async def announce(self, stop: asyncio.Event) -> None:
        """The heartbeat of a gateway serving without delivering (``delivery.enabled =
        false``), until ``stop``: the replicas sharing its store compare the settings they
        must share with its, and it with theirs. It takes no share of the partners'
        ``max_in_flight_total``."""
        try:
            await self._heartbeat(stop, delivers=False)
        finally:
            await self._retire()

    async def _retire(self) -> None:
        """This process's heartbeat row goes (with those of gateways killed long ago)."""
        with contextlib.suppress(Exception):  # else its heartbeat simply goes stale
            await self.store.write(RetireIntent(self.owner, self.clock() - FORGET_SECONDS))

    async def _release(self) -> None:
        """Hand back the rows still held (queued, waiting for a call slot, or their call cut
        short by the stop): with replicas, another takes them now rather than after their
        lease. A call cut short may have reached the partner: the idempotency key covers it."""
        held = sorted(self._inflight)
        self._queue = asyncio.Queue()
        self._parked.clear()
        self._inflight.clear()
        if not held:
            return
        try:
            n = await self.store.write(ReleaseIntent(self.owner, held))
        except Exception as exc:  # noqa: BLE001 - their leases run out instead
            log.warning("releasing held deliveries failed", extra={"error": type(exc).__name__})
            return
        log.info("held deliveries released", extra={"rows": n})

    async def _claim(self, limit: int) -> list[ClaimedRow]:
        """Lease up to ``limit`` due rows, partner by partner and interleaved, leaving those of
        partners whose circuits refuse calls in the outbox; now and then, rows of partners no
        longer configured, or without an inbox now, too."""
        cfg = self.settings.delivery
        partners = self._inboxes
        # Partners whose circuits refuse calls stay in the outbox, and each partner is claimed
        # for up to 4 x its max_in_flight in this process's hands (queued, waiting for a call
        # slot or in a call; the process holds 4 x delivery.workers): a slow partner's backlog
        # does not fill the process, a partner alone has all of it.
        skip = tuple(p for p, b in self.breakers.items() if b.refused_until() is not None)
        held = Counter(self._inflight.values())
        room = tuple(max(4 * self.max_in_flight(p) - held[p], 0) for p in partners)
        claimed: list[ClaimedRow] = await self.store.write(
            ClaimIntent(self.owner, limit, cfg.lease_seconds, skip, partners, room)
        )
        now = time.monotonic()
        elsewhere = self._known_elsewhere
        if elsewhere is not None and now >= self._next_sweep and len(claimed) < limit:
            self._next_sweep = now + SWEEP_SECONDS
            keep = partners + tuple(sorted(elsewhere))
            claimed += await self.store.write(
                ClaimIntent(self.owner, limit - len(claimed), cfg.lease_seconds, keep)
            )
        return claimed

    async def _prefetch(self, rows: list[ClaimedRow]) -> None:
        """Read the cases and status events of ``rows`` in one store read (a read per row cost
        ~10x the CPU, in threads that take the event loop's GIL). A failed read only means
        each attempt reads its own."""
        try:
            cases, events = await self.store.read(
                self.store.reader.for_delivery,
                list({r.exchange_id for r in rows}),
                [r.event_seq for r in rows if r.kind == "status" and r.event_seq],
            )
        except Exception as exc:  # noqa: BLE001 - the attempts read for themselves
            log.warning("delivery prefetch failed", extra={"error": type(exc).__name__})
            return
        now = time.monotonic()
        for r in rows:
            event = events.get(r.event_seq) if r.event_seq else None
            self._prefetched[r.id] = (now, cases.get(r.exchange_id), event)

    def max_in_flight(self, partner: str) -> int:
        """How many calls to ``partner`` this process makes at once (see ``__init__``): its
        ``max_in_flight``, and at most its share of ``max_in_flight_total``."""
        cap = self._caps.get(partner, self._default_cap)
        total = self._totals.get(partner)
        if total is not None:
            cap = min(cap, max(total // self.live_gateways, 1))
        return cap

    async def _heartbeat(self, stop: asyncio.Event, delivers: bool) -> None:
        """Say this process is alive every ``heartbeat_seconds``, with the settings replicas
        must share and whether it ``delivers``, and learn how many gateways deliver from the
        store (the shares of ``max_in_flight_total``) and whether every live gateway, serving
        only or delivering too, runs alike (gateway.services.replicas), until ``stop``."""
        started = self.clock()
        host, pid = socket.gethostname(), os.getpid()
        while not stop.is_set():
            mine = agreed_settings(self.settings, self.store.keyring, self.mappings.current)
            written = {**mine, INBOXES: list(self._inboxes)}
            beat = HeartbeatIntent(
                self.owner,
                host,
                pid,
                started,
                LIVE_SECONDS,
                json.dumps(written, ensure_ascii=False),
                delivers,
            )
            try:
                gateways = await self.store.write(beat)
            except Exception as exc:  # noqa: BLE001 - store down: the last count stands
                log.warning("heartbeat failed", extra={"error": type(exc).__name__})
            else:
                delivering = sum(g.delivers for g in gateways)
                others = [Replica.of(g) for g in gateways if g.owner != self.owner]
                self._compare(mine, others)
                self._learn_partners(others)
                live = max(delivering, 1)
                if delivers and live != self.live_gateways:
                    log.info(
                        "gateways delivering from the store",
                        extra={"gateways": live, "was": self.live_gateways},
                    )
                    self.live_gateways = live
                    self._wake_parked()
                self.observer.gateways(delivering)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.heartbeat_seconds)

    def _learn_partners(self, others: list[Replica]) -> None:
        """Note the partners other live gateways deliver to, or accept cases for, that this
        one does not know: during a rolling change of the partners, the rows queued for a
        partner added there (or not yet removed there) wait for them instead of being
        dead-lettered here."""
        mine = set(self._inboxes)
        elsewhere = frozenset().union(*(r.inboxes for r in others)).difference(mine)
        if elsewhere and elsewhere != self._known_elsewhere:
            log.info(
                "partners other gateways know and this one does not: their rows are left to them",
                extra={"partners": sorted(elsewhere)},
            )
        elif self._known_elsewhere and not elsewhere:
            log.info("this gateway knows every partner the other live gateways know")
        self._known_elsewhere = elsewhere

    def _compare(self, mine: dict[str, str], others: list[Replica]) -> None:
        """Report the settings the other live gateways run otherwise: to the observer at
        once, to the log once a difference has lasted ``REPLICAS_DIFFER_LOG_SECONDS``."""
        differ = differences(mine, others)
        now = time.monotonic()
        if not differ:
            if self._differ_logged:
                log.info("gateways sharing this store run alike again")
            self._differ_logged, self._differ_since = frozenset(), None
        else:
            if self._differ_since is None:
                self._differ_since = now
            # A rolling change (a mapping reload, a new keys file) makes replicas differ for
            # a few seconds: logged once it lasts, and again if what differs changes.
            lasting = now - self._differ_since >= REPLICAS_DIFFER_LOG_SECONDS
            if lasting and frozenset(differ) != self._differ_logged:
                log.warning(
                    "gateways sharing this store run with different settings they must share "
                    "(docs/operations.md#replicas-run-alike)",
                    extra={
                        "settings": {
                            k: {"here": mine[k], "elsewhere": v} for k, v in differ.items()
                        }
                    },
                )
                self._differ_logged = frozenset(differ)
        self.replica_differences = differ
        self.observer.replicas(set(differ))

    def _wake_parked(self) -> None:
        """Rows waiting for a partner's call slot go back to the queue where the partner's
        share grew (a gateway left): the workers take them up to the new cap."""
        for partner, parked in self._parked.items():
            room = self.max_in_flight(partner) - self._calls.get(partner, 0)
            while parked and room > 0:
                self._queue.put_nowait(parked.popleft())
                room -= 1

    async def _worker(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            row = await self._queue.get()
            partner = row.target_partner
            if self._calls.get(partner, 0) >= self.max_in_flight(partner):
                # Its partner has all the calls it may have: the row waits beside the queue
                # until one ends, and this worker takes the next row (another city's).
                self._parked.setdefault(partner, deque()).append(row)
                continue
            self._calls[partner] = self._calls.get(partner, 0) + 1
            self.observer.calls(partner, self._calls[partner])
            try:
                settle = await self._attempt(row)
            except Exception:
                log.exception("delivery crashed", extra={"exchange_id": row.exchange_id})
                self._inflight.pop(row.id, None)
                continue
            finally:
                self._prefetched.pop(row.id, None)
                self._calls[partner] -= 1
                self.observer.calls(partner, self._calls[partner])
                parked = self._parked.get(partner)
                if parked:
                    self._queue.put_nowait(parked.popleft())
            # The partner has answered: committing the outcome does not hold a worker, whose
            # slot is a call to a partner. Under load a commit waits for its group (up to
            # store.commit_delay_ms), and workers waiting there bounded how many cases a
            # process delivered per second (docs/performance.md, session 17). The row stays
            # in flight (the claimer's bound, and never claimed twice here) until settled.
            self._inflight[row.id] = ""
            self._background(self._settle(row, settle))

    async def _settle(self, row: ClaimedRow, settle: Callable[[], Awaitable[str]]) -> str:
        try:
            return await settle()
        except Exception:
            log.exception("delivery crashed", extra={"exchange_id": row.exchange_id})
            return "crashed"
        finally:
            self._inflight.pop(row.id, None)

    # -- one row -----------------------------------------------------------------------------

    async def _build(self, row: ClaimedRow, attempt: int) -> tuple[str, Any, Any]:
        """The request for one attempt: its kind, the message, and the case row it is of."""
        ms = self.mappings.current
        case, event = self._prefetched_for(row)
        if case is None:
            case = await self.store.read(self.store.reader.case, row.exchange_id)
        if case is None:
            raise _Permanent("CASE_MISSING: the case row does not exist")
        # A peer gateway takes canonical records (it holds the handling city's mapping).
        schema = (
            None if row.target_partner in self._peers else ms.schema_for(row.target_city, "case")
        )
        if row.kind == "case":
            record = orjson.loads(case.canonical)
            record["status"] = (
                case.status if case.status != "CASE_STATUS_RECEIVED" else "CASE_STATUS_SUBMITTED"
            )
            req = inbox.DeliverCaseRequest(
                idempotency_key=row.exchange_id, source_city=case.receiving_city, attempt=attempt
            )
            try:
                if schema is None:
                    req.canonical.CopyFrom(case_message(record))
                else:
                    out = ms.from_canonical(schema, record)
                    req.foreign.CopyFrom(
                        common_pb2.ForeignRecord(
                            schema=schema,
                            json=orjson.dumps(out.record),
                        )
                    )
            except RecordInvalidError as exc:
                raise _Permanent(f"MAPPING_FAILED: {exc.summary()}") from None
            except MappingError as exc:
                raise _Permanent(f"MAPPING_FAILED: {exc}") from None
            return "case", req, case
        if event is None:
            event = await self.store.read(self.store.reader.event, row.event_seq or 0)
        if event is None:
            raise _Permanent("EVENT_MISSING: the status event does not exist")
        code = ""
        if schema is not None:
            codes = ms.status_codes(schema)
            code = str(codes[1].get(event.status, "")) if codes else ""
            if codes and not code:
                raise _Permanent(f"UNKNOWN_CODE: {event.status} has no code in {schema}")
        ts = timestamp(event.occurred_at)
        return (
            "status",
            inbox.DeliverStatusRequest(
                idempotency_key=f"{row.exchange_id}:{event.seq}",
                exchange_id=row.exchange_id,
                case_number=case.case_number,
                status_code=code,
                status=records_pb2.CaseStatus.Value(event.status),
                occurred_at=ts,
                reported_by=event.reported_by,
                note=event.note,
                late=event.late,
            ),
            case,
        )

    def _prefetched_for(self, row: ClaimedRow) -> tuple[CaseRecord | None, EventRecord | None]:
        """What the claim read for ``row`` (once, and only while fresh: a row that waited
        longer, for an open circuit say, reads its case's current status)."""
        got = self._prefetched.pop(row.id, None)
        if got is None or time.monotonic() - got[0] > PREFETCH_FRESH_SECONDS:
            return None, None
        return got[1], got[2]

    async def deliver(self, row: ClaimedRow) -> str:
        """Deliver one claimed row: call its partner, retrying in place while the backoff is
        short, until it is delivered, dead, or put back in the outbox for a later attempt.
        Return the outcome once it is committed: ``delivered``, ``dead``, ``deferred``, or
        ``lost`` (another worker claimed it meanwhile)."""
        settle = await self._attempt(row)
        return await settle()

    async def _attempt(self, row: ClaimedRow) -> Callable[[], Awaitable[str]]:
        """Call the partner (retrying in place as its policy says) until the row's outcome is
        known; return what commits that outcome and returns it (see :meth:`deliver`)."""
        started = time.perf_counter()
        partner = row.target_partner
        transport = self.transports.get(partner)
        attempts = row.attempts
        if partner not in self.settings.partners:
            why = f"NO_TRANSPORT: partner {partner} is not configured"
            return partial(self._dead, row, attempts, why)
        if transport is None:
            why = f"NO_TRANSPORT: partner {partner} has no inbox"
            return partial(self._dead, row, attempts, why)
        policy = self.policy(partner)
        timeout = policy.attempt_timeout_seconds
        lease = self.settings.delivery.lease_seconds
        breaker = self.breaker(partner)
        refused = breaker.refused_until()
        if refused is not None:  # opened while the row waited in this process's queue
            return partial(self._defer, row, attempts, refused, "circuit_open", "")
        remaining = max(policy.max_attempts - attempts, 1)
        last_error = last_code = ""
        next_wait = 0.0

        def is_retryable(exc: BaseException) -> bool:
            return isinstance(exc, TransportError) and exc.retryable

        base_wait = wait_exponential_jitter(
            multiplier=policy.initial_backoff_seconds,
            max=policy.max_backoff_seconds,
            exp_base=policy.multiplier,
            jitter=policy.initial_backoff_seconds,
        )

        def wait(state: RetryCallState) -> float:
            # Attempts made before a restart count too: the backoff continues where it was.
            shifted = RetryCallState(state.retry_object, state.fn, state.args, state.kwargs)
            shifted.attempt_number = state.attempt_number + row.attempts
            delay = base_wait(shifted)
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, TransportError) and exc.retry_after:
                delay = max(delay, exc.retry_after)
            nonlocal next_wait
            next_wait = float(delay)
            return next_wait

        lease_until = row.lease_until
        case: Any = None

        async def extend_lease(until: float) -> None:
            nonlocal lease_until
            if not await self.store.write(ExtendLeaseIntent(row.id, self.owner, until, attempts)):
                raise _LeaseLost
            lease_until = until

        async def before_sleep(state: RetryCallState) -> None:
            delay = state.next_action.sleep if state.next_action else 0.0
            self.observer.retry_delay(row.target_city, delay)
            await extend_lease(self.clock() + delay + lease)

        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(remaining) | _WaitLongerThan(policy.hold_max_seconds),
                wait=wait,
                retry=retry_if_exception(is_retryable),
                sleep=self.sleep,
                before_sleep=before_sleep,
                reraise=True,
            ):
                with attempt:
                    # The attempt and the commit settling it end inside the lease: a row that
                    # waited in this process's queue (a claim takes a batch of rows, a few
                    # workers deliver them) or between retries could otherwise be claimed by
                    # another replica and delivered twice.
                    now = self.clock()
                    if lease_until - now < timeout + lease / 2:
                        await extend_lease(now + timeout + lease)
                    refused = breaker.admit()
                    if refused is not None:
                        raise _Refused(refused)
                    attempts += 1
                    recorded = False
                    try:
                        kind, request, case = await self._build(row, attempts)
                        try:
                            if kind == "case":
                                await transport.deliver_case(request, timeout)
                            else:
                                await transport.deliver_status(request, timeout)
                        except TransportError as exc:
                            last_error = scrub(exc.message)  # partner text: may quote personal data
                            last_code = exc.code or "ERROR"
                            recorded = True
                            if exc.retryable and exc.code not in _ANSWERED:
                                breaker.record_failure()
                            else:
                                breaker.record_success()  # the partner answered: it is up
                            self.observer.attempt(
                                row.target_city, "retryable" if exc.retryable else "permanent"
                            )
                            raise
                        recorded = True
                        breaker.record_success()
                        self.observer.attempt(row.target_city, "ok")
                    finally:
                        if not recorded:  # no call made (or it crashed): free a trial slot
                            breaker.release()
        except _LeaseLost:
            log.warning(
                "lease lost",
                extra={"exchange_id": row.exchange_id, "kind": row.kind, "attempts": attempts},
            )
            return _lost
        except _Refused as exc:
            # Refused after failing here (the circuit opened meanwhile): its error is recorded.
            error = f"{last_code}: {last_error}" if last_code else ""
            return partial(self._defer, row, attempts, exc.until, "circuit_open", error)
        except _Permanent as exc:
            return partial(self._dead, row, attempts, exc.reason)
        except SealError as exc:
            # This gateway lacks the key of the case's record: no call was made, the partner is
            # not to blame, and the row waits (not a dead letter) until the keys are fixed.
            log.error(
                "a case's sealed record does not open: delivery deferred",
                extra={"exchange_id": row.exchange_id, "error": str(exc)},
            )
            until = self.clock() + SEALED_RETRY_SECONDS
            return partial(self._defer, row, attempts - 1, until, "sealed", f"SEALED: {exc}")
        except TransportError as exc:
            if exc.retryable and attempts < policy.max_attempts:
                # The next wait is too long to hold a worker: the outbox keeps the row, until
                # the partner's circuit lets calls through again if that is later.
                self.observer.retry_delay(row.target_city, next_wait)
                until = max(self.clock() + next_wait, breaker.refused_until() or 0.0)
                error = f"{exc.code or 'ERROR'}: {last_error}"
                return partial(self._defer, row, attempts, until, "backoff", error)
            why = (
                "rejected" if not exc.retryable else f"retries exhausted after {attempts} attempts"
            )
            reason = f"{exc.code or 'ERROR'}: {why}: {last_error}"
            return partial(self._dead, row, attempts, reason)
        notify = None
        if row.kind == "case":
            found = self.settings.partner_for_city(case.receiving_city)
            if found and found[1].inbox.transport != "none":
                notify = (found[0], case.receiving_city)
        return partial(self._delivered, row, attempts, notify, started)

    async def _delivered(
        self, row: ClaimedRow, attempts: int, notify: tuple[str, str] | None, started: float
    ) -> str:
        await self.store.write(DeliveredIntent(row, self.owner, attempts, notify))
        self.observer.settled(row.target_city, "delivered")
        log.info(
            "delivered",
            extra={
                "exchange_id": row.exchange_id,
                "kind": row.kind,
                "partner": row.target_partner,
                "target_city": row.target_city,
                "attempts": attempts,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )
        return "delivered"

    async def _defer(
        self, row: ClaimedRow, attempts: int, until: float, reason: str, error: str
    ) -> str:
        """Put the row back in the outbox until ``until`` (its lease released, its attempts
        and, unless ``error`` is empty, its last error recorded)."""
        intent = FailedIntent(row, self.owner, attempts, error, dead=False, next_attempt_at=until)
        if not await self.store.write(intent):
            return "lost"
        self.observer.deferred(row.target_city, reason)
        log.info(
            "delivery deferred",
            extra={
                "exchange_id": row.exchange_id,
                "kind": row.kind,
                "target_city": row.target_city,
                "attempts": attempts,
                "reason": reason,
                "seconds": round(until - self.clock(), 3),
            },
        )
        return "deferred"

    async def _dead(self, row: ClaimedRow, attempts: int, reason: str) -> str:
        if not await self.store.write(FailedIntent(row, self.owner, attempts, reason, dead=True)):
            return "lost"
        self.observer.settled(row.target_city, "dead")
        log.warning(
            "dead-lettered",
            extra={
                "exchange_id": row.exchange_id,
                "kind": row.kind,
                "target_city": row.target_city,
                "reason": reason[:200],
            },
        )
        return "dead"
