"""The store's tables (SQLModel). Times are UNIX seconds (float) from the gateway's clock.

cases       one row per exchanged case, canonical record as JSON; ``seq`` orders pages
requests    idempotency: (partner, request_id) -> body hash and the first answer
events      status history of every case; ``seq`` is the WatchCases cursor
outbox      deliveries to partner systems: pending -> delivered | dead (the dead-letter queue)
audit       append-only, hash-chained log of who did what
audit_head  the chain's last hash and hash function, locked while appending
audit_archives  the audit chain's entries moved to archive files (``tongban audit archive``)
audit_checkpoints  signed checkpoints of the audit chain (``audit.signing_key``)
witnessed_checkpoints  peer gateways' signed checkpoints, kept here as their witness
gateways    the gateway processes serving from the store (delivering or not), when last seen
reencrypt_progress  how far the background walk has sealed each sealed column with the active key
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Index, LargeBinary, Text, false, true
from sqlmodel import Field, SQLModel

__all__ = [
    "AuditArchiveRow",
    "AuditCheckpointRow",
    "AuditHead",
    "AuditRow",
    "CaseRow",
    "EventRow",
    "GatewayRow",
    "OutboxRow",
    "ReencryptProgressRow",
    "RequestRow",
    "WitnessedCheckpointRow",
]


class CaseRow(SQLModel, table=True):
    """A case and its canonical record."""

    __tablename__ = "cases"
    __table_args__ = (
        Index("ix_cases_receiving_seq", "receiving_city", "seq"),
        Index("ix_cases_handling_seq", "handling_city", "seq"),
    )

    seq: int | None = Field(default=None, primary_key=True)
    exchange_id: str = Field(max_length=40, unique=True)
    submitter: str = Field(max_length=64)
    receiving_city: str = Field(max_length=6)
    handling_city: str = Field(max_length=6)
    case_number: str = Field(max_length=64)
    status: str = Field(max_length=40)
    delivery_state: str = Field(max_length=40)
    canonical: str = Field(sa_column=Column(Text, nullable=False))
    mapping_versions: str = Field(max_length=200)
    submitted_at: float
    updated_at: float


class RequestRow(SQLModel, table=True):
    """An idempotent request: the first answer, replayed for retries with the same body."""

    __tablename__ = "requests"

    partner: str = Field(max_length=64, primary_key=True)
    request_id: str = Field(max_length=128, primary_key=True)
    kind: str = Field(max_length=20)
    body_hash: str = Field(max_length=64)
    response: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: float


class EventRow(SQLModel, table=True):
    """One status change of a case."""

    __tablename__ = "events"

    seq: int | None = Field(default=None, primary_key=True)
    exchange_id: str = Field(max_length=40, index=True)
    status: str = Field(max_length=40)
    occurred_at: float
    reported_by: str = Field(max_length=6)
    note: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_at: float
    # Recorded late (0010): older than a change from the same city already applied; in the
    # history, the case's status unchanged.
    late: bool = Field(
        default=False,
        sa_column=Column(Boolean, nullable=False, default=False, server_default=false()),
    )


class OutboxRow(SQLModel, table=True):
    """A delivery to a partner system; ``state`` dead rows are the dead-letter queue."""

    __tablename__ = "outbox"
    # Claims go partner by partner, in due order (0003); so do an open circuit's deferrals.
    __table_args__ = (
        Index("ix_outbox_partner_due", "state", "target_partner", "next_attempt_at", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    # Not indexed: no read looks outbox rows up by exchange (claims, gauges and dead letters
    # go by state and id); an index here cost every submitted case a B-tree entry (0002).
    exchange_id: str = Field(max_length=40)
    kind: str = Field(max_length=10)  # "case" or "status"
    event_seq: int | None = None
    target_partner: str = Field(max_length=64)
    target_city: str = Field(max_length=6)
    state: str = Field(max_length=10)  # pending | delivered | dead
    attempts: int = 0
    next_attempt_at: float
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_until: float = 0.0
    last_error: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_at: float
    delivered_at: float | None = None
    dead_at: float | None = None
    replays: int = 0


class AuditRow(SQLModel, table=True):
    """One audit entry; ``hash`` = sha256(prev_hash + the entry's canonical JSON)."""

    __tablename__ = "audit"

    seq: int | None = Field(default=None, primary_key=True)
    ts: float
    actor: str = Field(max_length=64)
    action: str = Field(max_length=40)
    subject: str = Field(max_length=64)
    detail: str = Field(default="", max_length=200)
    outcome: str = Field(max_length=40)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditHead(SQLModel, table=True):
    """The audit chain's head (one row, id 1): its length, last hash, and the hash function
    of its next entry (0009; the last ``audit.hash`` entry's, SHA-256 before any)."""

    __tablename__ = "audit_head"

    id: int = Field(default=1, primary_key=True)
    length: int = 0
    hash: str = Field(max_length=64)
    hash_algorithm: str = Field(default="sha256", max_length=10)


class AuditArchiveRow(SQLModel, table=True):
    """Entries ``first_seq``..``last_seq`` of the audit chain, moved to the archive file
    ``file`` (0005): the store no longer holds them, and its chain starts after the highest
    ``last_seq``, from ``last_hash``, hashed with ``hash_algorithm`` (0009)."""

    __tablename__ = "audit_archives"

    last_seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    first_seq: int
    last_hash: str = Field(max_length=64)
    file: str = Field(max_length=255)
    sha256: str = Field(max_length=64)
    archived_at: float
    # The hash function of the entry after last_seq (the chain may have switched in the file).
    hash_algorithm: str = Field(default="sha256", max_length=10)


class AuditCheckpointRow(SQLModel, table=True):
    """The audit chain's first ``length`` entries end with ``hash``, as the Ed25519 key
    ``key_id`` signed at ``ts`` (0006; see gateway.audit_signing)."""

    __tablename__ = "audit_checkpoints"

    length: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    hash: str = Field(max_length=64)
    ts: float
    key_id: str = Field(max_length=16)
    signature: str = Field(max_length=128)


class WitnessedCheckpointRow(SQLModel, table=True):
    """A signed checkpoint of a peer gateway's audit chain, which that peer handed this
    gateway to keep (0007; see gateway.store.witness). Two of one length with other hashes
    are both kept: the evidence that the peer signed two different chains."""

    __tablename__ = "witnessed_checkpoints"

    peer: str = Field(primary_key=True, max_length=64)
    length: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    hash: str = Field(primary_key=True, max_length=64)
    ts: float
    key_id: str = Field(max_length=16)
    signature: str = Field(max_length=128)
    received_at: float


class GatewayRow(SQLModel, table=True):
    """A gateway process serving from this store (0004): it writes ``seen_at`` every few
    seconds while it runs and removes its row when it stops. Until 0012 only delivering
    gateways did."""

    __tablename__ = "gateways"

    owner: str = Field(max_length=64, primary_key=True)  # its outbox lease owner
    host: str = Field(max_length=255)
    pid: int
    started_at: float
    seen_at: float
    # What replicas sharing the store must agree on, as this process runs it (0011): JSON of
    # gateway.services.replicas.agreed_settings; empty from a gateway before 0011.
    settings: str = Field(
        default="", sa_column=Column(Text, nullable=False, default="", server_default="")
    )
    # It runs delivery workers (0012): it takes a share of each partner's max_in_flight_total.
    # A gateway serving with delivery.enabled = false heartbeats too, to be compared.
    delivers: bool = Field(
        default=True,
        sa_column=Column(Boolean, nullable=False, default=True, server_default=true()),
    )


class ReencryptProgressRow(SQLModel, table=True):
    """The background re-encryption of one sealed column (0008; gateway.services.reencrypt):
    rows up to ``last_seq`` hold no value under a key other than ``key_id`` (as far as the walk
    saw), ``sealed`` of them sealed by it; ``done_at`` once it passed the last row, ``problem``
    the value it stopped at when one did not open."""

    __tablename__ = "reencrypt_progress"

    sealed_column: str = Field(primary_key=True, max_length=40)  # "table.column"
    key_id: str = Field(max_length=32)
    last_seq: int
    sealed: int
    started_at: float
    done_at: float | None = None
    problem: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
