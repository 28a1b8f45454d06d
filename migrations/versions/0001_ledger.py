"""The ledger: bookings, events, outbox, api_keys and the append function.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from alembic import op

from migrations import function_sql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Booking codes and departments compare byte for byte ("C" collation): codes are exact keys,
# and the B-tree over them needs no locale rules.
TABLES = """
CREATE TABLE bookings (
    code            text COLLATE "C" PRIMARY KEY,
    department      text COLLATE "C" NOT NULL,
    version         integer NOT NULL CHECK (version >= 1),
    price_amount    numeric CHECK (price_amount >= 0),
    price_currency  text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((price_amount IS NULL) = (price_currency IS NULL))
);

-- position = (id of the writing transaction) * 1000 + index of the event in its append:
-- see ledger_append and the feed query for why that order is safe to tail.
CREATE TABLE events (
    position        bigint PRIMARY KEY,
    event_id        uuid NOT NULL UNIQUE,
    booking_code    text COLLATE "C" NOT NULL REFERENCES bookings (code),
    version         integer NOT NULL CHECK (version >= 1),
    type            text NOT NULL,
    price_amount    numeric CHECK (price_amount >= 0),
    price_currency  text,
    data            jsonb,
    department      text COLLATE "C" NOT NULL,
    occurred_at     timestamptz,
    recorded_at     timestamptz NOT NULL,
    UNIQUE (booking_code, version),
    CHECK ((price_amount IS NULL) = (price_currency IS NULL))
);

-- What still has to leave the ledger: written in the append transaction, removed by the relay
-- once Kafka has acknowledged the event.
CREATE TABLE outbox (
    position        bigint PRIMARY KEY,
    booking_code    text COLLATE "C" NOT NULL,
    version         integer NOT NULL
);

-- Only a SHA-256 of each key's secret is kept; the secret is shown once, at creation.
CREATE TABLE api_keys (
    id              text COLLATE "C" PRIMARY KEY,
    department      text COLLATE "C" NOT NULL,
    scopes          text[] NOT NULL
                    CHECK (cardinality(scopes) > 0 AND scopes <@ ARRAY['read', 'write', 'write:any']),
    key_hash        bytea NOT NULL CHECK (octet_length(key_hash) = 32),
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);
"""

# The append transaction, one round trip per append: see the SQL file for how it works.
APPEND_FUNCTION = function_sql("ledger_append", "0001")


def upgrade() -> None:
    # asyncpg runs one statement per call.
    for statement in TABLES.split(";\n"):
        if statement.strip():
            op.execute(statement)
    op.execute(APPEND_FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION ledger_append")
    op.execute("DROP TABLE api_keys, outbox, events, bookings")
