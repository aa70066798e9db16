"""The group-commit writer: every write of this process goes through one queue.

Callers submit *intents* and await their result. The writer takes everything queued, runs the
intents in order inside ONE transaction (so concurrent submissions share one commit and one
fsync), then resolves each caller. An intent validates before it writes: a domain error (a reused
request id, an illegal transition) fails only that intent and leaves no row behind. If the
database itself fails the batch, each intent is retried alone so one bad apple cannot sink the
rest.

Rows are added with multi-row INSERTs per table on the driver's cursor, and the audit hash
chain is extended in the same transaction: the case, its status event, its outbox row and its
audit entry are committed together, before the caller's reply. The transaction runs in a worker
thread or, in the gateway, in a writer process (:mod:`gateway.store.writer_process`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import inspect
import itertools
import logging
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypedDict

import orjson
from sqlalchemy import Connection, Engine, Table
from sqlalchemy.exc import SQLAlchemyError

from ..errors import BackendUnavailable, GatewayError
from .chain_hash import SWITCH_ACTION, algorithm_after
from .sealing import Keyring
from .tables import (
    AuditArchiveRow,
    AuditCheckpointRow,
    AuditHead,
    AuditRow,
    CaseRow,
    EventRow,
    GatewayRow,
    OutboxRow,
    RequestRow,
    WitnessedCheckpointRow,
)

__all__ = [
    "AuditEntry",
    "Batch",
    "DeferredIntent",
    "Executor",
    "Intent",
    "StoreWriter",
    "run_intents",
]

log = logging.getLogger("tongban.store")

CASES: Table = CaseRow.__table__  # type: ignore[attr-defined]
REQUESTS: Table = RequestRow.__table__  # type: ignore[attr-defined]
EVENTS: Table = EventRow.__table__  # type: ignore[attr-defined]
OUTBOX: Table = OutboxRow.__table__  # type: ignore[attr-defined]
AUDIT: Table = AuditRow.__table__  # type: ignore[attr-defined]
AUDIT_HEAD: Table = AuditHead.__table__  # type: ignore[attr-defined]
AUDIT_ARCHIVES: Table = AuditArchiveRow.__table__  # type: ignore[attr-defined]
AUDIT_CHECKPOINTS: Table = AuditCheckpointRow.__table__  # type: ignore[attr-defined]
GATEWAYS: Table = GatewayRow.__table__  # type: ignore[attr-defined]
WITNESSED: Table = WitnessedCheckpointRow.__table__  # type: ignore[attr-defined]
GENESIS = "0" * 64


class AuditEntry(NamedTuple):
    """Who did what to which subject, with what outcome. Never personal data.

    A named tuple: one is made per case written, and a frozen dataclass sets each field
    through ``object.__setattr__``.
    """

    actor: str
    action: str
    subject: str
    outcome: str
    detail: str = ""


def audit_hash(prev: str, seq: int, ts: float, e: AuditEntry, algorithm: str = "sha256") -> str:
    """The chain hash of one entry: the hash (``algorithm``, one of :data:`HASH_ALGORITHMS`)
    of the previous hash and the entry as compact JSON.

    orjson writes the bytes ``json.dumps(..., ensure_ascii=False, separators=(",", ":"))``
    wrote before it, UTF-8 encoded (tested string for string, control characters included),
    at a sixth of the cost: chains written by either verify with the other.
    """
    return _chain_hash(prev, seq, repr(ts), e, algorithm)


def _chain_hash(prev: str, seq: int, ts_text: str, e: AuditEntry, algorithm: str) -> str:
    """:func:`audit_hash` with the time as its ``repr`` (once per batch when writing)."""
    body = orjson.dumps([seq, ts_text, e.actor, e.action, e.subject, e.detail, e.outcome])
    if algorithm == "sha256":
        return hashlib.sha256(prev.encode() + body).hexdigest()
    return hashlib.new(algorithm, prev.encode() + body).hexdigest()


def _literal(value: str | int | float | None) -> str:
    """One of our own constants as SQL text (never a caller's value: those are bound)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):  # SQLite reads these keywords since 3.23 (as 1 and 0)
        return "TRUE" if value else "FALSE"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)  # int, or a float whose repr SQL reads back exactly (0.0)


