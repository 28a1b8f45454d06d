"""Runs migrations over asyncpg, or writes them as one SQL script (offline: `upgrade ... --sql`).

Every migration runs as the owning role: the script starts with SET LOCAL ROLE ledger_owner, so
whoever connects (ledger_owner itself, a DBA granted it, a superuser) creates objects that
ledger_owner owns. The roles come from deploy/roles.sql; see migrations/README.md for the rules.
"""

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from core import roles
from core.pg import connect_primary
from core.settings import get_settings

SET_OWNER = f"SET LOCAL ROLE {roles.OWNER}"


def _migrate() -> None:
    with context.begin_transaction():
        context.execute(SET_OWNER)
        context.run_migrations()


def _run(connection) -> None:
    context.configure(connection=connection, transactional_ddl=True)
    _migrate()


async def _check_owner_role(connection) -> None:
    """A clear error before anything runs when the owner role is missing or out of reach."""
    found = (await connection.execute(text(
        "SELECT pg_has_role(current_user, oid, 'MEMBER') FROM pg_roles WHERE rolname = :owner"
    ), {"owner": roles.OWNER})).scalar()
    if found is None:
        raise SystemExit(f"migrate: the role {roles.OWNER} does not exist; create the roles first "
                         "(deploy/roles.sql, run by a superuser or a role with CREATEROLE)")
    if not found:
        raise SystemExit(f"migrate: this connection's role may not SET ROLE {roles.OWNER}; connect as "
                         f"{roles.OWNER} or as a member of it (LEDGER_MIGRATE_DATABASE_URL)")


# After a restore to an earlier moment, transaction ids after that moment are handed out again, so
# new positions would repeat ones that Kafka and DynamoDB already carry (`--past`). The margin also
# covers what feed readers took ahead of the relay: 2**20 transactions, far more than the relay's lag.
ADVANCE_PAST_SQL = """
    UPDATE ledger_position_offset
       SET xid_offset = xid_offset + greatest(0, CAST(:past AS bigint) / 65536 + 1 + CAST(:margin AS bigint)
             - (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + xid_offset))"""
ADVANCE_PAST_MARGIN = 2**20


async def _advance_past(connection, past: int) -> None:
    """Raise the position offset so the next append sorts above `past` (plus the margin). The lock
    waits for every append that read the old offset to end and holds new ones until the commit, so
    no transaction mixes the two offsets (appends stay stopped during a restore anyway)."""
    await connection.execute(text(f"SET ROLE {roles.OWNER}"))
    await connection.execute(text("LOCK TABLE ledger_position_offset IN ACCESS EXCLUSIVE MODE"))
    await connection.execute(text(ADVANCE_PAST_SQL), {"past": past, "margin": ADVANCE_PAST_MARGIN})
    await connection.execute(text("RESET ROLE"))
    await connection.commit()
    _, next_lowest = (await connection.execute(text("SELECT highest, next_lowest FROM ledger_position_check()"))).one()
    print(f"migrate: positions advanced past {past}: the next append gets about {next_lowest}")


async def _check_positions(connection) -> None:
    """Refuse (exit 1, after migrating) when the next append would sort below recorded events."""
    if (await connection.execute(text("SELECT to_regproc('ledger_position_check')"))).scalar() is None:
        return  # migrated below the revision that has the check
    if context.config.attributes.get("advance_past") is not None:
        await _advance_past(connection, context.config.attributes["advance_past"])
    highest, next_lowest = (await connection.execute(text(
        "SELECT highest, next_lowest FROM ledger_position_check()"))).one()
    if (highest is not None and next_lowest <= highest and context.config.attributes.get("advance_positions")
            and (await connection.execute(text("SELECT to_regproc('ledger_advance_positions')"))).scalar()):
        await connection.execute(text(f"SET ROLE {roles.OWNER}"))
        highest, next_lowest = (await connection.execute(text(
            "SELECT highest, next_lowest FROM ledger_advance_positions()"))).one()
        await connection.execute(text("RESET ROLE"))
        await connection.commit()
        print(f"migrate: positions advanced: the next append gets about {next_lowest}, above the highest "
              f"recorded {highest}")
    if highest is not None and next_lowest <= highest:
        raise SystemExit(f"migrate: positions would go backwards: the highest recorded is {highest}, the next "
                         f"append would get about {next_lowest} (the transaction counter is behind, as after a "
                         "restore from pg_dump); `booking-ledger migrate --advance-positions` moves new positions "
                         "past it")


async def _run_online() -> None:
    url = context.config.attributes.get("database_url") or get_settings().database.migration_url
    # Our own connect, so a multi-host URL (make run-ha) reaches the primary, host by host; the URL
    # below only selects SQLAlchemy's asyncpg dialect.
    engine = create_async_engine("postgresql+asyncpg://", async_creator=lambda: connect_primary(url, timeout=30))
    try:
        async with engine.connect() as connection:
            await _check_owner_role(connection)
            await connection.commit()
            await connection.run_sync(_run)
            await connection.commit()
            await _check_positions(connection)
    finally:
        await engine.dispose()


def _run_offline() -> None:
    # "named" paramstyle: the script keeps the % of the functions' RAISE formats as they are
    # (psycopg's pyformat would double them).
    context.configure(dialect_name="postgresql", dialect_opts={"paramstyle": "named"}, literal_binds=True,
                      transactional_ddl=True)
    _migrate()


if context.is_offline_mode():
    _run_offline()
else:
    asyncio.run(_run_online())
