"""An in-memory transport for tests, in the manner of httpx.MockTransport.

>>> async def handler(kind, request):  # doctest: +SKIP
...     raise TransportError("down", retryable=True, code="UNAVAILABLE")
>>> transport = FakePartnerTransport(handler)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tongban.v1 import partner_inbox_pb2 as inbox

__all__ = ["FakePartnerTransport"]

Handler = Callable[[str, Any], Awaitable[Any]]


class FakePartnerTransport:
    """Calls ``handler(kind, request)`` with kind ``"case"`` or ``"status"``; records calls."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.calls: list[tuple[str, Any]] = []

    async def deliver_case(
        self, request: inbox.DeliverCaseRequest, timeout: float
    ) -> inbox.DeliverCaseResponse:
        self.calls.append(("case", request))
        result = await self.handler("case", request)
        return result if result is not None else inbox.DeliverCaseResponse()

    async def deliver_status(
        self, request: inbox.DeliverStatusRequest, timeout: float
    ) -> inbox.DeliverStatusResponse:
        self.calls.append(("status", request))
        result = await self.handler("status", request)
        return result if result is not None else inbox.DeliverStatusResponse()

    async def lookup_person(
        self, request: inbox.LookupPersonRequest, timeout: float
    ) -> inbox.LookupPersonResponse:
        self.calls.append(("person", request))
        result = await self.handler("person", request)
        return result if result is not None else inbox.LookupPersonResponse()

    async def lookup_enterprise(
        self, request: inbox.LookupEnterpriseRequest, timeout: float
    ) -> inbox.LookupEnterpriseResponse:
        self.calls.append(("enterprise", request))
        result = await self.handler("enterprise", request)
        return result if result is not None else inbox.LookupEnterpriseResponse()

    async def close(self) -> None:
        return None
