"""Who is calling: partner identity from a development token (or, later, the client certificate).

The :class:`AuthInterceptor` refuses unauthenticated calls to ``tongban.v1`` services before any
handler runs; handlers ask :meth:`Authenticator.caller` for the identity.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_status import rpc_status

from .errors import Unauthenticated
from .rpc.errors import status_for
from .settings import Settings

__all__ = ["AuthInterceptor", "Authenticator", "Caller"]


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated partner: its id and the city it speaks for."""

    partner: str
    city: str


class Authenticator:
    """Maps request metadata to a :class:`Caller`."""

    def __init__(self, settings: Settings) -> None:
        self.mode = settings.auth.mode
        self._by_token = {
            f"Bearer {p.token}": Caller(pid, p.city)
            for pid, p in settings.partners.items()
            if p.token
        }

    def identify(self, metadata: Sequence[tuple[str, Any]] | None) -> Caller | None:
        """The caller named by the metadata, or None."""
        if self.mode != "token" or not metadata:
            return None
        for key, value in metadata:
            if key == "authorization":
                return self._by_token.get(str(value))
        return None

    def caller(self, context: grpc.aio.ServicerContext) -> Caller:
        """The caller of this RPC; UNAUTHENTICATED when there is none."""
        found = self.identify(context.invocation_metadata())
        if found is None:
            raise Unauthenticated("a partner identity is required (authorization: Bearer <token>)")
        return found

    def optional(self, context: grpc.aio.ServicerContext) -> Caller | None:
        """The caller, if any."""
        return self.identify(context.invocation_metadata())


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses tongban.v1 calls without a valid identity (when auth requires one)."""

    def __init__(self, auth: Authenticator, open_methods: frozenset[str] = frozenset()) -> None:
        self.auth = auth
        self.open_methods = open_methods

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = details.method
        if (
            self.auth.mode == "none"
            or not method.startswith("/tongban.v1.")
            or method in self.open_methods
            or self.auth.identify(details.invocation_metadata) is not None
        ):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:
            return handler
        return _deny(handler)


def _deny(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    _, _, st = status_for(Unauthenticated("a valid partner identity is required"))
    status = rpc_status.to_status(st)

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort_with_status(status)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort_with_status(status)
        yield  # pragma: no cover - makes this an async generator

    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **kw)
    return grpc.stream_stream_rpc_method_handler(streaming, **kw)
