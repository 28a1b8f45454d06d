"""Reads, all from Postgres, the system of record: a read after a 2xx append always sees it. Events come
with their personal data opened for the reader, or "erased" (service/ledger/personal.py)."""

from __future__ import annotations

from datetime import datetime

import asyncpg
import msgspec

from core.events import EVENT_COLUMNS, Event, Price, event_from_row, price_of
from core.pg import standby_holds
from service.ledger.db import retrying
from service.ledger.errors import BookingNotFound
from service.ledger.personal import revealed

BOOKING_SQL = """
SELECT code, department, version, price_amount, price_currency, created_at, updated_at
  FROM bookings WHERE code = $1
"""

# A page ends early once its events hold about MAX_PAGE_BYTES, so that no answer grows with the
# size of the events (100 events of 255 KiB were a 25 MB answer): the client resumes with the
# page's cursor. The size counted is the data's jsonb text (a little more than its compact JSON)
# plus EVENT_OVERHEAD for the other fields; a page always holds at least one event.
MAX_PAGE_BYTES = 4 * 1024 * 1024
EVENT_OVERHEAD = 512


def _bounded(query: str, order: str) -> str:
    """`query` (events in `order`, with LIMIT) cut where the bytes before an event reach $max_bytes."""
    return f"""
SELECT * FROM (
    SELECT p.*, sum(p.page_bytes) OVER (ORDER BY p.{order}) - p.page_bytes AS bytes_before
      FROM (SELECT {EVENT_COLUMNS}, coalesce(octet_length(data::text), 0) + {EVENT_OVERHEAD} AS page_bytes
              FROM ({query}) q) p
) w
 WHERE w.bytes_before < {{max_bytes}}
 ORDER BY w.{order}
"""


_BOOKING_PAGE = f"""
        SELECT {EVENT_COLUMNS} FROM events
         WHERE booking_code = b.code AND version >= $2
         ORDER BY version
         LIMIT $3"""

# One round trip answers both "does the booking exist" and "its events from a version on".
BOOKING_EVENTS_SQL = f"""
SELECT b.version AS booking_version, e.*
  FROM bookings b
  LEFT JOIN LATERAL ({_bounded(_BOOKING_PAGE, "version").format(max_bytes="$4")}) e ON true
 WHERE b.code = $1
"""

# The global feed in position order, only below the visibility fence.
#
# position = transaction id * 65536 + index (see ledger_append_batch, migration 0007). Every
# transaction whose id is below pg_snapshot_xmin(pg_current_snapshot()) has ended, and every
# transaction still running or yet to start has an id at or above it, so its events will get
# positions at or above xmin * 65536: ledger_feed_fence(), defined by the same migration as the
# formula, so that reader and writers cannot disagree on it. Reading only below that fence
# therefore returns a prefix of the feed that can never grow behind the reader: an event whose
# transaction commits late is not skipped, it is held back (with everything after it) until it
# commits. The snapshot is the statement's own, so every row below the fence is visible to this
# very query.
FEED_SQL = _bounded(f"""
SELECT {EVENT_COLUMNS} FROM events
 WHERE position > $1
   AND position < ledger_feed_fence()
 ORDER BY position
 LIMIT $2""", "position").format(max_bytes="$3")


class Booking(msgspec.Struct, frozen=True):
    """A booking as the ledger holds it now."""

    booking_code: str
    department: str
    version: int
    price: Price | None
    created_at: datetime
    updated_at: datetime


async def get_booking(pool: asyncpg.Pool, code: str) -> Booking:
    row = await retrying(pool, lambda conn: conn.fetchrow(BOOKING_SQL, code))
    if row is None:
        raise BookingNotFound("no booking with this code")
    return Booking(
        booking_code=row["code"],
        department=row["department"],
        version=row["version"],
        price=price_of(row["price_amount"], row["price_currency"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def read_booking_events(
    pool: asyncpg.Pool, code: str, from_version: int, limit: int, max_bytes: int = MAX_PAGE_BYTES
) -> tuple[list[Event], int | None]:
    """Events of one booking from `from_version` on (at most `limit`, about `max_bytes`), and the
    version to read next (None: none left)."""
    async def read(conn: asyncpg.Connection) -> tuple[list[asyncpg.Record], list[Event]]:
        rows = await conn.fetch(BOOKING_EVENTS_SQL, code, from_version, limit, max_bytes)
        return rows, await revealed(conn, [event_from_row(row) for row in rows if row["event_id"] is not None])

    rows, events = await retrying(pool, read)
    if not rows:
        raise BookingNotFound("no booking with this code")
    last = events[-1].version if events else from_version - 1
    next_from = last + 1 if last < rows[0]["booking_version"] else None
    return events, next_from


async def read_feed(
    pool: asyncpg.Pool, after: int, limit: int, max_bytes: int = MAX_PAGE_BYTES
) -> tuple[list[Event], int]:
    """Events after position `after`, in position order (at most `limit`, about `max_bytes`), and
    the cursor for the next page. Only events the synchronous standby holds: a page is answered
    once a commit made after reading it has reached the standby (core.pg.standby_holds), so no
    reader of the feed (the paged feed, the event stream) is ever handed an event
    that a failover then discards. While no standby takes commits, a page with events waits, as
    appends do, and the request ends 503 after the retry budget."""
    events = await retrying(pool, lambda conn: _feed_page(conn, after, limit, max_bytes))
    return events, events[-1].position if events else after


async def _feed_page(conn: asyncpg.Connection, after: int, limit: int, max_bytes: int) -> list[Event]:
    rows = await conn.fetch(FEED_SQL, after, limit, max_bytes)
    if rows:
        await standby_holds(conn)
    return await revealed(conn, [event_from_row(row) for row in rows])
