"""recorded_at is read after the append's locks are held, so per booking it follows version order.

Until 0010, ledger_append_batch stamped its events with now(): the start of the transaction,
taken before the per-booking advisory locks. Two appends to one booking that met on its lock got
their versions in lock order but their recorded_at in start order, so the later version could
carry the earlier time, and the price as of a moment (clock=recorded, which orders by recorded_at)
could answer a superseded price. From 0011 the function reads clock_timestamp() once, right after
taking all its locks: for one booking, that read comes after the previous holder committed, and so
after the previous holder's own read. The only change to the function is that value
(migrations/sql/ledger_append_batch.0011.sql, against .0010.sql).

ledger_append_batch is one of the two writers (0008): it is SECURITY DEFINER with a fixed
search_path, said again here because CREATE OR REPLACE resets both. CREATE OR REPLACE keeps its
grants (0008).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28
"""

from alembic import op

from migrations import function_sql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

WRITER = "ledger_append_batch"


def _install(version: str) -> None:
    op.execute(function_sql("ledger_append_batch", version))
    op.execute(f"ALTER FUNCTION {WRITER} SECURITY DEFINER SET search_path = public, pg_temp")


def upgrade() -> None:
    _install("0011")


def downgrade() -> None:
    _install("0010")