class NewRows:
    """The INSERT of one kind of new row: ``columns`` are bound, each row a tuple of their
    values in that order; ``fixed`` columns hold the same constant in every row and are
    written into the statement. The driver's binding cost ~1k instructions a value, constant
    or not (and a None went through its adapter lookup), and building a dict per row to pick
    its values from again cost as much: a submitted case binds 33 values instead of 45.

    ``utf8`` columns are text bound as its UTF-8 bytes (a case's canonical JSON, as orjson
    writes it): the statement turns them into text, so that the record is not decoded on the
    event loop, encoded and decoded again by pickle, then encoded once more by the driver.

    :meth:`sql` with ``rows`` > 1 inserts that many rows at once (one VALUES group each, their
    values bound one row after the other): see :meth:`Batch._insert_many`.
    """

    __slots__ = ("_head", "_sql", "_values", "columns", "fixed", "table")

    def __init__(
        self,
        table: Table,
        columns: Sequence[str],
        *,
        utf8: Sequence[str] = (),
        **fixed: str | float | None,
    ) -> None:
        self.table = table
        self.columns = tuple(columns)
        self.fixed = tuple(fixed)
        unknown = (set(self.columns) | set(fixed) | set(utf8)) - set(table.c.keys())
        if unknown or not set(utf8) <= set(self.columns):
            raise ValueError(f"{table.name} has no column {sorted(unknown or utf8)} to bind")
        names = ", ".join([*self.columns, *fixed])
        consts = [_literal(v) for v in fixed.values()]
        # SQLite reads a blob cast to text as text in the database's encoding (UTF-8 here);
        # PostgreSQL decodes the bytea.
        as_text = {"?": "CAST(? AS TEXT)", "%s": "convert_from(%s, 'UTF8')"}
        self._head = f"INSERT INTO {table.name} ({names}) VALUES "  # noqa: S608 - our own names
        self._values = {
            mark: "("
            + ", ".join([*(as_text[mark] if c in utf8 else mark for c in self.columns), *consts])
            + ")"
            for mark in ("?", "%s")
        }
        self._sql: dict[tuple[str, int], str] = {}

    def sql(self, mark: str, rows: int = 1) -> str:
        """The statement inserting ``rows`` rows, with ``mark`` (``?`` or ``%s``) as the
        driver's placeholder."""
        sql = self._sql.get((mark, rows))
        if sql is None:
            sql = self._sql[mark, rows] = self._head + ", ".join([self._values[mark]] * rows)
        return sql


#: A new case (always submitted, its delivery pending).
NEW_CASE = NewRows(
    CASES,
    (
        "exchange_id",
        "submitter",
        "receiving_city",
        "handling_city",
        "case_number",
        "canonical",
        "mapping_versions",
        "submitted_at",
        "updated_at",
    ),
    utf8=("canonical",),
    status="CASE_STATUS_SUBMITTED",
    delivery_state="DELIVERY_STATE_PENDING",
)
#: A new case's first event (later events are inserted at once: their seq is needed).
SUBMITTED_EVENT = NewRows(
    EVENTS,
    ("exchange_id", "occurred_at", "reported_by", "created_at"),
    status="CASE_STATUS_SUBMITTED",
    note="",
    late=False,
)


class _Delivery(TypedDict):
    state: str
    attempts: int
    lease_owner: None
    lease_until: float
    last_error: str
    replays: int


#: What every new delivery holds: pending, never tried, not leased.
_NEW_DELIVERY = _Delivery(
    state="pending", attempts=0, lease_owner=None, lease_until=0.0, last_error="", replays=0
)
#: The delivery of a new case, due now.
CASE_DELIVERY = NewRows(
    OUTBOX,
    ("exchange_id", "target_partner", "target_city", "next_attempt_at", "created_at"),
    kind="case",
    event_seq=None,
    **_NEW_DELIVERY,
)
#: The delivery of a status event (its seq), due now.
STATUS_DELIVERY = NewRows(
    OUTBOX,
    ("exchange_id", "event_seq", "target_partner", "target_city", "next_attempt_at", "created_at"),
    kind="status",
    **_NEW_DELIVERY,
)
#: An idempotency key with its first answer.
NEW_REQUEST = NewRows(
    REQUESTS, ("partner", "request_id", "kind", "body_hash", "response", "created_at")
)
#: An entry of the audit chain.
NEW_AUDIT = NewRows(
    AUDIT, ("seq", "ts", "actor", "action", "subject", "detail", "outcome", "prev_hash", "hash")
)


