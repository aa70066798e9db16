"""Status events recorded late: ``events.late``.

A peer gateway's status deliveries can overtake each other (its outbox delivers rows
concurrently and retries them). A change older than one already applied from the same city is
stored as a late event: part of the case's history, its status unchanged. Every existing event
was applied: the column starts false.

Either side of this revision runs with the other's code: a gateway of 0009 never reads the
column and its events take the default; one of 0010 migrates the store when it starts.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "events",
        sa.Column("late", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("late")
