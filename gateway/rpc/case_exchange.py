"""CaseExchangeService: a thin edge over :class:`gateway.services.cases.CaseService`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.rpc import error_details_pb2

from tongban.v1 import case_exchange_pb2 as cx

from ..auth import Authenticator
from ..errors import InvalidRequest
from ..services.cases import CaseService
from .errors import status_for

__all__ = ["CaseExchangeServicer"]


class CaseExchangeServicer:
    """Implements ``tongban.v1.CaseExchangeService``."""

    def __init__(self, cases: CaseService, auth: Authenticator) -> None:
        self.cases = cases
        self.auth = auth

    async def SubmitCase(
        self, request: cx.SubmitCaseRequest, context: grpc.aio.ServicerContext
    ) -> cx.SubmitCaseResponse:
        """Submit one case."""
        return await self.cases.submit(self.auth.caller(context), request)

    async def SubmitCases(
        self, requests: AsyncIterator[cx.SubmitCasesRequest], context: grpc.aio.ServicerContext
    ) -> cx.SubmitCasesResponse:
        """Submit a stream of cases; one result each, in order, concurrently committed."""
        caller = self.auth.caller(context)
        batch: list[cx.SubmitCaseRequest] = []
        async for item in requests:
            if len(batch) >= 10_000:
                raise InvalidRequest("at most 10000 cases per stream", "case_request")
            batch.append(item.case_request)
        answers = await self.cases.submit_many(caller, batch)
        resp = cx.SubmitCasesResponse()
        add = resp.results.add
        accepted = 0
        for index, (request, answer) in enumerate(zip(batch, answers, strict=True)):
            result = add(index=index, request_id=request.request_id)
            if not isinstance(answer, Exception):
                result.response.MergeFromString(answer)  # the stored answer, as stored
                accepted += 1
            else:
                code, message, st = status_for(answer)
                result.error_code = code.value[0]
                result.error_message = message
                for detail in st.details:
                    if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                        info = error_details_pb2.ErrorInfo()
                        detail.Unpack(info)
                        result.error_reason = info.reason
                    elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                        br = error_details_pb2.BadRequest()
                        detail.Unpack(br)
                        result.error_fields.extend(v.field for v in br.field_violations)
        resp.accepted_count = accepted
        resp.rejected_count = len(batch) - accepted
        return resp

    async def GetCase(
        self, request: cx.GetCaseRequest, context: grpc.aio.ServicerContext
    ) -> cx.GetCaseResponse:
        """One case."""
        return await self.cases.get(self.auth.caller(context), request)

    async def ListCases(
        self, request: cx.ListCasesRequest, context: grpc.aio.ServicerContext
    ) -> cx.ListCasesResponse:
        """Visible cases, in pages."""
        return await self.cases.list(self.auth.caller(context), request)

    async def ReportStatus(
        self, request: cx.ReportStatusRequest, context: grpc.aio.ServicerContext
    ) -> cx.ReportStatusResponse:
        """A status change from the handling city."""
        return await self.cases.report(self.auth.caller(context), request)

    async def WatchCases(
        self, request: cx.WatchCasesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cx.WatchCasesResponse]:
        """Stream status events."""
        async for item in self.cases.watch(self.auth.caller(context), request):
            yield item
