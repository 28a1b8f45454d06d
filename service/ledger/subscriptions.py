"""Subscriptions (webhooks) as the API manages them: create, list, read, delete, resume, skip.

A subscription belongs to the department of the key that made it; only that department's keys
see or change it. Its secret is made here, returned once and stored for the `deliver` worker,
which alone may read it back (migration 0015). Delivery itself is cdc/deliver.py's.

Every change sends a NOTIFY on SUBSCRIPTIONS_CHANNEL, so the worker picks it up at once (it also
polls). A subscription whose key is revoked stops: the worker delivers nothing for it, and it
shows `status: "stopped"`.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime

import asyncpg
import msgspec

from core.webhooks import SUBSCRIPTIONS_CHANNEL
from service.ledger.db import retrying
from service.ledger.errors import SubscriptionLimit, SubscriptionNotFound, SubscriptionNotPaused


class Filters(msgspec.Struct, omit_defaults=True):
    department: str | None = None
    type: str | None = None
    booking_code: str | None = None


class Subscription(msgspec.Struct):
    """A subscription as its department sees it (never its secret)."""

    id: uuid.UUID
    url: str
    filters: Filters
    status: str  # active, paused, or stopped (its key was revoked)
    position: int  # every matching event at or below it was delivered (or skipped)
    created_at: datetime
    delivered_at: datetime | None
    delivered_events: int
    attempts: int  # of the delivery now failing (0 when none is)
    last_status: int | None  # the receiver's last HTTP status (null: no answer, or none yet)
    reason: str | None  # why the last attempt failed; kept while paused
    paused_at: datetime | None
    paused_position: int | None  # the event it is paused on
    paused_event_id: uuid.UUID | None
    skipped_events: int


_COLUMNS = """
s.id, s.url, s.filter_department, s.filter_type, s.filter_booking_code, s.position, s.created_at,
s.delivered_at, s.delivered_events, s.attempts, s.last_status, s.last_error, s.paused_at, s.paused_position,
s.paused_event_id,
CASE WHEN k.revoked_at IS NOT NULL THEN 'stopped' ELSE s.status END AS status,
(SELECT count(*) FROM subscription_skips x WHERE x.subscription_id = s.id) AS skipped_events"""

_SELECT = f"SELECT {_COLUMNS} FROM subscriptions s JOIN api_keys k ON k.id = s.key_id"

LIST_SQL = f"{_SELECT} WHERE s.department = $1 ORDER BY s.created_at, s.id"
GET_SQL = f"{_SELECT} WHERE s.id = $1 AND s.department = $2"

# Concurrent creations for one department queue on this lock, so the count below is exact.
LOCK_DEPARTMENT_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('ledger-subscriptions:' || $1, 0))"
COUNT_SQL = "SELECT count(*) FROM subscriptions WHERE department = $1"
# Without `after`, the subscription starts below the feed's fence: every event whose transaction
# has not ended yet, or starts later, is at or above it (service/ledger/reads.py), so none is missed.
INSERT_SQL = """
INSERT INTO subscriptions (id, department, key_id, url, filter_department, filter_type, filter_booking_code,
                           secret, position)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, coalesce($9, ledger_feed_fence() - 1))
RETURNING id
"""
DELETE_SQL = "DELETE FROM subscriptions WHERE id = $1 AND department = $2 RETURNING id"
RESUME_SQL = """
UPDATE subscriptions
   SET status = 'active', paused_at = NULL, paused_position = NULL, paused_event_id = NULL, attempts = 0
 WHERE id = $1 AND department = $2 AND status = 'paused'
RETURNING id
"""
# Skips exactly the event the subscription is paused on: the cursor moves onto it, and the skip is recorded.
SKIP_SQL = """
WITH skipped AS (
    UPDATE subscriptions s
       SET status = 'active', position = s.paused_position, paused_at = NULL, paused_position = NULL,
           paused_event_id = NULL, attempts = 0, last_status = NULL, last_error = NULL
      FROM (SELECT id, paused_position, paused_event_id FROM subscriptions
             WHERE id = $1 AND department = $2 AND status = 'paused') p
     WHERE s.id = p.id AND s.status = 'paused'  -- checked again after waiting for a concurrent change
    RETURNING s.id, p.paused_position, p.paused_event_id
)
INSERT INTO subscription_skips (subscription_id, position, event_id, key_id)
SELECT id, paused_position, paused_event_id, $3 FROM skipped
RETURNING subscription_id
"""
NOTIFY_SQL = "SELECT pg_notify($1, $2::text)"
# Age in seconds of the oldest committed event a subscription still has to deliver (NULL: none).
WAITING_SQL = """
SELECT extract(epoch FROM now() - e.recorded_at)::float8
  FROM subscriptions s, LATERAL (
        SELECT recorded_at FROM events
         WHERE position > s.position AND position + 0 < (SELECT ledger_feed_fence())  -- see reads.FEED_SQL
           AND (s.filter_department IS NULL OR department = s.filter_department)
           AND (s.filter_type IS NULL OR type = s.filter_type)
           AND (s.filter_booking_code IS NULL OR booking_code = s.filter_booking_code)
         ORDER BY position LIMIT 1) e
 WHERE s.id = $1 AND s.department = $2
