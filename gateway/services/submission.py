"""Preparing a submitted case: validate, translate, build the intent that stores it.

Preparation is pure (no I/O): the mapping set, the submission rules and the batch's time are all
it reads. That lets it run where the batch runs instead of on the event loop: a unary
submission is queued as a :class:`SubmitRequestIntent` holding the request as bytes, and the
store's writer process (its own interpreter and GIL) prepares it just before the transaction
that stores it. The event loop then only reads requests and writes answers; the translation
(~50 µs of loop time per call under load, the largest part of a submission) runs beside it.
A SubmitCases stream's cases are prepared on the loop by one :class:`CasePreparer` (see
``CaseService.submit_many`` for why), which checks the stream's target cities and schemas once
and serializes the answers' common part once.

The writer process receives each mapping set once, as its parsed models (a
:class:`SubmitContext`, compiled again there), then only a token with each case; a mapping
reload makes a new context, and cases queued before it are still prepared with the set they
were accepted under.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from adapters.mapping import MappingSet, UnknownSchemaError, parse_json
from adapters.mapping.canonical_io import message_to_canonical
from adapters.mapping.compiler import compile_mapping
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import records_pb2

from ..auth import Caller
from ..errors import InvalidRequest, PermissionDenied, RecordTooLarge, UnknownCity
from ..rpc.translation import warnings_to_proto
from ..settings import Settings
from ..store.intents import SubmitCaseIntent
from ..store.writer import DeferredIntent, Intent
from ..timestamps import timestamp as _ts

__all__ = [
    "CANONICAL_CASE",
    "CasePreparer",
    "Completed",
    "Observation",
    "SubmitContext",
    "SubmitRequestIntent",
    "SubmitRules",
    "check_id",
    "prepare_case",
]

CANONICAL_CASE = "tongban.v1.Case"

#: An exchange id's shape (12 hex digits of milliseconds, 20 of random bits), standing in for
#: the id in a batch's serialized answer (see :class:`CasePreparer`).
_ID_STAND_IN = "x" * 32

#: One translation a preparation ran: (schema, direction, first error code or None), as the
#: mapping set's observer (translation metrics) sees it.
Observation = tuple[str, str, str | None]


@dataclass(frozen=True)
class SubmitRules:
    """The settings a preparation reads: the record size cap, and the partner that receives
    each city's cases (first partner of a city, if it has an inbox)."""

    max_record_bytes: int
    inboxes: dict[str, str]

    @classmethod
    def of(cls, settings: Settings) -> SubmitRules:
        """The rules of ``settings`` (they do not change while the gateway runs)."""
        first: dict[str, str | None] = {}
        for pid, p in settings.partners.items():
            first.setdefault(p.city, pid if p.inbox.transport != "none" else None)
        return cls(
            settings.server.max_record_bytes,
            {city: pid for city, pid in first.items() if pid is not None},
        )


def check_id(value: str, field_name: str) -> None:
    """INVALID_ARGUMENT unless ``value`` is a usable request id (1-128 printable characters)."""
    if not value:
        raise InvalidRequest(f"{field_name} is required", field_name)
    if len(value) > 128 or not value.isprintable():
        raise InvalidRequest(f"{field_name} must be 1-128 printable characters", field_name)


def prepare_case(
    ms: MappingSet,
    rules: SubmitRules,
    caller: Caller,
    request: cx.SubmitCaseRequest,
    now: float,
    rng: random.Random,
    body: bytes | None = None,
) -> SubmitCaseIntent:
    """Validate and translate one case into the intent that stores it (raises when bad).

    ``body`` is the request's deterministic serialization when the caller has it already; the
    idempotency hash is taken over it. Several cases of one caller at one time: use a
    :class:`CasePreparer`.
    """
    return CasePreparer(ms, rules, caller, now, rng)(request, body)


