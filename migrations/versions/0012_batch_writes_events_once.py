"""ledger_append_batch does per append only what that append needs; its events go in one INSERT.

Measured on a private Postgres (one connection, batches of 32 appends of one event each, the bench's
mix): Postgres spent 0.25-0.31 ms of CPU per append in the 0010 function and 0.08-0.11 ms in this
one; batches of 7: 0.28-0.34 against 0.13-0.18 ms. Per append, 0010 ran the retry check (a join
of the append's event ids with events), which Postgres planned again on every call (its custom plan
always looked cheaper than the generic one), and one INSERT of events and outbox rows.

Now one lookup per batch, after every lock is taken, finds the event ids that are recorded already
or carried twice by the batch; only an append carrying one of them takes the retry and
duplicate-id checks (unchanged). That lookup is planned on every call (EXECUTE): a plan cached by a
session that began while `events` was small is a sequential scan, and the session keeps it while
the table grows (a bench API started on a fresh ledger went from 0.4 to 1.4 ms of Postgres CPU per
append within a minute). The events of the appends that pass their checks are written by
one INSERT (and their outbox rows by one more) at the end of the call, or just before the checks of
an append that has to see them. The booking rows are still written append by append, in arrival
order, so versions, owners and collisions are decided exactly as before, and positions are those
the 0010 function would have given. The answers are the same rows, grouped by append.

ledger_append_batch is one of the two writers (0008): it is SECURITY DEFINER with a fixed
search_path, said again here because CREATE OR REPLACE resets both; its grant is said again too.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28
"""

from alembic import op

from migrations import function_sql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

WRITER = "ledger_append_batch"


def _install(version: str) -> None:
    op.execute(function_sql(WRITER, version))
    op.execute(f"ALTER FUNCTION {WRITER} SECURITY DEFINER SET search_path = public, pg_temp")
    op.execute(f"REVOKE EXECUTE ON FUNCTION {WRITER} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {WRITER} TO ledger_api")


def upgrade() -> None:
    _install("0012")


def downgrade() -> None:
    _install("0011")
