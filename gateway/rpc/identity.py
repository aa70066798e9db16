"""IdentityService: a thin edge over :class:`gateway.services.identity.IdentityService`."""

from __future__ import annotations

import grpc

from tongban.v1 import identity_pb2

from ..auth import Authenticator
from ..services.identity import IdentityService

__all__ = ["IdentityServicer"]


class IdentityServicer:
    """Implements ``tongban.v1.IdentityService``."""

    def __init__(self, identity: IdentityService, auth: Authenticator) -> None:
        self.identity = identity
        self.auth = auth

    async def ResolvePerson(
        self, request: identity_pb2.ResolvePersonRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ResolvePersonResponse:
        """Resolve a person."""
        return await self.identity.resolve_person(self.auth.caller(context), request)

    async def ResolveEnterprise(
        self, request: identity_pb2.ResolveEnterpriseRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ResolveEnterpriseResponse:
        """Resolve an enterprise."""
        return await self.identity.resolve_enterprise(self.auth.caller(context), request)

    async def VerifyPerson(
        self, request: identity_pb2.VerifyPersonRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.VerifyPersonResponse:
        """Verify a name against an ID number."""
        return await self.identity.verify_person(self.auth.caller(context), request)
