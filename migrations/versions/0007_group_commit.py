"""Group commit: ledger_append_batch, and positions xid * 65536 + index (room for a batch's events).

Many appends now share one transaction, so the index part of a position needs more room than
the 1000 of xid * 1000. Every new position stays above every old one: the transactions writing
from now on have larger ids than this migration's, and xid * 65536 > (any older xid) * 1000 + 999.
Stored positions (already in Kafka and DynamoDB) do not change.

The formula changes in one place for writers and readers together: ledger_append_batch writes it,
ledger_append calls ledger_append_batch, and ledger_feed_fence() (the global feed's visibility
fence) is defined here too, so a reader and a writer can never use different factors.

events_position_floor (a CHECK on new rows only: NOT VALID) refuses a position below this
migration's (xid + 1) * 65536. It catches a call of the old function that was already running
while this migration committed (it would write xid * 1000, below positions a feed reader may
already have passed); the API treats the refusal as transient and retries with the new function.
It also refuses positions that went backwards (a restore into a cluster with lower transaction ids).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from alembic import op

from migrations import function_sql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

FENCE_SQL = """
CREATE OR REPLACE FUNCTION ledger_feed_fence() RETURNS bigint
LANGUAGE sql STABLE AS $$
    -- Every transaction still running or yet to start has an id at or above xmin, so its
    -- events get positions at or above xmin * 65536 (see ledger_append_batch).
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint * 65536
$$
"""


def upgrade() -> None:
    op.execute(function_sql("ledger_append_batch", "0007"))
    op.execute(function_sql("ledger_append", "0007"))
    op.execute(FENCE_SQL)
    # A constant in DDL cannot be a bound parameter: build it in the server.
    op.execute("""
        DO $$
        BEGIN
            EXECUTE format('ALTER TABLE events ADD CONSTRAINT events_position_floor CHECK (position >= %s) NOT VALID',
                           (pg_current_xact_id()::text::bigint + 1) * 65536);
        END
        $$
    """)


def downgrade() -> None:
    # Old-formula positions (xid * 1000) would sort below the events written since the upgrade.
    op.execute("""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM events e
                        WHERE e.position >= (SELECT substring(pg_get_constraintdef(c.oid) FROM '(\\d+)')::bigint
                                               FROM pg_constraint c WHERE c.conname = 'events_position_floor')) THEN
                RAISE EXCEPTION 'events were written with xid * 65536 positions: 0007 cannot be undone';
            END IF;
        END
        $$
    """)
    op.execute("ALTER TABLE events DROP CONSTRAINT events_position_floor")
    op.execute("DROP FUNCTION ledger_feed_fence()")
    op.execute(function_sql("ledger_append", "0005"))
    op.execute("DROP FUNCTION ledger_append_batch(text[], text[], boolean[], integer[], integer[], uuid[], text[], "
               "numeric[], text[], jsonb[], timestamptz[])")
