"""Federated mode: cases and statuses that a peer Tongban gateway delivers to this one.

In a federation each city runs its own gateway, and gateways deliver to each other over
``PartnerInboxService`` with canonical records (the X-Road model). A case keeps one exchange id
across every gateway it passes: the peer's delivery carries it as the idempotency key, this
gateway stores the case under it, and the statuses the handling city reports here travel back
with it, so the peer finds its case. What a peer delivers goes through the same checks as a
submission (its ACL, the canonical record's checks, the case lifecycle) and the same store
transaction (case, status event, outbox row, audit entry).

Statuses of one case may arrive out of order (the sender's outbox delivers rows concurrently and
retries them). A status newer than the last one the handling city reported (by its
``occurred_at``) that is not a legal next step here is answered ABORTED with RetryInfo: the
sender retries it once the change between has arrived, so the changes are applied in the
order they happened. One that is not newer was applied before (acknowledged), or has been
overtaken by a newer one: it is recorded in the case's history as late, without moving the
case's status, and acknowledged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import identity_pb2, records_pb2
from tongban.v1 import partner_inbox_pb2 as inbox

from ..auth import Caller
from ..domain.lifecycle import GATEWAYS_OWN, TERMINAL, TRANSITIONS
from ..errors import (
    CaseNotFound,
    ExchangeIdTaken,
    GatewayError,
    InvalidRequest,
    OutOfOrder,
    PermissionDenied,
)
from ..store.store import Store
from ..timestamps import utc_text
from .cases import CaseService, enum_name, occurred_at
from .identity import IdentityService
from .submission import check_id

__all__ = ["PeerInbox"]

log = logging.getLogger("tongban.peering")

#: An exchange id is stored in a column of this many characters.
EXCHANGE_ID_MAX = 40

#: How long a peer waits before retrying a status that came before an earlier one (seconds).
OUT_OF_ORDER_RETRY_SECONDS = 1.0


class PeerInbox:
    """What this gateway does with a peer gateway's deliveries."""

    def __init__(
        self,
        cases: CaseService,
        identity: IdentityService,
        store: Store,
        peers: frozenset[str],
        on_status: Callable[[str, str], None] | None = None,
    ) -> None:
        self.cases = cases
        self.identity = identity
        self.store = store
        self.peers = peers  # partner ids of the peer gateways
        self.on_status = on_status  # (peer, outcome) of each status change delivered

    def _not_through_a_peer(self, partner: str | None, message: str, field: str) -> None:
        """Refuse what this gateway would pass on to another peer gateway: a misconfigured
        pair would bounce it between them. A federation asks the owning city's gateway."""
        if partner in self.peers:
            raise PermissionDenied(message, field)

    async def deliver_case(
        self, caller: Caller, request: inbox.DeliverCaseRequest
    ) -> inbox.DeliverCaseResponse:
        """Store the peer's case under its exchange id, to be delivered to its handling city."""
        key = request.idempotency_key
        check_id(key, "idempotency_key")
        if len(key) > EXCHANGE_ID_MAX or not key.isascii() or " " in key:
            raise InvalidRequest(
                f"idempotency_key must be an exchange id (1-{EXCHANGE_ID_MAX} ASCII characters "
                "without spaces)",
                "idempotency_key",
            )
        if request.source_city != caller.city:
            raise PermissionDenied(
                f"source_city must be the city this peer speaks for ({caller.city})",
                "source_city",
            )
        if request.WhichOneof("record") != "canonical":
            raise InvalidRequest("a peer gateway delivers the canonical case", "canonical")
        target = request.canonical.handling_city
        if not target:
            raise InvalidRequest("the case names no handling city", "canonical.handling_city")
        self._not_through_a_peer(
            self.cases.inbox_partner(target),
            f"city {target} is handled by another gateway, not here",
            "canonical.handling_city",
        )
        held = await self.store.read(self.store.reader.case, key)
        if held is not None:
            if held.submitter != caller.partner:
                raise ExchangeIdTaken("another case holds this exchange id here", "idempotency_key")
            # A retry (the answer to the first delivery was lost), even past the idempotency
            # records' retention.
            return inbox.DeliverCaseResponse(partner_reference=key, duplicate=True)
        submit = cx.SubmitCaseRequest(request_id=key, target_city=target)
        submit.canonical.CopyFrom(request.canonical)
        intent = self.cases.preparer(caller)(submit, exchange_id=key)
        _, replayed = await self.store.write(intent)
        log.info(
            "case received from a peer gateway",
            extra={"exchange_id": key, "partner": caller.partner, "target_city": target},
        )
        return inbox.DeliverCaseResponse(partner_reference=key, duplicate=bool(replayed))

    async def deliver_status(
        self, caller: Caller, request: inbox.DeliverStatusRequest
    ) -> inbox.DeliverStatusResponse:
        """Apply a status change of a case the two gateways share: the handling city's
        progress, reported back here by its gateway, or a withdrawal by the receiving city,
        passed on by its gateway. Each is counted by outcome (``on_status``)."""
        try:
            outcome = await self._apply_status(caller, request)
        except OutOfOrder:
            self._count(caller, "out_of_order")
            raise
        except GatewayError:
            self._count(caller, "refused")
            raise
        self._count(caller, outcome)
        if outcome == "overtaken":
            log.info(
                "a peer's status change arrived after a newer one: recorded late, the case's "
                "status unchanged",
                extra={
                    "exchange_id": request.exchange_id,
                    "partner": caller.partner,
                    "status": records_pb2.CaseStatus.Name(request.status),
                },
            )
        # A late change is stored now: new here, though it did not move the case.
        return inbox.DeliverStatusResponse(duplicate=outcome in ("repeated", "own"))

    def _count(self, caller: Caller, outcome: str) -> None:
        if self.on_status is not None:
            self.on_status(caller.partner, outcome)

    async def _apply_status(self, caller: Caller, request: inbox.DeliverStatusRequest) -> str:
        """``applied``, or why not: ``repeated`` (applied before), ``overtaken`` (older than
        a change applied: recorded in the history as late), ``own`` (RECEIVED, which this
        gateway set itself); raises what refuses it."""
        check_id(request.idempotency_key, "idempotency_key")
        if not request.exchange_id:
            raise InvalidRequest("exchange_id is required", "exchange_id")
        if request.status == records_pb2.CASE_STATUS_UNSPECIFIED:
            raise InvalidRequest("a peer gateway reports the canonical status", "status")
        if not request.HasField("occurred_at"):
            raise InvalidRequest("occurred_at is required", "occurred_at")
        if request.late:
            raise InvalidRequest(
                "late is for a city's system: a peer gateway sends each change as it was "
                "reported, and this gateway decides which arrived late",
                "late",
            )
        new = enum_name(records_pb2.CaseStatus, request.status, "status")
        at = occurred_at(request.occurred_at, self.cases.clock())
        case, events = await self.store.read(self.store.reader.case_history, request.exchange_id)
        if case is None:
            # A withdrawal can overtake the case it withdraws (two rows of the sender's outbox).
            raise OutOfOrder(
                "the case has not arrived here yet", "exchange_id", OUT_OF_ORDER_RETRY_SECONDS
            )
        if caller.city not in (case.receiving_city, case.handling_city):
            raise CaseNotFound("no such case for this partner", "exchange_id")
        if any(e.status == new and e.occurred_at == at for e in events):
            return "repeated"
        if new in GATEWAYS_OWN and any(e.status == new for e in events):
            return "own"  # RECEIVED: set here too when its delivery succeeded
        # The last change the handling city's system reported (SUBMITTED and RECEIVED are the
        # gateways' own, stamped by their clocks).
        latest = max(
            (
                e.occurred_at
                for e in events
                if e.reported_by == caller.city and e.status not in GATEWAYS_OWN
            ),
            default=0.0,
        )
        late = at <= latest and new not in GATEWAYS_OWN
        if (
            not late
            and new not in TRANSITIONS.get(case.status, frozenset())
            and case.status not in TERMINAL
        ):
            # Newer, and not a step from here: a change between the two is still on its way
            # (a terminal case cannot move at all: ILLEGAL_TRANSITION below).
            raise OutOfOrder(
                f"the case is in {case.status} here: an earlier status change of it has not "
                f"arrived yet ({new} occurred at {utc_text(at)})",
                "status",
                OUT_OF_ORDER_RETRY_SECONDS,
            )
        report = cx.ReportStatusRequest(
            request_id=request.idempotency_key,
            exchange_id=request.exchange_id,
            status=request.status,
            note=request.note,
        )
        report.occurred_at.CopyFrom(request.occurred_at)
        # Older than a change applied (read above, or stored meanwhile by a delivery in flight
        # with this one: the writer decides in its transaction): recorded late.
        answer, replayed = await self.cases.report_replayed(
            caller, report, record_late=new not in GATEWAYS_OWN
        )
        if replayed:
            return "repeated"
        stored = await self.store.read(self.store.reader.event, int(answer.event_cursor))
        return "overtaken" if stored is not None and stored.late else "applied"

    def _asked_by(self, caller: Caller, requesting_city: str) -> None:
        if requesting_city != caller.city:
            raise PermissionDenied(
                f"requesting_city must be the city this peer speaks for ({caller.city})",
                "requesting_city",
            )

    async def lookup_person(
        self, caller: Caller, request: inbox.LookupPersonRequest
    ) -> inbox.LookupPersonResponse:
        """A person of a city this gateway serves (not one it would ask another peer about),
        minimised to the purpose as this gateway's settings allow the peer: the home city's
        gateway decides what leaves it."""
        self._asked_by(caller, request.requesting_city)
        answer = await self.identity.resolve_person(
            caller,
            identity_pb2.ResolvePersonRequest(
                certificate_type=request.certificate_type,
                certificate_number=request.certificate_number,
                purpose=request.purpose,
                schema="tongban.v1.Person",
            ),
        )
        return inbox.LookupPersonResponse(canonical=answer.canonical)

    async def lookup_enterprise(
        self, caller: Caller, request: inbox.LookupEnterpriseRequest
    ) -> inbox.LookupEnterpriseResponse:
        """An enterprise registered in a city this gateway serves, minimised likewise."""
        self._asked_by(caller, request.requesting_city)
        answer = await self.identity.resolve_enterprise(
            caller,
            identity_pb2.ResolveEnterpriseRequest(
                credit_code=request.credit_code,
                purpose=request.purpose,
                schema="tongban.v1.Enterprise",
            ),
        )
        return inbox.LookupEnterpriseResponse(canonical=answer.canonical)
