"""Deliveries to a partner's (or a peer gateway's) ``tongban.v1.PartnerInboxService``."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tongban.v1 import partner_inbox_pb2 as inbox
from tongban.v1 import partner_inbox_pb2_grpc as inbox_grpc

from .base import TransportError

__all__ = ["GrpcInboxTransport"]

RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}


def _retry_after(err: grpc.aio.AioRpcError) -> float | None:
    try:
        st = rpc_status.from_call(err)
    except ValueError:
        return None
    if st is None:
        return None
    for d in st.details:
        if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            d.Unpack(info)
            return float(info.retry_delay.ToTimedelta().total_seconds())
    return None


class GrpcInboxTransport:
    """A grpc.aio client of PartnerInboxService (one channel, reused)."""

    def __init__(
        self,
        target: str,
        credentials: grpc.ChannelCredentials | None = None,
        *,
        server_name: str = "",
    ) -> None:
        self.target = target
        # The name the partner's certificate must carry, when the target is an address.
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        self._channel = (
            grpc.aio.secure_channel(target, credentials, options=options)
            if credentials
            else grpc.aio.insecure_channel(target)
        )
        self._stub = inbox_grpc.PartnerInboxServiceStub(self._channel)

    async def _call(self, method: object, request: object, timeout: float) -> object:
        try:
            return await method(request, timeout=timeout)  # type: ignore[operator]
        except grpc.aio.AioRpcError as err:
            code = err.code()
            raise TransportError(
                (err.details() or code.name)[:500],  # the status is in ``code``
                retryable=code in RETRYABLE,
                code=code.name,
                retry_after=_retry_after(err),
            ) from None

    async def deliver_case(
        self, request: inbox.DeliverCaseRequest, timeout: float
    ) -> inbox.DeliverCaseResponse:
        """Deliver a case."""
        out = await self._call(self._stub.DeliverCase, request, timeout)
        assert isinstance(out, inbox.DeliverCaseResponse)
        return out

    async def deliver_status(
        self, request: inbox.DeliverStatusRequest, timeout: float
    ) -> inbox.DeliverStatusResponse:
        """Deliver a status change."""
        out = await self._call(self._stub.DeliverStatus, request, timeout)
        assert isinstance(out, inbox.DeliverStatusResponse)
        return out

    async def lookup_person(
        self, request: inbox.LookupPersonRequest, timeout: float
    ) -> inbox.LookupPersonResponse:
        """Look a person up."""
        out = await self._call(self._stub.LookupPerson, request, timeout)
        assert isinstance(out, inbox.LookupPersonResponse)
        return out

    async def lookup_enterprise(
        self, request: inbox.LookupEnterpriseRequest, timeout: float
    ) -> inbox.LookupEnterpriseResponse:
        """Look an enterprise up."""
        out = await self._call(self._stub.LookupEnterprise, request, timeout)
        assert isinstance(out, inbox.LookupEnterpriseResponse)
        return out

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()
