"""ledger_append: must be the first write of its transaction; data limit on the stored text.

0002 let one transaction make several appends; that breaks "per booking, position order is
version order": a transaction that already holds a transaction id keeps its smaller id while it
waits for a booking's lock. 0003 refuses that case instead, and measures the 256 KiB data limit
on the jsonb text as stored (numbers are written out in full there).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from alembic import op

from migrations import function_sql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(function_sql("ledger_append", "0003"))


def downgrade() -> None:
    op.execute(function_sql("ledger_append", "0002"))
