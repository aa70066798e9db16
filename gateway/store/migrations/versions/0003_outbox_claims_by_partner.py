"""Index the outbox by partner: claims take each partner's due rows on their own.

``ix_outbox_claim`` (state, next attempt, id) becomes ``ix_outbox_partner_due`` (state,
partner, next attempt, id): a claim reads each partner's due rows as one range and interleaves
them, so one partner's backlog (after an outage, all due at once) no longer comes ahead of
every other city's new rows; an open circuit's deferral updates one partner's range. The
index has as many entries as the one it replaces, so a submitted case costs no more. The
gauges (pending rows) and dead letters read the index by state as before.

Either side of this revision runs with the other's code (the queries are the same with either
index, only their plans differ): replicas on PostgreSQL can be upgraded one at a time after
``tongban db upgrade``. Building the index reads the whole outbox, delivered rows included.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_outbox_partner_due",
        "outbox",
        ["state", "target_partner", "next_attempt_at", "id"],
    )
    op.drop_index("ix_outbox_claim", table_name="outbox")


def downgrade() -> None:
    op.create_index("ix_outbox_claim", "outbox", ["state", "next_attempt_at", "id"])
    op.drop_index("ix_outbox_partner_due", table_name="outbox")
