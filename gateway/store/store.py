"""The store facade: engines, the group-commit writer, reads in worker threads."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

from .engine import make_engine, upgrade
from .reads import StoreReader
from .sealing import Keyring
from .writer import Intent, StoreWriter, run_intents
from .writer_process import WriterProcess

__all__ = ["Store"]

P = ParamSpec("P")
T = TypeVar("T")


class Store:
    """SQLite (embedded, WAL) or PostgreSQL, chosen by URL."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        pool_size: int = 5,
        group_commit_max: int = 256,
        writer: str = "thread",
        log_level: str = "WARNING",
        commit_delay: float = 0.0,
        commit_delay_per_caller: float = 0.0005,
        keyring: Keyring | None = None,
    ) -> None:
        self.url = url
        #: Seals the personal data the store keeps (docs/security.md); None: in the clear.
        self.keyring = keyring
        self.clock = clock
        self.engine = make_engine(url, pool_size=pool_size, write=True)
        self.read_engine = (
            make_engine(url, write=False) if self.engine.dialect.name == "sqlite" else self.engine
        )
        # An in-memory SQLite database exists in one process only.
        in_memory = self.engine.dialect.name == "sqlite" and self.engine.url.database in (
            None,
            "",
            ":memory:",
        )
        self.writer_process = (
            WriterProcess(url, pool_size=pool_size, log_level=log_level, keyring=keyring)
            if writer == "process" and not in_memory
            else None
        )
        self.writer = StoreWriter(
            self.engine,
            clock,
            group_commit_max,
            executor=self.writer_process.run if self.writer_process else None,
            commit_delay=commit_delay,
            commit_delay_per_caller=commit_delay_per_caller,
            keyring=keyring,
        )
        self.reader = StoreReader(self.read_engine, keyring)
        self.notify = asyncio.Event()  # set after writes (WatchCases wakes up)
        self.outbox_ready = asyncio.Event()  # set after writes (delivery claimer wakes up)

    def set_keyring(self, keyring: Keyring | None) -> None:
        """Seal and open with ``keyring`` from now on (the keys file changed): reads at once,
        writes from the next batch on."""
        self.keyring = keyring
        self.reader.keyring = keyring
        if self.writer_process is not None:
            self.writer_process.set_keyring(keyring)
        else:
            self.writer.executor = functools.partial(run_intents, self.engine, keyring=keyring)

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded store."""
        return self.engine.dialect.name == "sqlite"

    def migrate(self) -> None:
        """Apply every migration."""
        upgrade(self.engine)

    def start(self) -> None:
        """Start the writer (in the running loop)."""
        self.notify = asyncio.Event()
        self.outbox_ready = asyncio.Event()
        if self.writer_process is not None:
            self.writer_process.start()
        self.writer.start()

    async def stop(self) -> None:
        """Drain the writer and close connections."""
        await self.writer.stop()
        if self.writer_process is not None:
            await self.writer_process.close()
        self.dispose()

    def dispose(self) -> None:
        """Close the engines' connections (a store used without its writer: a command)."""
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()

    async def write(self, intent: Intent) -> Any:
        """Commit ``intent`` in the next batch; return its result."""
        result = await self.writer.submit(intent)
        self.notify.set()
        self.outbox_ready.set()
        return result

    async def write_many(self, intents: Sequence[Intent]) -> list[Any]:
        """Commit ``intents`` (in as few batches as the writer takes); results or exceptions."""
        results = await self.writer.submit_many(list(intents))
        self.notify.set()
        self.outbox_ready.set()
        return results

    async def read(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a read query in a worker thread."""
        return await asyncio.to_thread(fn, *args, **kwargs)
