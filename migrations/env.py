"""Runs migrations over asyncpg, against LEDGER_DATABASE_URL (or the URL the caller configured)."""

import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

from migrations.runner import sqlalchemy_url


def _run(connection) -> None:
    context.configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    url = context.config.attributes.get("database_url")
    engine = create_async_engine(sqlalchemy_url(url))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run against a database")
asyncio.run(_run_online())
