"""Dead letters: list, inspect, replay. Shared by the RPC and the command line."""

from __future__ import annotations

from tongban.v1 import operations_pb2 as ops

from ..errors import DeadLetterNotFound, InvalidRequest
from ..store.intents import ReplayIntent
from ..store.reads import OutboxRecord
from ..store.store import Store
from ..timestamps import timestamp

__all__ = ["DeadLetterService", "to_proto"]


def to_proto(row: OutboxRecord) -> ops.DeadLetter:
    """An outbox row as a DeadLetter message."""
    return ops.DeadLetter(
        id=row.id,
        exchange_id=row.exchange_id,
        kind=row.kind,
        target_partner=row.target_partner,
        target_city=row.target_city,
        attempts=row.attempts,
        reason=row.last_error,
        created_at=timestamp(row.created_at),
        dead_at=timestamp(row.dead_at) if row.dead_at is not None else None,
        replays=row.replays,
    )


class DeadLetterService:
    """The dead-letter queue on the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def page(self, page_size: int, page_token: str) -> tuple[list[OutboxRecord], str]:
        """Dead letters after the token, oldest first; returns (rows, next token)."""
        if page_size < 0:
            raise InvalidRequest("page_size must not be negative", "page_size")
        size = min(page_size or 50, 500)
        after = 0
        if page_token:
            if not (page_token.isascii() and page_token.isdigit()):
                raise InvalidRequest("page_token is malformed", "page_token")
            after = int(page_token)
        rows = await self.store.read(self.store.reader.dead_letters, after_id=after, limit=size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return rows, (str(rows[-1].id) if more and rows else "")

    async def get(self, row_id: int) -> OutboxRecord:
        """One dead letter."""
        row = await self.store.read(self.store.reader.outbox_row, row_id)
        if row is None or row.state != "dead":
            raise DeadLetterNotFound(f"no dead letter {row_id}", "id")
        return row

    async def replay(self, actor: str, ids: list[int] | None) -> list[int]:
        """Put dead letters back into the outbox; returns the ids replayed."""
        if ids is not None and not ids:
            raise InvalidRequest("give ids or all", "ids")
        replayed: list[int] = await self.store.write(ReplayIntent(actor, ids))
        if ids is not None and len(replayed) != len(set(ids)):
            missing = sorted(set(ids) - set(replayed))
            if not replayed:
                raise DeadLetterNotFound(f"no dead letter among {missing}", "ids")
        return replayed