class CasePreparer:
    """Prepares the cases one caller submitted at one time (a SubmitCases stream, a unary case
    in the writer's batch): what every case of the batch shares is worked out once, the
    checks of a target city and a schema that passed, the answer's common part.

    A case is refused exactly as :func:`prepare_case` would refuse it alone: the same checks
    run in the same order; only what passed is remembered.
    """

    __slots__ = (
        "_answer_head",
        "_answer_tail",
        "_id_prefix",
        "_schemas",
        "_targets",
        "caller",
        "ms",
        "now",
        "rng",
        "rules",
    )

    def __init__(
        self,
        ms: MappingSet,
        rules: SubmitRules,
        caller: Caller,
        now: float,
        rng: random.Random,
    ) -> None:
        self.ms, self.rules, self.caller, self.now, self.rng = ms, rules, caller, now, rng
        self._targets: dict[str, str] = {}  # target city -> its partner, every check passed
        self._schemas: set[str] = set()  # foreign schemas that are case schemas
        # 48 bits of milliseconds, then 80 random bits (the layout of a UUIDv7): ids sort by
        # time, so the store's unique index on them grows at its right edge instead of taking
        # a random page per case, which made commits slower as the store grew.
        self._id_prefix = f"{int(now * 1000) & 0xFFFFFFFFFFFF:012x}"
        # The answer, serialized once with a stand-in id of an id's length (ids are always
        # 12 + 20 hex digits): a case's answer is that serialization with its own id in the
        # stand-in's place, the bytes protobuf would give (tested), without building and
        # serializing a message per case (~3% of the event loop's time on a stream).
        self._answer_head, _, self._answer_tail = (
            cx.SubmitCaseResponse(
                exchange_id=_ID_STAND_IN,
                status=records_pb2.CASE_STATUS_SUBMITTED,
                accepted_at=_ts(now),
            )
            .SerializeToString()
            .partition(_ID_STAND_IN.encode())
        )

    def _target(self, target: str) -> str:
        """The partner receiving ``target``'s cases, once the caller may submit there."""
        partner = self._targets.get(target)
        if partner is not None:
            return partner
        if not target:
            raise InvalidRequest("target_city is required", "target_city")
        caller = self.caller
        partner = self.rules.inboxes.get(target)
        if self.ms.city(target) is None or partner is None:
            raise UnknownCity(target, "target_city")
        if not caller.may_target(target):
            raise PermissionDenied("this partner may not submit cases for that city", "target_city")
        caller.check_kind("case", "target_city")
        self._targets[target] = partner
        return partner

    def __call__(
        self, request: cx.SubmitCaseRequest, body: bytes | None = None, exchange_id: str = ""
    ) -> SubmitCaseIntent:
        """The intent storing ``request`` (raises the error refusing it), under a new exchange
        id, or under ``exchange_id`` (a case a peer gateway delivered keeps the id it has
        there, so that its statuses find it on the way back)."""
        request_id = request.request_id
        check_id(request_id, "request_id")
        target = request.target_city
        target_partner = self._target(target)
        ms, caller = self.ms, self.caller
        kind = request.WhichOneof("record")
        if kind is None:
            raise InvalidRequest("a case record (foreign or canonical) is required", "record")
        if kind == "foreign":
            foreign = request.foreign
            schema = foreign.schema
            if not schema:
                raise InvalidRequest("foreign.schema is required", "foreign.schema")
            data = foreign.json
            if len(data) > self.rules.max_record_bytes:
                raise RecordTooLarge(
                    f"record is larger than {self.rules.max_record_bytes} bytes", "foreign.json"
                )
            if schema not in self._schemas:
                try:
                    if ms.kind_of(schema) != "case":
                        raise InvalidRequest(
                            f"schema {schema!r} is not a case schema", "foreign.schema"
                        )
                except UnknownSchemaError:
                    raise UnknownSchemaError(schema, "foreign.schema") from None
                self._schemas.add(schema)
            # Into the canonical model only: what translate_json(schema, CANONICAL_CASE)
            # gives, without its second, identity step (~1 µs of 13 per case).
            canonical, versions, warnings = ms.to_canonical_parts(schema, parse_json(data))
        else:
            schema = CANONICAL_CASE
            if request.canonical.ByteSize() > self.rules.max_record_bytes:
                raise RecordTooLarge("record is too large", "canonical")
            canonical, versions, warnings = ms.to_canonical_parts(
                CANONICAL_CASE, message_to_canonical(request.canonical)
            )
        # canonical: a new dict, ours to change
        # The exchange owns routing: receiving city is the caller's, handling city the target.
        have = canonical.get("receiving_city")
        if have and have != caller.city:
            raise InvalidRequest(
                f"receiving_city in the record ({have}) does not match the caller ({caller.city})",
                ms.source_pointer(schema, ("receiving_city",)),
            )
        canonical["receiving_city"] = caller.city
        have = canonical.get("handling_city")
        if have and have != target:
            raise InvalidRequest(
                f"handling_city in the record ({have}) does not match target_city ({target})",
                ms.source_pointer(schema, ("handling_city",)),
            )
        canonical["handling_city"] = target
        case_number = canonical.get("case_number", "")
        if not case_number:
            raise InvalidRequest(
                "the case has no case number", ms.source_pointer(schema, ("case_number",))
            )
        canonical.pop("status", None)
        canonical.pop("status_history", None)
        given = bool(exchange_id)
        if not given:
            exchange_id = f"{self._id_prefix}{self.rng.getrandbits(80):020x}"
        if body is None:
            body = request.SerializeToString(deterministic=True)
        if warnings or given:
            response = cx.SubmitCaseResponse(
                exchange_id=exchange_id,
                status=records_pb2.CASE_STATUS_SUBMITTED,
                accepted_at=_ts(self.now),
                warnings=warnings_to_proto(warnings) if warnings else None,
            ).SerializeToString()
        else:
            response = self._answer_head + exchange_id.encode() + self._answer_tail
        return SubmitCaseIntent(  # positional (~2% of a prepared case by keyword), in order:
            caller.partner,  # partner
            request_id,  # request_id
            hashlib.sha256(body).hexdigest(),  # body_hash
            exchange_id,  # exchange_id
            caller.city,  # receiving_city
            target,  # handling_city
            str(case_number)[:64],  # case_number
            orjson.dumps(canonical),  # canonical
            ",".join(versions),  # mapping_versions
            target_partner,  # target_partner
            response,  # response
        )


