"""Runs migrations over asyncpg, against LEDGER_DATABASE_URL (or the URL the caller configured)."""

import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

from core.pg import connect_primary
from core.settings import get_settings


def _run(connection) -> None:
    context.configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    url = context.config.attributes.get("database_url") or get_settings().database.url
    # Our own connect, so a multi-host URL (make run-ha) reaches the primary, host by host; the URL
    # below only selects SQLAlchemy's asyncpg dialect.
    engine = create_async_engine("postgresql+asyncpg://", async_creator=lambda: connect_primary(url, timeout=30))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run against a database")
asyncio.run(_run_online())
