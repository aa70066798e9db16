"""PartnerInboxService served to peer gateways: a thin edge over
:class:`gateway.services.peering.PeerInbox`. Only partners with ``peer = true`` may call it
(:class:`gateway.auth.AccessGuard`)."""

from __future__ import annotations

import grpc

from tongban.v1 import partner_inbox_pb2 as inbox

from ..auth import Authenticator
from ..services.peering import PeerInbox

__all__ = ["PeerInboxServicer"]


class PeerInboxServicer:
    """Implements ``tongban.v1.PartnerInboxService`` for peer gateways."""

    def __init__(self, peers: PeerInbox, auth: Authenticator) -> None:
        self.peers = peers
        self.auth = auth

    async def DeliverCase(
        self, request: inbox.DeliverCaseRequest, context: grpc.aio.ServicerContext
    ) -> inbox.DeliverCaseResponse:
        """A case for a city this gateway serves, from the receiving city's gateway."""
        return await self.peers.deliver_case(self.auth.caller(context), request)

    async def DeliverStatus(
        self, request: inbox.DeliverStatusRequest, context: grpc.aio.ServicerContext
    ) -> inbox.DeliverStatusResponse:
        """A status change of a case this gateway sent, from the handling city's gateway."""
        return await self.peers.deliver_status(self.auth.caller(context), request)

    async def LookupPerson(
        self, request: inbox.LookupPersonRequest, context: grpc.aio.ServicerContext
    ) -> inbox.LookupPersonResponse:
        """A person of a city this gateway serves."""
        return await self.peers.lookup_person(self.auth.caller(context), request)

    async def LookupEnterprise(
        self, request: inbox.LookupEnterpriseRequest, context: grpc.aio.ServicerContext
    ) -> inbox.LookupEnterpriseResponse:
        """An enterprise registered in a city this gateway serves."""
        return await self.peers.lookup_enterprise(self.auth.caller(context), request)
