"""The audit chain's hash function: SHA-256, or SM3 (``audit.hash_algorithm``).

``audit_head.hash_algorithm`` is the function of the chain's next entry; an ``audit.hash``
entry (hashed with the function before it) switches it. ``audit_archives.hash_algorithm`` is
the function of the entry after a file's last one, where the store's chain then begins.
Every existing chain is SHA-256: both columns start as ``sha256``.

Either side of this revision runs with the other's code while the chain stays SHA-256:
gateways of 0008 never read the columns. Once a gateway of 0009 switches the chain to SM3, a
gateway of 0008 would append SHA-256 entries to it (a chain ``tongban audit verify`` reports
broken there), so switch only once every replica runs 0009.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("audit_head", "audit_archives"):
        op.add_column(
            table,
            sa.Column("hash_algorithm", sa.String(10), nullable=False, server_default="sha256"),
        )


def downgrade() -> None:
    for table in ("audit_head", "audit_archives"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("hash_algorithm")
