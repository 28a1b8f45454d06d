"""The Postgres roles of the ledger: one owner, and a runtime role per kind of process.

The owner (`ledger_owner`) owns the schema's tables and functions; migrations run as it
(migrations/env.py switches to it with SET ROLE, so a DBA may connect as themselves). The
processes connect as roles that own nothing and hold only the grants migrations give them
(migrations/versions/0008_roles.py lists them). The roles themselves are made once per cluster
by deploy/roles.sql (`make run` and the tests run it for their own clusters).
"""

from __future__ import annotations

from urllib.parse import quote

OWNER = "ledger_owner"
API = "ledger_api"  # the HTTP API: appends through ledger_append_batch, reads, console sessions, key lookup
RELAY = "ledger_relay"  # the relay: reads events, reads and deletes (and re-fills) the outbox, checkpoints
READER = "ledger_reader"  # replay, verify and audit: read only
KEYS = "ledger_keys"  # `booking-ledger keys`: creates, lists and revokes API keys
DELIVER = "ledger_deliver"  # `booking-ledger deliver`: reads the feed and subscriptions (secrets too), moves cursors

RUNTIME = (API, RELAY, READER, KEYS, DELIVER)

# The role each command connects as by default (the sink uses no Postgres; migrate runs as OWNER).
# `import` writes through ledger_append_batch like the API (and reads what the API reads).
BY_COMMAND = {"api": API, "relay": RELAY, "replay": READER, "verify": READER, "audit": READER, "keys": KEYS,
              "migrate": OWNER, "import": API, "checkpoint": RELAY, "deliver": DELIVER}

LOCAL_DATABASE = "127.0.0.1:55432/ledger"


def local_url(role: str) -> str:
    """The database of the local stack (`make run`) as `role` (trust on loopback: no password)."""
    return f"postgresql://{role}@{LOCAL_DATABASE}"


def with_user(url: str, role: str) -> str:
    """`url` (libpq URL form, one or several hosts) connecting as `role`, without a password."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a postgresql:// URL: {url!r}")
    netloc, slash, tail = rest.partition("/")
    hosts = netloc.rpartition("@")[2]
    return f"{scheme}://{quote(role, safe='')}@{hosts}{slash}{tail}"
