"""The bookings' data keys (migration 0018): sealing personal data before an append, opening it for
readers, and erasing it. The cryptography is core/personal.py's; only the API's role reads the keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import asyncpg
import msgspec

from core import personal
from core.events import Event
from service.ledger.append import NewEvent
from service.ledger.db import retrying
from service.ledger.errors import PersonalDataErased

KEYS_SQL = "SELECT booking_code, data_key FROM personal_keys WHERE booking_code = ANY($1::text[])"
# The booking's key, made ($2) on first use, in one round trip: the row this statement inserted, or
# the one there before (data_key NULL: erased). No row when a concurrent first use committed its key
# after this statement's snapshot was taken; the statement run again finds it.
KEY_SQL = """
WITH made AS (
    INSERT INTO personal_keys (booking_code, data_key) VALUES ($1, $2)
    ON CONFLICT (booking_code) DO NOTHING RETURNING data_key
)
SELECT data_key FROM made
UNION ALL
SELECT data_key FROM personal_keys WHERE booking_code = $1
LIMIT 1
"""
# The key destroyed; a booking that never had one is recorded as erased too (later personal data is refused).
ERASE_SQL = """
INSERT INTO personal_keys AS k (booking_code, data_key, erased_at) VALUES ($1, NULL, now())
ON CONFLICT (booking_code) DO UPDATE SET data_key = NULL, erased_at = coalesce(k.erased_at, now())
"""


def carries_personal(events: Sequence[NewEvent]) -> bool:
    return any(e.data is not None and personal.FIELD in e.data for e in events)


async def sealed(pool: asyncpg.Pool, code: str, events: Sequence[NewEvent]) -> list[NewEvent]:
    """`events` with each `data.personal` sealed under booking `code`'s key (made on first use).
    Raises PersonalDataErased when the booking's personal data was erased."""
    if not carries_personal(events):
        return list(events)

    async def key(conn: asyncpg.Connection) -> bytes | None:
        for _ in range(3):
            row = await conn.fetchrow(KEY_SQL, code, personal.new_key())
            if row is not None:
                found: bytes | None = row["data_key"]
                return found
        raise RuntimeError(f"no data key for booking {code} after three tries")

    data_key = await retrying(pool, key)
    if data_key is None:
        raise PersonalDataErased("this booking's personal data was erased: no more is taken for it")
    return [replace(e, data={**e.data, personal.FIELD: personal.seal(data_key, code, e.event_id,
                                                                      e.data[personal.FIELD])})
            if e.data is not None and personal.FIELD in e.data else e for e in events]


def as_sent(events: list[Event], sent: Sequence[NewEvent]) -> list[Event]:
    """An append's answer with its sealed personal data shown as the request sent it, which is what
    the key opens (an idempotent retry's stored events were sealed from the same data): no key to read."""
    plain = {e.event_id: e.data[personal.FIELD] for e in sent if e.data is not None and personal.FIELD in e.data}
    if not plain:
        return events
    return [msgspec.structs.replace(e, data={**e.data, personal.FIELD: plain[e.event_id]})
            if e.data is not None and e.event_id in plain and personal.sealed_in(e.data) is not None else e
            for e in events]


async def revealed(conn: asyncpg.Connection, events: list[Event]) -> list[Event]:
    """`events` as readers see them: sealed personal data opened, or "erased" where the key is gone.
    One query, and only when some event carries personal data."""
    codes = {e.booking_code for e in events if personal.sealed_in(e.data) is not None}
    if not codes:
        return events
    keys = {row["booking_code"]: row["data_key"] for row in await conn.fetch(KEYS_SQL, list(codes))}
    return [msgspec.structs.replace(e, data=personal.revealed(e.data, e.booking_code, e.event_id,
                                                              keys.get(e.booking_code)))
            if e.booking_code in codes else e for e in events]


async def erase(pool: asyncpg.Pool, code: str) -> None:
    """Destroy booking `code`'s data key (at once, for every reader and every copy of the ciphertext)."""
    await retrying(pool, lambda conn: conn.execute(ERASE_SQL, code))
