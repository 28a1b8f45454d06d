"""The connection pool, the one place where driver errors become the ledger's errors, and the
retry that carries a request through a failover of the primary.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from core.pg import connect_primary, init_connection, is_transient
from core.settings import DatabaseSettings
from service.ledger.errors import (
    REFUSALS,
    BookingCodeTaken,
    DataKeyStale,
    EventIdConflict,
    InvalidData,
    LedgerError,
    StoreUnavailable,
)

# SQLSTATE classes and codes that mean "the store is not there right now": retry later.
_SCHEMA_MISSING = ("42P01", "42883")  # undefined table, undefined function

log = logging.getLogger("booking_ledger.db")
T = TypeVar("T")


# Seconds to wait for a free pooled connection, or for a new one to connect, before answering 503.
ACQUIRE_TIMEOUT = 5.0
# A request's deadline lies this much before the end of its budget (at most a tenth of it): half of
# it lets the work answer by itself (a batch's call ends at its members' last deadline), the other
# half is for the answer's way out, so that the client hears within the budget.
ANSWER_RESERVE_SECONDS = 1.0
# No try starts with less than this left before its deadline.
LAST_TRY_SECONDS = 0.05


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset between uses: the ledger leaves no session state on pooled connections.

    (No SET, LISTEN, cursors or session-level advisory locks; asyncpg still rolls back a
    transaction left open.) The default reset would cost a round trip per request.
    """


@dataclass
class RetryPolicy:
    """How long an operation rides through an unavailable primary, and how many may wait at once."""

    seconds: float
    max_waiting: int
    command_timeout: float | None = None  # the pool's own bound on a statement
    waiting: int = 0  # operations of this process now waiting to try again

    @property
    def budget(self) -> float:
        """How long a request may take in all, its tries and waits together: the retry budget, and at
        least one statement's timeout (so that LEDGER_WRITE_RETRY_SECONDS=0 still allows one try)."""
        return max(self.seconds, self.command_timeout or 0.0)

    @property
    def reserve(self) -> float:
        """The part of the budget kept for the answer (ANSWER_RESERVE_SECONDS, at most a tenth)."""
        return min(ANSWER_RESERVE_SECONDS, self.budget / 10)


def request_deadline(pool: asyncpg.Pool) -> float | None:
    """The deadline (time.monotonic()) of a request that arrives now: every call made for it with
    this deadline (`retrying` through `Tries`, the group commit's append) ends by then, its key
    lookup and its reads or append together, so that their tries never add up past one budget.
    None when the pool has no RetryPolicy (no deadline)."""
    policy: RetryPolicy | None = getattr(pool, "retry", None)
    if policy is None:
        return None
    return time.monotonic() + policy.budget - policy.reserve