#: The sizes of the multi-row INSERTs a batch's rows are cut into, largest first: a batch of
#: 200 streamed cases takes 3 x 64 + 8 rows a table, one of 40 unary ones 5 x 8. At most
#: 64 x 9 values a statement: below every SQLite's limit on bound parameters (999 before
#: 3.32) and PostgreSQL's (tests/unit/test_new_rows.py keeps it so).
ROWS_PER_INSERT = (64, 8, 2)


@dataclass
class Batch:
    """What the intents of one transaction add, flushed kind by kind of row (multi-row INSERTs).

    Its lists hold tuples in the column order of the statement that inserts them:
    ``requests`` :data:`NEW_REQUEST`, ``cases`` :data:`NEW_CASE`, ``events``
    :data:`SUBMITTED_EVENT`, ``case_deliveries`` :data:`CASE_DELIVERY`, ``status_deliveries``
    :data:`STATUS_DELIVERY`.
    """

    conn: Connection
    now: float
    is_postgres: bool
    # Seals what the intents store of a case's personal data (None: stored in the clear).
    keyring: Keyring | None = None
    cases: list[tuple[Any, ...]] = field(default_factory=list)
    requests: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    case_deliveries: list[tuple[Any, ...]] = field(default_factory=list)
    status_deliveries: list[tuple[Any, ...]] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)
    # Request ids taken by earlier intents of this batch: (partner, id) -> (hash, response).
    seen_requests: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)

    # The hot path speaks to the driver's cursor inside the batch's transaction: SQLAlchemy's
    # per-statement execution machinery cost more than SQLite itself for a batch of ~10 cases.
    _cur: Any = field(default=None, repr=False)

    def _cursor(self) -> Any:
        if self._cur is None:
            self._cur = self.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        return self._cur

    @property
    def _mark(self) -> str:
        return "%s" if self.is_postgres else "?"

    def _insert_many(self, into: NewRows, rows: list[tuple[Any, ...]]) -> None:
        """Insert ``rows`` in order: as many statements of :data:`ROWS_PER_INSERT` rows as
        fit, largest first, then one row a statement for the rest.

        Each execution of an INSERT costs SQLite the statement's start and end (the table's and
        every index's cursors opened, positioned and closed) and the driver a reset, a step and
        its checks; a statement of 64 rows pays that once for them all. The writer's
        instructions per case (bench/instructions.py): ``write`` (streamed cases) 145.9k ->
        115.7k, ``unary`` 340.9k -> 320.9k. The sizes are few, so the driver's statement cache
        keeps them compiled.
        """
        cur, mark, start, n = self._cursor(), self._mark, 0, len(rows)
        flat = itertools.chain.from_iterable
        for size in ROWS_PER_INSERT:
            end = start + (n - start) // size * size
            if end > start:
                cur.executemany(
                    into.sql(mark, size),
                    [tuple(flat(rows[i : i + size])) for i in range(start, end, size)],
                )
                start = end
        if start < n:
            cur.executemany(into.sql(mark), rows[start:])

    def flush(self) -> None:
        """Insert everything collected, then extend the audit chain."""
        for into, rows in (
            (NEW_REQUEST, self.requests),
            (NEW_CASE, self.cases),
            (SUBMITTED_EVENT, self.events),
            (CASE_DELIVERY, self.case_deliveries),
            (STATUS_DELIVERY, self.status_deliveries),
        ):
            if rows:
                self._insert_many(into, rows)
        if self.audit:
            cur = self._cursor()
            lock = " FOR UPDATE" if self.is_postgres else ""
            cur.execute(
                f"SELECT length, hash, hash_algorithm FROM {AUDIT_HEAD.name} WHERE id = 1{lock}"  # noqa: S608
            )
            length, prev, algorithm = cur.fetchone()
            now = self.now
            now_text = repr(now)
            rows = []
            for e in self.audit:
                length += 1
                h = _chain_hash(prev, length, now_text, e, algorithm)
                rows.append(
                    (length, now, e.actor, e.action, e.subject, e.detail[:200], e.outcome, prev, h)
                )
                prev = h
                if e.action == SWITCH_ACTION:  # ChainHashIntent's entry: the next ones change
                    algorithm = algorithm_after(e.action, e.subject, algorithm)
            self._insert_many(NEW_AUDIT, rows)
            m = self._mark
            cur.execute(
                f"UPDATE {AUDIT_HEAD.name} SET length = {m}, hash = {m}, "  # noqa: S608
                f"hash_algorithm = {m} WHERE id = 1",
                (length, prev, algorithm),
            )

    def chain_algorithm(self) -> str:
        """The hash function of the chain's next entry: the head's, or the one an entry this
        batch adds switches to (read under the head's lock on PostgreSQL)."""
        lock = " FOR UPDATE" if self.is_postgres else ""
        cur = self._cursor()
        cur.execute(f"SELECT hash_algorithm FROM {AUDIT_HEAD.name} WHERE id = 1{lock}")  # noqa: S608
        algorithm = str(cur.fetchone()[0])
        for e in self.audit:
            algorithm = algorithm_after(e.action, e.subject, algorithm)
        return algorithm

    def known_requests(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[str, bytes]]:
        """Stored (hash, response) of idempotency keys, including this batch's."""
        wanted = set(keys)
        found = {k: v for k, v in self.seen_requests.items() if k in wanted}
        missing = [k for k in keys if k not in found]
        by_partner: dict[str, list[str]] = {}
        for partner, request_id in missing:
            by_partner.setdefault(partner, []).append(request_id)
        # One indexed IN-list per partner (chunks of 500): an OR of (partner, id) pairs grows an
        # expression tree SQLite refuses past ~1000 terms and is slow to plan well before that.
        cur, m = self._cursor(), self._mark
        for partner, ids in by_partner.items():
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                cur.execute(
                    f"SELECT request_id, body_hash, response FROM {REQUESTS.name} "  # noqa: S608
                    f"WHERE partner = {m} AND request_id IN ({', '.join([m] * len(chunk))})",
                    (partner, *chunk),
                )
                for request_id, body_hash, response in cur.fetchall():
                    found[(partner, request_id)] = (body_hash, bytes(response))
        return found

    def remember_request(
        self, partner: str, request_id: str, kind: str, body_hash: str, response: bytes
    ) -> None:
        """Record an idempotency key and its first answer.

        A blob goes to the driver as a ``bytearray``: Python's sqlite3 binds one as it is,
        while ``bytes`` first misses a lookup of adapters (~2k instructions a value; the
        writer's work per stored case 155.3k -> 151.3k instructions). psycopg binds either
        as ``bytea``.
        """
        self.requests.append((partner, request_id, kind, body_hash, bytearray(response), self.now))
        self.seen_requests[(partner, request_id)] = (body_hash, response)


