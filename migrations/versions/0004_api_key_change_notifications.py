"""api_keys: every change sends a NOTIFY, so API processes may cache keys between changes.

Each API process keeps the keys it has seen in memory and drops them all when a statement
inserts, updates or deletes api_keys (service/ledger/keys.py, KeyCache). Revoking with SQL works
as well as with `booking-ledger keys revoke`: the trigger fires either way.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

CHANNEL = "ledger_api_keys"  # service.ledger.keys.KEYS_CHANNEL


def upgrade() -> None:
    op.execute(f"""
        CREATE FUNCTION api_keys_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END
        $$
    """)
    op.execute("""
        CREATE TRIGGER api_keys_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON api_keys
        FOR EACH STATEMENT EXECUTE FUNCTION api_keys_changed()
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER api_keys_changed ON api_keys")
    op.execute("DROP FUNCTION api_keys_changed()")
