"""The audit chain's entries moved to archive files (``tongban audit archive``).

A row per archive file: which entries it holds, the hash of its last one (where the chain kept
in the store now starts) and the file's SHA-256. Entries archived are deleted from ``audit`` in
the same transaction as their row is written.

Either side of this revision runs with the other's code: gateways of revision 0004 never read
the table and only append to the chain, which archiving leaves as it is; ``tongban audit
verify`` of 0004 reports a store with archived entries as broken at its first entry, so
archive only once every replica runs 0005.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_archives",
        sa.Column("last_seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("first_seq", sa.Integer(), nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.Column("file", sa.String(255), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("archived_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_archives")