class Intent:
    """One unit of work for the writer. ``run`` validates, then adds rows to the batch.

    ``run`` is called in the writer's thread inside the batch transaction; it returns the result
    handed back to the caller, or raises a :class:`GatewayError` that fails this intent only. It
    must not write anything before it has decided to succeed.
    """

    def prefetch_keys(self) -> Sequence[tuple[str, str]]:
        """Idempotency keys this intent will look up (fetched for the whole batch at once)."""
        return ()

    def __reduce__(self) -> tuple[Any, ...]:
        # Intents are dataclasses that cross to the writer process: pickled as the class and
        # its field values (half the cost of pickle's default instance state).
        return (type(self), _fields_of(type(self))(self))

    def run(self, batch: Batch) -> Any:  # pragma: no cover - interface
        """Validate and write; return the result."""
        raise NotImplementedError


class DeferredIntent(Intent):
    """An intent completed where its batch runs, just before the batch's transaction.

    :meth:`complete` turns it into the intent to run, or raises to refuse it; :meth:`outcome`
    wraps what its caller gets back (the result or error of the completed intent, or the
    error that refused it). In the gateway the batch runs in the writer process: work done in
    ``complete`` (translating a submitted case) leaves the event loop. ``context`` (what
    completing needs, named by ``token``) travels to a writer process once, not with each
    intent.
    """

    token: int
    context: Any

    def complete(self, now: float) -> Intent:  # pragma: no cover - interface
        """The intent to run in the batch stamped ``now``; raise to refuse this one."""
        raise NotImplementedError

    def outcome(self, result: Any) -> Any:
        """What the caller gets: ``result`` (a result or an exception), as is by default."""
        return result

    def run(self, batch: Batch) -> Any:  # pragma: no cover - completed before any run
        raise RuntimeError("a deferred intent runs only once completed")


