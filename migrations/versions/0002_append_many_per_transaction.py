"""ledger_append: several appends in one transaction get distinct positions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from alembic import op

from migrations import function_sql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(function_sql("ledger_append", "0002"))


def downgrade() -> None:
    op.execute(function_sql("ledger_append", "0001").replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
