"""ledger_append: several appends in one transaction get distinct positions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from pathlib import Path

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SQL = Path(__file__).parent.parent / "sql"


def upgrade() -> None:
    op.execute((SQL / "ledger_append.0002.sql").read_text())


def downgrade() -> None:
    op.execute((SQL / "ledger_append.0001.sql").read_text().replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
