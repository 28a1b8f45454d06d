"""Indexes for the price as of a moment: one index lookup however long a booking's history is.

Both are partial (only priced events) and end in `version`, so "the last priced event at or
before T" is the first entry of a backward scan from (code, T): ties at one instant (the events
of one append share recorded_at) resolve to the highest version without a sort.

- events_priced_recorded: the ledger's own clock, `recorded_at`.
- events_priced_occurred: the business clock, `occurred_at`, or `recorded_at` where the writer
  gave none (an expression index: the query repeats the expression exactly).

The price at a version uses the (booking_code, version) unique index that exists already.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE INDEX events_priced_recorded ON events (booking_code, recorded_at, version)
         WHERE price_amount IS NOT NULL
    """)
    op.execute("""
        CREATE INDEX events_priced_occurred ON events (booking_code, (coalesce(occurred_at, recorded_at)), version)
         WHERE price_amount IS NOT NULL
    """)


def downgrade() -> None:
    op.execute("DROP INDEX events_priced_occurred")
    op.execute("DROP INDEX events_priced_recorded")
