"""A replay waits for the synchronous standby as a write does; positions carry an offset.

An append whose commit was waiting for the synchronous standby keeps its commit on the primary
when that wait is cancelled (a cancel request: asyncpg sends one when a command times out; an
operator's pg_cancel_backend). The client of that try got no answer; its retry then finds the
events and used to answer "replayed" at once, from a transaction without an id, whose commit waits
for nobody: an acknowledgement of events on one disk only. Now the replay branch of
ledger_append_batch takes a transaction id, so the replay's commit record waits for the standby,
and everything before it (the earlier try's commit included) has reached the standby when the
replay is answered.

Positions become (transaction id + offset) x 65536 + index, the offset kept in
ledger_position_offset (0 until needed). A restore from pg_dump (or a logical-replication upgrade)
starts the transaction counter low again: ledger_position_check() (0008) then says new positions
would sort below recorded ones, migrate and readiness refuse, and `booking-ledger migrate
--advance-positions` (ledger_advance_positions(), the owner's only) raises the offset so that the
next position is above the highest recorded. The feed's fence and the check use the same offset.
The offset only grows, and it is raised only while appends are refused (the restored position
floor of 0007 refuses them), so no transaction straddles a change.

ledger_append_batch is one of the two writers (0008): it is SECURITY DEFINER with a fixed
search_path, said again here because CREATE OR REPLACE resets both.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28
"""

from alembic import op

from migrations import function_sql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

WRITER = "ledger_append_batch"

OFFSET = (  # one statement each: asyncpg prepares what it is given
    """CREATE TABLE ledger_position_offset (
           one        boolean PRIMARY KEY DEFAULT true CHECK (one),
           xid_offset bigint NOT NULL CHECK (xid_offset >= 0)
       )""",
    "INSERT INTO ledger_position_offset (xid_offset) VALUES (0)",
    "GRANT SELECT ON ledger_position_offset TO ledger_api, ledger_reader",
)

FENCE = """
CREATE OR REPLACE FUNCTION ledger_feed_fence() RETURNS bigint
LANGUAGE sql STABLE AS $$
    -- Every transaction still running or yet to start has an id at or above xmin, so its
    -- events get positions at or above (xmin + offset) * 65536 (see ledger_append_batch).
    SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::bigint
            + (SELECT xid_offset FROM ledger_position_offset)) * 65536
$$
"""

CHECK = """
CREATE OR REPLACE FUNCTION ledger_position_check(OUT highest bigint, OUT next_lowest bigint)
LANGUAGE sql STABLE SET search_path = public, pg_temp AS $$
    SELECT (SELECT max(position) FROM events),
           (pg_snapshot_xmax(pg_current_snapshot())::text::bigint
            + (SELECT xid_offset FROM ledger_position_offset)) * 65536
$$
"""

ADVANCE = """
CREATE FUNCTION ledger_advance_positions(OUT highest bigint, OUT next_lowest bigint)
LANGUAGE sql SET search_path = public, pg_temp AS $$
    UPDATE ledger_position_offset
       SET xid_offset = xid_offset + greatest(0,
             (SELECT coalesce(max(position), 0) FROM events) / 65536 + 1
             - (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + xid_offset));
    SELECT * FROM ledger_position_check()
$$
"""

OLD_FENCE = """
CREATE OR REPLACE FUNCTION ledger_feed_fence() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint * 65536
$$
"""

OLD_CHECK = """
CREATE OR REPLACE FUNCTION ledger_position_check(OUT highest bigint, OUT next_lowest bigint)
LANGUAGE sql STABLE SET search_path = public, pg_temp AS $$
    SELECT (SELECT max(position) FROM events), pg_snapshot_xmax(pg_current_snapshot())::text::bigint * 65536
$$
"""


def _install(version: str) -> None:
    op.execute(function_sql("ledger_append_batch", version))
    op.execute(f"ALTER FUNCTION {WRITER} SECURITY DEFINER SET search_path = public, pg_temp")


def upgrade() -> None:
    for statement in OFFSET:
        op.execute(statement)
    op.execute(FENCE)
    op.execute(CHECK)
    op.execute(ADVANCE)
    op.execute("REVOKE EXECUTE ON FUNCTION ledger_advance_positions FROM PUBLIC")  # the owner's only
    _install("0010")


def downgrade() -> None:
    op.execute("""
        DO $$
        BEGIN
            IF (SELECT xid_offset FROM ledger_position_offset) > 0 THEN
                RAISE EXCEPTION 'positions carry an offset (after a restore): 0010 cannot be undone';
            END IF;
        END
        $$
    """)
    _install("0007")
    op.execute("DROP FUNCTION ledger_advance_positions")
    op.execute(OLD_CHECK)
    op.execute(OLD_FENCE)
    op.execute("DROP TABLE ledger_position_offset")
