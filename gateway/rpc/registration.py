"""Register servicers on a grpc.aio server, each method wrapped once.

Generated ``add_*Servicer_to_server`` functions register the servicer's methods as they are.
Here every method is wrapped once, at registration, so that a domain error raised by a handler
leaves as a gRPC status with rich details (see :mod:`gateway.rpc.errors`) and every call is
observed (metrics) — with no per-call interceptor dispatch on the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from grpc_status import rpc_status

from ..errors import InvalidRequest
from .errors import status_for

__all__ = [
    "CallObserver",
    "DeadlineWatchdog",
    "Guard",
    "MethodObserver",
    "register_service",
    "wrap_handler",
]

#: Runs before a handler; raises a GatewayError to refuse the call.
Guard = Callable[[str, str, grpc.aio.ServicerContext], None]


class DeadlineWatchdog:
    """Enforces the server-side cap on how long a call may run, with one periodic task.

    A per-call timer (``asyncio.timeout``) costs about 8% of a small unary call; here each call
    only enters and leaves a dict, and one task cancels the calls that ran past the cap (within
    ``interval`` of it).
    """

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.interval = min(max(cap / 4, 0.001), 0.5)
        self._started: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()

    def track(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._started[task] = time.monotonic()

    def untrack(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._started.pop(task, None)
            self._expired.discard(task)

    def expired(self, task: asyncio.Task[Any] | None) -> bool:
        return task in self._expired

    async def run(self, stop: asyncio.Event) -> None:
        """Cancel calls older than the cap, until ``stop`` is set."""
        while not stop.is_set():
            limit = time.monotonic() - self.cap
            for task, started in list(self._started.items()):
                if started < limit and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)


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


class MethodObserver(Protocol):
    """Sees the calls of one method (bound once at registration: no per-call lookups)."""

    def started(self) -> None:
        """An RPC started."""

    def received(self, n: int = 1) -> None:
        """``n`` request messages arrived."""

    def sent(self) -> None:
        """A response message left."""

    def handled(self, code: str, seconds: float) -> None:
        """An RPC ended with ``code`` after ``seconds``."""


class CallObserver(Protocol):
    """Sees every RPC (metrics implement this)."""

    def bind(self, service: str, method: str, kind: str) -> MethodObserver:
        """The observer of one method."""
        ...


class _Nothing:
    def started(self) -> None:
        return None

    def received(self, n: int = 1) -> None:
        return None

    def sent(self) -> None:
        return None

    def handled(self, code: str, seconds: float) -> None:
        return None


class _NullObserver:
    def bind(self, service: str, method: str, kind: str) -> MethodObserver:
        return _Nothing()


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
    watchdog: DeadlineWatchdog | None = None,
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
        wrapped = _wrap(impl, service, name, kind, cs, ss, obs, guard, watchdog if not ss else None)
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
    # As generated code does: the generic handler for reflection-style lookups, and the methods
    # registered with the core, which then finds them by path without asking each service.
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


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
    watchdog: DeadlineWatchdog | None = None,
) -> Callable[..., Any]:
    b = obs.bind(service, name, kind)
    if not server_streaming:

        async def unary_out(request: Any, context: grpc.aio.ServicerContext) -> Any:
            b.started()
            t0 = time.perf_counter()
            flush = _nothing
            if client_streaming:
                request = _Counted(request, b)
                flush = request.flush
            else:
                b.received()
            try:
                if guard is not None:
                    guard(service, name, context)
                if request is _MALFORMED:
                    raise InvalidRequest("the request message is not a valid protobuf message")
                if watchdog is None:
                    result = await impl(request, context)
                else:
                    task = asyncio.current_task()
                    watchdog.track(task)
                    try:
                        result = await impl(request, context)
                    except asyncio.CancelledError:
                        if not watchdog.expired(task):
                            raise
                        flush()
                        b.handled("DEADLINE_EXCEEDED", time.perf_counter() - t0)
                        await context.abort(
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"no answer within the server's {watchdog.cap:g}s cap",
                        )
                        raise
                    finally:
                        watchdog.untrack(task)
            except grpc.aio.AbortError as exc:
                flush()
                b.handled(_code_of(exc, context), time.perf_counter() - t0)
                raise
            except Exception as exc:
                flush()
                code, _, _ = status_for(exc)
                b.handled(code.name, time.perf_counter() - t0)
                await _abort(context, exc)
                raise  # unreachable: abort raises
            flush()
            b.sent()
            b.handled("OK", time.perf_counter() - t0)
            return result

        return unary_out

    async def stream_out(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        b.started()
        t0 = time.perf_counter()
        flush = _nothing
        if client_streaming:
            request = _Counted(request, b)
            flush = request.flush
        else:
            b.received()
        code = "OK"
        try:
            if guard is not None:
                guard(service, name, context)
            if request is _MALFORMED:
                raise InvalidRequest("the request message is not a valid protobuf message")
            async for item in impl(request, context):
                b.sent()
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
            flush()
            b.handled(code, time.perf_counter() - t0)

    return stream_out


def _nothing() -> None:
    return None


class _Counted:
    """A call's streamed requests, counted for the received-messages metric in runs: an
    increment per message (under prometheus_client's lock) was ~2% of a SubmitCases stream's
    loop time. The metric is told every ``EVERY`` messages and when the call ends
    (:meth:`flush`, before the call is reported handled)."""

    EVERY = 256
    __slots__ = ("_b", "_requests", "n")

    def __init__(self, requests: AsyncIterator[Any], b: MethodObserver) -> None:
        self._requests, self._b, self.n = requests, b, 0

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._read()

    async def _read(self) -> AsyncIterator[Any]:
        async for r in self._requests:
            self.n += 1
            if self.n == self.EVERY:
                self.flush()
            if r is _MALFORMED:
                raise InvalidRequest("a streamed request message is not a valid protobuf message")
            yield r

    def flush(self) -> None:
        """Tell the metric what arrived since it was last told."""
        if self.n:
            self._b.received(self.n)
            self.n = 0


Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
