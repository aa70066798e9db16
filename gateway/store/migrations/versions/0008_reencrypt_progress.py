"""How far serving gateways have re-encrypted each sealed column under the active key.

A row per sealed column (``cases.canonical``, ``events.note``): the key the walk seals with,
the last row it has passed, when that walk began and ended, and the value it stopped at when
one did not open (gateway.services.reencrypt). Replicas share one walk through these rows.

Either side of this revision runs with the other's code: gateways of revision 0007 never read
the table (they do not re-encrypt in the background); ``tongban db keys status`` of 0008 reads
a store of 0007 as one no background walk has passed yet.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reencrypt_progress",
        sa.Column("sealed_column", sa.String(40), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("sealed", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("done_at", sa.Float(), nullable=True),
        sa.Column("problem", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("reencrypt_progress")
