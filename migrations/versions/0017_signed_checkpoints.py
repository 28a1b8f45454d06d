"""Signed checkpoints: Merkle roots over the events in position order, signed with Ed25519.

One row per checkpoint (core/checkpoints.py says what it covers and what is signed). The relay's
leader writes them (it holds the key file) and marks each `published` once it has sent it to
every partition of the topic; the API and the reader (audit) read them. No role may change or
delete one: each names the digest of the one before it, so a gap or a change shows anyway.

The relay computes the feed's fence itself (the arithmetic of ledger_feed_fence, as verify does),
so it may now read ledger_position_offset.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

TABLE = """
CREATE TABLE checkpoints (
    seq              bigint PRIMARY KEY CHECK (seq >= 1),
    after_position   bigint NOT NULL CHECK (after_position >= 0),
    through_position bigint NOT NULL CHECK (through_position > after_position),
    events           integer NOT NULL CHECK (events >= 1),
    root             bytea NOT NULL CHECK (octet_length(root) = 32),
    previous         bytea NOT NULL CHECK (octet_length(previous) = 32),
    key_id           text NOT NULL,
    public_key       bytea NOT NULL CHECK (octet_length(public_key) = 32),
    signature        bytea NOT NULL CHECK (octet_length(signature) = 64),
    created_at       timestamptz NOT NULL,
    published        boolean NOT NULL DEFAULT false
)
"""
GRANTS = (
    "GRANT SELECT, INSERT, UPDATE (published) ON checkpoints TO ledger_relay",
    "GRANT SELECT ON ledger_position_offset TO ledger_relay",
    "GRANT SELECT ON checkpoints TO ledger_api, ledger_reader",
)


def upgrade() -> None:
    op.execute(TABLE)
    for grant in GRANTS:
        op.execute(grant)


def downgrade() -> None:
    op.execute("REVOKE SELECT ON ledger_position_offset FROM ledger_relay")
    op.execute("DROP TABLE checkpoints")
