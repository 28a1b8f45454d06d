"""The bookings' data keys (migrations 0018, 0019): sealing personal data for an append, opening it
for readers, and erasing it. The cryptography is core/personal.py's; only the API's role reads the keys.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

import asyncpg
import msgspec

from core import personal
from core.events import Event
from service.ledger.append import Append, AppendResult, NewEvent
from service.ledger.db import Tries, retrying
from service.ledger.errors import REFUSALS, DataKeyStale, EventIdConflict, PersonalDataErased

KEYS_SQL = "SELECT booking_code, data_key FROM personal_keys WHERE booking_code = ANY($1::text[])"
# The booking's key: no row while it has none, data_key NULL once erased.
KEY_SQL = "SELECT data_key FROM personal_keys WHERE booking_code = $1"
# The key destroyed; a booking that never had one is recorded as erased too (later personal data is refused).
ERASE_SQL = """
INSERT INTO personal_keys AS k (booking_code, data_key, erased_at) VALUES ($1, NULL, now())
ON CONFLICT (booking_code) DO UPDATE SET data_key = NULL, erased_at = coalesce(k.erased_at, now())
"""
ERASED_WORDS = REFUSALS[PersonalDataErased.code][1]
KEYS_KEPT = 100_000  # data keys an API process keeps (32 bytes each, and the booking code)
TRIES = 3  # seals of one append: the key kept, the booking's read, and one more if it changed meanwhile


def carries_personal(events: Sequence[NewEvent]) -> bool:
    return any(e.data is not None and personal.FIELD in e.data for e in events)


class DataKeys:
    """The data keys this API process sealed with last, by booking (at most `kept`, the least
    recently used go first). A key kept here is checked by the append function under the booking's
    lock (0019): another process may have erased the booking meanwhile (the append is refused), or
    stored the booking's first key (the append is sealed again with the one read then). A new
    booking's key is made here and stored by the append that creates it: no statement of its own."""

    def __init__(self, pool: asyncpg.Pool, kept: int = KEYS_KEPT) -> None:
        self._pool = pool
        self._kept = kept
        self._keys: OrderedDict[str, personal.Sealer] = OrderedDict()

    async def key(self, code: str, *, creating: bool, deadline: float | None) -> personal.Sealer:
        """The key to seal booking `code`'s personal data with: the one kept, or a new one for an
        append that creates the booking, or else the booking's (a new one when it has none).
        Raises PersonalDataErased when the booking's personal data was erased."""
        kept = self._keys.get(code)
        if kept is not None:
            self._keys.move_to_end(code)
            return kept
        if creating:
            return self.new(code)
        stored = await self.read(code, deadline)
        return stored if stored is not None else self.new(code)

    async def read(self, code: str, deadline: float | None) -> personal.Sealer | None:
        """Booking `code`'s key as stored (kept from now on); None while it has none. Raises
        PersonalDataErased when its personal data was erased."""
        row = await retrying(self._pool, lambda conn: conn.fetchrow(KEY_SQL, code), Tries(deadline=deadline))
        if row is None:
            return None
        if row["data_key"] is None:
            self.forget(code)
            raise PersonalDataErased(ERASED_WORDS)
        return self._keep(code, row["data_key"])

    def new(self, code: str) -> personal.Sealer:
        """A new key for booking `code`, kept (the append that uses it first stores it)."""
        return self._keep(code, personal.new_key())

    def forget(self, code: str) -> None:
        self._keys.pop(code, None)

    async def erase(self, code: str) -> None:
        """Destroy booking `code`'s key (at once, for every reader and every copy of the ciphertext)."""
        self.forget(code)
        await retrying(self._pool, lambda conn: conn.execute(ERASE_SQL, code))

    def _keep(self, code: str, key: bytes) -> personal.Sealer:
        self._keys[code] = sealer = personal.Sealer(key)
        self._keys.move_to_end(code)
        if len(self._keys) > self._kept:
            self._keys.popitem(last=False)
        return sealer


async def appended(keys: DataKeys, write: Callable[[Append], Awaitable[AppendResult]], item: Append,
                   deadline: float | None) -> AppendResult:
    """`item` written by `write` with each `data.personal` sealed under its booking's key (DataKeys).
    Raises what `write` raises, and PersonalDataErased when the booking's personal data was erased."""
    if not carries_personal(item.events):
        return await write(item)
    key = await keys.key(item.code, creating=item.expected_version == 0, deadline=deadline)
    for _ in range(TRIES):
        try:
            return await write(replace(item, events=sealed(key, item.code, item.events), data_key=key.key))
        except PersonalDataErased:
            keys.forget(item.code)
            raise
        except (DataKeyStale, EventIdConflict) as error:
            # Sealed with a key that is not the booking's. An idempotent retry shows it as an event id
            # conflict (its events were stored sealed with the booking's key): a conflict only if that
            # key is the one used, or the booking has none.
            keys.forget(item.code)
            stored = await keys.read(item.code, deadline)
            if isinstance(error, EventIdConflict) and (stored is None or stored.key == key.key):
                raise
            key = stored if stored is not None else keys.new(item.code)
    raise RuntimeError(f"booking {item.code}'s data key changed under {TRIES} seals of one append")


def sealed(key: personal.Sealer, code: str, events: Sequence[NewEvent]) -> list[NewEvent]:
    """`events` with each `data.personal` sealed under `key`, booking `code`'s."""
    return [_sealed(key, code, e) if e.data is not None and personal.FIELD in e.data else e for e in events]


def _sealed(key: personal.Sealer, code: str, event: NewEvent) -> NewEvent:
    assert event.data is not None
    data = {**event.data, personal.FIELD: key.seal(code, event.event_id, event.data[personal.FIELD])}
    # Built, not dataclasses.replace()d: cheaper (bench/results/audit-cost/sealer-2026-12-04.txt).
    return NewEvent(event_id=event.event_id, type=event.type, price=event.price, data=data,
                    occurred_at=event.occurred_at)


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

