"""The connection pool, and the one place where driver errors become the ledger's errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import asyncpg
from asyncpg.exceptions import InternalClientError

from core.pg import init_connection
from core.settings import DatabaseSettings
from service.ledger.errors import (
    BookingCodeTaken,
    BookingNotFound,
    EventIdConflict,
    InvalidData,
    LedgerError,
    NotOwner,
    StoreUnavailable,
    VersionConflict,
)

# Raised by ledger_append (migrations/versions/0001_ledger.py) with DETAIL as a JSON object.
_RAISED: dict[str, tuple[type[LedgerError], str]] = {
    "BL001": (BookingCodeTaken, "booking code is taken"),
    "BL002": (VersionConflict, "booking is not at the expected version"),
    "BL003": (BookingNotFound, "no booking with this code"),
    "BL004": (NotOwner, "booking belongs to another department"),
    "BL005": (EventIdConflict, "an event_id is already recorded with other content or for another booking"),
}

# SQLSTATE classes and codes that mean "the store is not there right now": retry later.
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")  # connection, resources, operator intervention, system
_UNAVAILABLE_CODES = ("25006", "40001", "40P01")  # read-only (mid-failover), serialization, deadlock
_SCHEMA_MISSING = ("42P01", "42883")  # undefined table, undefined function


# Seconds to wait for a free pooled connection, or for a new one to connect, before answering 503.
ACQUIRE_TIMEOUT = 5.0


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset between uses: the ledger leaves no session state on pooled connections.

    (No SET, LISTEN, cursors or session-level advisory locks; asyncpg still rolls back a
    transaction left open.) The default reset would cost a round trip per request.
    """


async def create_pool(settings: DatabaseSettings) -> asyncpg.Pool:
    """A pool that opens its connections lazily, so the API starts even while Postgres is down."""
    return await asyncpg.create_pool(
        settings.url,
        timeout=ACQUIRE_TIMEOUT,
        min_size=0,
        max_size=settings.pool_size,
        command_timeout=settings.command_timeout,
        init=init_connection,
        reset=_keep_session,
        server_settings={
            "application_name": "booking-ledger",
            "statement_timeout": str(settings.command_timeout * 1000),
            "idle_in_transaction_session_timeout": str(settings.command_timeout * 1000),
            "TimeZone": "UTC",
        },
    )


@asynccontextmanager
async def connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection, waited for at most ACQUIRE_TIMEOUT; errors come out translated."""
    with translate_errors():
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            yield conn


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn asyncpg and socket errors into LedgerError subclasses; let anything else through."""
    try:
        yield
    except asyncpg.PostgresError as error:
        raise _translate_postgres(error) from error
    except (TimeoutError, OSError, asyncpg.InterfaceError, InternalClientError) as error:
        # InternalClientError: a connection that broke mid-operation (e.g. a Postgres restart).
        raise StoreUnavailable(f"ledger store unavailable: {type(error).__name__}") from error


def _translate_postgres(error: asyncpg.PostgresError) -> Exception:
    sqlstate = error.sqlstate or ""
    if sqlstate in _RAISED:
        kind, detail = _RAISED[sqlstate]
        context = json.loads(error.detail) if error.detail else {}
        return kind(detail, **context)
    if isinstance(error, asyncpg.UniqueViolationError):
        if error.constraint_name == "events_event_id_key":
            return EventIdConflict(_RAISED["BL005"][1])
        if error.constraint_name == "bookings_pkey":
            return BookingCodeTaken(_RAISED["BL001"][1])
    if sqlstate.startswith(("22", "54")) or sqlstate == "23514":  # data exception, program limit, CHECK
        return InvalidData(f"the ledger cannot store this input: {error.message}")
    if sqlstate in _SCHEMA_MISSING:
        return StoreUnavailable(f"the ledger schema is not in place ({sqlstate}): run migrate")
    if sqlstate[:2] in _UNAVAILABLE_CLASSES or sqlstate in _UNAVAILABLE_CODES:
        return StoreUnavailable(f"ledger store unavailable ({sqlstate})")
    return error