class SubmitContext:
    """A mapping set and the submission rules, under a token that names them to the writer.

    Pickled (once per writer process) as the set's parsed models and compiled again on the
    other side: generated code does not pickle, the models do (~70 kB, ~30 ms to compile).
    """

    def __init__(self, token: int, ms: MappingSet, rules: SubmitRules) -> None:
        self.token = token
        # Its own view of the set (same compiled mappings): preparation points the view's
        # observer at each case it prepares, which must not touch the serving set's.
        self.ms = ms.view()
        self.rules = rules
        # Exchange ids: time then random bits from a generator seeded once from os.urandom
        # (a syscall per id costs ~20 us). Ids need to be unique, not secret.
        self.rng = random.Random(os.urandom(32))  # noqa: S311 - unique ids, not secrets
        # The preparers of the batch in hand, by caller (the unpickled batch holds one object
        # per caller); a batch with another time starts afresh.
        self._preparers: dict[int, CasePreparer] = {}
        self._preparers_at: float | None = None

    def preparer(self, caller: Caller, now: float) -> CasePreparer:
        """The preparer of ``caller``'s cases stamped ``now``: the unary cases of one batch
        share what a preparer works out once (the answer's common part, the checks of a
        target city that passed) instead of a preparer each (~4 µs a case)."""
        if now != self._preparers_at:
            self._preparers.clear()
            self._preparers_at = now
        p = self._preparers.get(id(caller))
        if p is None or p.caller is not caller:
            p = self._preparers[id(caller)] = CasePreparer(
                self.ms, self.rules, caller, now, self.rng
            )
        return p

    def __reduce__(self) -> tuple[Any, ...]:
        ms = self.ms
        models = {name: cm.mapping for name, cm in ms.compiled.items()}
        return (_rebuild, (self.token, ms.root, ms.cities, models, ms.warnings, self.rules))


def _rebuild(
    token: int,
    root: Any,
    cities: Any,
    models: dict[str, Any],
    warnings: Any,
    rules: SubmitRules,
) -> SubmitContext:
    compiled = {name: compile_mapping(m) for name, m in models.items()}
    return SubmitContext(token, MappingSet(root, cities, compiled, warnings), rules)


class Completed(NamedTuple):
    """What a prepared submission returns: the stored answer ``(response, replayed)`` or the
    error that refused it, and the translations its preparation ran (for the metrics).

    A named tuple: one crosses back from the writer process per unary case, and pickle
    rebuilds a tuple in C where a frozen dataclass costs a Python call per field (2.5 against
    6 µs a case, both ways)."""

    result: Any
    observed: tuple[Observation, ...]


@dataclass
class SubmitRequestIntent(DeferredIntent):
    """A submitted case as it was received, prepared where its batch runs.

    Crosses to the writer process as the caller, the request's deterministic serialization
    and the context's token; :meth:`complete` prepares it there.
    """

    caller: Caller
    body: bytes
    token: int
    context: SubmitContext | None = field(default=None, init=False, repr=False)
    _observed: list[Observation] = field(default_factory=list, init=False, repr=False)

    def complete(self, now: float) -> Intent:
        ctx = self.context
        if ctx is None:
            raise RuntimeError("no mapping context for this submission")
        observed = self._observed

        def observe(schema: str, direction: str, code: str | None) -> None:
            observed.append((schema, direction, code))

        ms = ctx.ms
        ms.observer = observe
        try:
            request = cx.SubmitCaseRequest.FromString(self.body)
            return ctx.preparer(self.caller, now)(request, self.body)
        finally:
            ms.observer = None

    def outcome(self, result: Any) -> Completed:
        return Completed(result, tuple(self._observed))
