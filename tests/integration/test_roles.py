"""Each process's Postgres role can do what the process does, and nothing it need not.

The roles come from deploy/roles.sql (run by the fixtures' LocalPostgres), their grants from
migration 0008. The suite's processes connect as these roles too (devstack.harness.as_role), so
the e2e and pipeline tests show that everything each process does still works.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from cdc.deliver import DELIVERED_SQL, PAUSE_SQL, SUBSCRIPTIONS_SQL
from cdc.deliver import PAGE_SQL as DELIVER_PAGE_SQL
from cdc.relay import BATCH_SQL, DELETE_SENT_SQL, RESEND_SQL
from cdc.replay import PAGE_SQL
from cdc.verify import PENDING_SQL
from core import personal, roles
from core.outbox import OUTBOX_BACKLOG_SQL
from core.settings import DatabaseSettings, Settings
from devstack.harness import CLI, process_env, start_api
from devstack.processes import wait_until
from service.ledger import keys
from service.ledger.append import NewEvent, append
from service.ledger.db import create_pool
from service.ledger.reads import get_booking, read_feed
from service.ledger.subscriptions import Filters, create_subscription
from tests import scratch
from tests.conftest import random_code, sql

DENIED = asyncpg.InsufficientPrivilegeError

# What no process may do, whatever its role.
FORBIDDEN_TO_ALL = (
    "DROP TABLE events",
    "TRUNCATE events",
    "UPDATE events SET type = 'Rewritten'",
    "DELETE FROM events",
    "DELETE FROM bookings",
    "UPDATE bookings SET department = 'thief'",
    "INSERT INTO bookings (code, department, version) VALUES ('X-forged', 'thief', 1)",
    "ALTER TABLE events ADD COLUMN extra text",
    "CREATE TABLE public.intruder (x int)",
    "DELETE FROM api_keys",
    "UPDATE api_keys SET scopes = ARRAY['write:any']",
    "ALTER FUNCTION ledger_append SECURITY INVOKER",
    "DELETE FROM alembic_version",
    # The chain and the checkpoints (0016, 0017): nobody rewrites a hash, a head or a signed root.
    "UPDATE events SET hash = hash",
    "UPDATE bookings SET head = NULL",
    "UPDATE checkpoints SET root = root",
    "DELETE FROM checkpoints",
    "SELECT ledger_microseconds(now())",
    "DELETE FROM personal_keys",  # an erasure sets a key to NULL; no key row is ever removed
)

# What a role may not do although another role may.
FORBIDDEN = {
    roles.API: (
        "INSERT INTO outbox (position, booking_code, version) VALUES (1, 'X', 1)",
        "DELETE FROM outbox",
        "INSERT INTO api_keys (id, department, scopes, key_hash) VALUES ('x', 'x', ARRAY['read'], ''::bytea)",
        "UPDATE api_keys SET revoked_at = now()",
        # The append function's parts run only inside it, as the owner (0013).
        "SELECT ledger_acquire_locks(ARRAY['X'], ARRAY[]::uuid[])",
        "SELECT ledger_advance_booking('X', 'thief', true, NULL, ARRAY[1]::numeric[], ARRAY['EUR'], 1, 1, 0, now(),"
        " ARRAY[gen_random_uuid()], ARRAY['A'], ARRAY[NULL]::jsonb[], ARRAY[NULL]::timestamptz[])",
        "SELECT count(*) FROM ledger_write_events('{}', '{}', '{}', '{}', 0, now(), '{}', '{}', '{}', '{}', '{}',"
        " '{}', '{}', '{}', '{}', '{}')",
        # Checkpoints are the signer's (the relay) to write.
        "INSERT INTO checkpoints (seq) VALUES (1)",
        "UPDATE checkpoints SET published = true",
        # Subscriptions: the API writes a secret once and never reads it back, nor changes where one points.
        "SELECT secret FROM subscriptions",
        "SELECT * FROM subscriptions",
        "UPDATE subscriptions SET secret = 'whsec_' || repeat('x', 40)",
        "UPDATE subscriptions SET url = 'https://elsewhere.example/'",
        "DELETE FROM subscription_skips",
    ),
    roles.RELAY: (
        "SELECT key_hash FROM api_keys",
        "SELECT data_key FROM personal_keys",  # only the API reads the bookings' data keys (0018)
        "SELECT secret FROM subscriptions",
        "SELECT * FROM console_sessions",
        "SELECT * FROM bookings",
        "SELECT count(*) FROM ledger_append(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    ),
    roles.READER: (
        "SELECT key_hash FROM api_keys",
        "SELECT data_key FROM personal_keys",
        "SELECT secret FROM subscriptions",
        "SELECT * FROM console_sessions",
        "DELETE FROM outbox",
        "INSERT INTO outbox (position, booking_code, version) VALUES (1, 'X', 1)",
        "SELECT count(*) FROM ledger_append(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
        "INSERT INTO checkpoints (seq) VALUES (1)",
    ),
    roles.KEYS: (
        "SELECT key_hash FROM api_keys",
        "SELECT data_key FROM personal_keys",
        "SELECT secret FROM subscriptions",
        "SELECT * FROM api_keys",
        "SELECT * FROM events",
        "SELECT * FROM console_sessions",
        "UPDATE api_keys SET department = 'other'",
        "SELECT count(*) FROM ledger_append(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    ),
    roles.DELIVER: (
        "SELECT key_hash FROM api_keys",
        "SELECT data_key FROM personal_keys",  # deliveries carry personal data sealed, as Kafka does
        "SELECT booking_code FROM personal_keys",
        "INSERT INTO checkpoints (seq) VALUES (1)",
        "SELECT department FROM api_keys",
        "SELECT * FROM bookings",
        "SELECT * FROM console_sessions",
        "SELECT * FROM outbox",
        "DELETE FROM subscriptions",
        "INSERT INTO subscriptions (id, department, key_id, url, secret, position) "
        "VALUES (gen_random_uuid(), 'x', 'x', 'https://x.example/', repeat('x', 40), 0)",
        "UPDATE subscriptions SET url = 'https://elsewhere.example/'",
        "UPDATE subscriptions SET secret = 'whsec_' || repeat('x', 40)",
        "INSERT INTO subscription_skips (subscription_id, position, event_id, key_id) "
        "VALUES (gen_random_uuid(), 1, gen_random_uuid(), 'x')",
        "SELECT count(*) FROM ledger_append(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    ),
}


def as_role(url: str, role: str) -> str:
    return roles.with_user(url, role)


async def _denied(url: str, role: str, statement: str) -> None:
    conn = await asyncpg.connect(as_role(url, role))
    try:
        async with conn.transaction():  # rolled back in any case
            with pytest.raises(DENIED):
                await conn.execute(statement)
    finally:
        await conn.close()


@pytest.mark.parametrize("role", roles.RUNTIME)
@pytest.mark.parametrize("statement", FORBIDDEN_TO_ALL)
async def test_no_runtime_role_may_change_the_schema_or_rewrite_the_ledger(
        database_url: str, role: str, statement: str) -> None:
    await _denied(database_url, role, statement)


@pytest.mark.parametrize(("role", "statement"), [(r, s) for r, statements in FORBIDDEN.items() for s in statements])
async def test_each_runtime_role_lacks_what_its_process_does_not_need(
        database_url: str, role: str, statement: str) -> None:
    await _denied(database_url, role, statement)


@pytest.mark.parametrize("role", roles.RUNTIME)
async def test_runtime_roles_are_neither_superusers_nor_owners(database_url: str, role: str) -> None:
    conn = await asyncpg.connect(as_role(database_url, role))
    try:
        row = await conn.fetchrow("""
            SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolbypassrls,
                   pg_has_role(current_user, 'ledger_owner', 'MEMBER') AS owner
              FROM pg_roles r WHERE r.rolname = current_user""")
        assert not any(row.values()), dict(row)
        owned = await conn.fetchval("""
            SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace
               AND relowner = current_user::regrole""")
        assert owned == 0
    finally:
        await conn.close()


async def test_the_schema_belongs_to_the_owner_and_ledger_append_writes_as_it(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        owners = {r["relname"]: r["owner"] for r in await conn.fetch("""
            SELECT relname, relowner::regrole::text AS owner FROM pg_class
             WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'""")}
        assert set(owners.values()) == {roles.OWNER}, owners
        # A migration that replaces a writer must say both again (CREATE OR REPLACE resets them).
        for writer in ("ledger_append", "ledger_append_batch"):
            definer, config = await conn.fetchrow("SELECT prosecdef, proconfig FROM pg_proc WHERE proname = $1",
                                                  writer)
            assert definer and config == ["search_path=public, pg_temp"], writer
    finally:
        await conn.close()


