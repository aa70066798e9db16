"""Peer gateways' signed audit checkpoints, kept by this gateway as their witness.

A row per checkpoint a peer handed over (AuditWitnessService.WitnessCheckpoint): the peer, the
length and hash it signed, when, by which key, the signature, and when it arrived. Two rows of
one length with other hashes are the evidence that the peer signed two different chains.

Either side of this revision runs with the other's code: gateways of revision 0006 never read
the table (they answer a peer's checkpoint UNIMPLEMENTED, which the peer counts as refused);
``tongban audit witnessed`` of 0007 reads a store of 0006 as one that witnessed nothing.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "witnessed_checkpoints",
        sa.Column("peer", sa.String(64), primary_key=True),
        sa.Column("length", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("hash", sa.String(64), primary_key=True),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("witnessed_checkpoints")
