"""Connection set-up shared by every process that reads the ledger.

`LEDGER_DATABASE_URL` may name several hosts (libpq's multi-host form, as `make run-ha` does):
`postgresql://ledger@h1:p1,h2:p2,h3:p3/ledger?target_session_attrs=read-write`. asyncpg takes
that form itself, but its connect timeout covers all hosts together, tried in order: one frozen
(black-holed) host stalls every connect until the timeout, and the hosts after it are never tried
(measured: writers reached the new primary only when the freeze ended). So `connect_primary` tries
the hosts one at a time, each with its own short timeout, starting with the one that answered
last, and asyncpg checks each for read-write (target_session_attrs). We chose this over asking
Patroni's REST `/primary` (a second service to reach, and a leader by Patroni's word can still be
unreachable to us) and over HAProxy (one more process to run and monitor): the database itself
says whether it takes writes, and nothing else needs to be up.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
import msgspec

# Each host gets this long to accept, authenticate and say it is read-write. On loopback or a LAN
# a connect takes milliseconds; a frozen host costs at most this before the next one is tried.
PER_HOST_CONNECT_TIMEOUT = 2.0

# url -> index of the host that last accepted: the likely primary, tried first next time.
_last_good: dict[str, int] = {}
# When a host's connect last timed out, by (url, host index); such a host is tried last for a while.
_timed_out: dict[tuple[str, int], float] = {}
TIMED_OUT_LAST_SECONDS = 10.0
# While the host tried has not answered for this long, the next one is tried beside it.
HEDGE_SECONDS = 0.25

# Errors after which the next host is worth trying: refused, reset, frozen, a standby
# (TargetServerAttributeNotMatched is an InternalClientError), starting up or shutting down.
_TRY_NEXT = (OSError, asyncio.TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError,
             asyncpg.PostgresError)


# The one taxonomy of driver errors (the API, the relay and the CLI use it). Transient: the
# connection was refused, reset, timed out or broke mid-operation; the server is a standby
# (read-only, or no read-write host at connect), shutting down, starting up, out of resources,
# or the transaction lost a serialization conflict or a deadlock. Retrying the same work later,
# or on another host, can succeed. Everything else is a property of the request or the schema.
class StandbyUnconfirmed(Exception):
    """The synchronous standby was not shown to hold what this session read (see `standby_holds`)."""


_TRANSIENT_ERRORS = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError, StandbyUnconfirmed)
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "57", "58")  # connection, resources, operator, system
_TRANSIENT_SQLSTATES = ("25006", "40001", "40P01")  # read-only transaction, serialization, deadlock


def is_transient(error: BaseException) -> bool:
    """Whether the same statement may succeed when tried again later (on another host)."""
    if isinstance(error, asyncpg.PostgresError):
        sqlstate = error.sqlstate or ""
        return sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES or sqlstate in _TRANSIENT_SQLSTATES
    return isinstance(error, _TRANSIENT_ERRORS)


def hosts_of(url: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of a postgresql:// URL; empty when it names no host (a socket)."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    hosts = []
    for spec in filter(None, netloc.split(",")):
        if spec.startswith("["):  # [IPv6]:port
            host, _, port = spec[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = spec.partition(":")
        hosts.append((unquote(host), int(port) if port else 5432))
    return hosts


async def connect_primary(url: str, **options: Any) -> asyncpg.Connection:
    """A connection to the first host of `url` that accepts it (for a multi-host URL with
    target_session_attrs=read-write: the primary), each host tried with its own timeout.

    Hosts are tried in turn, starting with the one that accepted last; while one has not answered
    within HEDGE_SECONDS the next is tried beside it (a host that is cut off or frozen then costs
    that, not its whole timeout, before the others are asked). `timeout` in `options` bounds the
    whole attempt. Raises the last host's error when none accepts. Also usable as
    asyncpg.create_pool(connect=...).
    """
    hosts = hosts_of(url)
    if len(hosts) < 2:
        return await asyncpg.connect(url, **options)
    total = float(options.pop("timeout", 60.0))
    options.pop("loop", None)
    deadline = time.monotonic() + total
    first = _last_good.get(url, 0) % len(hosts)
    queue = [*range(first, len(hosts)), *range(first)]
    # A host whose connect timed out a moment ago (cut off, frozen: most likely the old primary)
    # goes last: otherwise each attempt during a failover starts with it.
    now = time.monotonic()
    queue.sort(key=lambda i: now - _timed_out.get((url, i), -math.inf) < TIMED_OUT_LAST_SECONDS)
    trying: dict[asyncio.Task[asyncpg.Connection], int] = {}
    last_error: BaseException | None = None
    try:
        while queue or trying:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if queue:
                host, port = hosts[queue[0]]
                task = asyncio.ensure_future(asyncpg.connect(
                    url, host=host, port=port, timeout=min(PER_HOST_CONNECT_TIMEOUT, remaining), **options))
                trying[task] = queue.pop(0)
            done, _ = await asyncio.wait(trying, timeout=HEDGE_SECONDS if queue else remaining,
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                index = trying.pop(task)
                error = task.exception()
                if error is None:
                    _last_good[url] = index
                    _timed_out.pop((url, index), None)
                    return task.result()
                if not isinstance(error, _TRY_NEXT):
                    raise error
                if isinstance(error, TimeoutError):
                    _timed_out[(url, index)] = time.monotonic()
                last_error = error
    finally:
        for task in trying:  # the others' tries: a connection they still make is closed at once
            task.add_done_callback(_close_unused)
            task.cancel()
    if last_error is None:
        raise TimeoutError(f"no host of the ledger's database answered within {total:g}s")
    raise last_error


def _close_unused(task: asyncio.Task[asyncpg.Connection]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().terminate()


async def init_connection(conn: asyncpg.Connection) -> None:
    """json/jsonb travel as Python objects, encoded and decoded by msgspec."""
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, schema="pg_catalog", encoder=_json_text, decoder=msgspec.json.decode, format="text"
        )


async def connect(url: str, **options: Any) -> asyncpg.Connection:
    """One connection to the primary, with the ledger's codecs."""
    conn = await connect_primary(url, **options)
    await init_connection(conn)
    return conn


