"""The port every transport implements, and the one error it raises."""

from __future__ import annotations

import ssl
from typing import Protocol

import grpc

from tongban.v1 import partner_inbox_pb2 as inbox

__all__ = ["CertificateSet", "CertificateSource", "PartnerTransport", "TransportError"]


class TransportError(Exception):
    """A delivery failed. ``retryable`` says whether trying again may help; ``retry_after``
    carries the partner's own hint (gRPC RetryInfo, HTTP Retry-After) in seconds. ``code`` names
    the outcome (a gRPC status, ``HTTP_503``, ``CONNECT``, ...); ``message`` says what happened
    without repeating it."""

    def __init__(
        self, message: str, *, retryable: bool, code: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message  # may quote the partner; gateway.privacy.scrub before storing
        self.retryable = retryable
        self.code = code
        self.retry_after = retry_after


class PartnerTransport(Protocol):
    """Delivers to one partner system. The idempotency key travels with every call."""

    async def deliver_case(
        self, request: inbox.DeliverCaseRequest, timeout: float
    ) -> inbox.DeliverCaseResponse:
        """Deliver a case; raise TransportError on failure."""
        ...

    async def deliver_status(
        self, request: inbox.DeliverStatusRequest, timeout: float
    ) -> inbox.DeliverStatusResponse:
        """Deliver a status change; raise TransportError on failure."""
        ...

    async def lookup_person(
        self, request: inbox.LookupPersonRequest, timeout: float
    ) -> inbox.LookupPersonResponse:
        """Ask the home city's system for a person; TransportError code NOT_FOUND if unknown."""
        ...

    async def lookup_enterprise(
        self, request: inbox.LookupEnterpriseRequest, timeout: float
    ) -> inbox.LookupEnterpriseResponse:
        """Ask the home city's system for an enterprise."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class CertificateSet(Protocol):
    """A checked set of the TLS files of a partner's inbox (trust anchors, client certificate)."""

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials holding the set."""
        ...

    def ssl_context(self) -> ssl.SSLContext:
        """An SSL context (HTTPS) holding the set."""
        ...


class CertificateSource(Protocol):
    """The TLS files of a partner's inbox, watched (``gateway.tls_files.ClientCertificates``)."""

    @property
    def current(self) -> CertificateSet:
        """The set in use."""
        ...

    def poll(self) -> CertificateSet | None:
        """A new set when the files changed and pass their checks, else None."""
        ...
