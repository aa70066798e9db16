"""Transports to partner systems: gRPC PartnerInboxService, HTTP/JSON, and a fake for tests."""

from .base import PartnerTransport, TransportError
from .fake import FakePartnerTransport
from .grpc_inbox import GrpcInboxTransport
from .http_inbox import HttpInboxTransport

__all__ = [
    "FakePartnerTransport",
    "GrpcInboxTransport",
    "HttpInboxTransport",
    "PartnerTransport",
    "TransportError",
]
