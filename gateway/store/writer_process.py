"""The group-commit writer's SQL in a child process, with its own interpreter lock.

In one process, the writer thread and the event loop share one GIL: under load a batch of 20
cases took ~10 ms of wall time for ~1 ms of SQLite work, because every statement waited for the
loop to let go of the lock, and the loop waited for the batch. Here the batch is pickled to a
child process that owns the write engine and runs :func:`~gateway.store.writer.run_intents`;
the event loop only pickles intents and unpickles results. Deferred intents (a unary case to
prepare) are completed here; the context they need (a mapping set) is sent once, in a frame of
its own before the first batch that needs it, and kept until newer ones replace it.

Nothing changes for durability: a caller is answered after the child committed. If the child
dies mid-batch, the batch's callers get ``UNAVAILABLE`` (the batch may or may not have been
committed: a retry with the same ``request_id`` gets the stored answer or stores it now), and
the next batch starts a new child. The child exits when the gateway closes the pipe, or when the
gateway dies (end of file on the pipe); it ignores SIGINT and SIGTERM so that a signal to the
process group lets the gateway drain its writes through it first.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailable
from .sealing import Keyring
from .writer import DeferredIntent, Intent, pack_intents, unpack_intents

__all__ = ["WriterProcess"]

log = logging.getLogger("tongban.store")

_STOP = b""
#: Tags a frame that gives the child a deferred intents' context (a batch: now, packed intents).
_CONTEXT = "context"
#: Tags a frame that gives the child the keys to seal with from the next batch on.
_KEYRING = "keyring"

#: Contexts of deferred intents a writer process keeps after a batch (the newest shipped): a
#: mapping reload makes a new one, and cases queued under the previous set are still prepared
#: with it. During a batch it holds every context shipped since, however many.
_KEEP_CONTEXTS = 4


class WriterProcess:
    """A child process that runs batches of intents on its own write engine.

    :meth:`run` is called by the writer task, one batch at a time. The pipe is read and
    written by the event loop itself (no thread: a thread waiting for the GIL behind a busy
    loop added milliseconds to every batch).
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 5,
        log_level: str = "WARNING",
        keyring: Keyring | None = None,
    ) -> None:
        self.url = url
        self.pool_size = pool_size
        self.log_level = log_level
        self.keyring = keyring
        self._keyring_shipped = False  # the child holds self.keyring (sent when it started)
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._shipped: list[int] = []  # tokens of the contexts the child holds, oldest first
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        """The child's process id, when it runs."""
        return self._proc.pid if self._proc is not None else None

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the child (it connects to the store by itself)."""
        if self._proc is None:
            self._spawn()

    def _spawn(self) -> None:
        # A fresh interpreter (not fork: the parent may hold gRPC and database state; not
        # multiprocessing's spawn, which re-imports the parent's __main__), talking over a
        # socket pair with multiprocessing's length-prefixed framing.
        ours, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.store.writer_process", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            env=env,
        )
        theirs.close()
        # The settings travel over the pipe, not the command line (a URL may hold a password,
        # the keyring holds keys).
        settings = pickle.dumps((self.url, self.pool_size, self.log_level, self.keyring))
        ours.sendall(_frame(settings))
        self._proc, self._sock = proc, ours
        self._shipped = []
        self._keyring_shipped = True

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            assert self._sock is not None
            self._reader, self._writer = await asyncio.open_unix_connection(sock=self._sock)
        return self._reader, self._writer

    def _reap(self) -> None:
        if self._writer is not None:
            self._writer.close()
        elif self._sock is not None:
            self._sock.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)
        self._proc, self._sock, self._reader, self._writer = None, None, None, None

    async def run(self, intents: list[Intent], now: float) -> list[Any]:
        """Commit ``intents`` in the child; their results, as :func:`run_intents` gives them."""
        data = pickle.dumps((now, pack_intents(intents)), protocol=pickle.HIGHEST_PROTOCOL)
        if not self._alive():
            if self._proc is not None:
                self._reap()
                self.restarts += 1
                log.warning("store writer process restarted")
            self._spawn()
        try:
            reader, writer = await self._connect()
            if not self._keyring_shipped:
                writer.write(
                    _frame(pickle.dumps((_KEYRING, self.keyring), pickle.HIGHEST_PROTOCOL))
                )
                self._keyring_shipped = True
            for context in self._contexts_to_ship(intents):
                writer.write(_frame(pickle.dumps((_CONTEXT, context), pickle.HIGHEST_PROTOCOL)))
            writer.write(_frame(data))
            del self._shipped[:-_KEEP_CONTEXTS]  # as the child forgets them after this batch
            await writer.drain()
            (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
            if size == -1:
                (size,) = _LONG.unpack(await reader.readexactly(_LONG.size))
            reply = await reader.readexactly(size)
        except asyncio.CancelledError:
            # A reply may still be on its way: a new child keeps the next batch from reading it.
            self._reap()
            raise
        except (asyncio.IncompleteReadError, OSError) as exc:
            code = self._proc.poll() if self._proc is not None else None
            self._reap()
            log.error(
                "store writer process died", extra={"error": type(exc).__name__, "exit": code}
            )
            raise BackendUnavailable(
                "the store writer stopped during this write; retry with the same request_id",
                1.0,
            ) from None
        results: list[Any] = pickle.loads(reply)  # noqa: S301 - our own child, over our own pipe
        return results

    def set_keyring(self, keyring: Keyring | None) -> None:
        """Seal with ``keyring`` from the next batch on (the child gets it before that batch)."""
        self.keyring = keyring
        self._keyring_shipped = False

    def _contexts_to_ship(self, intents: list[Intent]) -> list[Any]:
        """Contexts the batch's deferred intents need that the child does not hold yet."""
        out: dict[int, Any] = {}
        for intent in intents:
            if isinstance(intent, DeferredIntent) and intent.token not in self._shipped:
                out.setdefault(intent.token, intent.context)
        self._shipped.extend(out)
        return list(out.values())

    async def close(self) -> None:
        """Stop the child (the writer has drained its queue before)."""
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            _, writer = await self._connect()
            writer.write(_frame(_STOP))
            await writer.drain()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(proc.wait, 10)
        self._reap()


