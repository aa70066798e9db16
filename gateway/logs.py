"""Structured logging: JSON lines for machines, readable text on a terminal.

Each record carries ``event`` (the message) and whatever ``extra`` fields the caller gives
(``exchange_id`` as the correlation id, ``partner``, ``target_city``, ``duration_ms`` ...). Callers
never pass personal data; :mod:`gateway.privacy` masks it where a value must be shown at all.

``tongban serve`` logs in the background (``background=True``): the event loop only queues a
record (the stdlib's :class:`~logging.handlers.QueueHandler`); a writer thread formats and
writes what is queued every 50 ms. A slow or blocked stderr (a full pipe to a log collector)
then never stalls the gateway, and the loop does not pay for formatting and ``write`` (unary
SubmitCase at INFO: 533 -> 439 µs of CPU per call; docs/operations.md, "Logs"). The queue is
bounded: when the writer cannot keep up, records are dropped and counted, and a ``log records
dropped`` warning with the count follows the records that were kept. Records still queued are
written at exit; a forked worker (``serve --workers``) starts its own queue and thread, and a
fork waits (up to 5 s) for a write in progress.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

__all__ = [
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "flush_logging",
    "observe_drops",
]

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

#: Records waiting for the background writer before new ones are dropped.
QUEUE_LIMIT = 10_000


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, pid, event, then the extra fields."""

    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")

    def _ts(self, created: float) -> str:
        second = int(created)
        cached = self._second
        if cached[0] != second:  # strftime once per second, not per record
            cached = self._second = (
                second,
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)),
            )
        return f"{cached[1]}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self._ts(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,  # which worker of `serve --workers`
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        exception = _exception_text(self, record)
        if exception:
            out["exception"] = exception
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """Readable single lines with the extra fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")
        )
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{ts} {record.levelname:<7} {record.name}: {record.getMessage()}"
        line = f"{line}  {extra}" if extra else line
        exception = _exception_text(self, record)
        if exception:
            line += "\n" + exception
        return line


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """The record's traceback: rendered now, or already rendered where it was queued."""
    if record.exc_info:
        return formatter.formatException(record.exc_info)
    return record.exc_text or ""


class _Enqueue(logging.handlers.QueueHandler):
    """Queues records for the background writer; never blocks, counts what it drops."""

    def __init__(self, q: queue.SimpleQueue[logging.LogRecord]) -> None:
        super().__init__(q)
        self.dropped = 0
        self._lock_dropped = threading.Lock()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Only what must happen in the caller's thread: the message with its arguments, and
        # the traceback while it exists. No copy: this handler is the record's only reader.
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        q: queue.SimpleQueue[logging.LogRecord] = self.queue  # type: ignore[assignment]
        if q.qsize() >= QUEUE_LIMIT:  # approximate under races; bounded is what matters
            with self._lock_dropped:
                self.dropped += 1
            return
        q.put_nowait(record)

    def take_dropped(self) -> int:
        """How many records were dropped since the last call."""
        with self._lock_dropped:
            dropped, self.dropped = self.dropped, 0
        return dropped


class _Background:
    """The queue, its handler on the ``tongban`` logger and the thread that writes.

    The thread wakes every ``interval`` seconds and writes everything queued with one
    ``write``. (The stdlib's QueueListener wakes for each record: at thousands of records a
    second its thread and the event loop hand the GIL back and forth, which cost more CPU
    than writing in the caller's thread.)
    """

    def __init__(self, target: logging.StreamHandler[Any], interval: float = 0.05) -> None:
        self.target = target
        self.interval = interval
        self.queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self.handler = _Enqueue(self.queue)
        self._start()

    def _start(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tongban-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.drain()
        self.drain()

    def drain(self) -> None:
        """Write every queued record."""
        q, target = self.queue, self.target
        lines = []
        while True:
            try:
                record = q.get_nowait()
            except queue.Empty:
                break
            try:
                lines.append(target.format(record))
            except Exception:  # noqa: BLE001 - a record that cannot be formatted, as stdlib
                target.handleError(record)
        dropped = self.handler.take_dropped()
        if dropped:  # reported with the next write, after the records that were kept
            for observer in _drop_observers:
                observer(dropped)
            warning = logging.makeLogRecord(
                {
                    "name": "tongban.logs",
                    "levelno": logging.WARNING,
                    "levelname": "WARNING",
                    "msg": "log records dropped",
                    "dropped": dropped,
                }
            )
            lines.append(target.format(warning))
        if lines:
            with _writing:  # a fork waits: the child must not inherit a half-written stream
                try:
                    target.stream.write(target.terminator.join(lines) + target.terminator)
                    target.stream.flush()
                except Exception:  # noqa: BLE001 - stderr gone: as the stdlib handler does
                    target.handleError(logging.makeLogRecord({"msg": "log write failed"}))

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()

    def after_fork(self) -> None:
        """In a forked child: the thread did not come along; a fresh queue and thread."""
        self.queue = queue.SimpleQueue()
        self.handler.queue = self.queue
        self.handler.dropped = 0
        self._start()


#: The background writer in use, if any (at most one).
_active: list[_Background] = []
#: Called (in the writer thread) with the number of records dropped since the last write.
_drop_observers: list[Callable[[float], None]] = []


def observe_drops(observer: Callable[[float], None] | None) -> None:
    """Report dropped log records to ``observer`` (a metric's ``inc``); None stops reporting."""
    _drop_observers[:] = [observer] if observer is not None else []


def flush_logging() -> None:
    """Write every record still queued (background logging) and stop the writer thread."""
    while _active:
        _active.pop().stop()


#: Held by a writer thread while it writes, and by a thread that forks while it forks: the
#: stream's own buffer lock, taken in the middle of a write, would stay taken in the child.
_writing = threading.Lock()
#: Whether the forking thread got ``_writing`` (it waits at most 5 s for a blocked stderr).
_fork_holds: list[bool] = [False]


def _before_fork() -> None:
    _fork_holds[0] = _writing.acquire(timeout=5.0)


def _after_fork_in_parent() -> None:
    if _fork_holds[0]:
        _writing.release()


def _after_fork_in_child() -> None:
    if _fork_holds[0]:
        _writing.release()
    for background in _active:
        background.after_fork()


atexit.register(flush_logging)
os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


def _skip_unused_record_fields() -> None:
    """Stop every record from collecting what neither formatter prints: the caller's file,
    line and function (a walk up the stack), the thread's name, the multiprocessing process's
    name. The knobs of the logging HOWTO's "Optimization" section; the process id stays (the
    ``pid`` field). A ``case accepted`` record cost 13.5 µs to log, 5.7 µs without them.
    """
    logging._srcfile = None  # documented there: records then skip findCaller()
    logging.logThreads = False
    logging.logMultiprocessing = False


def configure_logging(level: str = "INFO", fmt: str = "auto", *, background: bool = False) -> None:
    """Send the ``tongban`` loggers to stderr in the chosen format (auto: text on a TTY).

    ``background``: queue records for a writer thread instead of writing them in the
    caller's thread (what ``tongban serve`` does).
    """
    _skip_unused_record_fields()
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler: logging.Handler = stream
    previous = list(_active)
    _active.clear()
    if background:
        writer = _Background(stream)
        _active.append(writer)
        handler = writer.handler
    root = logging.getLogger("tongban")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    for old in previous:  # after the new handler took over: nothing is queued behind them
        old.stop()
