"""Personal data sealed per booking (core/personal.py): the data keys, and the scope `erase`.

personal_keys holds one AES-256 key per booking whose events carry `data.personal`; the API seals
that object with it before the append and opens it on reads. Only the API's role may read the
table (no other process ever sees a key: the relay, the sink, replay and verify handle ciphertext
only). Erasing a booking sets its key to NULL (and `erased_at`): the row stays as the record that
the booking was erased, so that later personal data for it is refused rather than sealed anew.
The key is never deleted by the API (it holds no DELETE) and never changed once set.

Keys may now carry the scope `erase` (POST /v1/bookings/{code}/erase).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

TABLE = """
CREATE TABLE personal_keys (
    booking_code text COLLATE "C" PRIMARY KEY,
    data_key     bytea CHECK (octet_length(data_key) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    erased_at    timestamptz,
    CHECK ((data_key IS NULL) = (erased_at IS NOT NULL))
)
"""
SCOPES_BEFORE = "ARRAY['read', 'write', 'write:any', 'subscribe']"  # 0015's
SCOPES_AFTER = "ARRAY['read', 'write', 'write:any', 'subscribe', 'erase']"
ERASE_KEYS_CHECK = """
DO $$
BEGIN
    IF EXISTS (SELECT FROM api_keys WHERE 'erase' = ANY (scopes)) THEN
        RAISE EXCEPTION 'keys with the scope erase exist: revoke them and remove the scope first';
    END IF;
END
$$
"""


def _scopes(allowed: str) -> None:
    op.execute("ALTER TABLE api_keys DROP CONSTRAINT api_keys_scopes_check")
    op.execute(f"ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_check "
               f"CHECK (cardinality(scopes) > 0 AND scopes <@ {allowed})")


def upgrade() -> None:
    op.execute(TABLE)
    op.execute("GRANT SELECT, INSERT, UPDATE (data_key, erased_at) ON personal_keys TO ledger_api")
    _scopes(SCOPES_AFTER)


def downgrade() -> None:
    op.execute(ERASE_KEYS_CHECK)
    _scopes(SCOPES_BEFORE)
    op.execute("DROP TABLE personal_keys")
