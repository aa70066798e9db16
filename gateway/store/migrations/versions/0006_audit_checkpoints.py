"""Signed checkpoints of the audit chain (``audit.signing_key``).

A row per checkpoint: the chain's length and last hash when it was signed, when, by which
Ed25519 key, and the signature (gateway.audit_signing).

Either side of this revision runs with the other's code: gateways of revision 0005 never read
the table; ``tongban audit verify`` of 0006 reads a store of 0005 as one with no checkpoints.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("length", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
