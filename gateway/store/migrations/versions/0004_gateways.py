"""The gateways delivering from this store, and when each was last seen.

Each gateway process that runs delivery workers writes its row every few seconds
(``HeartbeatIntent``) and removes it when it stops. The processes seen lately share a partner's
``max_in_flight_total`` between them: with N of them, each makes at most total // N calls to
that partner at once (at least one).

Either side of this revision runs with the other's code: the gateways of revision 0003 do not
know the table, and those of 0004 only write their own rows in it, so replicas on PostgreSQL
can be upgraded one at a time after ``tongban db upgrade`` (a partner's total is then shared
among the upgraded ones only).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateways",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("seen_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("gateways")