_FIELDS: dict[type, Callable[[Any], tuple[Any, ...]]] = {}


def _fields_of(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    """A function giving an intent's constructor arguments, in order, as a tuple."""
    get = _FIELDS.get(cls)
    if get is None:
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        if len(names) == 1:
            one = operator.attrgetter(names[0])

            def get(obj: Any) -> tuple[Any, ...]:
                return (one(obj),)

        else:
            get = operator.attrgetter(*names)
        _FIELDS[cls] = get
    return get


#: A batch's intents as they cross to a writer process: runs of one class, each intent its
#: constructor arguments; a run under ``None`` holds intents pickled as they are (see
#: :func:`pack_intents`).
PackedIntents = list[tuple[type | None, list[Any]]]


def pack_intents(intents: Sequence[Intent]) -> PackedIntents:
    """``intents`` as runs of one class with each intent's constructor arguments.

    Pickled this way, a batch names each class once per run and pickles plain tuples, instead
    of calling every intent's ``__reduce__`` on the event loop: about a third less of the loop's
    pickling time per case (a stream of 200 cases is one run). An intent whose class pickles
    itself its own way (overrides ``__reduce__``) is kept as it is. :func:`unpack_intents`
    rebuilds them, in order, as unpickling each one would.
    """
    runs: PackedIntents = []
    cls: type | None = None
    values: list[Any] = []
    for intent in intents:
        kind = type(intent)
        if kind is not cls:
            cls, values = kind, []
            if kind.__reduce__ is Intent.__reduce__:
                get = _fields_of(kind)
                runs.append((kind, values))
            else:
                get = _itself
                runs.append((None, values))
        values.append(get(intent))
    return runs


def _itself(intent: Any) -> Any:
    return intent


def unpack_intents(runs: PackedIntents) -> list[Intent]:
    """The intents :func:`pack_intents` packed, in order."""
    out: list[Intent] = []
    for cls, values in runs:
        if cls is None:
            out.extend(values)
        else:
            out.extend(cls(*args) for args in values)
    return out


@dataclass
class _Pending:
    """Intents queued together: one (``submit``), or a group (``submit_many``) with one future."""

    intents: list[Intent]
    future: asyncio.Future[Any]
    group: bool = False


def run_intents(
    engine: Engine, intents: list[Intent], now: float, keyring: Keyring | None = None
) -> list[Any]:
    """Run ``intents`` in one transaction stamped ``now``; one result (or error) per intent.
    With ``keyring``, the personal data they store is sealed (:mod:`.sealing`).

    Blocking; never raises. Deferred intents are completed first (outside the transaction). If
    the database fails the batch, each intent is retried alone so that one bad apple cannot
    sink the rest; if it fails a lone intent, that one gets :class:`BackendUnavailable`. Runs
    in the writer thread, or in the writer process.
    """
    if any(isinstance(i, DeferredIntent) for i in intents):
        return _run_completing(engine, intents, now, keyring)
    return _run_or_retry(engine, intents, now, keyring)


def _run_completing(
    engine: Engine, intents: list[Intent], now: float, keyring: Keyring | None
) -> list[Any]:
    out: list[Any] = [None] * len(intents)
    ready: list[Intent] = []
    where: list[tuple[int, DeferredIntent | None]] = []
    for n, intent in enumerate(intents):
        if isinstance(intent, DeferredIntent):
            try:
                ready.append(intent.complete(now))
            except Exception as exc:  # noqa: BLE001 - refused: reported to its caller only
                out[n] = intent.outcome(exc)
                continue
            where.append((n, intent))
        else:
            ready.append(intent)
            where.append((n, None))
    # The store down fails the completed intents; the refused keep their own errors.
    results = _run_or_retry(engine, ready, now, keyring) if ready else []
    for (n, deferred), result in zip(where, results, strict=True):
        out[n] = deferred.outcome(result) if deferred is not None else result
    return out


def _run_or_retry(
    engine: Engine, intents: list[Intent], now: float, keyring: Keyring | None
) -> list[Any]:
    try:
        return _run_batch(engine, intents, now, keyring)
    except Exception as exc:  # noqa: BLE001 - the store down fails the batch, not the writer
        if len(intents) == 1:
            log.error("store write failed", extra={"error": type(exc).__name__})
            return [BackendUnavailable("the store is unavailable; retry later", 1.0)]
        log.warning("batch failed; retrying its intents one by one", extra={"size": len(intents)})
        results: list[Any] = []
        # The hot path speaks to the driver directly: its own errors are store errors too.
        store_errors = (SQLAlchemyError, engine.dialect.loaded_dbapi.Error)
        for intent in intents:
            try:
                results.extend(_run_batch(engine, [intent], now, keyring))
            except store_errors as exc:
                results.append(BackendUnavailable(f"store error: {type(exc).__name__}"))
            except Exception as exc:  # noqa: BLE001 - a bug in one intent: report it to its caller
                results.append(exc)
        return results


def _run_batch(
    engine: Engine, intents: list[Intent], now: float, keyring: Keyring | None
) -> list[Any]:
    results: list[Any] = []
    with engine.begin() as conn:
        b = Batch(conn, now, engine.dialect.name == "postgresql", keyring)
        keys = [k for i in intents for k in i.prefetch_keys()]
        if keys:
            b.seen_requests.update(b.known_requests(keys))
        for intent in intents:
            try:
                results.append(intent.run(b))
            except GatewayError as exc:
                results.append(exc)
        b.flush()
    return results


#: Runs a batch of intents stamped with a time: :func:`run_intents` on an engine (blocking, run
#: in a worker thread), or a writer process (:meth:`WriterProcess.run`, a coroutine).
Executor = Callable[[list[Intent], float], Any]


class StoreWriter:
    """Runs intents in batches, one transaction per batch, off the event loop.

    The batch's SQL runs in ``executor``: by default :func:`run_intents` in a worker thread;
    the gateway uses a writer process, so that SQLite's work does not share the event loop's
    GIL. The time of a batch is taken here, from ``clock``.

    A batch that follows a batch serving several callers waits for more writes to join it:
    until as many callers are queued as the previous batch served, for at most
    ``commit_delay_per_caller`` (seconds) per caller of that batch and never more than
    ``commit_delay``. Under load a commit gathers the callers that are writing (fewer, larger
    transactions: less CPU per case) and starts as soon as they are all there, so a fast
    machine is not held to the timer; a few callers wait little; a lone caller never waits.
    """

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], float],
        max_batch: int = 256,
        executor: Executor | None = None,
        commit_delay: float = 0.0,
        commit_delay_per_caller: float = 0.0005,
        keyring: Keyring | None = None,
    ) -> None:
        self.clock = clock
        self.max_batch = max_batch
        self.executor = executor or functools.partial(run_intents, engine, keyring=keyring)
        self.commit_delay = commit_delay
        self.commit_delay_per_caller = commit_delay_per_caller
        self._last_callers = 0
        # While the writer gathers a batch: the queue length that ends the wait, and the wait.
        self._gather_until = 0
        self._gathered: asyncio.Future[None] | None = None
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.committed = 0

    def start(self) -> None:
        """Start the writer task in the running event loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name="store-writer")

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        if self._task is None or self._queue is None:
            return
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    @property
    def executor(self) -> Executor:
        """Where a batch's SQL runs (a coroutine function is awaited, else run in a thread)."""
        return self._executor

    @executor.setter
    def executor(self, executor: Executor) -> None:
        self._executor = executor
        self._executor_is_async = inspect.iscoroutinefunction(
            executor
        ) or inspect.iscoroutinefunction(type(executor).__call__)

    def enqueue(self, intent: Intent) -> asyncio.Future[Any]:
        """Queue ``intent``; the future resolves when its batch committed."""
        if self._queue is None:
            raise RuntimeError("StoreWriter.start() was not called")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending([intent], fut))
        self._arrived()
        return fut

    def _arrived(self) -> None:
        # Ends the batch's wait once the callers it waits for are all queued.
        gathered, q = self._gathered, self._queue
        if (
            gathered is not None
            and q is not None
            and q.qsize() >= self._gather_until
            and not gathered.done()
        ):
            gathered.set_result(None)

    async def submit(self, intent: Intent) -> Any:
        """Queue ``intent`` and wait until its batch committed; return its result."""
        return await self.enqueue(intent)

    async def submit_many(self, intents: list[Intent]) -> list[Any]:
        """Queue ``intents`` in groups of at most ``max_batch`` (one future each, not one per
        intent); return one result or exception per intent, in order."""
        if self._queue is None:
            raise RuntimeError("StoreWriter.start() was not called")
        loop = asyncio.get_running_loop()
        futures = []
        for start in range(0, len(intents), self.max_batch):
            fut: asyncio.Future[Any] = loop.create_future()
            self._queue.put_nowait(_Pending(intents[start : start + self.max_batch], fut, True))
            futures.append(fut)
        self._arrived()
        out: list[Any] = []
        for part in await asyncio.gather(*futures):
            out.extend(part)
        return out

    async def _gather(self, queued: int, timeout: float) -> None:
        """Wait until ``queued`` writes wait in the queue, or ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        self._gathered = gathered = loop.create_future()
        self._gather_until = queued
        timer = loop.call_later(timeout, _resolve, gathered)
        try:
            await gathered
        finally:
            timer.cancel()
            self._gathered = None

    async def _loop(self) -> None:
        assert self._queue is not None
        q = self._queue
        while True:
            first = await q.get()
            if (
                self.commit_delay > 0
                and 1 + q.qsize() < self._last_callers
                and len(first.intents) + q.qsize() < self.max_batch
            ):
                # Under concurrent load (the previous batch served several callers), wait for
                # them to write again: fewer, larger transactions (SQLite writes every touched
                # page per commit). A lone caller, even with a stream, never waits.
                await self._gather(
                    self._last_callers - 1,
                    min(self.commit_delay, self.commit_delay_per_caller * self._last_callers),
                )
            batch = [first]
            size = len(first.intents)
            while size < self.max_batch and not q.empty():
                p = q.get_nowait()
                batch.append(p)
                size += len(p.intents)
            intents = [i for p in batch for i in p.intents]
            try:
                if self._executor_is_async:
                    results = await self._executor(intents, self.clock())
                else:
                    results = await asyncio.to_thread(self._executor, intents, self.clock())
                if not isinstance(results, list) or len(results) != len(intents):
                    raise RuntimeError("the store executor returned no result per intent")
            except Exception as exc:  # noqa: BLE001 - the store is down: fail the callers
                log.error("store write failed", extra={"error": type(exc).__name__})
                err = (
                    exc
                    if isinstance(exc, BackendUnavailable)
                    else BackendUnavailable("the store is unavailable; retry later", 1.0)
                )
                results = [err] * len(intents)
            self.batches += 1
            self.committed += len(intents)
            self._last_callers = len(batch)
            at = 0
            for p in batch:
                part = results[at : at + len(p.intents)]
                at += len(p.intents)
                if not p.future.done():
                    if p.group:
                        p.future.set_result(part)
                    elif isinstance(part[0], BaseException):
                        p.future.set_exception(part[0])
                    else:
                        p.future.set_result(part[0])
                q.task_done()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