@pytest.fixture
async def api_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(DatabaseSettings(url=as_role(database_url, roles.API), pool_size=2))
    try:
        yield pool
    finally:
        await pool.close()


async def test_the_api_role_appends_and_reads(api_pool: asyncpg.Pool) -> None:
    code = random_code("ROLE")
    result = await append(api_pool, code=code, department="hotel", may_write_any=False, expected_version=0,
                          events=[NewEvent(uuid.uuid4(), "BookingPriced")])
    assert result.version == 1
    assert (await get_booking(api_pool, code)).department == "hotel"
    events, _ = await read_feed(api_pool, after=result.events[0].position - 1, limit=10)
    assert events[0].booking_code == code
    async with api_pool.acquire() as conn:
        await conn.fetchrow(OUTBOX_BACKLOG_SQL)  # the console's backlog
        await conn.fetchval("SELECT key_hash FROM api_keys LIMIT 1")  # authentication compares hashes


async def test_the_relay_and_reader_roles_do_their_work(database_url: str, api_pool: asyncpg.Pool) -> None:
    code = random_code("ROLE")
    result = await append(api_pool, code=code, department="hotel", may_write_any=False, expected_version=0,
                          events=[NewEvent(uuid.uuid4(), "BookingPriced")])
    position = result.events[0].position
    relay = await asyncpg.connect(as_role(database_url, roles.RELAY))
    try:
        assert await relay.fetchval("SELECT pg_try_advisory_lock(42)")  # the lease needs no grant
        assert position in [r["position"] for r in await relay.fetch(BATCH_SQL, 100_000)]
        sent = relay.transaction()  # rolled back: the outbox row stays for the pipeline tests' relays
        await sent.start()
        await relay.execute(DELETE_SENT_SQL, [position])
        await relay.execute(RESEND_SQL, 60.0)
        assert await relay.fetchval("SELECT count(*) FROM outbox WHERE position = $1", position) == 1
        await sent.rollback()
    finally:
        await relay.close()
    reader = await asyncpg.connect(as_role(database_url, roles.READER))
    try:
        assert [r["position"] for r in await reader.fetch(PAGE_SQL, position - 1, 1)] == [position]
        await reader.fetch(PENDING_SQL, [code])
    finally:
        await reader.close()


