"""OperationsService: dead letters, case traces and the audit chain's signed checkpoints, for
operators."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format

from tongban.v1 import operations_pb2 as ops

from ..audit_signing import Checkpoint, CheckpointError
from ..auth import Authenticator, Caller
from ..errors import InvalidPageToken, InvalidRequest, PermissionDenied
from ..services.cases import record_reads
from ..services.dead_letters import DeadLetterService, to_proto
from ..services.trace import CaseTraceService
from ..services.trace import to_proto as trace_to_proto
from ..services.witness import checkpoint_from_proto, checkpoint_to_proto
from ..settings import Settings
from ..store.checkpoints import stored_checkpoints

__all__ = ["OperationsServicer", "checkpoints_from_response_json"]


class OperationsServicer:
    """Implements ``tongban.v1.OperationsService`` (operator partners only)."""

    def __init__(
        self,
        dead: DeadLetterService,
        auth: Authenticator,
        settings: Settings,
        traces: CaseTraceService | None = None,
    ) -> None:
        self.dead = dead
        self.auth = auth
        self.settings = settings
        self.traces = traces or CaseTraceService(dead.store)

    def _operator(self, context: grpc.aio.ServicerContext) -> Caller:
        caller = self.auth.caller(context)
        if not self.settings.partners[caller.partner].operator:
            raise PermissionDenied("this partner is not an operator")
        return caller

    async def ListDeadLetters(
        self, request: ops.ListDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> ops.ListDeadLettersResponse:
        """Dead letters, oldest first."""
        self._operator(context)
        rows, token = await self.dead.page(request.page_size, request.page_token)
        return ops.ListDeadLettersResponse(
            dead_letters=[to_proto(r) for r in rows], next_page_token=token
        )

    async def GetDeadLetter(
        self, request: ops.GetDeadLetterRequest, context: grpc.aio.ServicerContext
    ) -> ops.GetDeadLetterResponse:
        """One dead letter."""
        self._operator(context)
        return ops.GetDeadLetterResponse(dead_letter=to_proto(await self.dead.get(request.id)))

    async def ReplayDeadLetters(
        self, request: ops.ReplayDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> ops.ReplayDeadLettersResponse:
        """Replay some or all."""
        caller = self._operator(context)
        ids = None if request.all else list(request.ids)
        return ops.ReplayDeadLettersResponse(
            replayed_ids=await self.dead.replay(caller.partner, ids)
        )

    async def TraceCase(
        self, request: ops.TraceCaseRequest, context: grpc.aio.ServicerContext
    ) -> ops.TraceCaseResponse:
        """One case's state and history, without its record (its status notes included)."""
        caller = self._operator(context)
        trace = await self.traces.trace(request.exchange_id)
        # The notes may name the applicant.
        await record_reads(
            self.dead.store, self.settings, caller, [(trace.case.exchange_id, "traced")]
        )
        return trace_to_proto(trace)

    async def ListAuditCheckpoints(
        self, request: ops.ListAuditCheckpointsRequest, context: grpc.aio.ServicerContext
    ) -> ops.ListAuditCheckpointsResponse:
        """The audit chain's signed checkpoints, fewest entries first."""
        self._operator(context)
        if request.page_size < 0:
            raise InvalidRequest("page_size must not be negative", "page_size")
        size = min(request.page_size or 100, 1000)
        after = request.after_length
        if request.page_token:
            token = request.page_token
            if not (token.isascii() and token.isdigit()) or int(token) < after:
                raise InvalidPageToken("page_token is malformed", "page_token")
            after = int(token)
        store = self.dead.store
        found = await store.read(stored_checkpoints, store.reader.engine, after, size + 1)
        page = found[:size]
        more = len(found) > size
        return ops.ListAuditCheckpointsResponse(
            checkpoints=[checkpoint_to_proto(cp) for cp in page],
            next_page_token=str(page[-1].length) if more else "",
        )


def checkpoints_from_response_json(data: dict[str, Any], where: str) -> list[Checkpoint]:
    """The checkpoints of a ListAuditCheckpointsResponse in protobuf's JSON form (as grpcurl
    prints it); CheckpointError naming ``where`` if it is not one."""
    try:
        response = json_format.ParseDict(data, ops.ListAuditCheckpointsResponse())
    except json_format.ParseError as exc:
        raise CheckpointError(f"{where}: not a ListAuditCheckpointsResponse ({exc})") from None
    return [checkpoint_from_proto(m) for m in response.checkpoints]
