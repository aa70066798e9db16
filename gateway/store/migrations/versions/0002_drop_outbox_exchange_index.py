"""Drop the outbox's index on exchange_id: nothing reads the outbox by exchange.

Claims go by ``ix_outbox_claim`` (state, next attempt, id), the gauges by the same index, dead
letters by state and id; a case's delivery state is kept on the case. The index only cost
every submitted case and every status report a B-tree entry (the writer's instructions per
streamed case: 149.6k with it, 145.9k without, bench/instructions.py ``write``).

Either side of this revision runs with the other's code: a gateway of revision 0001 never
needed the index, and one at this revision does not mind it still being there (replicas on
PostgreSQL can be upgraded one at a time after ``tongban db upgrade``).

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_outbox_exchange_id", table_name="outbox")


def downgrade() -> None:
    op.create_index("ix_outbox_exchange_id", "outbox", ["exchange_id"])
