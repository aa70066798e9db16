"""What each gateway process runs with that replicas sharing the store must agree on:
``gateways.settings``.

A delivering gateway writes it with its heartbeat (JSON: the audit chain's hash function, the
sealing keys, the mapping versions; gateway.services.replicas) and compares it with the other
live gateways'. A gateway of 0010 writes none (the default, empty): it is left out of the
comparison.

Either side of this revision runs with the other's code: a gateway of 0010 never reads the
column; one of 0011 migrates the store when it starts.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "gateways",
        sa.Column("settings", sa.Text(), nullable=False, server_default=""),
    )


def downgrade() -> None:
    with op.batch_alter_table("gateways") as batch:
        batch.drop_column("settings")
