"""AuditWitnessService served to peer gateways: a thin edge over
:class:`gateway.services.witness.AuditWitness`. Only partners with ``peer = true`` may call it
(:class:`gateway.auth.AccessGuard`)."""

from __future__ import annotations

import grpc

from tongban.v1 import witness_pb2

from ..auth import Authenticator
from ..services.witness import AuditWitness

__all__ = ["AuditWitnessServicer"]


class AuditWitnessServicer:
    """Implements ``tongban.v1.AuditWitnessService`` for peer gateways."""

    def __init__(self, witness: AuditWitness, auth: Authenticator) -> None:
        self.witness = witness
        self.auth = auth

    async def WitnessCheckpoint(
        self, request: witness_pb2.WitnessCheckpointRequest, context: grpc.aio.ServicerContext
    ) -> witness_pb2.WitnessCheckpointResponse:
        """Keep a peer gateway's signed audit checkpoint; answer with the one before it."""
        return await self.witness.witness(self.auth.caller(context), request)
