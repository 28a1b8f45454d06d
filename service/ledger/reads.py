"""Reads, all from Postgres, the system of record: a read after a 2xx append always sees it. Events come
with their personal data opened for the reader, or "erased" (service/ledger/personal.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg
import msgspec

from core import personal
from core.events import EVENT_COLUMN_NAMES, EVENT_COLUMNS, Event, Price, event_from_row, price_of
from core.pg import standby_holds
from service.ledger.db import Tries, retrying
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
#
# `position + 0`: the fence is a filter, not a bound of the index scan. As a bound, the planner
# cannot know it and guesses that few rows lie between the cursor and the fence, so its custom
# plans (a session's first executions) read every event after the cursor and sort them: 30-56 ms
# a page on a ledger of 200,000 events, growing with the ledger. As a filter, the scan walks the
# primary key from the cursor and stops after the page: 3.2-3.5 ms (bench/README.md, issue 25).
# `(SELECT ledger_feed_fence())`: computed once per statement (an InitPlan), not once per row read
# (0.27 ms vs 0.12 ms for 500 rows, measured with pgbench); the same snapshot either way.
FEED_SQL = _bounded(f"""
SELECT {EVENT_COLUMNS} FROM events
 WHERE position > $1
   AND position + 0 < (SELECT ledger_feed_fence())
 ORDER BY position
 LIMIT $2""", "position").format(max_bytes="$3")


# An event as its JSON text, written by Postgres exactly as msgspec writes core.events.Event (the
# same fields in the same order, times in UTC with "Z" and microseconds only when there are any,
# the price's amount as the numeric's own text), except `data`: jsonb's own text, which differs
# from the compact form only in white space, and in numbers written out where a client's exponent
# was (equal values). The API passes pages of these through instead of decoding rows into events
# and encoding them again (bench/README.md: the cost of the reads).
#
# A time is one to_char with microseconds, whose ".000000" (only ever the fraction) is dropped: one
# call instead of two and an extract, 0.17 ms less Postgres time for a 500-event page (2.35 -> 2.18).
def _utc_text(column: str) -> str:
    return f"""CASE WHEN {column} = '-infinity' THEN '"0001-01-01T00:00:00Z"'
              WHEN {column} = 'infinity' THEN '"9999-12-31T23:59:59.999999Z"'
              ELSE '"' || replace(to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), '.000000', '')
                   || 'Z"' END"""


def event_json(table: str) -> str:
    """The JSON text of the event in the row of `table` (an alias)."""
    c = {column: f"{table}.{column}" for column in EVENT_COLUMN_NAMES}
    return f"""'{{"event_id":"' || {c['event_id']} || '","booking_code":' || to_json({c['booking_code']})
    || ',"version":' || {c['version']} || ',"type":' || to_json({c['type']})
    || ',"price":' || CASE WHEN {c['price_amount']} IS NULL OR {c['price_currency']} IS NULL THEN 'null'
                           ELSE '{{"amount":"' || {c['price_amount']} || '","currency":'
                                || to_json({c['price_currency']}) || '}}' END
    || ',"data":' || coalesce({c['data']}::text, 'null') || ',"department":' || to_json({c['department']})
    || ',"occurred_at":' || coalesce({_utc_text(c['occurred_at'])}, 'null')
    || ',"recorded_at":' || {_utc_text(c['recorded_at'])} || ',"position":' || {c['position']}
    || ',"hash":"' || encode({c['hash']}, 'hex') || '"}}'"""


# The same pages as BOOKING_EVENTS_SQL and FEED_SQL, each as one row: the events' JSON texts
# joined by commas (the inside of the answer's array), what the next cursor needs, and whether an
# event of the page carries personal data (which only the decoded path can open).
BOOKING_EVENTS_JSON_SQL = f"""
SELECT b.version AS booking_version, max(e.version) AS last_version,
       coalesce(string_agg({event_json("e")}, ',' ORDER BY e.version), '') AS events,
       coalesce(bool_or(e.data ? '{personal.FIELD}'), false) AS personal
  FROM bookings b
  LEFT JOIN LATERAL ({_bounded(_BOOKING_PAGE, "version").format(max_bytes="$4")}) e ON true
 WHERE b.code = $1
 GROUP BY b.version
