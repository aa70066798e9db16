"""Identity exchange: resolve and verify persons and enterprises at their home city.

A person's home city is the prefecture of the region code in the ID number (``4403xx`` ->
440300); an enterprise's, the region in positions 3-8 of its credit code. The gateway asks that
city's system through its transport, translates the answer to canonical, keeps only the fields
the stated purpose discloses (data minimisation), and answers in the caller's schema.
``VerifyPerson`` discloses nothing but true or false. Answers are cached briefly (bounded, TTL
per purpose); every query is audited without the personal data.
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from adapters.mapping import MappingError, RecordInvalidError, UnknownSchemaError
from adapters.mapping.canonical_io import canonical_to_message, message_to_canonical
from adapters.mapping.convert import (
    ValueProblem,
    check_credit_code,
    check_id_number,
    home_city_of_credit_code,
    home_city_of_id_number,
)
from adapters.transports import PartnerTransport, TransportError
from tongban.v1 import common_pb2, identity_pb2, records_pb2
from tongban.v1 import partner_inbox_pb2 as inbox

from ..auth import Caller
from ..errors import (
    BackendUnavailable,
    HomeCityNotServed,
    InvalidIdentifier,
    InvalidRequest,
    NotRepresentable,
    PartnerRefused,
    RecordNotFound,
)
from ..mappings import MappingRegistry
from ..metrics import GatewayMetrics
from ..settings import Settings
from ..store.intents import AuditIntent
from ..store.store import Store
from ..store.writer import AuditEntry

__all__ = ["IdentityService"]

_ID_TYPES = {
    records_pb2.CERTIFICATE_TYPE_UNSPECIFIED,
    records_pb2.CERTIFICATE_TYPE_RESIDENT_ID_CARD,
    records_pb2.CERTIFICATE_TYPE_TEMPORARY_RESIDENT_ID_CARD,
}


class IdentityService:
    """Resolves and verifies identities at their home city."""

    def __init__(
        self,
        settings: Settings,
        mappings: MappingRegistry,
        store: Store,
        transports: dict[str, PartnerTransport],
        metrics: GatewayMetrics,
        clock: Callable[[], float] = time.monotonic,
        cache_size: int = 10_000,
    ) -> None:
        self.settings = settings
        self.mappings = mappings
        self.store = store
        self.transports = transports
        self.metrics = metrics
        self.clock = clock
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], tuple[float, dict[str, Any]]] = OrderedDict()

    # -- plumbing ----------------------------------------------------------------------------

    def _purpose(self, caller: Caller, purpose: str, kind: str) -> Any:
        if not purpose:
            raise InvalidRequest("purpose is required", "purpose")
        caller.check_purpose(purpose)
        caller.check_kind(kind, "purpose")
        return self.settings.purposes[purpose]

    def _home_partner(self, city: str, caller: Caller) -> tuple[str, PartnerTransport]:
        found = self.settings.partner_for_city(city)
        if found is None or found[0] not in self.transports:
            raise HomeCityNotServed("the home city of this identity is not served", "home_city")
        if caller.peer and found[1].peer:
            # A peer gateway asks the home city's own gateway; passing the query on to another
            # peer would let a misconfigured pair bounce it between them.
            raise HomeCityNotServed(
                "the home city of this identity is served by another gateway", "home_city"
            )
        return found[0], self.transports[found[0]]

    async def _fetch(
        self,
        caller: Caller,
        kind: str,
        key: str,
        home: str,
        ttl: float,
        ask: Callable[[PartnerTransport, float], Awaitable[Any]],
    ) -> dict[str, Any]:
        cached = self._cache.get((kind, key))
        now = self.clock()
        if cached is not None and now - cached[0] < ttl:
            self._cache.move_to_end((kind, key))
            return cached[1]
        partner, transport = self._home_partner(home, caller)
        timeout = self.settings.partners[partner].retry or self.settings.delivery.retry
        try:
            answer = await ask(transport, timeout.attempt_timeout_seconds)
        except TransportError as exc:
            if exc.code in ("NOT_FOUND", "HTTP_404"):
                raise RecordNotFound(f"the home city does not know this {kind}") from None
            if exc.retryable:
                raise BackendUnavailable(
                    f"the home city's system is unavailable ({exc.code})", exc.retry_after or 1.0
                ) from None
            raise PartnerRefused(f"the home city's system refused the query ({exc.code})") from None
        record = self._canonical(kind, answer)
        self._cache[(kind, key)] = (now, record)
        self._cache.move_to_end((kind, key))
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return record

    def _canonical(self, kind: str, answer: Any) -> dict[str, Any]:
        which = answer.WhichOneof("record")
        if which == "canonical":
            return message_to_canonical(answer.canonical)
        if which == "foreign":
            try:
                return dict(
                    self.mappings.current.to_canonical(
                        answer.foreign.schema, json.loads(answer.foreign.json)
                    ).record
                )
            except (MappingError, ValueError):
                raise PartnerRefused(
                    f"the home city answered with an invalid {kind} record"
                ) from None
        raise RecordNotFound(f"the home city does not know this {kind}")

    def _render(
        self, caller: Caller, kind: str, requested: str, record: dict[str, Any], target: Any
    ) -> None:
        ms = self.mappings.current
        canonical_name = f"tongban.v1.{kind.capitalize()}"
        schema = requested or ms.schema_for(caller.city, kind) or canonical_name
        if schema == canonical_name:
            target.canonical.CopyFrom(canonical_to_message(kind, record))
            return
        try:
            if ms.kind_of(schema) != kind:
                raise InvalidRequest(f"schema {schema!r} is not a {kind} schema", "schema")
            out = ms.from_canonical(schema, record)
        except UnknownSchemaError:
            raise UnknownSchemaError(schema, "schema") from None
        except RecordInvalidError as exc:
            raise NotRepresentable(
                f"the fields this purpose discloses do not fill schema {schema!r} "
                f"({exc.summary()}); ask for {canonical_name}",
                "schema",
            ) from None
        target.foreign.CopyFrom(
            common_pb2.ForeignRecord(
                schema=schema, json=json.dumps(out.record, ensure_ascii=False).encode()
            )
        )

    async def _audit(
        self, caller: Caller, action: str, home: str, purpose: str, outcome: str
    ) -> None:
        self.metrics.identity_queries.labels(purpose, outcome).inc()
        await self.store.write(
            AuditIntent(
                [AuditEntry(caller.partner, action, f"city:{home}", outcome, f"purpose {purpose}")]
            )
        )

    async def _fetch_person(
        self, caller: Caller, number: str, home: str, purpose: str, ttl: float
    ) -> dict[str, Any]:
        """A person's canonical record from the home city (or the cache)."""
        request = inbox.LookupPersonRequest(
            certificate_type=records_pb2.CERTIFICATE_TYPE_RESIDENT_ID_CARD,
            certificate_number=number,
            purpose=purpose,
            requesting_city=caller.city,
        )
        return await self._fetch(
            caller,
            "person",
            number,
            home,
            ttl,
            lambda t, timeout: t.lookup_person(request, timeout),
        )

    # -- RPCs --------------------------------------------------------------------------------

    async def resolve_person(
        self, caller: Caller, req: identity_pb2.ResolvePersonRequest
    ) -> identity_pb2.ResolvePersonResponse:
        """A person from the home city, minimised to the purpose."""
        purpose = self._purpose(caller, req.purpose, "person")
        number = _id_number(req.certificate_number, req.certificate_type)
        home = home_city_of_id_number(number)
        try:
            record = await self._fetch_person(
                caller, number, home, req.purpose, purpose.cache_ttl_seconds
            )
        except RecordNotFound:
            await self._audit(caller, "identity.resolve_person", home, req.purpose, "not_found")
            raise
        minimal = {k: v for k, v in record.items() if k in set(purpose.person_fields)}
        resp = identity_pb2.ResolvePersonResponse(disclosed_fields=sorted(minimal), home_city=home)
        self._render(caller, "person", req.schema, minimal, resp)
        await self._audit(caller, "identity.resolve_person", home, req.purpose, "disclosed")
        return resp

    async def resolve_enterprise(
        self, caller: Caller, req: identity_pb2.ResolveEnterpriseRequest
    ) -> identity_pb2.ResolveEnterpriseResponse:
        """An enterprise from its registering city, minimised to the purpose."""
        purpose = self._purpose(caller, req.purpose, "enterprise")
        code = req.credit_code
        try:
            check_credit_code(code)
        except ValueProblem as exc:
            raise InvalidIdentifier(exc.message, "credit_code", "INVALID_CREDIT_CODE") from None
        home = home_city_of_credit_code(code)
        try:
            record = await self._fetch(
                caller,
                "enterprise",
                code,
                home,
                purpose.cache_ttl_seconds,
                lambda t, timeout: t.lookup_enterprise(
                    inbox.LookupEnterpriseRequest(
                        credit_code=code, purpose=req.purpose, requesting_city=caller.city
                    ),
                    timeout,
                ),
            )
        except RecordNotFound:
            await self._audit(caller, "identity.resolve_enterprise", home, req.purpose, "not_found")
            raise
        minimal = {k: v for k, v in record.items() if k in set(purpose.enterprise_fields)}
        resp = identity_pb2.ResolveEnterpriseResponse(
            disclosed_fields=sorted(minimal), home_city=home
        )
        self._render(caller, "enterprise", req.schema, minimal, resp)
        await self._audit(caller, "identity.resolve_enterprise", home, req.purpose, "disclosed")
        return resp

    async def verify_person(
        self, caller: Caller, req: identity_pb2.VerifyPersonRequest
    ) -> identity_pb2.VerifyPersonResponse:
        """Whether the name (and birth date) match the ID number; nothing else."""
        purpose = self._purpose(caller, req.purpose, "person")
        number = _id_number(req.certificate_number, records_pb2.CERTIFICATE_TYPE_RESIDENT_ID_CARD)
        if not req.name.strip():
            raise InvalidRequest("name is required", "name")
        if req.birth_date and (len(req.birth_date) != 10 or not req.birth_date.isascii()):
            raise InvalidRequest("birth_date must be YYYY-MM-DD", "birth_date")
        home = home_city_of_id_number(number)
        try:
            record = await self._fetch_person(
                caller, number, home, req.purpose, purpose.cache_ttl_seconds
            )
            match = _same(record.get("name", ""), req.name) and (
                not req.birth_date or record.get("birth_date") == req.birth_date
            )
        except RecordNotFound:
            match = False  # an unknown number does not match; its absence is not disclosed
        await self._audit(
            caller, "identity.verify_person", home, req.purpose, "match" if match else "no_match"
        )
        return identity_pb2.VerifyPersonResponse(match=match)


def _same(a: str, b: str) -> bool:
    return unicodedata.normalize("NFC", a.strip()) == unicodedata.normalize("NFC", b.strip())


def _id_number(number: str, certificate_type: int) -> str:
    if certificate_type not in _ID_TYPES:
        raise InvalidRequest(
            "only resident ID numbers can be routed to a home city", "certificate_type"
        )
    if not number:
        raise InvalidRequest("certificate_number is required", "certificate_number")
    try:
        check_id_number(number)
    except ValueProblem as exc:
        raise InvalidIdentifier(exc.message, "certificate_number", "INVALID_ID_NUMBER") from None
    return number
