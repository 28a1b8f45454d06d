"""The wait for the synchronous standby (core.pg.standby_holds) on a single Postgres with none
configured: it answers at once, needs no privilege beyond the roles' own, and the feed still pages."""

from __future__ import annotations

import time

import asyncpg
import pytest

from core.pg import STANDBY_BARRIER_SQL, standby_holds
from core.roles import API, RELAY


@pytest.mark.parametrize("role", [RELAY, API])
async def test_with_no_standby_configured_the_barrier_answers_at_once_for_the_services_roles(
    database_url: str, role: str
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT current_setting('synchronous_standby_names')") == ""
        await conn.execute(f'SET ROLE "{role}"')
        started = time.monotonic()
        for _ in range(20):
            await standby_holds(conn, timeout=5)
        took = (time.monotonic() - started) / 20
        assert not conn.is_in_transaction()
        # It is a commit: its transaction has an id and wrote WAL, which is what makes Postgres
        # wait for a synchronous standby when one is configured.
        before = await conn.fetchval("SELECT pg_current_wal_insert_lsn()::text")
        await conn.execute(STANDBY_BARRIER_SQL)
        assert await conn.fetchval("SELECT pg_current_wal_insert_lsn() > $1::text::pg_lsn", before)
    finally:
        await conn.close()
    print(f"\nbarrier as {role}: {took * 1000:.2f} ms")
    assert took < 0.5