# multiprocessing.Connection's framing: a signed 32-bit length, or -1 and a 64-bit one.
_HEADER = struct.Struct("!i")
_LONG = struct.Struct("!Q")


def _frame(data: bytes) -> bytes:
    if len(data) > 0x7FFFFFFF:
        return _HEADER.pack(-1) + _LONG.pack(len(data)) + data
    return _HEADER.pack(len(data)) + data


def _child_main(conn: Connection) -> None:
    """The writer process: batches in, results out, until the pipe says stop or closes."""
    # The gateway decides when to stop; it drains its writes through us first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from ..logs import configure_logging
    from .engine import make_engine
    from .writer import run_intents

    url, pool_size, log_level, keyring = pickle.loads(conn.recv_bytes())  # noqa: S301 - parent
    configure_logging(log_level)
    engine = make_engine(url, pool_size=pool_size, write=True)
    gc.freeze()  # start-up objects stay: collections walk only each batch's
    contexts: dict[int, Any] = {}
    try:
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                break  # the gateway is gone
            if data == _STOP:
                break
            message = pickle.loads(data)  # noqa: S301 - from our parent, over our own pipe
            if message[0] == _CONTEXT:
                contexts[message[1].token] = message[1]
                continue
            if message[0] == _KEYRING:
                keyring = message[1]
                continue
            now, packed = message
            intents = unpack_intents(packed)
            for intent in intents:
                if isinstance(intent, DeferredIntent):
                    intent.context = contexts.get(intent.token)
            # The store down: BackendUnavailable.
            results = run_intents(engine, intents, now, keyring)
            try:
                conn.send_bytes(_dump(results))
            except OSError:
                break
            if len(contexts) > _KEEP_CONTEXTS:
                for token in list(contexts)[:-_KEEP_CONTEXTS]:  # the oldest shipped, as the
                    del contexts[token]  # gateway forgets them after this batch
                del intents
                gc.collect()  # the replaced sets' generated code is garbage now
    finally:
        engine.dispose()
        conn.close()


def _dump(results: list[Any]) -> bytes:
    try:
        return pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - an exception that does not pickle: say what it was
        safe = []
        for r in results:
            try:
                pickle.dumps(r)
                safe.append(r)
            except Exception:  # noqa: BLE001
                safe.append(RuntimeError(f"{type(r).__name__}: {r}"))
        return pickle.dumps(safe, protocol=pickle.HIGHEST_PROTOCOL)


if __name__ == "__main__":
    _child_main(Connection(int(sys.argv[1])))
