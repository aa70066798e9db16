"""Gateways that serve without delivering heartbeat too: ``gateways.delivers``.

Until 0011 only a gateway running delivery workers wrote a heartbeat, so the settings replicas
must share (0011) were compared among delivering gateways only, and a replica serving calls
with ``delivery.enabled = false`` (translating cases with its own mappings) was never
compared. From 0012 every gateway writes its heartbeat, and ``delivers`` says whether it takes
a share of each partner's ``max_in_flight_total``. Rows written before it were all written by
delivering gateways: the default is true.

Either side of this revision runs with the other's code: a gateway of 0011 never reads the
column (while one runs beside gateways of 0012 that do not deliver, it counts them in the
shares: upgrade every replica); one of 0012 migrates the store when it starts.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "gateways",
        sa.Column("delivers", sa.Boolean(), nullable=False, server_default=sa.true()),
    )


def downgrade() -> None:
    with op.batch_alter_table("gateways") as batch:
        batch.drop_column("delivers")
