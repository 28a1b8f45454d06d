"""console_sessions: the console's sign-ins, so that its cookie carries a session id, not an API key.

A session belongs to one API key; only a SHA-256 of its random id is stored. It ends at
expires_at, when it is signed out (the row is deleted), and when its key is revoked or deleted
(a session is valid only while its key is: every page joins api_keys).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE console_sessions (
            id_hash     bytea PRIMARY KEY CHECK (octet_length(id_hash) = 32),
            key_id      text COLLATE "C" NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
            created_at  timestamptz NOT NULL DEFAULT now(),
            expires_at  timestamptz NOT NULL
        )
    """)
    op.execute("CREATE INDEX console_sessions_key_id ON console_sessions (key_id)")
    op.execute("CREATE INDEX console_sessions_expires_at ON console_sessions (expires_at)")


def downgrade() -> None:
    op.execute("DROP TABLE console_sessions")
