"""Deliveries to a partner's (or a peer gateway's) ``tongban.v1.PartnerInboxService``."""

from __future__ import annotations

import asyncio

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tongban.v1 import partner_inbox_pb2 as inbox
from tongban.v1 import partner_inbox_pb2_grpc as inbox_grpc
from tongban.v1 import witness_pb2
from tongban.v1 import witness_pb2_grpc as witness_grpc

from .base import CertificateSource, TransportError

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
    """A grpc.aio client of PartnerInboxService (one channel, reused).

    With ``certificates`` (the TLS files of the partner's inbox, watched), a call made after
    the files changed and passed their checks opens a new channel with them; calls in flight
    finish on the old channel, which is then closed.
    """

    #: How long calls in flight on a replaced channel may go on (seconds).
    CLOSE_GRACE_SECONDS = 60.0

    def __init__(
        self,
        target: str,
        credentials: grpc.ChannelCredentials | None = None,
        *,
        server_name: str = "",
        certificates: CertificateSource | None = None,
    ) -> None:
        self.target = target
        # The name the partner's certificate must carry, when the target is an address.
        self._options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        self._certificates = certificates
        if certificates is not None:
            credentials = certificates.current.grpc_credentials()
        self._open(credentials)
        self._closing: dict[asyncio.Task[None], grpc.aio.Channel] = {}

    def _open(self, credentials: grpc.ChannelCredentials | None) -> None:
        self._channel = (
            grpc.aio.secure_channel(self.target, credentials, options=self._options)
            if credentials
            else grpc.aio.insecure_channel(self.target)
        )
        self._stub = inbox_grpc.PartnerInboxServiceStub(self._channel)
        self._witness = witness_grpc.AuditWitnessServiceStub(self._channel)

    def _refresh(self) -> None:
        """Open a new channel if the certificate files changed and pass their checks."""
        if self._certificates is None:
            return
        material = self._certificates.poll()
        if material is None:
            return
        old = self._channel
        self._open(material.grpc_credentials())
        task = asyncio.get_running_loop().create_task(old.close(self.CLOSE_GRACE_SECONDS))
        self._closing[task] = old
        task.add_done_callback(self._closing.pop)

    async def _call(
        self, method: str, request: object, timeout: float, stub: object = None
    ) -> object:
        self._refresh()
        try:
            return await getattr(stub or self._stub, method)(request, timeout=timeout)
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
        out = await self._call("DeliverCase", request, timeout)
        assert isinstance(out, inbox.DeliverCaseResponse)
        return out

    async def deliver_status(
        self, request: inbox.DeliverStatusRequest, timeout: float
    ) -> inbox.DeliverStatusResponse:
        """Deliver a status change."""
        out = await self._call("DeliverStatus", request, timeout)
        assert isinstance(out, inbox.DeliverStatusResponse)
        return out

    async def lookup_person(
        self, request: inbox.LookupPersonRequest, timeout: float
    ) -> inbox.LookupPersonResponse:
        """Look a person up."""
        out = await self._call("LookupPerson", request, timeout)
        assert isinstance(out, inbox.LookupPersonResponse)
        return out

    async def lookup_enterprise(
        self, request: inbox.LookupEnterpriseRequest, timeout: float
    ) -> inbox.LookupEnterpriseResponse:
        """Look an enterprise up."""
        out = await self._call("LookupEnterprise", request, timeout)
        assert isinstance(out, inbox.LookupEnterpriseResponse)
        return out

    async def witness_checkpoint(
        self, request: witness_pb2.WitnessCheckpointRequest, timeout: float
    ) -> witness_pb2.WitnessCheckpointResponse:
        """Hand a peer gateway a checkpoint of this gateway's audit chain to witness (its
        ``AuditWitnessService``, served beside its inbox)."""
        out = await self._call("WitnessCheckpoint", request, timeout, self._witness)
        assert isinstance(out, witness_pb2.WitnessCheckpointResponse)
        return out

    async def close(self) -> None:
        """Close the channel (and any replaced one still finishing its calls)."""
        await self._channel.close()
        for task, old in list(self._closing.items()):
            task.cancel()  # stop waiting for its calls ...
            await asyncio.gather(task, return_exceptions=True)
            await old.close()  # ... and cancel them
