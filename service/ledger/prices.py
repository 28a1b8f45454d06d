"""The price of a booking as of a moment or a version: one index lookup however long its history.

"As of T" is the last priced event at or before T (inclusive: an event recorded exactly at T
counts). Events are ordered by (time, version): the events of one append share their
recorded_at (read once the append holds its booking's lock, so per booking it never runs against
version order; migration 0011), and of those the last one (highest version) is the one in force,
as it is for the booking's own price. Clocks:

- `recorded` (default): recorded_at, when the ledger stored the event: what the ledger knew then.
  Imported history has recorded_at = the time of the import.
- `occurred`: the business time, occurred_at, or recorded_at where the writer gave none.

"As of version N" is the last priced event with a version at or below N; a version beyond the
booking's current one answers the current price (as a moment in the future does).

The queries are answered by the partial indexes of migration 0009 (backward scan, LIMIT 1);
the version query by the (booking_code, version) unique index, which passes over the unpriced
events between N and the price in force.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

import asyncpg
import msgspec

from core.events import Price, price_of
from service.ledger.db import Tries, retrying
from service.ledger.errors import BookingNotFound

Clock = Literal["recorded", "occurred"]

_PRICED = "SELECT version, event_id, price_amount, price_currency FROM events"

# The expression must be written exactly as in the index (events_priced_occurred).
OCCURRED_TIME = "coalesce(occurred_at, recorded_at)"

_AS_OF: dict[str, str] = {
    "recorded": f"""{_PRICED}
         WHERE booking_code = b.code AND price_amount IS NOT NULL AND recorded_at <= $2
         ORDER BY recorded_at DESC, version DESC
         LIMIT 1""",
    "occurred": f"""{_PRICED}
         WHERE booking_code = b.code AND price_amount IS NOT NULL AND {OCCURRED_TIME} <= $2
         ORDER BY {OCCURRED_TIME} DESC, version DESC
         LIMIT 1""",
    "version": f"""{_PRICED}
         WHERE booking_code = b.code AND price_amount IS NOT NULL AND version <= $2
         ORDER BY version DESC
         LIMIT 1""",
}


def price_sql(kind: str) -> str:
    """One round trip: the booking's existence (no row: no booking) and the price in force."""
    return f"""
SELECT e.* FROM bookings b
  LEFT JOIN LATERAL ({_AS_OF[kind]}) e ON true
 WHERE b.code = $1
"""


PRICE_SQL = {kind: price_sql(kind) for kind in _AS_OF}


class PriceInForce(msgspec.Struct, frozen=True):
    """The price in force and the event that set it (all None before the first price)."""

    price: Price | None
    version: int | None
    event_id: UUID | None


async def price_at(pool: asyncpg.Pool, code: str, at: datetime, clock: Clock = "recorded",
                   deadline: float | None = None) -> PriceInForce:
    """The price of booking `code` in force at `at` (inclusive) by `clock`; BookingNotFound. Read
    by `deadline` (a request's, service.ledger.db.request_deadline)."""
    return await _price(pool, clock, code, at, deadline)


async def price_at_version(pool: asyncpg.Pool, code: str, version: int, deadline: float | None = None) -> PriceInForce:
    """The price of booking `code` in force at `version` (inclusive); BookingNotFound. Read by `deadline`."""
    return await _price(pool, "version", code, version, deadline)


async def _price(pool: asyncpg.Pool, kind: str, code: str, bound: datetime | int,
                 deadline: float | None) -> PriceInForce:
    row = await retrying(pool, lambda conn: conn.fetchrow(PRICE_SQL[kind], code, bound), Tries(deadline=deadline))
    if row is None:
        raise BookingNotFound("no booking with this code")
    return PriceInForce(price=price_of(row["price_amount"], row["price_currency"]), version=row["version"],
                        event_id=row["event_id"])
