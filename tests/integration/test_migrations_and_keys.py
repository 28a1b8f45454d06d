"""Migrations up from empty and down again; keys stored only as hashes."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid
from collections.abc import Callable

import asyncpg
import pytest
import sqlalchemy.exc

from devstack.postgres import LocalPostgres
from migrations.runner import downgrade, head_revision, upgrade
from service.ledger import keys, notify

TABLES_SQL = "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"


async def test_migrations_up_from_empty_down_and_up_again(postgres: LocalPostgres) -> None:
    name = f"migrations_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres.url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = postgres.url.rsplit("/", 1)[0] + "/" + name
    try:
        await asyncio.to_thread(upgrade, url)  # Alembic runs its own event loop
        conn = await asyncpg.connect(url)
        try:
            tables = [r[0] for r in await conn.fetch(TABLES_SQL)]
            assert tables == ["alembic_version", "api_keys", "bookings", "checkpoints", "console_sessions",
                              "events", "ledger_position_offset", "outbox", "personal_keys", "subscription_skips",
                              "subscriptions"]
            assert await conn.fetchval("SELECT count(*) FROM pg_proc WHERE proname = 'ledger_append'") == 1
            # 0018's scope check takes 0015's subscribe and its own erase; its downgrade restores 0015's.
            key = ("INSERT INTO api_keys (id, department, scopes, key_hash) "
                   "VALUES ($1, 'd', $2, sha256(convert_to($1::text, 'UTF8')))")
            await conn.execute(key, "both", ["read", "subscribe", "erase"])
            with pytest.raises(sqlalchemy.exc.DBAPIError, match="scope erase exist"):
                await asyncio.to_thread(downgrade, url, "0017")
            await conn.execute("DELETE FROM api_keys")
            await asyncio.to_thread(downgrade, url, "0017")
            await conn.execute(key, "subscribe", ["subscribe"])
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(key, "erase", ["erase"])
            await conn.execute("DELETE FROM api_keys")
            await asyncio.to_thread(downgrade, url)
            assert [r[0] for r in await conn.fetch(TABLES_SQL)] == ["alembic_version"]
            assert await conn.fetchval("SELECT count(*) FROM pg_proc WHERE proname = 'ledger_append'") == 0
            await asyncio.to_thread(upgrade, url)
            assert len(await conn.fetch(TABLES_SQL)) == 11
            assert await conn.fetchval("SELECT version_num FROM alembic_version") == head_revision()
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_keys_are_stored_as_hashes_only(pool, postgres: LocalPostgres) -> None:
    record, secret = await keys.create_key(pool, "hotel", ("read", "write"))
    dump = subprocess.run(
        [str(postgres.bindir / "pg_dump"), "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "ledger", "ledger"],
        check=True, capture_output=True, text=True,
    ).stdout
    assert record.id in dump  # the dump does hold the key table...
    assert secret not in dump and secret.split("_", 2)[2] not in dump  # ...but never the key


async def test_authenticate_accepts_only_active_well_formed_keys(pool) -> None:
    record, secret = await keys.create_key(pool, "car", ("read",))
    found = await keys.authenticate(pool, secret)
    assert found is not None and (found.department, found.scopes) == ("car", frozenset({"read"}))
    tampered = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert await keys.authenticate(pool, tampered) is None
    assert await keys.authenticate(pool, "bl_nothex_" + "x" * 43) is None
    assert await keys.authenticate(pool, "") is None
    assert await keys.revoke_key(pool, record.id)
    assert not await keys.revoke_key(pool, record.id)
    assert await keys.authenticate(pool, secret) is None
    listed = {k.id: k for k in await keys.list_keys(pool)}
    assert listed[record.id].revoked_at is not None


async def _listening(cache: keys.KeyCache) -> keys.KeyCache:
    cache.start()
    for _ in range(100):
        if cache.listening:
            return cache
        await asyncio.sleep(0.05)
    raise AssertionError("the key cache never started listening")


async def test_cached_keys_need_no_round_trip(database_url: str, pool) -> None:
    _, secret = await keys.create_key(pool, "car", ("read",))
    cache = await _listening(keys.KeyCache(database_url))
    own_pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        assert await keys.authenticate(own_pool, secret, cache) is not None
        await own_pool.close()  # from now on a lookup would fail
        found = await keys.authenticate(own_pool, secret, cache)
        assert found is not None and found.department == "car"
        assert await keys.authenticate(own_pool, secret[:-1] + ("A" if secret[-1] != "A" else "B"), cache) is None
    finally:
        await cache.stop()


async def test_a_revocation_by_sql_empties_every_cache(database_url: str, pool) -> None:
    record, secret = await keys.create_key(pool, "car", ("read",))
    caches = [await _listening(keys.KeyCache(database_url)) for _ in range(2)]
    try:
        for cache in caches:
            assert await keys.authenticate(pool, secret, cache) is not None
            assert cache.get(record.id) is not None
        await pool.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", record.id)
        started = asyncio.get_running_loop().time()
        while any(cache.get(record.id) for cache in caches):
            assert asyncio.get_running_loop().time() - started < 1.0, "the NOTIFY did not reach every cache"
            await asyncio.sleep(0.001)
        for cache in caches:
            assert await keys.authenticate(pool, secret, cache) is None
    finally:
        for cache in caches:
            await cache.stop()


async def test_the_cache_tells_when_it_starts_and_stops_listening(database_url: str) -> None:
    told: list[bool] = []
    cache = await _listening(keys.KeyCache(database_url, on_listening=told.append))
    assert told == [True]
    await cache.stop()
    assert told == [True, False]


async def test_a_lookup_older_than_a_change_is_not_kept(database_url: str, pool) -> None:
    record, secret = await keys.create_key(pool, "car", ("read",))
    cache = await _listening(keys.KeyCache(database_url))
    try:
        before = cache.generation()
        assert await keys.authenticate(pool, secret) is not None  # a lookup without the cache
        cache.clear()  # a change arrives while that lookup was on its way
        row = keys._Row(keys.ApiKey(record.id, "car", frozenset({"read"}), record.created_at), b"", False, 0)
        cache.put(record.id, row, before)
        assert cache.get(record.id) is None
    finally:
        await cache.stop()


async def test_without_a_listener_every_request_looks_its_key_up(pool) -> None:
    record, secret = await keys.create_key(pool, "car", ("read",))
    cache = keys.KeyCache("postgresql://nobody@127.0.0.1:1/none")  # never listens
    assert await keys.authenticate(pool, secret, cache) is not None
    assert cache.get(record.id) is None
    await pool.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", record.id)
    assert await keys.authenticate(pool, secret, cache) is None


async def test_a_listener_that_loses_its_connection_listens_again(database_url: str, pool) -> None:
    """After a lost connection, on_connect runs again (what was sent meanwhile counts as heard)."""
    name = f"test-listen-{uuid.uuid4().hex[:8]}"
    channel = f"test_{uuid.uuid4().hex[:8]}"
    connects, losses, heard = [], [], asyncio.Event()
    task = asyncio.create_task(notify.listen(
        database_url, channel, name=name, on_notify=heard.set, on_connect=lambda: connects.append(1),
        on_lost=lambda: losses.append(1), meanwhile="nothing", ping_interval=0.2))
    try:
        await wait_for(lambda: len(connects) == 1)
        assert await pool.fetchval("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE application_name = $1", name)
        await wait_for(lambda: len(connects) == 2)
        assert len(losses) == 1
        await pool.execute("SELECT pg_notify($1, '')", channel)
        await asyncio.wait_for(heard.wait(), 10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert len(losses) == 2


async def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not within the deadline"
        await asyncio.sleep(0.02)