async def test_the_deliver_role_reads_subscriptions_and_the_feed_and_moves_cursors(
        database_url: str, api_pool: asyncpg.Pool) -> None:
    code = random_code("ROLE")
    result = await append(api_pool, code=code, department="hotel", may_write_any=False, expected_version=0,
                          events=[NewEvent(uuid.uuid4(), "BookingPriced")])
    keys_conn = await asyncpg.connect(as_role(database_url, roles.KEYS))
    try:
        record, _ = await keys.create_key(keys_conn, "hotel", ("subscribe",))
    finally:
        await keys_conn.close()
    created, _ = await create_subscription(api_pool, department="hotel", key_id=record.id,
                                           url="https://receiver.example/", filters=Filters(booking_code=code),
                                           after=0, max_per_department=100)
    deliver = await asyncpg.connect(as_role(database_url, roles.DELIVER))
    try:
        assert await deliver.fetchval("SELECT pg_try_advisory_lock(43)")  # the lease needs no grant
        found = {row["id"]: row for row in await deliver.fetch(SUBSCRIPTIONS_SQL)}
        assert found[created.id]["secret"].startswith("whsec_") and not found[created.id]["revoked"]
        page = await deliver.fetch(DELIVER_PAGE_SQL, 0, None, None, code, 10)
        assert [row["position"] for row in page] == [result.events[0].position]
        assert await deliver.fetch(personal.ERASED_BOOKINGS_SQL, [code]) == []  # erasures: from events alone
        position = result.events[0].position
        assert await deliver.fetchval(DELIVERED_SQL, created.id, 0, position, 1, 200) == created.id
        assert await deliver.fetchval(PAUSE_SQL, created.id, position, position + 1, uuid.uuid4(), 3, 500,
                                      "HTTP 500") == created.id
    finally:
        await deliver.close()


