"""The event loop a gateway process runs on (``server.event_loop``).

``asyncio`` (the default) is asyncio's own loop; ``uvloop`` is libuv's loop for asyncio (a
dependency on Linux and macOS). grpc.aio runs on either. Measured side by side in session 16
(docs/performance.md): uvloop does the loop's own work (ready callbacks, timers, the selector)
in C, and a gateway whose event loop is its bound gets more from it: Translate at 64 calls in
flight ran 5.5-6.0k calls/s against 4.5-4.8k; the SubmitCases stream did not move; at 4 calls
in flight, no difference. Against a bare echo on the same loop no ratio rises and the stream's
falls (the bare stream gains more), so the default stays asyncio's own loop, and uvloop is
there for deployments with many concurrent Translate calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

__all__ = ["LoopKind", "loop_factory", "loop_name", "run"]

T = TypeVar("T")

#: ``server.event_loop``: "asyncio" or "uvloop".
LoopKind = Literal["asyncio", "uvloop"]


def loop_factory(kind: LoopKind) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes a loop of ``kind`` (None: asyncio's own).

    Raises RuntimeError for ``"uvloop"`` when uvloop is not installed.
    """
    if kind != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        raise RuntimeError(
            "server.event_loop is 'uvloop' but uvloop is not installed "
            "(pip install uvloop, or set it to 'asyncio')"
        ) from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], kind: LoopKind = "asyncio") -> T:
    """``asyncio.run(main)``, on a loop of ``kind``."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main)


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``"uvloop"`` or ``"asyncio"``: which loop ``loop`` is."""
    return "uvloop" if type(loop).__module__.split(".")[0] == "uvloop" else "asyncio"
