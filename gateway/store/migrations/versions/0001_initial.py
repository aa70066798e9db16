"""Initial schema: cases, requests, events, outbox, audit.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cases",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("exchange_id", sa.String(40), nullable=False, unique=True),
        sa.Column("submitter", sa.String(64), nullable=False),
        sa.Column("receiving_city", sa.String(6), nullable=False),
        sa.Column("handling_city", sa.String(6), nullable=False),
        sa.Column("case_number", sa.String(64), nullable=False),
        sa.Column("status", sa.String(40), nullable=False),
        sa.Column("delivery_state", sa.String(40), nullable=False),
        sa.Column("canonical", sa.Text(), nullable=False),
        sa.Column("mapping_versions", sa.String(200), nullable=False),
        sa.Column("submitted_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_cases_receiving_seq", "cases", ["receiving_city", "seq"])
    op.create_index("ix_cases_handling_seq", "cases", ["handling_city", "seq"])
    op.create_table(
        "requests",
        sa.Column("partner", sa.String(64), primary_key=True),
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("body_hash", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("exchange_id", sa.String(40), nullable=False),
        sa.Column("status", sa.String(40), nullable=False),
        sa.Column("occurred_at", sa.Float(), nullable=False),
        sa.Column("reported_by", sa.String(6), nullable=False),
        sa.Column("note", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_events_exchange_id", "events", ["exchange_id"])
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("exchange_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("event_seq", sa.Integer(), nullable=True),
        sa.Column("target_partner", sa.String(64), nullable=False),
        sa.Column("target_city", sa.String(6), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("delivered_at", sa.Float(), nullable=True),
        sa.Column("dead_at", sa.Float(), nullable=True),
        sa.Column("replays", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_index("ix_outbox_claim", "outbox", ["state", "next_attempt_at", "id"])
    op.create_index("ix_outbox_exchange_id", "outbox", ["exchange_id"])
    op.create_table(
        "audit",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("detail", sa.String(200), nullable=False, server_default=""),
        sa.Column("outcome", sa.String(40), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.execute("INSERT INTO audit_head (id, length, hash) VALUES (1, 0, '" + "0" * 64 + "')")


def downgrade() -> None:
    for table in ("audit_head", "audit", "outbox", "events", "requests", "cases"):
        op.drop_table(table)
