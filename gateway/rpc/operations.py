"""OperationsService: dead letters and case traces, for operators."""

from __future__ import annotations

import grpc

from tongban.v1 import operations_pb2 as ops

from ..auth import Authenticator, Caller
from ..errors import PermissionDenied
from ..services.cases import record_reads
from ..services.dead_letters import DeadLetterService, to_proto
from ..services.trace import CaseTraceService
from ..services.trace import to_proto as trace_to_proto
from ..settings import Settings

__all__ = ["OperationsServicer"]


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