# What leaves the ledger must be held by the synchronous standby: a commit can be visible on the
# primary before the standby has it (its wait for the standby cancelled; a primary restarted while
# its standbys lagged: recovery makes the waiting commits visible), and a failover then discards it.
# A transaction's commit waits for the synchronous standby to flush it, and so everything before it
# in the WAL, every commit this session could already see included. Postgres waits only for a
# transaction that has an id *and* wrote WAL: a transactional logical message gives it both,
# touching no table and needing no privilege. No synchronous standby configured (a single node):
# the commit waits for the local WAL flush only. One round trip (a simple query).
STANDBY_BARRIER_SQL = ("BEGIN; SET LOCAL synchronous_commit = on; "
                       "SELECT pg_logical_emit_message(true, 'booking-ledger', 'standby barrier'); COMMIT")


async def standby_holds(conn: asyncpg.Connection, timeout: float | None = None) -> None:
    """Return once the synchronous standby holds every commit `conn` could see before the call.

    Raises StandbyUnconfirmed (transient) when the wait for the standby was cancelled (an operator's
    pg_cancel_backend: Postgres then commits and only warns), and asyncpg's errors (TimeoutError
    after `timeout`, a lost connection) as they come. Call it outside a transaction.
    """
    async with warned_of_early_commit(conn):
        await conn.execute(STANDBY_BARRIER_SQL, timeout=timeout)


@contextlib.asynccontextmanager
async def warned_of_early_commit(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """Raise StandbyUnconfirmed after the block if Postgres warned meanwhile on `conn`: the only
    warning a commit gives is that its wait for the synchronous standby was cancelled, and then the
    transaction is committed on the primary alone, which the block's caller must not vouch for."""
    warnings: list[str] = []

    def heard(_conn: object, message: asyncpg.PostgresLogMessage) -> None:
        if (getattr(message, "severity_en", None) or getattr(message, "severity", None)) == "WARNING":
            warnings.append(str(message))

    conn.add_log_listener(heard)
    try:
        yield
        await asyncio.sleep(0)  # asyncpg hands log messages to listeners through the event loop
    finally:
        conn.remove_log_listener(heard)
    if warnings:
        raise StandbyUnconfirmed(f"the wait for the synchronous standby ended early: {warnings[0]}")


def _json_text(value: object) -> str:
    return msgspec.json.encode(value).decode()