class LedgerPool(asyncpg.Pool):
    """asyncpg's pool, carrying its users' RetryPolicy (see `retrying`)."""

    def __init__(self, *args: Any, retry: RetryPolicy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry = retry


async def create_pool(settings: DatabaseSettings) -> LedgerPool:
    """A pool that opens its connections lazily, so the API starts even while Postgres is down.

    Its connections go to the primary (core.pg.connect_primary: a multi-host URL is tried host by
    host, each with its own short timeout, so a frozen old primary does not stall the others).
    """
    pool = LedgerPool(
        settings.url,
        retry=RetryPolicy(float(settings.retry_seconds), settings.retry_max_waiting, float(settings.command_timeout)),
        connect=connect_primary,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        loop=None,
        timeout=ACQUIRE_TIMEOUT,
        min_size=0,
        max_size=settings.pool_size,
        max_queries=50000,
        max_inactive_connection_lifetime=300.0,
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
    return await pool


@dataclass
class Tries:
    """What the tries of one `retrying` call saw."""

    count: int = 0
    unknown_outcome: bool = False  # a try failed after its statement may have reached Postgres
    deadline: float | None = None  # time.monotonic() by which the call gives up (None: the policy's budget)
    command_timeout: float | None = None
    # `work` bounds its own statements by `timeout()` (the append: its COMMIT must not be cancelled,
    # see `_try`); otherwise each try is cut at `timeout()` from outside.
    bounds_itself: bool = False

    def timeout(self) -> float | None:
        """The bound for a statement of the current try: what is left before the deadline, at most
        the pool's command timeout (None: no deadline, the pool's own timeout applies)."""
        if self.deadline is None:
            return None
        left = max(self.deadline - time.monotonic(), 0.05)
        return left if self.command_timeout is None else min(left, self.command_timeout)


async def retrying(pool: asyncpg.Pool, work: Callable[[asyncpg.Connection], Awaitable[T]],
                   tries: Tries | None = None) -> T:
    """`work` on a pooled connection; tried again on a transient StoreUnavailable (a failover:
    broken, refused, frozen or read-only connections) until the pool's RetryPolicy budget is spent.

    A connection that failed that way is dropped (terminated, not returned to the pool) and the
    pool's other connections are replaced on their next use, since they most likely lead to the
    same old primary. `work` must be safe to run again: the append is, because its event ids are
    made once, before the first try, so a try whose commit was lost in flight is answered by the
    ledger's idempotency on the next. Beyond the policy's `max_waiting` operations waiting at
    once, the error is raised at once (503), so a long outage does not pile up requests.

    With `tries.deadline` set (a request's: `request_deadline`), no try starts after it, each
    waits for a connection at most until it, and each is bounded by `tries.timeout()` (by `work`
    itself when `tries.bounds_itself`, else from outside), so the call ends near the deadline
    whatever Postgres does (an append whose commit waits for a standby that is gone, a read on a
    primary that was cut off).
    """
    policy: RetryPolicy | None = getattr(pool, "retry", None)
    tries = tries or Tries()
    if tries.deadline is not None and policy is not None:
        tries.command_timeout = policy.command_timeout
    # Tries go on for the policy's retry budget, never past the deadline (which also bounds each try).
    deadline = time.monotonic() + (policy.seconds if policy else 0.0)
    if tries.deadline is not None:
        deadline = min(deadline, tries.deadline)
    delay = 0.05
    waiting = False
    try:
        while True:
            tries.count += 1
            try:
                return await _try(pool, work, tries)
            except StoreUnavailable as error:
                left = deadline - time.monotonic()
                if policy is None or not error.transient or left < LAST_TRY_SECONDS:
                    raise
                if not waiting:
                    if policy.waiting >= policy.max_waiting:
                        raise StoreUnavailable(f"{policy.waiting} requests already wait for the ledger store",
                                               transient=False) from error
                    policy.waiting += 1
                    waiting = True
                    log.info("ledger store unavailable (%s); trying again for up to %gs", error.detail, policy.seconds)
            # The last try comes just before the deadline: the budget is used up before a 503 says so.
            await asyncio.sleep(min(delay, left - LAST_TRY_SECONDS))
            delay = min(delay * 2, 0.5)
    finally:
        if waiting and policy is not None:
            policy.waiting -= 1


async def _try(pool: asyncpg.Pool, work: Callable[[asyncpg.Connection], Awaitable[T]], tries: Tries) -> T:
    wait = ACQUIRE_TIMEOUT
    if tries.deadline is not None:
        wait = min(wait, max(tries.deadline - time.monotonic(), 0.05))
    with translate_errors():
        async with pool.acquire(timeout=wait) as conn:
            try:
                if tries.deadline is None or tries.bounds_itself:
                    return await work(conn)
                # Reads only (an append bounds itself): cancelling them leaves nothing half-done.
                return await asyncio.wait_for(work(conn), tries.timeout())
            except Exception as error:
                translated = translate(error)
                if isinstance(translated, StoreUnavailable) and translated.transient:
                    # A server's own refusal (read-only, deadlock, ...) means nothing committed;
                    # a lost connection or a shutdown (even mid-COMMIT) leaves the outcome open.
                    refused = (isinstance(error, asyncpg.PostgresError)
                               and (error.sqlstate or "")[:2] not in ("08", "57"))
                    tries.unknown_outcome = tries.unknown_outcome or not refused
                    # At once, with no await before it: on a command timeout asyncpg has only just
                    # scheduled a CancelRequest, and terminate() drops it unsent. A cancel that reached
                    # a COMMIT waiting for the synchronous standby would end the wait and leave the
                    # transaction committed on this node alone, visible, and our retry would then
                    # acknowledge it (tests/ha/test_replicas.py, both replicas lost, checks this).
                    conn.terminate()
                    await pool.expire_connections()
                raise


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
    except LedgerError:
        raise
    except Exception as error:
        translated = translate(error)
        if translated is error:
            raise
        raise translated from error


def translate(error: BaseException) -> BaseException:
    """The ledger's error for a driver or socket error (the error itself when it is neither).

    Transient (StoreUnavailable.transient, retried by `retrying`): refused, reset or timed-out
    connections, a connection that broke mid-operation, a host that is a standby (read-only, or
    TargetServerAttributeNotMatched at connect), an administrator's shutdown, too many
    connections, serialization failures and deadlocks.
    """
    if isinstance(error, asyncpg.PostgresError):
        return _translate_postgres(error)
    if is_transient(error):
        # e.g. InternalClientError: a connection that broke mid-operation (a Postgres restart),
        # or, at connect, no host of a multi-host URL that is read-write.
        return StoreUnavailable(f"ledger store unavailable: {type(error).__name__}")
    return error


def _translate_postgres(error: asyncpg.PostgresError) -> Exception:
    sqlstate = error.sqlstate or ""
    if isinstance(error, asyncpg.UniqueViolationError):
        if error.constraint_name == "events_event_id_key":
            return EventIdConflict(REFUSALS[EventIdConflict.code][1])
        if error.constraint_name == "bookings_pkey":
            return BookingCodeTaken(REFUSALS[BookingCodeTaken.code][1])
        if error.constraint_name == "personal_keys_pkey":  # a key stored meanwhile (0019)
            return DataKeyStale(DataKeyStale.words)
    if isinstance(error, asyncpg.CheckViolationError) and error.constraint_name == "events_position_floor":
        # A call of the pre-0007 ledger_append still running while 0007 committed: try again
        # (with the new function). Also what a restore into lower transaction ids gives.
        return StoreUnavailable("the ledger's positions would go backwards (migration 0007 in progress?)")
    if sqlstate.startswith(("22", "54")) or sqlstate == "23514":  # data exception, program limit, CHECK
        return InvalidData(f"the ledger cannot store this input: {error.message}")
    if sqlstate in _SCHEMA_MISSING:
        return StoreUnavailable(f"the ledger schema is not in place ({sqlstate}): run migrate", transient=False)
    if is_transient(error):
        return StoreUnavailable(f"ledger store unavailable ({sqlstate})")
    return error

