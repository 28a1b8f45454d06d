"""Least privilege: the processes' roles get only what each needs; ledger_append runs as the owner.

Migrations run as ledger_owner (migrations/env.py), which owns every table and function; the
roles are made once per cluster by deploy/roles.sql. From here on, a migration that adds a table
or a function grants it to the roles that need it, in the same migration (migrations/README.md).

| role          | may                                                                           |
|---------------|-------------------------------------------------------------------------------|
| ledger_api    | EXECUTE ledger_append, ledger_append_batch, ledger_feed_fence,                |
|               | ledger_position_check; SELECT bookings, events, outbox, api_keys,             |
|               | alembic_version; SELECT, INSERT, DELETE console_sessions                      |
| ledger_relay  | SELECT events; SELECT, INSERT, DELETE outbox (its lease: an advisory lock)    |
| ledger_reader | SELECT bookings, events, outbox (replay, verify)                              |
| ledger_keys   | SELECT api_keys but key_hash; INSERT api_keys; UPDATE api_keys (revoked_at)   |

None of them may write events or bookings directly, change or delete any event, booking or
key, or alter the schema. Appends go through ledger_append and ledger_append_batch (group
commit, 0007), SECURITY DEFINER with a fixed search_path: they write as their owner, so their
checks (versions, owners, ids) are the only way in. A later migration that replaces either must say
SECURITY DEFINER and SET search_path again (CREATE OR REPLACE resets both):
tests/integration/test_roles.py checks it.

Functions are executable by PUBLIC by default; ledger_owner's new functions no longer are.

ledger_position_check() compares the highest recorded position with the lowest one the next
append can get (the formula of ledger_append: a migration that changes the formula replaces this
function with it). After a restore from pg_dump or a logical-replication upgrade the transaction
counter starts low again, and new events would sort below old ones; `migrate` and the API's
readiness refuse then (migrations/env.py, service/api/health.py).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

GRANTS = (
    "GRANT SELECT ON bookings, events, outbox, api_keys, alembic_version TO ledger_api",
    "GRANT SELECT, INSERT, DELETE ON console_sessions TO ledger_api",
    "GRANT EXECUTE ON FUNCTION ledger_append, ledger_append_batch, ledger_feed_fence TO ledger_api",
    "GRANT SELECT ON events TO ledger_relay",
    "GRANT SELECT, INSERT, DELETE ON outbox TO ledger_relay",
    "GRANT SELECT ON bookings, events, outbox TO ledger_reader",
    "GRANT SELECT (id, department, scopes, created_at, revoked_at), INSERT (id, department, scopes, key_hash), "
    "UPDATE (revoked_at) ON api_keys TO ledger_keys",
)

# The least position the next append can get: ledger_append_batch's base is its transaction id
# x 65536 (0007), and no transaction that starts from now on gets an id below the current
# snapshot's xmax.
POSITION_CHECK = """
CREATE FUNCTION ledger_position_check(OUT highest bigint, OUT next_lowest bigint)
LANGUAGE sql STABLE SET search_path = public, pg_temp AS $$
    SELECT (SELECT max(position) FROM events),
           pg_snapshot_xmax(pg_current_snapshot())::text::bigint * 65536
$$
"""

WRITERS = ("ledger_append", "ledger_append_batch")  # the only ways to write events and bookings
RUNTIME_ROLES = "ledger_api, ledger_relay, ledger_reader, ledger_keys"
TABLES = "bookings, events, outbox, api_keys, console_sessions, alembic_version"


def upgrade() -> None:
    op.execute("ALTER DEFAULT PRIVILEGES FOR ROLE ledger_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC")
    op.execute("REVOKE EXECUTE ON FUNCTION ledger_append, ledger_append_batch, ledger_feed_fence, api_keys_changed "
               "FROM PUBLIC")
    for function in WRITERS:
        op.execute(f"ALTER FUNCTION {function} SECURITY DEFINER SET search_path = public, pg_temp")
    op.execute(POSITION_CHECK)
    op.execute("GRANT EXECUTE ON FUNCTION ledger_position_check TO ledger_api")
    for grant in GRANTS:
        op.execute(grant)


def downgrade() -> None:
    op.execute("DROP FUNCTION ledger_position_check")
    op.execute(f"REVOKE ALL ON {TABLES} FROM {RUNTIME_ROLES}")
    op.execute(f"REVOKE ALL ON FUNCTION ledger_append, ledger_append_batch, ledger_feed_fence FROM {RUNTIME_ROLES}")
    for function in WRITERS:
        op.execute(f"ALTER FUNCTION {function} SECURITY INVOKER RESET search_path")
    op.execute("GRANT EXECUTE ON FUNCTION ledger_append, ledger_append_batch, ledger_feed_fence, api_keys_changed "
               "TO PUBLIC")
    op.execute("ALTER DEFAULT PRIVILEGES FOR ROLE ledger_owner GRANT EXECUTE ON FUNCTIONS TO PUBLIC")