"""
FEED_JSON_SQL = f"""
SELECT max(f.position) AS last_position, coalesce(string_agg({event_json("f")}, ',' ORDER BY f.position), '') AS events,
       coalesce(bool_or(f.data ? '{personal.FIELD}'), false) AS personal
  FROM ({FEED_SQL}) f
"""


@dataclass(frozen=True, slots=True)
class JsonPage:
    """A page of events as JSON text: `events` is the inside of the answer's array (b"" for none);
    `next` the cursor to read on from (a version or a position; None: nothing left)."""

    events: bytes
    next: int | None


class Booking(msgspec.Struct, frozen=True):
    """A booking as the ledger holds it now."""

    booking_code: str
    department: str
    version: int
    price: Price | None
    created_at: datetime
    updated_at: datetime


async def get_booking(pool: asyncpg.Pool, code: str, deadline: float | None = None) -> Booking:
    """The booking `code`; read by `deadline` (a request's, service.ledger.db.request_deadline)."""
    row = await retrying(pool, lambda conn: conn.fetchrow(BOOKING_SQL, code), Tries(deadline=deadline))
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
    page = await retrying(pool, lambda conn: _booking_page(conn, code, from_version, limit, max_bytes))
    if page is None:
        raise BookingNotFound("no booking with this code")
    return page


async def _booking_page(conn: asyncpg.Connection, code: str, from_version: int, limit: int,
                        max_bytes: int) -> tuple[list[Event], int | None] | None:
    rows = await conn.fetch(BOOKING_EVENTS_SQL, code, from_version, limit, max_bytes)
    if not rows:
        return None
    events = await revealed(conn, [event_from_row(row) for row in rows if row["event_id"] is not None])
    last = events[-1].version if events else from_version - 1
    return events, last + 1 if last < rows[0]["booking_version"] else None


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


# A page whose events carry personal data is read again the decoded way (the rows, their sealed
# personal data opened with the booking's key or shown erased, encoded by msgspec): Postgres cannot
# open it (the keys never reach SQL). Pages without it, nearly all, pass through.
def _joined(events: list[Event]) -> bytes:
    return b",".join(msgspec.json.encode(event) for event in events)


async def read_booking_events_json(
    pool: asyncpg.Pool, code: str, from_version: int, limit: int, max_bytes: int = MAX_PAGE_BYTES,
    deadline: float | None = None,
) -> JsonPage:
    """`read_booking_events`, the events as Postgres wrote their JSON (or, for a page with personal
    data, as msgspec writes the decoded events: the same JSON values). Read by `deadline`."""
    async def read(conn: asyncpg.Connection) -> JsonPage | None:
        row = await conn.fetchrow(BOOKING_EVENTS_JSON_SQL, code, from_version, limit, max_bytes)
        if row is None:
            return None
        if row["personal"]:
            page = await _booking_page(conn, code, from_version, limit, max_bytes)
            assert page is not None  # the booking was there a statement ago, and bookings stay
            return JsonPage(_joined(page[0]), page[1])
        last = row["last_version"] if row["last_version"] is not None else from_version - 1
        return JsonPage(row["events"].encode(), last + 1 if last < row["booking_version"] else None)

    page = await retrying(pool, read, Tries(deadline=deadline))
    if page is None:
        raise BookingNotFound("no booking with this code")
    return page


async def read_feed_json(pool: asyncpg.Pool, after: int, limit: int, max_bytes: int = MAX_PAGE_BYTES,
                         deadline: float | None = None) -> JsonPage:
    """`read_feed`, the events as Postgres wrote their JSON (behind the same fence and barrier; a page
    with personal data as msgspec writes the decoded events); read by `deadline`."""
    return await retrying(pool, lambda conn: _feed_json_page(conn, after, limit, max_bytes), Tries(deadline=deadline))


async def _feed_json_page(conn: asyncpg.Connection, after: int, limit: int, max_bytes: int) -> JsonPage:
    row = await conn.fetchrow(FEED_JSON_SQL, after, limit, max_bytes)
    if row["personal"]:
        events = await _feed_page(conn, after, limit, max_bytes)
        return JsonPage(_joined(events), events[-1].position if events else after)
    if row["last_position"] is not None:
        await standby_holds(conn)
    return JsonPage(row["events"].encode(), row["last_position"] if row["last_position"] is not None else after)
