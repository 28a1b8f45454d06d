"""ledger_append_batch in parts: each step of an append is a function named for what it does.

The function answers and writes what 0012's did, with the same statements in the same order, so the
same plans: the lookup of repeated event ids is still planned on every call (EXECUTE), the events of
a call still go in one INSERT (and their outbox rows in one more), and the booking rows are still
written append by append in arrival order. recorded_at is still the clock read right after the last
lock. What changed is where each step lives, and that the events waiting to be written are written
after the loop, not by an extra pass of it:

- ledger_check_batch_arguments   the argument arrays fit together
- ledger_acquire_locks           every advisory lock of the call, in one sorted pass; the clock
- ledger_suspect_event_ids       the event ids recorded already or carried twice
- ledger_replay_or_conflict      a suspect append's replay or event_id_conflict (or none)
- ledger_advance_booking         an append's booking row, created or moved on; NULL if refused
- ledger_booking_refusal         why it was refused
- ledger_write_events            the events waiting to be written, and their outbox rows
- ledger_refusal                 the one spelling of a refusal's row (type ledger_answer)

The parts run as the owner only inside ledger_append_batch (SECURITY DEFINER, search_path fixed);
nobody else may execute them (0008 made the owner's functions not executable by PUBLIC; said again
here). The function's result columns and its grant are as 0012 left them.

Measured on one private Postgres 15 (a machine shared with other work), 0012 and 0013 in two
databases, alternated, three rounds each: Postgres CPU per append (from /proc), one session calling
the function back to back (synchronous_commit off, the bench's mix: one in four creates a booking,
one event with data each), batches of 32: 0.077-0.094 ms with 0012, 0.077-0.088 ms with 0013;
batches of 1: 0.49-0.57 ms with 0012, 0.51-0.55 ms with 0013. No difference beyond the noise.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

from alembic import op

from migrations import function_sql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

WRITER = "ledger_append_batch"
# Each with its argument types (for REVOKE and DROP), in the order they are installed.
PARTS = (
    ("ledger_refusal", "integer, text, jsonb"),
    ("ledger_check_batch_arguments", "text[], text[], boolean[], integer[], integer[], uuid[], text[], numeric[], "
                                     "text[], jsonb[], timestamptz[]"),
    ("ledger_acquire_locks", "text[], uuid[]"),
    ("ledger_suspect_event_ids", "uuid[]"),
    ("ledger_replay_or_conflict", "integer, text, text, uuid[], text[], numeric[], text[], jsonb[], timestamptz[], "
                                  "integer, integer"),
    ("ledger_advance_booking", "text, text, boolean, integer, numeric[], text[], integer, integer"),
    ("ledger_booking_refusal", "integer, text, text, boolean, integer"),
    ("ledger_write_events", "integer[], integer[], integer[], integer, timestamptz, text[], text[], integer[], "
                            "uuid[], text[], numeric[], text[], jsonb[], timestamptz[]"),
)


def _install_writer(version: str) -> None:
    op.execute(function_sql(WRITER, version))
    op.execute(f"ALTER FUNCTION {WRITER} SECURITY DEFINER SET search_path = public, pg_temp")
    op.execute(f"REVOKE EXECUTE ON FUNCTION {WRITER} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {WRITER} TO ledger_api")


def upgrade() -> None:
    op.execute(function_sql("ledger_answer", "0013"))
    for name, arguments in PARTS:
        op.execute(function_sql(name, "0013"))
        op.execute(f"REVOKE EXECUTE ON FUNCTION {name}({arguments}) FROM PUBLIC")
    _install_writer("0013")


def downgrade() -> None:
    _install_writer("0012")
    for name, arguments in reversed(PARTS):
        op.execute(f"DROP FUNCTION {name}({arguments})")
    op.execute("DROP TYPE ledger_answer")