async def test_the_keys_role_creates_lists_and_revokes_keys(database_url: str) -> None:
    conn = await asyncpg.connect(as_role(database_url, roles.KEYS))
    try:
        record, _ = await keys.create_key(conn, "audit", ("read",))
        assert record.id in [k.id for k in await keys.list_keys(conn)]
        assert await keys.revoke_key(conn, record.id)
    finally:
        await conn.close()


def test_the_api_refuses_to_start_as_a_superuser(database_url: str) -> None:
    env = process_env(Settings(database=DatabaseSettings(url=database_url)))  # the suite's superuser
    started = subprocess.run([CLI, "api"], env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 2
    assert "the API will not start" in started.stderr and "a superuser" in started.stderr
    assert "LEDGER_ALLOW_PRIVILEGED_ROLE" in started.stderr


def test_the_api_runs_as_a_superuser_only_when_allowed(database_url: str) -> None:
    env = process_env(Settings(database=DatabaseSettings(url=database_url, allow_privileged_role=True)))
    log = scratch.folder("booking-ledger-api-") / "api.log"
    api = start_api(env, log, workers=1, own_role=False)
    api.stop()


def test_readiness_says_why_when_the_role_gains_the_owners_privileges(database_url: str) -> None:
    probe = f"probe_{uuid.uuid4().hex[:8]}"

    def run(statement: str) -> None:
        sql(database_url, statement)  # as the suite's superuser

    run(f"CREATE ROLE {probe} LOGIN IN ROLE {roles.API}")
    log = scratch.folder("booking-ledger-api-") / "api.log"
    env = process_env(Settings(database=DatabaseSettings(url=as_role(database_url, probe))))
    api = start_api(env, log, workers=1, own_role=False)
    try:
        run(f"GRANT {roles.OWNER} TO {probe}")

        def refused() -> httpx.Response | None:
            answer = httpx.get(api.url + "/health/ready", timeout=5)
            return answer if answer.status_code == 503 else None

        answer = wait_until(refused, 30, what="readiness to refuse the owner's privileges")
        assert answer.headers["content-type"].startswith("application/problem+json")
        problem = answer.json()
        assert problem["code"] == "unavailable"
        assert f"role '{probe}'" in problem["detail"] and "owner of the ledger's tables" in problem["detail"]
        run(f"REVOKE {roles.OWNER} FROM {probe}")
        wait_until(lambda: httpx.get(api.url + "/health/ready", timeout=5).status_code == 200, 30,
                   what="readiness once the role is back to its grants")
    finally:
        api.stop()
        run(f"DROP ROLE {probe}")
