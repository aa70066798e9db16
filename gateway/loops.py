"""The event loop a gateway process runs on (``server.event_loop``).

``auto`` (the default) runs on uvloop, libuv's loop for asyncio, where it is installed (a
dependency on Linux and macOS), and on asyncio's own loop otherwise. grpc.aio runs on any
asyncio loop. Measured side by side with the same code (docs/performance.md, session 16): the
event loop's own work (ready callbacks, timers, the selector) is a large share of a unary call
in a process whose loop is its bound, and uvloop does it in C: Translate at 64 calls in flight
0.95x against 0.81x the echo (both gateways against one echo on asyncio's loop), durable
SubmitCase 0.75x against 0.70x.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

__all__ = ["LoopKind", "loop_factory", "loop_name", "run"]

T = TypeVar("T")

#: ``server.event_loop``: "auto" (uvloop when installed), "uvloop", or "asyncio".
LoopKind = Literal["auto", "uvloop", "asyncio"]


def loop_factory(kind: LoopKind) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes a loop of ``kind`` (None: asyncio's own).

    Raises RuntimeError for ``"uvloop"`` when uvloop is not installed.
    """
    if kind == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise RuntimeError(
                "server.event_loop is 'uvloop' but uvloop is not installed "
                "(pip install uvloop, or set it to 'auto' or 'asyncio')"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], kind: LoopKind = "auto") -> T:
    """``asyncio.run(main)``, on a loop of ``kind``."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main)


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``"uvloop"`` or ``"asyncio"``: which loop ``loop`` is."""
    return "uvloop" if type(loop).__module__.split(".")[0] == "uvloop" else "asyncio"
