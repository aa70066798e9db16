"""The write operations of the exchange, as intents for the group-commit writer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update

from ..domain.lifecycle import GATEWAYS_OWN, allowed
from ..errors import CaseNotFound, IllegalTransition, InvalidRequest, RequestIdReused
from .chain_hash import HASH_ALGORITHMS, SWITCH_ACTION
from .reads import GatewaySeen
from .sealing import CANONICAL, NOTE, open_value
from .writer import CASES, EVENTS, GATEWAYS, OUTBOX, AuditEntry, Batch, Intent

__all__ = [
    "AuditIntent",
    "ChainHashIntent",
    "ClaimIntent",
    "ClaimedRow",
    "DeferPartnerIntent",
    "DeliveredIntent",
    "ExtendLeaseIntent",
    "FailedIntent",
    "HeartbeatIntent",
    "ReleaseIntent",
    "ReplayIntent",
    "ReportStatusIntent",
    "RetireIntent",
    "SubmitCaseIntent",
]


def _replay_or_conflict(
    batch: Batch, partner: str, request_id: str, body_hash: str
) -> bytes | None:
    """The stored answer of a retried request, or None if the id is new; reuse is an error."""
    known = batch.seen_requests.get((partner, request_id))
    if known is None:
        return None
    if known[0] != body_hash:
        raise RequestIdReused("request_id was already used with a different request", "request_id")
    return known[1]


@dataclass
class AuditIntent(Intent):
    """Append audit entries only: what was read or asked, recorded before it is answered."""

    entries: list[AuditEntry]

    def run(self, batch: Batch) -> None:
        batch.audit.extend(self.entries)


@dataclass
class ChainHashIntent(Intent):
    """Compute the audit chain's entries from now on with ``algorithm``: if the chain uses
    another function, an ``audit.hash`` entry (hashed with that one) names the new one, and
    the head records it. Returns the function the chain used before (None: it already used
    ``algorithm``, nothing is written). Replicas sharing a store read the head under its lock:
    one of them switches, the others find it done."""

    actor: str
    algorithm: str

    def run(self, batch: Batch) -> str | None:
        if self.algorithm not in HASH_ALGORITHMS:
            raise InvalidRequest(f"unknown hash function {self.algorithm!r}", "hash_algorithm")
        was = batch.chain_algorithm()
        if was == self.algorithm:
            return None
        batch.audit.append(
            AuditEntry(self.actor, SWITCH_ACTION, self.algorithm, "switched", f"from {was}")
        )
        return was


@dataclass
class SubmitCaseIntent(Intent):
    """Store a new case with its first event, its outbox row and its audit entry."""

    partner: str
    request_id: str
    body_hash: str
    exchange_id: str
    receiving_city: str
    handling_city: str
    case_number: str
    canonical: bytes  # the canonical record as compact JSON, UTF-8
    mapping_versions: str
    target_partner: str
    response: bytes

    def prefetch_keys(self) -> Sequence[tuple[str, str]]:
        return [(self.partner, self.request_id)]

    def run(self, batch: Batch) -> tuple[bytes, bool]:
        """Return (response bytes, replayed?)."""
        stored = _replay_or_conflict(batch, self.partner, self.request_id, self.body_hash)
        if stored is not None:
            return stored, True
        now = batch.now
        exchange_id = self.exchange_id
        record = self.canonical
        if batch.keyring is not None:
            record = batch.keyring.seal(record, CANONICAL, exchange_id).encode("ascii")
        batch.remember_request(
            self.partner, self.request_id, "submit", self.body_hash, self.response
        )
        batch.cases.append(
            (
                exchange_id,
                self.partner,
                self.receiving_city,
                self.handling_city,
                self.case_number,
                bytearray(record),  # bound as is (see Batch.remember_request)
                self.mapping_versions,
                now,
                now,
            )
        )
        batch.events.append((exchange_id, now, self.receiving_city, now))
        batch.case_deliveries.append(
            (exchange_id, self.target_partner, self.handling_city, now, now)
        )
        batch.audit.append(
            AuditEntry(
                self.partner, "case.submit", exchange_id, "accepted", f"to {self.handling_city}"
            )
        )
        return self.response, False


def _insert_event(
    batch: Batch,
    exchange_id: str,
    status: str,
    reporter: str,
    occurred_at: float,
    note: str,
    late: bool = False,
) -> int:
    """Store one status event of a case (its note sealed when the store seals); its seq."""
    if note and batch.keyring is not None:
        note = batch.keyring.seal(note.encode("utf-8"), NOTE, exchange_id)
    # Inserted on its own (not with the batch's deferred rows): its seq is needed right away.
    return int(
        batch.conn.execute(
            insert(EVENTS)
            .values(
                exchange_id=exchange_id,
                status=status,
                occurred_at=occurred_at,
                reported_by=reporter,
                note=note,
                created_at=batch.now,
                late=late,
            )
            .returning(EVENTS.c.seq)
        ).scalar_one()
    )


def _apply_status(
    batch: Batch,
    exchange_id: str,
    current: str,
    new: str,
    reporter: str,
    occurred_at: float,
    note: str,
    notify: tuple[str, str] | None,
    canonical_update: dict[str, Any] | None = None,
    delivery_state: str | None = None,
) -> int:
    """Move a case to ``new``; add its event and, if ``notify``, an outbox row. Returns the seq."""
    values: dict[str, Any] = {"status": new, "updated_at": batch.now}
    if delivery_state:
        values["delivery_state"] = delivery_state
    keyring = batch.keyring
    if canonical_update:
        row = batch.conn.execute(
            select(CASES.c.canonical).where(CASES.c.exchange_id == exchange_id)
        ).one()
        record = json.loads(open_value(keyring, row.canonical, CANONICAL, exchange_id))
        record.update(canonical_update)
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        if keyring is not None:
            text = keyring.seal(text.encode("utf-8"), CANONICAL, exchange_id)
        values["canonical"] = text
    batch.conn.execute(
        update(CASES)
        .where(and_(CASES.c.exchange_id == exchange_id, CASES.c.status == current))
        .values(**values)
    )
    seq = _insert_event(batch, exchange_id, new, reporter, occurred_at, note)
    if notify is not None:
        _queue_status_delivery(batch, exchange_id, seq, notify)
    return seq


def _queue_status_delivery(
    batch: Batch, exchange_id: str, seq: int, notify: tuple[str, str]
) -> None:
    """An outbox row telling ``notify`` (partner, city) of status event ``seq``."""
    partner, city = notify
    batch.status_deliveries.append((exchange_id, seq, partner, city, batch.now, batch.now))


@dataclass
class ReportStatusIntent(Intent):
    """The handling city reports a status change (or the receiving city a withdrawal).

    With ``record_late`` (a peer gateway's delivery), a change that happened no later than
    the last one applied from the reporter's city (deliveries overtake each other) is stored
    as a late event: in the history, the case's status untouched, audited ``late``; the other
    city's inbox is sent it (marked late on delivery) only with ``notify_late``. It is decided
    here, in the transaction, so that two deliveries of one case in flight together are judged
    against what the other stored.
    """

    partner: str
    reporter_city: str
    request_id: str
    body_hash: str
    exchange_id: str
    new_status: str
    occurred_at: float
    note: str
    canonical_update: dict[str, Any] | None
    notify: tuple[str, str] | None  # (partner, city) of the receiving city's inbox
    # (status, seq) -> bytes; a module-level function, so that the intent pickles
    make_response: Any = field(repr=False, default=None)
    record_late: bool = False
    notify_late: bool = False  # ``notify`` of a change recorded late too

    def prefetch_keys(self) -> Sequence[tuple[str, str]]:
        return [(self.partner, self.request_id)]

    def run(self, batch: Batch) -> tuple[bytes, bool]:
        stored = _replay_or_conflict(batch, self.partner, self.request_id, self.body_hash)
        if stored is not None:
            return stored, True
        row = batch.conn.execute(
            select(CASES.c.status, CASES.c.receiving_city, CASES.c.handling_city).where(
                CASES.c.exchange_id == self.exchange_id
            )
        ).first()
        if row is None or self.reporter_city not in (row.handling_city, row.receiving_city):
            raise CaseNotFound("no such case for this partner", "exchange_id")
        if self.record_late and self._overtaken(batch):
            seq = _insert_event(
                batch,
                self.exchange_id,
                self.new_status,
                self.reporter_city,
                self.occurred_at,
                self.note,
                late=True,
            )
            if self.notify is not None and self.notify_late:
                _queue_status_delivery(batch, self.exchange_id, seq, self.notify)
            response = self.make_response(row.status, seq)  # the status it stays in
            batch.remember_request(
                self.partner, self.request_id, "report", self.body_hash, response
            )
            batch.audit.append(
                AuditEntry(self.partner, "case.status", self.exchange_id, "late", self.new_status)
            )
            return response, False
        if self.reporter_city != row.handling_city and self.new_status != "CASE_STATUS_WITHDRAWN":
            # The receiving city may only withdraw; progress is the handling city's to report.
            raise IllegalTransition(row.status, self.new_status)
        if not allowed(row.status, self.new_status):
            raise IllegalTransition(row.status, self.new_status)
        seq = _apply_status(
            batch,
            self.exchange_id,
            row.status,
            self.new_status,
            self.reporter_city,
            self.occurred_at,
            self.note,
            self.notify,
            self.canonical_update,
        )
        response = self.make_response(self.new_status, seq)
        batch.remember_request(self.partner, self.request_id, "report", self.body_hash, response)
        batch.audit.append(
            AuditEntry(self.partner, "case.status", self.exchange_id, "accepted", self.new_status)
        )
        return response, False

    def _overtaken(self, batch: Batch) -> bool:
        """Whether a change from the reporter's city that happened at or after this one is
        stored already (the gateways' own statuses, stamped by their clocks, do not count)."""
        latest = batch.conn.execute(
            select(func.max(EVENTS.c.occurred_at)).where(
                and_(
                    EVENTS.c.exchange_id == self.exchange_id,
                    EVENTS.c.reported_by == self.reporter_city,
                    EVENTS.c.status.not_in(sorted(GATEWAYS_OWN)),
                )
            )
        ).scalar()
        return latest is not None and self.occurred_at <= latest


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    """An outbox row leased to one worker, until ``lease_until`` (the store's time)."""

    id: int
    exchange_id: str
    kind: str
    event_seq: int | None
    target_partner: str
    target_city: str
    attempts: int
    lease_until: float = 0.0


@dataclass
class ClaimIntent(Intent):
    """Lease up to ``limit`` due outbox rows to ``owner`` (PostgreSQL: FOR UPDATE SKIP LOCKED),
    leaving the rows of ``skip_partners`` (whose circuits refuse calls) where they are.

    With ``partners``, each of them is claimed for on its own, in its due order, and the rows
    are interleaved (the first due row of every partner, then the second, ...): a partner's
    backlog (after an outage, say) does not queue up ahead of the others' new rows. Without,
    the oldest due rows are taken whoever their partner (rows of no configured partner are
    swept this way). ``limits``, when given, caps each partner's rows (in ``partners``'
    order)."""

    owner: str
    limit: int
    lease_seconds: float
    skip_partners: tuple[str, ...] = ()
    partners: tuple[str, ...] | None = None
    limits: tuple[int, ...] = ()

    def _due(self, now: float) -> Any:
        return (
            select(OUTBOX.c.id, OUTBOX.c.next_attempt_at)
            .where(
                OUTBOX.c.state == "pending",
                OUTBOX.c.next_attempt_at <= now,
                OUTBOX.c.lease_until < now,
            )
            .order_by(OUTBOX.c.next_attempt_at, OUTBOX.c.id)
            .limit(self.limit)
        )

    def _select(self, batch: Batch, query: Any) -> list[tuple[float, int]]:
        if batch.is_postgres:
            query = query.with_for_update(skip_locked=True)
        return [(r.next_attempt_at, r.id) for r in batch.conn.execute(query)]

    def run(self, batch: Batch) -> list[ClaimedRow]:
        now = batch.now
        if self.partners is None:
            due = self._due(now)
            if self.skip_partners:
                due = due.where(OUTBOX.c.target_partner.not_in(self.skip_partners))
            ids = [i for _, i in self._select(batch, due)]
        else:
            # One indexed range per partner (ix_outbox_partner_due), then round by round,
            # each round's rows in due order.
            limits = self.limits or (self.limit,) * len(self.partners)
            queues = [
                self._select(
                    batch,
                    self._due(now).where(OUTBOX.c.target_partner == p).limit(min(n, self.limit)),
                )
                for p, n in zip(self.partners, limits, strict=True)
                if p not in self.skip_partners and n > 0
            ]
            rounds = (sorted(r for r in rnd if r is not None) for rnd in zip_longest(*queues))
            ids = [i for rnd in rounds for _, i in rnd][: self.limit]
        if not ids:
            return []
        rows = batch.conn.execute(
            update(OUTBOX)
            .where(OUTBOX.c.id.in_(ids), OUTBOX.c.state == "pending")
            .values(lease_owner=self.owner, lease_until=now + self.lease_seconds)
            .returning(
                OUTBOX.c.id,
                OUTBOX.c.exchange_id,
                OUTBOX.c.kind,
                OUTBOX.c.event_seq,
                OUTBOX.c.target_partner,
                OUTBOX.c.target_city,
                OUTBOX.c.attempts,
                OUTBOX.c.lease_until,
            )
        ).all()
        order = {row_id: n for n, row_id in enumerate(ids)}
        return sorted((ClaimedRow(*r) for r in rows), key=lambda r: order[r.id])


@dataclass
class ExtendLeaseIntent(Intent):
    """Keep a lease for a delivery's next attempt or while it waits between retries. Returns
    False if it was lost (another worker claimed the row after it expired, or it was settled)."""

    row_id: int
    owner: str
    until: float
    attempts: int

    def run(self, batch: Batch) -> bool:
        result = batch.conn.execute(
            update(OUTBOX)
            .where(
                OUTBOX.c.id == self.row_id,
                OUTBOX.c.lease_owner == self.owner,
                OUTBOX.c.state == "pending",
            )
            .values(lease_until=self.until, attempts=self.attempts)
        )
        return bool(result.rowcount)


@dataclass
class DeliveredIntent(Intent):
    """A delivery succeeded; a delivered case becomes RECEIVED (and the receiver is told)."""

    row: ClaimedRow
    owner: str
    attempts: int
    notify: tuple[str, str] | None  # receiving city's inbox, for the RECEIVED status

    def run(self, batch: Batch) -> bool:
        result = batch.conn.execute(
            update(OUTBOX)
            .where(OUTBOX.c.id == self.row.id, OUTBOX.c.state == "pending")
            .values(
                state="delivered",
                delivered_at=batch.now,
                attempts=self.attempts,
                lease_owner=None,
                last_error="",
            )
        )
        if not result.rowcount:
            return False  # already settled by someone else (lease expired and re-claimed)
        if self.row.kind == "case":
            row = batch.conn.execute(
                select(CASES.c.status, CASES.c.receiving_city).where(
                    CASES.c.exchange_id == self.row.exchange_id
                )
            ).one()
            if row.status == "CASE_STATUS_SUBMITTED":
                _apply_status(
                    batch,
                    self.row.exchange_id,
                    row.status,
                    "CASE_STATUS_RECEIVED",
                    self.row.target_city,
                    batch.now,
                    "",
                    self.notify,
                    delivery_state="DELIVERY_STATE_DELIVERED",
                )
            else:
                batch.conn.execute(
                    update(CASES)
                    .where(CASES.c.exchange_id == self.row.exchange_id)
                    .values(delivery_state="DELIVERY_STATE_DELIVERED")
                )
            batch.audit.append(
                AuditEntry(
                    "gateway",
                    "case.deliver",
                    self.row.exchange_id,
                    "delivered",
                    f"to {self.row.target_city}",
                )
            )
        return True


@dataclass
class FailedIntent(Intent):
    """A delivery failed or was refused: put the row back in the outbox until
    ``next_attempt_at``, or park it in the dead-letter queue with the reason. Only the row's
    lease owner settles it (if another worker claimed it since, that one does). Returns whether
    it did."""

    row: ClaimedRow
    owner: str
    attempts: int
    error: str
    dead: bool
    next_attempt_at: float = 0.0

    def run(self, batch: Batch) -> bool:
        values: dict[str, Any] = {
            "attempts": self.attempts,
            "lease_owner": None,
            "lease_until": 0.0,
        }
        if self.error:  # a row refused by an open circuit keeps the error that opened it
            values["last_error"] = self.error[:2000]
        if self.dead:
            values.update(state="dead", dead_at=batch.now)
        else:
            values.update(next_attempt_at=self.next_attempt_at)
        result = batch.conn.execute(
            update(OUTBOX)
            .where(
                OUTBOX.c.id == self.row.id,
                OUTBOX.c.state == "pending",
                OUTBOX.c.lease_owner == self.owner,
            )
            .values(**values)
        )
        if not result.rowcount:
            return False
        if self.dead:
            if self.row.kind == "case":
                batch.conn.execute(
                    update(CASES)
                    .where(CASES.c.exchange_id == self.row.exchange_id)
                    .values(delivery_state="DELIVERY_STATE_DEAD_LETTERED", updated_at=batch.now)
                )
            batch.audit.append(
                AuditEntry(
                    "gateway",
                    "delivery.dead",
                    self.row.exchange_id,
                    "dead_lettered",
                    f"{self.row.kind} to {self.row.target_city}",
                )
            )
        return True


@dataclass
class ReleaseIntent(Intent):
    """A stopping worker hands back the rows it holds and will not settle (queued, or their
    call cut short): another process may claim them at once instead of after their lease.
    Returns how many it still held."""

    owner: str
    ids: list[int]

    def run(self, batch: Batch) -> int:
        result = batch.conn.execute(
            update(OUTBOX)
            .where(
                OUTBOX.c.id.in_(self.ids),
                OUTBOX.c.state == "pending",
                OUTBOX.c.lease_owner == self.owner,
            )
            .values(lease_owner=None, lease_until=0.0)
        )
        return int(result.rowcount or 0)


@dataclass
class DeferPartnerIntent(Intent):
    """A partner's circuit opened: its due rows that nobody holds wait until ``until`` (its
    circuit's end) instead of being claimed, refused and put back one by one. Rows due later
    keep their time. Returns how many were deferred."""

    partner: str
    until: float

    def run(self, batch: Batch) -> int:
        result = batch.conn.execute(
            update(OUTBOX)
            .where(
                OUTBOX.c.state == "pending",
                OUTBOX.c.next_attempt_at < self.until,
                OUTBOX.c.lease_until < batch.now,
                OUTBOX.c.target_partner == self.partner,
            )
            .values(next_attempt_at=self.until)
        )
        return int(result.rowcount or 0)


@dataclass
class ReplayIntent(Intent):
    """Put dead letters back into the outbox (given ids, or all). Returns the ids replayed."""

    actor: str
    ids: list[int] | None  # None: every dead letter

    def run(self, batch: Batch) -> list[int]:
        cond = OUTBOX.c.state == "dead"
        if self.ids is not None:
            cond = and_(cond, OUTBOX.c.id.in_(self.ids))
        rows = batch.conn.execute(
            select(OUTBOX.c.id, OUTBOX.c.exchange_id, OUTBOX.c.kind).where(cond)
        ).all()
        if not rows:
            return []
        ids = [r.id for r in rows]
        batch.conn.execute(
            update(OUTBOX)
            .where(OUTBOX.c.id.in_(ids))
            .values(
                state="pending",
                attempts=0,
                next_attempt_at=batch.now,
                lease_owner=None,
                lease_until=0.0,
                dead_at=None,
                replays=OUTBOX.c.replays + 1,
            )
        )
        case_ids = [r.exchange_id for r in rows if r.kind == "case"]
        if case_ids:
            batch.conn.execute(
                update(CASES)
                .where(CASES.c.exchange_id.in_(case_ids))
                .values(delivery_state="DELIVERY_STATE_PENDING", updated_at=batch.now)
            )
        for r in rows:
            batch.audit.append(
                AuditEntry(
                    self.actor, "delivery.replay", r.exchange_id, "requeued", f"outbox {r.id}"
                )
            )
        return ids


@dataclass
class HeartbeatIntent(Intent):
    """A gateway process says it is alive (its row's ``seen_at`` is now), what it runs with
    (``settings``) and whether it ``delivers``. Returns the gateways seen within
    ``live_seconds``, itself included."""

    owner: str
    host: str
    pid: int
    started_at: float
    live_seconds: float
    settings: str = ""
    delivers: bool = True

    def run(self, batch: Batch) -> list[GatewaySeen]:
        conn, now = batch.conn, batch.now
        seen = conn.execute(
            update(GATEWAYS)
            .where(GATEWAYS.c.owner == self.owner)
            .values(seen_at=now, settings=self.settings, delivers=self.delivers)
        ).rowcount
        if not seen:
            conn.execute(
                insert(GATEWAYS).values(
                    owner=self.owner,
                    host=self.host[:255],
                    pid=self.pid,
                    started_at=self.started_at,
                    seen_at=now,
                    settings=self.settings,
                    delivers=self.delivers,
                )
            )
        rows = conn.execute(
            select(*(GATEWAYS.c[n] for n in GatewaySeen.__slots__))
            .where(GATEWAYS.c.seen_at > now - self.live_seconds)
            .order_by(GATEWAYS.c.owner)
        )
        return [GatewaySeen.from_row(r) for r in rows]


@dataclass
class RetireIntent(Intent):
    """A gateway process stops: its row goes (if it delivered, the others' shares grow at
    their next heartbeat), with rows of gateways not seen for a long while (killed ones)."""

    owner: str
    forget_before: float

    def run(self, batch: Batch) -> int:
        return int(
            batch.conn.execute(
                delete(GATEWAYS).where(
                    (GATEWAYS.c.owner == self.owner) | (GATEWAYS.c.seen_at < self.forget_before)
                )
            ).rowcount
            or 0
        )
