"""Subscriptions (webhooks): what each one wants, its cursor and its delivery state; the `subscribe` scope.

One row per subscription holds all of it: the receiver's URL and filters, the signing secret, the
cursor (`position`: every matching event at or below it was delivered or skipped) and the pause
(the event it stopped on, why, after how many attempts, the receiver's last status). The `deliver`
worker moves the cursor with a compare-and-set on it, so two workers never move it backwards.
`subscription_skips` records every event an operator skipped (`POST .../skip`).

The secret must be readable to sign with; it is readable by `ledger_deliver` only. The API may
write it (at creation) but not read it back: a column grant leaves it out of the API's SELECT.

| role           | may                                                                              |
|----------------|----------------------------------------------------------------------------------|
| ledger_api     | SELECT subscriptions but secret; INSERT; UPDATE the state columns; DELETE;       |
|                | SELECT, INSERT subscription_skips                                                |
| ledger_deliver | SELECT events, subscriptions, api_keys (id, revoked_at); UPDATE the state        |
|                | columns of subscriptions; EXECUTE ledger_feed_fence (its lease: an advisory lock)|

The role itself comes from deploy/roles.sql: run it again before this migration.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

ROLE_CHECK = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ledger_deliver') THEN
        RAISE EXCEPTION 'the role ledger_deliver does not exist: run deploy/roles.sql again (as a DBA) first';
    END IF;
END
$$
"""

SUBSCRIPTIONS = """
CREATE TABLE subscriptions (
    id                  uuid PRIMARY KEY,
    department          text COLLATE "C" NOT NULL,
    key_id              text COLLATE "C" NOT NULL REFERENCES api_keys (id),
    url                 text NOT NULL CHECK (octet_length(url) <= 2048),
    filter_department   text COLLATE "C",
    filter_type         text COLLATE "C",
    filter_booking_code text COLLATE "C",
    secret              text NOT NULL CHECK (octet_length(secret) BETWEEN 32 AND 128),
    status              text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused')),
    position            bigint NOT NULL CHECK (position >= 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    delivered_at        timestamptz,
    delivered_events    bigint NOT NULL DEFAULT 0,
    attempts            integer NOT NULL DEFAULT 0,
    last_status         integer,
    last_error          text CHECK (octet_length(last_error) <= 1024),
    paused_at           timestamptz,
    paused_position     bigint,
    paused_event_id     uuid,
    CHECK ((status = 'paused') = (paused_position IS NOT NULL)),
    CHECK (paused_position IS NULL OR paused_position > position)
)"""

SKIPS = """
CREATE TABLE subscription_skips (
    subscription_id uuid NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    position        bigint NOT NULL,
    event_id        uuid NOT NULL,
    key_id          text COLLATE "C" NOT NULL,
    skipped_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription_id, position)
)"""

STATE_COLUMNS = ("status, position, delivered_at, delivered_events, attempts, last_status, last_error, paused_at, "
                 "paused_position, paused_event_id")
API_COLUMNS = ("id, department, key_id, url, filter_department, filter_type, filter_booking_code, created_at, "
               + STATE_COLUMNS)

GRANTS = (
    f"GRANT SELECT ({API_COLUMNS}), INSERT ({API_COLUMNS}, secret), UPDATE ({STATE_COLUMNS}), DELETE "
    "ON subscriptions TO ledger_api",
    "GRANT SELECT, INSERT ON subscription_skips TO ledger_api",
    "GRANT SELECT ON events, subscriptions TO ledger_deliver",
    f"GRANT UPDATE ({STATE_COLUMNS}) ON subscriptions TO ledger_deliver",
    "GRANT SELECT (id, revoked_at) ON api_keys TO ledger_deliver",
    "GRANT SELECT ON ledger_position_offset TO ledger_deliver",
    "GRANT EXECUTE ON FUNCTION ledger_feed_fence TO ledger_deliver",
)

SCOPES = ("ALTER TABLE api_keys DROP CONSTRAINT api_keys_scopes_check",
          "ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_check CHECK "
          "(cardinality(scopes) > 0 AND scopes <@ ARRAY['read', 'write', 'write:any', 'subscribe'])")
OLD_SCOPES = ("ALTER TABLE api_keys DROP CONSTRAINT api_keys_scopes_check",
              "ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_check CHECK "
              "(cardinality(scopes) > 0 AND scopes <@ ARRAY['read', 'write', 'write:any'])")

SUBSCRIBE_KEYS_CHECK = """
DO $$
BEGIN
    IF EXISTS (SELECT FROM api_keys WHERE 'subscribe' = ANY (scopes)) THEN
        RAISE EXCEPTION 'keys with the scope subscribe exist: revoke them and remove the scope first';
    END IF;
END
$$
"""


def upgrade() -> None:
    op.execute(ROLE_CHECK)
    op.execute(SUBSCRIPTIONS)
    op.execute("CREATE INDEX subscriptions_department ON subscriptions (department)")
    op.execute(SKIPS)
    for statement in (*SCOPES, *GRANTS):
        op.execute(statement)


def downgrade() -> None:
    op.execute("REVOKE ALL ON FUNCTION ledger_feed_fence FROM ledger_deliver")
    op.execute("REVOKE ALL ON events, api_keys, ledger_position_offset FROM ledger_deliver")
    op.execute("DROP TABLE subscription_skips, subscriptions")
    op.execute(SUBSCRIBE_KEYS_CHECK)
    for statement in OLD_SCOPES:
        op.execute(statement)
