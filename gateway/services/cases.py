"""The case exchange: submit, read, list, report status, watch.

Works on protobuf request messages (the contract) but knows nothing of gRPC: errors are
:mod:`gateway.errors` and mapping errors, turned into status codes at the edge.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import hashlib
import itertools
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson

from adapters.mapping import MappingSet, RecordInvalidError, UnknownSchemaError
from adapters.mapping.canonical_io import case_message
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import common_pb2, records_pb2

from ..auth import Caller
from ..errors import (
    CaseNotFound,
    InvalidPageToken,
    InvalidRequest,
    NotRepresentable,
    RecordTooLarge,
    UnknownStatusCode,
)
from ..mappings import MappingRegistry
from ..settings import Settings
from ..store.intents import AuditIntent, ReportStatusIntent, SubmitCaseIntent
from ..store.reads import CaseRecord, EventRecord
from ..store.sealing import PREFIX as SEALED_PREFIX
from ..store.store import Store
from ..store.writer import AuditEntry
from ..timestamps import rfc3339 as _rfc3339
from ..timestamps import timestamp as _ts
from .submission import (
    CANONICAL_CASE,
    CasePreparer,
    Completed,
    Observation,
    SubmitContext,
    SubmitRequestIntent,
    SubmitRules,
)
from .submission import check_id as _check_id

__all__ = ["CaseService", "record_reads"]

log = logging.getLogger("tongban.cases")


def enum_name(enum: Any, value: int, field: str) -> str:
    """The name of ``value`` in the protobuf enum ``enum``. Proto3 enums are open: a caller can
    send any number, and one without a name is INVALID_ARGUMENT naming ``field``."""
    try:
        return str(enum.Name(value))
    except ValueError:
        raise InvalidRequest(f"{field}: {value} is not one of its values", field) from None


def instant(ts: Any, field: str) -> float:
    """UNIX seconds of a request's ``google.protobuf.Timestamp``; one outside the years
    0001-9999 (a caller can send any seconds) is INVALID_ARGUMENT naming ``field``."""
    try:
        return float(ts.ToNanoseconds() / 1e9)
    except ValueError:
        raise InvalidRequest(f"{field} is not a valid timestamp", field) from None


#: How far ahead of this gateway's clock a reported change may be stamped (clock skew). A
#: change stamped later would also make every later one look overtaken to a peer gateway.
FUTURE_SKEW_SECONDS = 300.0


def occurred_at(ts: Any, now: float) -> float:
    """UNIX seconds of a reported change's ``occurred_at``: a valid timestamp, not more than
    :data:`FUTURE_SKEW_SECONDS` ahead of ``now`` (else INVALID_ARGUMENT naming it)."""
    at = instant(ts, "occurred_at")
    if at > now + FUTURE_SKEW_SECONDS:
        raise InvalidRequest(
            f"occurred_at is in the future (over {FUTURE_SKEW_SECONDS:g} s ahead of this "
            "gateway's clock)",
            "occurred_at",
        )
    return at


def report_response(status: str, seq: int) -> bytes:
    """The answer to an accepted status report (built where the event's seq is known)."""
    return cx.ReportStatusResponse(
        status=records_pb2.CaseStatus.Value(status), event_cursor=str(seq)
    ).SerializeToString()


class CaseService:
    """Implements the case exchange on the store and the mapping set."""

    def __init__(
        self,
        settings: Settings,
        mappings: MappingRegistry,
        store: Store,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.mappings = mappings
        self.store = store
        self.clock = clock
        # Exchange ids: time then random bits from a generator seeded once from os.urandom (a
        # syscall per id costs ~20 us here). Ids need to be unique, not secret: visibility
        # checks guard every read.
        self._rng = random.Random(os.urandom(32))  # noqa: S311 - unique ids, not secrets
        # What the writer needs to prepare submissions: one context per serving mapping set.
        self._rules = SubmitRules.of(settings)
        self._tokens = itertools.count(1)
        self._context: SubmitContext | None = None
        self._context_of: MappingSet | None = None

    # -- helpers -----------------------------------------------------------------------------

    def inbox_partner(self, city: str) -> str | None:
        """The partner that receives ``city``'s deliveries, if it has an inbox."""
        return self._rules.inboxes.get(city)

    def _own_schema(self, ms: MappingSet, caller: Caller) -> str:
        return ms.schema_for(caller.city, "case") or CANONICAL_CASE

    def _view_schema(self, ms: MappingSet, caller: Caller, requested: str) -> str:
        if not requested:
            return self._own_schema(ms, caller)
        if requested == "none":
            return requested
        try:
            if ms.kind_of(requested) != "case":
                raise InvalidRequest(f"schema {requested!r} is not a case schema", "schema")
        except UnknownSchemaError:
            raise UnknownSchemaError(requested, "schema") from None
        return requested

    def _status_code(self, ms: MappingSet, schema: str, status: str) -> str:
        codes = ms.status_codes(schema)
        if codes is None:
            return ""
        return str(codes[1].get(status, ""))

    def _visible(self, caller: Caller, row: CaseRecord | None) -> CaseRecord:
        if row is None or caller.city not in (row.receiving_city, row.handling_city):
            raise CaseNotFound("no such case for this partner", "exchange_id")
        return row

    # -- submit ------------------------------------------------------------------------------

    async def submit(self, caller: Caller, request: cx.SubmitCaseRequest) -> cx.SubmitCaseResponse:
        """Validate, translate and durably store one case; the answer means 'will be delivered'."""
        started = time.perf_counter()
        outcome = await self.store.write(self._deferred(caller, request))
        stored, replayed = self._settle(outcome)
        answer = cx.SubmitCaseResponse.FromString(stored)
        self._log_accepted(caller, request, answer, replayed, started)
        return answer

    async def submit_many(
        self, caller: Caller, requests: list[cx.SubmitCaseRequest]
    ) -> list[bytes | Exception]:
        """Submit many cases: prepared here one after the other, committed together by the
        writer.

        One result per request, in order: the serialized SubmitCaseResponse of an accepted case
        (the stored one for a replay), or the exception that refused it. Unlike :meth:`submit`,
        a stream's cases are prepared on the event loop, while the writer commits other
        batches: deferred to the writer, a stream's hundreds of cases arrive at once and wait
        in line behind its batches (measured: 0.42 against 0.45-0.47 × the bare stream).

        Logged as one ``cases accepted`` line per stream (its counts) at INFO, and one
        ``case accepted`` line per case at DEBUG: a line per case of a bulk stream cost ~20% more
        CPU per case (144 against 121 µs, docs/operations.md); the audit log names every case.
        """
        started = time.perf_counter()
        prepared: list[SubmitCaseIntent | Exception] = []
        # One preparer for the stream: its cases share the time they were accepted at. Its
        # translations are told to the metrics once per outcome, counted, not once per case.
        observed: list[Observation] = []
        prepare = self.preparer(caller, observed.append)
        for request in requests:
            try:
                prepared.append(prepare(request))
            except Exception as exc:  # noqa: BLE001 - reported per case, like a unary call
                prepared.append(exc)
        report = self.mappings.on_translation
        if report is not None:
            for (schema, direction, code), n in collections.Counter(observed).items():
                report(schema, direction, code, n)
        intents = [p for p in prepared if isinstance(p, SubmitCaseIntent)]
        stored = iter(await self.store.write_many(intents))
        out: list[bytes | Exception] = []
        each = log.isEnabledFor(logging.DEBUG)
        replayed = 0
        for request, p in zip(requests, prepared, strict=True):
            if isinstance(p, Exception):
                out.append(p)
                continue
            result = next(stored)
            if isinstance(result, Exception):
                out.append(result)
            else:
                replayed += result[1]
                if each:
                    self._log_accepted(
                        caller, request, result[0], result[1], started, logging.DEBUG
                    )
                out.append(result[0])
        if log.isEnabledFor(logging.INFO):
            refused = sum(isinstance(o, Exception) for o in out)
            log.info(
                "cases accepted",
                extra={
                    "partner": caller.partner,
                    "accepted": len(out) - refused,
                    "replayed": replayed,
                    "refused": refused,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )
        return out

    def _deferred(self, caller: Caller, request: cx.SubmitCaseRequest) -> SubmitRequestIntent:
        """The case as received, to be prepared where the writer runs its batch."""
        ctx = self._context
        ms = self.mappings.current
        if ctx is None or self._context_of is not ms:
            ctx = self._context = SubmitContext(next(self._tokens), ms, self._rules)
            self._context_of = ms
        intent = SubmitRequestIntent(
            caller, request.SerializeToString(deterministic=True), ctx.token
        )
        intent.context = ctx
        return intent

    def _settle(self, outcome: Any) -> tuple[bytes, bool]:
        """(stored answer, replayed?) of a prepared submission; raises the error refusing it."""
        if isinstance(outcome, Completed):
            observer = self.mappings.on_translation
            if observer is not None:
                for schema, direction, code in outcome.observed:
                    observer(schema, direction, code)
            outcome = outcome.result
        if isinstance(outcome, BaseException):
            raise outcome
        stored, replayed = outcome
        return stored, replayed

    def _log_accepted(
        self,
        caller: Caller,
        request: cx.SubmitCaseRequest,
        answer: bytes | cx.SubmitCaseResponse,
        replayed: bool,
        started: float,
        level: int = logging.INFO,
    ) -> None:
        if not log.isEnabledFor(level):
            return
        if isinstance(answer, bytes):
            answer = cx.SubmitCaseResponse.FromString(answer)
        log.log(
            level,
            "case accepted",
            extra={
                # A replay answers with the first submission's id: the stored answer holds it.
                "exchange_id": answer.exchange_id,
                "partner": caller.partner,
                "target_city": request.target_city,
                "replayed": replayed,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )

    def preparer(
        self, caller: Caller, observe: Callable[[Observation], None] | None = None
    ) -> CasePreparer:
        """Prepares cases here, now, on the serving mapping set: a stream's cases. A unary
        submission is prepared by the writer (:meth:`_deferred`). With ``observe``, the
        translations are told to it as ``(schema, direction, code)`` instead of the metrics
        (a view of the set: the serving set's observer is shared)."""
        ms = self.mappings.current
        if observe is not None:
            ms = ms.view(lambda *seen: observe(seen))  # seen: (schema, direction, code)
        return CasePreparer(ms, self._rules, caller, self.clock(), self._rng)

    def prepare(self, caller: Caller, request: cx.SubmitCaseRequest) -> SubmitCaseIntent:
        """Validate and translate one case here, into the intent that stores it (raises when
        bad)."""
        return self.preparer(caller)(request)

    # -- read --------------------------------------------------------------------------------

    def render(
        self, ms: MappingSet, row: CaseRecord, events: list[EventRecord] | None, schema: str
    ) -> cx.CaseView:
        """A case as one viewer sees it, in ``schema`` ("none": summary only)."""
        view = cx.CaseView(
            exchange_id=row.exchange_id,
            receiving_city=row.receiving_city,
            handling_city=row.handling_city,
            case_number=row.case_number,
            status=records_pb2.CaseStatus.Value(row.status),
            delivery_state=cx.DeliveryState.Value(row.delivery_state),
            submitted_at=_ts(row.submitted_at),
            updated_at=_ts(row.updated_at),
        )
        if schema == "none":
            return view
        record = orjson.loads(row.canonical)
        record["status"] = row.status
        if events is not None:
            record["status_history"] = [
                {
                    "status": e.status,
                    "occurred_at": _rfc3339(e.occurred_at),
                    "reported_by": e.reported_by,
                    **({"note": e.note} if e.note else {}),
                    **({"late": True} if e.late else {}),
                }
                for e in events
            ]
        if schema == CANONICAL_CASE:
            view.canonical.CopyFrom(case_message(record))
            return view
        view.status_code = self._status_code(ms, schema, row.status)
        try:
            out = ms.from_canonical(schema, record)
        except RecordInvalidError as exc:
            raise NotRepresentable(
                f"the case cannot be written in schema {schema!r}: {exc.summary()}", "schema"
            ) from None
        view.foreign.CopyFrom(
            common_pb2.ForeignRecord(
                schema=schema,
                json=orjson.dumps(out.record),
            )
        )
        return view

    async def get(self, caller: Caller, request: cx.GetCaseRequest) -> cx.GetCaseResponse:
        """One case in the caller's schema (or the one asked for)."""
        ms = self.mappings.current
        if not request.exchange_id:
            raise InvalidRequest("exchange_id is required", "exchange_id")
        schema = self._view_schema(ms, caller, request.schema)
        found, events = await self.store.read(self.store.reader.case_history, request.exchange_id)
        row = self._visible(caller, found)
        view = self.render(ms, row, events, schema)
        if schema != "none":  # a summary holds no personal data
            await record_reads(
                self.store, self.settings, caller, [(row.exchange_id, f"read as {schema}")]
            )
        return cx.GetCaseResponse(case_view=view)

    async def list(self, caller: Caller, request: cx.ListCasesRequest) -> cx.ListCasesResponse:
        """Visible cases, newest first, keyset pages."""
        ms = self.mappings.current
        size = request.page_size or 50
        if size < 0:
            raise InvalidRequest("page_size must not be negative", "page_size")
        size = min(size, 500)
        schema = self._view_schema(ms, caller, request.schema)
        status = (
            enum_name(records_pb2.CaseStatus, request.status, "status") if request.status else ""
        )
        state = (
            enum_name(cx.DeliveryState, request.delivery_state, "delivery_state")
            if request.delivery_state
            else ""
        )
        query = hashlib.sha256(
            f"{status}|{request.receiving_city}|{request.handling_city}|{state}|{caller.partner}".encode()
        ).hexdigest()[:16]
        before = _decode_page(request.page_token, query) if request.page_token else None
        rows = await self.store.read(
            self.store.reader.cases,
            [caller.city],
            before_seq=before,
            limit=size + 1,
            status=status,
            receiving_city=request.receiving_city,
            handling_city=request.handling_city,
            delivery_state=state,
        )
        more = len(rows) > size
        rows = rows[:size]
        resp = cx.ListCasesResponse(cases=[self.render(ms, r, None, schema) for r in rows])
        if schema != "none":
            listed = f"listed as {schema}"
            await record_reads(
                self.store, self.settings, caller, [(r.exchange_id, listed) for r in rows]
            )
        if more:
            resp.next_page_token = _encode_page(rows[-1].seq, query)
        return resp

    # -- status ------------------------------------------------------------------------------

    async def report(
        self, caller: Caller, request: cx.ReportStatusRequest
    ) -> cx.ReportStatusResponse:
        """The handling city reports progress (in its codes); illegal changes are refused."""
        return (await self.report_replayed(caller, request))[0]

    async def report_replayed(
        self, caller: Caller, request: cx.ReportStatusRequest, *, record_late: bool = False
    ) -> tuple[cx.ReportStatusResponse, bool]:
        """:meth:`report`, and whether the answer is a replay of the request's first one.
        ``record_late``: a change older than the last one from the caller's city is recorded
        in the history as late instead of refused (a peer gateway's delivery,
        :class:`ReportStatusIntent`); its answer keeps the case's status, and the other city's
        system is sent it, marked late, if its inbox has ``late_statuses``."""
        ms = self.mappings.current
        _check_id(request.request_id, "request_id")
        if not request.exchange_id:
            raise InvalidRequest("exchange_id is required", "exchange_id")
        own = self._own_schema(ms, caller)
        if bool(request.status_code) == bool(request.status):
            raise InvalidRequest("give exactly one of status_code and status", "status_code")
        if request.status_code:
            codes = ms.status_codes(own)
            new = codes[0].get(request.status_code) if codes else None
            if new is None:
                raise UnknownStatusCode(
                    f"status code is not in the code list of {own}", "status_code"
                )
        else:
            new = enum_name(records_pb2.CaseStatus, request.status, "status")
        if len(request.note) > 2000:
            raise InvalidRequest("note is longer than 2000 characters", "note")
        if request.note.startswith(SEALED_PREFIX):
            # The store's mark of a sealed value: a note in the clear that looked sealed would
            # read as one the gateway cannot open.
            raise InvalidRequest(f"note must not start with {SEALED_PREFIX!r}", "note")
        update: dict[str, Any] | None = None
        if request.HasField("record"):
            schema = request.record.schema or own
            if len(request.record.json) > self.settings.server.max_record_bytes:
                raise RecordTooLarge("record is too large", "record.json")
            try:
                result = ms.translate_json(schema, CANONICAL_CASE, request.record.json)
            except UnknownSchemaError:
                raise UnknownSchemaError(schema, "record.schema") from None
            update = {
                k: v for k, v in result.record.items() if k in ("acceptance", "steps", "completion")
            }
        row = self._visible(
            caller, await self.store.read(self.store.reader.case, request.exchange_id)
        )
        now = self.clock()
        occurred = occurred_at(request.occurred_at, now) if request.HasField("occurred_at") else now
        # The case's other city is told: the receiving city of the handling city's progress,
        # the handling city of a withdrawal by the receiving city.
        other = row.receiving_city if caller.city == row.handling_city else row.handling_city
        receiver = self.inbox_partner(other)
        notify = (receiver, other) if receiver and other != caller.city else None
        # A change recorded late goes only to a system that reads it as late.
        notify_late = notify is not None and self.settings.partners[notify[0]].inbox.late_statuses
        body_hash = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()

        stored, replayed = await self.store.write(
            ReportStatusIntent(
                partner=caller.partner,
                reporter_city=caller.city,
                request_id=request.request_id,
                body_hash=body_hash,
                exchange_id=request.exchange_id,
                new_status=str(new),
                occurred_at=occurred,
                note=request.note,
                canonical_update=update,
                notify=notify,
                make_response=report_response,
                record_late=record_late,
                notify_late=notify_late,
            )
        )
        return cx.ReportStatusResponse.FromString(stored), replayed

    # -- watch -------------------------------------------------------------------------------

    async def watch(
        self, caller: Caller, request: cx.WatchCasesRequest, poll_seconds: float = 0.5
    ) -> AsyncIterator[cx.WatchCasesResponse]:
        """Status events of the caller's cases, from the cursor on, as they happen."""
        ms = self.mappings.current
        schema = self._view_schema(ms, caller, request.schema)
        if request.cursor:
            if not (request.cursor.isascii() and request.cursor.isdigit()):
                raise InvalidRequest("cursor must come from a previous event", "cursor")
            cursor = int(request.cursor)
        elif request.from_beginning:
            cursor = 0
        else:
            cursor = await self.store.read(self.store.reader.last_event_seq)
        if request.exchange_id:
            self._visible(
                caller, await self.store.read(self.store.reader.case, request.exchange_id)
            )
        while True:
            self.store.notify.clear()
            found = await self.store.read(
                self.store.reader.events_after, cursor, [caller.city], request.exchange_id
            )
            ms = self.mappings.current
            # A note may name the applicant: recorded as read before it is streamed.
            await record_reads(
                self.store,
                self.settings,
                caller,
                [(e.exchange_id, f"note of {e.status} watched") for e, _, _ in found if e.note],
            )
            for event, case_number, _receiving in found:
                cursor = event.seq
                yield cx.WatchCasesResponse(
                    event=cx.CaseEvent(
                        exchange_id=event.exchange_id,
                        case_number=case_number,
                        status=records_pb2.CaseStatus.Value(event.status),
                        status_code=self._status_code(ms, schema, event.status)
                        if schema not in (CANONICAL_CASE, "none")
                        else "",
                        occurred_at=_ts(event.occurred_at),
                        reported_by=event.reported_by,
                        note=event.note,
                        late=event.late,
                    ),
                    cursor=str(event.seq),
                )
            if not found:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.store.notify.wait(), poll_seconds)


async def record_reads(
    store: Store, settings: Settings, caller: Caller, reads: Sequence[tuple[str, str]]
) -> None:
    """With ``audit.case_reads``: an audit entry for each read of a case's personal data,
    (exchange id, how it was read), committed before it is answered (a store that cannot
    record a read does not disclose it)."""
    if settings.audit.case_reads and reads:
        await store.write(
            AuditIntent(
                [
                    AuditEntry(caller.partner, "case.read", xid, "disclosed", how)
                    for xid, how in reads
                ]
            )
        )


def _encode_page(seq: int, query: str) -> str:
    raw = json.dumps({"before": seq, "q": query}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_page(token: str, query: str) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        before, q = int(data["before"]), data["q"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidPageToken("page_token is malformed", "page_token") from None
    if q != query:
        raise InvalidPageToken("page_token belongs to a different query", "page_token")
    return before
