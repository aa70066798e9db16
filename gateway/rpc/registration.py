"""Register servicers on a grpc.aio server, each method wrapped once.

Generated ``add_*Servicer_to_server`` functions register the servicer's methods as they are.
Here every method is wrapped once, at registration, so that a domain error raised by a handler
leaves as a gRPC status with rich details (see :mod:`gateway.rpc.errors`) and every call is
observed (metrics) — with no per-call interceptor dispatch on the hot path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from grpc_status import rpc_status

from ..errors import InvalidRequest
from .errors import status_for

__all__ = ["CallObserver", "Guard", "register_service", "wrap_handler"]

#: Runs before a handler; raises a GatewayError to refuse the call.
Guard = Callable[[str, str, grpc.aio.ServicerContext], None]


class _Malformed:
    """Stands for a request message that did not parse."""

    __slots__ = ()


_MALFORMED = _Malformed()


def _safe(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    # grpc turns a deserializer exception into INTERNAL; a bad message is the caller's error.
    def parse_or_mark(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # noqa: BLE001 - protobuf raises DecodeError and others
            return _MALFORMED

    return parse_or_mark


class CallObserver(Protocol):
    """Sees every RPC: start, messages and the final code (metrics implement this)."""

    def started(self, service: str, method: str, kind: str) -> None:
        """An RPC started."""

    def message_received(self, service: str, method: str, kind: str) -> None:
        """A request message arrived."""

    def message_sent(self, service: str, method: str, kind: str) -> None:
        """A response message left."""

    def handled(self, service: str, method: str, kind: str, code: str, seconds: float) -> None:
        """An RPC ended with ``code`` after ``seconds``."""


class _NullObserver:
    def started(self, service: str, method: str, kind: str) -> None:
        return None

    def message_received(self, service: str, method: str, kind: str) -> None:
        return None

    def message_sent(self, service: str, method: str, kind: str) -> None:
        return None

    def handled(self, service: str, method: str, kind: str, code: str, seconds: float) -> None:
        return None


def _code_of(exc: BaseException, context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(exc, grpc.aio.AbortError) and code is not None:
        return str(code)
    return "UNKNOWN"


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    _, _, st = status_for(exc)
    await context.abort_with_status(rpc_status.to_status(st))


def register_service(
    server: grpc.aio.Server,
    descriptor: ServiceDescriptor,
    servicer: object,
    observer: CallObserver | None = None,
    guard: Guard | None = None,
    deadline_cap: float | None = None,
) -> None:
    """Register every method of ``descriptor`` implemented by ``servicer`` on ``server``."""
    obs: CallObserver = observer or _NullObserver()
    service = descriptor.full_name
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in descriptor.methods:
        impl = getattr(servicer, method.name)
        req_cls = message_factory.GetMessageClass(method.input_type)
        resp_cls = message_factory.GetMessageClass(method.output_type)
        cs, ss = method.client_streaming, method.server_streaming
        kind = {
            (False, False): "unary",
            (True, False): "client_stream",
            (False, True): "server_stream",
            (True, True): "bidi_stream",
        }[(cs, ss)]
        name = method.name
        wrapped = _wrap(impl, service, name, kind, cs, ss, obs, guard, deadline_cap)
        factory = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(cs, ss)]
        handlers[name] = factory(
            wrapped,
            request_deserializer=_safe(req_cls.FromString),
            response_serializer=resp_cls.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))


def wrap_handler(
    handler: grpc.RpcMethodHandler, service: str, name: str, observer: CallObserver
) -> grpc.RpcMethodHandler:
    """An already-built handler (health, reflection) with its behaviour observed."""
    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        fn = _wrap(handler.unary_unary, service, name, "unary", False, False, observer)
        return grpc.unary_unary_rpc_method_handler(fn, **kw)
    if handler.stream_unary:
        fn = _wrap(handler.stream_unary, service, name, "client_stream", True, False, observer)
        return grpc.stream_unary_rpc_method_handler(fn, **kw)
    if handler.unary_stream:
        fn = _wrap(handler.unary_stream, service, name, "server_stream", False, True, observer)
        return grpc.unary_stream_rpc_method_handler(fn, **kw)
    fn = _wrap(handler.stream_stream, service, name, "bidi_stream", True, True, observer)
    return grpc.stream_stream_rpc_method_handler(fn, **kw)


def _wrap(
    impl: Callable[..., Any],
    service: str,
    name: str,
    kind: str,
    client_streaming: bool,
    server_streaming: bool,
    obs: CallObserver,
    guard: Guard | None = None,
    deadline_cap: float | None = None,
) -> Callable[..., Any]:
    if not server_streaming:

        async def unary_out(request: Any, context: grpc.aio.ServicerContext) -> Any:
            obs.started(service, name, kind)
            t0 = time.perf_counter()
            if client_streaming:
                request = _count(request, service, name, kind, obs)
            else:
                obs.message_received(service, name, kind)
            try:
                if guard is not None:
                    guard(service, name, context)
                if request is _MALFORMED:
                    raise InvalidRequest("the request message is not a valid protobuf message")
                if deadline_cap is None:
                    result = await impl(request, context)
                else:
                    remaining = context.time_remaining()
                    cap = deadline_cap if remaining is None else min(remaining, deadline_cap)
                    try:
                        async with asyncio.timeout(cap):
                            result = await impl(request, context)
                    except TimeoutError:
                        obs.handled(
                            service, name, kind, "DEADLINE_EXCEEDED", time.perf_counter() - t0
                        )
                        await context.abort(
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"no answer within the server's {cap:.1f}s cap",
                        )
                        raise
            except grpc.aio.AbortError as exc:
                obs.handled(service, name, kind, _code_of(exc, context), time.perf_counter() - t0)
                raise
            except Exception as exc:
                code, _, _ = status_for(exc)
                obs.handled(service, name, kind, code.name, time.perf_counter() - t0)
                await _abort(context, exc)
                raise  # unreachable: abort raises
            obs.message_sent(service, name, kind)
            obs.handled(service, name, kind, "OK", time.perf_counter() - t0)
            return result

        return unary_out

    async def stream_out(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        obs.started(service, name, kind)
        t0 = time.perf_counter()
        if client_streaming:
            request = _count(request, service, name, kind, obs)
        else:
            obs.message_received(service, name, kind)
        code = "OK"
        try:
            if guard is not None:
                guard(service, name, context)
            if request is _MALFORMED:
                raise InvalidRequest("the request message is not a valid protobuf message")
            async for item in impl(request, context):
                obs.message_sent(service, name, kind)
                yield item
        except grpc.aio.AbortError as exc:
            code = _code_of(exc, context)
            raise
        except Exception as exc:  # noqa: BLE001 - every error leaves as a status
            code = status_for(exc)[0].name
            await _abort(context, exc)
        except BaseException:
            code = "CANCELLED"
            raise
        finally:
            obs.handled(service, name, kind, code, time.perf_counter() - t0)

    return stream_out


async def _count(
    requests: AsyncIterator[Any], service: str, name: str, kind: str, obs: CallObserver
) -> AsyncIterator[Any]:
    async for r in requests:
        obs.message_received(service, name, kind)
        if r is _MALFORMED:
            raise InvalidRequest("a streamed request message is not a valid protobuf message")
        yield r


Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
