"""Migrations up from empty and down again; keys stored only as hashes."""

from __future__ import annotations

import asyncio
import subprocess
import uuid

import asyncpg

from devstack.postgres import LocalPostgres
from migrations.runner import downgrade, upgrade
from service.ledger import keys

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
            assert tables == ["alembic_version", "api_keys", "bookings", "events", "outbox"]
            assert await conn.fetchval("SELECT count(*) FROM pg_proc WHERE proname = 'ledger_append'") == 1
            await asyncio.to_thread(downgrade, url)
            assert [r[0] for r in await conn.fetch(TABLES_SQL)] == ["alembic_version"]
            assert await conn.fetchval("SELECT count(*) FROM pg_proc WHERE proname = 'ledger_append'") == 0
            await asyncio.to_thread(upgrade, url)
            assert len(await conn.fetch(TABLES_SQL)) == 5
            assert await conn.fetchval("SELECT version_num FROM alembic_version") == "0003"
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
