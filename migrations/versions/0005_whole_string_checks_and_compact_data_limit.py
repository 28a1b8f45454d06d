"""Checks in the schema that values match whole strings, occurred_at is finite; no jsonb-text size limit.

Python's `re` let "R1\n" through `^...$`, so a booking code, an event type or a department with a
final newline could be stored. The API now refuses them (core.events.whole); these constraints
say the same in the schema, for every writer. A Postgres regular expression's `$` is the end of
the string (no final-newline exception), so `~ '^...$'` is a whole-string match. occurred_at
must be finite: asyncpg turns 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z into
-infinity and infinity. The constraints are NOT VALID: they hold for every row written from now
on, and the rows already stored (events never change) are not re-checked.

ledger_append no longer measures the 256 KiB data limit on jsonb's text, which is not what the
contract measures; the API measures the compact JSON (service/api/schemas.py).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from alembic import op

from migrations import function_sql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

CONSTRAINTS = (
    ("bookings", "bookings_code_format", "code ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'"),
    ("events", "events_booking_code_format", "booking_code ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'"),
    ("events", "events_type_format", "type ~ '^[A-Za-z][A-Za-z0-9_.-]{0,99}$'"),
    ("events", "events_occurred_at_finite", "isfinite(occurred_at)"),
    ("api_keys", "api_keys_department_format", "department ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'"),
)


def upgrade() -> None:
    for table, name, check in CONSTRAINTS:
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({check}) NOT VALID")
    op.execute(function_sql("ledger_append", "0005"))


def downgrade() -> None:
    op.execute(function_sql("ledger_append", "0003"))
    for table, name, _ in reversed(CONSTRAINTS):
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