"""


def _subscription(row: asyncpg.Record) -> Subscription:
    return Subscription(
        id=row["id"], url=row["url"],
        filters=Filters(department=row["filter_department"], type=row["filter_type"],
                        booking_code=row["filter_booking_code"]),
        status=row["status"], position=row["position"], created_at=row["created_at"],
        delivered_at=row["delivered_at"], delivered_events=row["delivered_events"], attempts=row["attempts"],
        last_status=row["last_status"], reason=row["last_error"], paused_at=row["paused_at"],
        paused_position=row["paused_position"], paused_event_id=row["paused_event_id"],
        skipped_events=row["skipped_events"],
    )


def new_secret() -> str:
    """A signing secret: 256 random bits."""
    return "whsec_" + secrets.token_urlsafe(32)


async def create_subscription(pool: asyncpg.Pool, *, department: str, key_id: str, url: str, filters: Filters,
                              after: int | None, max_per_department: int) -> tuple[Subscription, str]:
    """A new active subscription and its secret (shown once). SubscriptionLimit when the department
    holds `max_per_department` already."""
    secret = new_secret()
    subscription_id = uuid.uuid4()

    async def work(conn: asyncpg.Connection) -> asyncpg.Record:
        async with conn.transaction():
            await conn.execute(LOCK_DEPARTMENT_SQL, department)
            held = await conn.fetchval(COUNT_SQL, department)
            if held >= max_per_department:
                raise SubscriptionLimit(f"the department holds {held} subscriptions, the most it may "
                                        "(LEDGER_WEBHOOK_MAX_PER_DEPARTMENT): delete one first")
            await conn.execute(INSERT_SQL, subscription_id, department, key_id, url, filters.department,
                               filters.type, filters.booking_code, secret, after)
            await conn.execute(NOTIFY_SQL, SUBSCRIPTIONS_CHANNEL, str(subscription_id))
            return await conn.fetchrow(GET_SQL, subscription_id, department)

    # Safe to run again: a try whose commit was lost made the same id, and a second insert of it fails.
    return _subscription(await retrying(pool, work)), secret


async def list_subscriptions(pool: asyncpg.Pool, department: str) -> list[Subscription]:
    rows = await retrying(pool, lambda conn: conn.fetch(LIST_SQL, department))
    return [_subscription(row) for row in rows]


async def get_subscription(pool: asyncpg.Pool, department: str, subscription_id: uuid.UUID) -> Subscription:
    row = await retrying(pool, lambda conn: conn.fetchrow(GET_SQL, subscription_id, department))
    if row is None:
        raise SubscriptionNotFound("no subscription with this id for this department")
    return _subscription(row)


async def _change(pool: asyncpg.Pool, statement: str, subscription_id: uuid.UUID, *args: object) -> bool:
    async def work(conn: asyncpg.Connection) -> bool:
        async with conn.transaction():
            changed = await conn.fetchval(statement, subscription_id, *args)
            if changed is not None:
                await conn.execute(NOTIFY_SQL, SUBSCRIPTIONS_CHANNEL, str(subscription_id))
            return changed is not None

    return await retrying(pool, work)


async def delete_subscription(pool: asyncpg.Pool, department: str, subscription_id: uuid.UUID) -> None:
    if not await _change(pool, DELETE_SQL, subscription_id, department):
        raise SubscriptionNotFound("no subscription with this id for this department")


async def resume_subscription(pool: asyncpg.Pool, department: str, subscription_id: uuid.UUID) -> Subscription:
    """Deliver again from the event it is paused on."""
    if not await _change(pool, RESUME_SQL, subscription_id, department):
        await _not_paused(pool, department, subscription_id)
    return await get_subscription(pool, department, subscription_id)


async def skip_paused_event(pool: asyncpg.Pool, department: str, key_id: str,
                            subscription_id: uuid.UUID) -> Subscription:
    """Skip exactly the event it is paused on (recorded, with the key that skipped it), then deliver on."""
    if not await _change(pool, SKIP_SQL, subscription_id, department, key_id):
        await _not_paused(pool, department, subscription_id)
    return await get_subscription(pool, department, subscription_id)


async def _not_paused(pool: asyncpg.Pool, department: str, subscription_id: uuid.UUID) -> None:
    found = await get_subscription(pool, department, subscription_id)  # SubscriptionNotFound when absent
    raise SubscriptionNotPaused(f"the subscription is {found.status}, not paused")


async def lag_seconds(pool: asyncpg.Pool, department: str, subscription_id: uuid.UUID) -> float:
    """How old the oldest event is that the subscription still has to deliver (0: none waits).
    It scans the events after the cursor up to the first match: for an operator's page, not a hot path."""
    waiting = await retrying(pool, lambda conn: conn.fetchval(WAITING_SQL, subscription_id, department))
    return max(0.0, waiting or 0.0)
