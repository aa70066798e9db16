"""A case's trace: its state and history (status events, deliveries, audit entries), never its
personal data. Shared by ``OperationsService.TraceCase`` and ``tongban cases trace``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import operations_pb2 as ops
from tongban.v1 import records_pb2

from ..errors import CaseNotFound, InvalidRequest
from ..store.reads import AuditRecord, CaseRecord, EventRecord, OutboxRecord, StoreReader
from ..store.store import Store
from ..timestamps import timestamp

__all__ = ["CaseTrace", "CaseTraceService", "read_trace", "to_proto"]


@dataclass(frozen=True)
class CaseTrace:
    """A case row (its canonical record unused) and what happened to it."""

    case: CaseRecord
    events: list[EventRecord]
    deliveries: list[OutboxRecord]
    audit: list[AuditRecord]
    # Entries 1 to this one are in archive files, and the case is older than the first entry
    # the store still holds: its earlier entries are among them (0: all its entries are here).
    audit_archived_through: int = 0


def read_trace(reader: StoreReader, exchange_id: str) -> CaseTrace | None:
    """The trace of one case, or None if the store has no such case (or no longer)."""
    # A trace shows no personal data: the record stays as stored, and an operator without the
    # store's keys still sees every step (a sealed note by its key's name).
    case = reader.case(exchange_id, open_record=False)
    if case is None:
        return None
    rows, entries = reader.trail(exchange_id, case.submitted_at)
    archived, _ = reader.audit_archived()
    older = archived and case.submitted_at < reader.audit_entry_time(archived + 1, math.inf)
    events = reader.events(exchange_id, lenient=True)
    return CaseTrace(case, events, rows, entries, archived if older else 0)


def to_proto(t: CaseTrace) -> ops.TraceCaseResponse:
    """A trace as the RPC's answer."""
    c = t.case
    return ops.TraceCaseResponse(
        exchange_id=c.exchange_id,
        case_number=c.case_number,
        submitter=c.submitter,
        receiving_city=c.receiving_city,
        handling_city=c.handling_city,
        status=records_pb2.CaseStatus.Value(c.status),
        delivery_state=cx.DeliveryState.Value(c.delivery_state),
        mapping_versions=c.mapping_versions,
        submitted_at=timestamp(c.submitted_at),
        updated_at=timestamp(c.updated_at),
        events=[
            records_pb2.StatusEvent(
                status=records_pb2.CaseStatus.Value(e.status),
                occurred_at=timestamp(e.occurred_at),
                reported_by=e.reported_by,
                note=e.note,
                late=e.late,
            )
            for e in t.events
        ],
        deliveries=[
            ops.Delivery(
                id=r.id,
                kind=r.kind,
                event_seq=r.event_seq or 0,
                target_partner=r.target_partner,
                target_city=r.target_city,
                state=r.state,
                attempts=r.attempts,
                last_error=r.last_error,
                created_at=timestamp(r.created_at),
                next_attempt_at=timestamp(r.next_attempt_at) if r.state == "pending" else None,
                delivered_at=timestamp(r.delivered_at) if r.delivered_at is not None else None,
                dead_at=timestamp(r.dead_at) if r.dead_at is not None else None,
                replays=r.replays,
            )
            for r in t.deliveries
        ],
        audit_entries=[
            ops.AuditEntry(
                seq=a.seq,
                time=timestamp(a.ts),
                actor=a.actor,
                action=a.action,
                outcome=a.outcome,
                detail=a.detail,
            )
            for a in t.audit
        ],
        audit_archived_through=t.audit_archived_through,
    )


class CaseTraceService:
    """Traces cases from the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def trace(self, exchange_id: str) -> CaseTrace:
        """The trace of ``exchange_id``; NOT_FOUND when the store has no such case."""
        if not exchange_id:
            raise InvalidRequest("exchange_id is required", "exchange_id")
        if len(exchange_id) > 40:
            raise InvalidRequest("exchange_id is longer than any exchange id", "exchange_id")
        found = await self.store.read(read_trace, self.store.reader, exchange_id)
        if found is None:
            raise CaseNotFound("no such case (never submitted here, or purged)", "exchange_id")
        return found
