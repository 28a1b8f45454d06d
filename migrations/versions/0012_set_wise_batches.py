"""ledger_append_batch checks and applies a call of independent appends set-wise.

A call of several appends in which no booking code and no event id occurs twice (group commit's
usual batch, an import's) used to run the function's per-append loop: a handful of statements
per append, the insert of its events among them, so a call of a few hundred small appends spent
most of its time starting statements. Such appends cannot see each other's writes, so each step
(the event-id check, the creates, the appends, the events and outbox rows) now runs once for all
of them, with the same checks in the same order and the same answers; single appends and calls
whose appends depend on each other keep the loop. See migrations/sql/ledger_append_batch.0012.sql.

ledger_append_batch is one of the two writers (0008): SECURITY DEFINER with a fixed search_path,
said again here because CREATE OR REPLACE resets both.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28
"""

from pathlib import Path

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

SQL = Path(__file__).resolve().parent.parent / "sql"
WRITER = "ledger_append_batch"


def _install(version: str) -> None:
    op.execute((SQL / f"ledger_append_batch.{version}.sql").read_text())
    op.execute(f"ALTER FUNCTION {WRITER} SECURITY DEFINER SET search_path = public, pg_temp")


def upgrade() -> None:
    _install("0012")


def downgrade() -> None:
    _install("0011")
