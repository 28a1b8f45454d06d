"""The data keys of two API processes (two DataKeys on one ledger, each keeping what it sealed with):
the append function checks the key an append was sealed with against its booking's, under the
booking's lock (0019), so a key one process keeps is never wrong for long: another process's first
key, an erasure made elsewhere, an idempotent retry sent to a process that never saw the booking,
and a key stored by a writer that does not take the lock all end as they would in one process."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest

from core import personal as core_personal
from service.ledger.append import Append, AppendResult, NewEvent, append_one
from service.ledger.errors import EventIdConflict, PersonalDataErased
from service.ledger.personal import DataKeys, appended
from tests.conftest import random_code

WAITING = ("SELECT count(*) FROM pg_stat_activity"
           " WHERE wait_event_type = 'Lock' AND query LIKE '%ledger_append_batch%'")
TRAVELLER = {"name": "Ada Example", "seat": "12A"}


def with_traveller(traveller: dict[str, str] = TRAVELLER, event_id: uuid.UUID | None = None) -> NewEvent:
    return NewEvent(event_id or uuid.uuid4(), "Note", None, {"reason": "seat", core_personal.FIELD: traveller})


def append_of(code: str, expected_version: int | None, *events: NewEvent) -> Append:
    return Append(code, "hotel", False, expected_version, events)


async def stored_key(pool: asyncpg.Pool, code: str) -> bytes | None:
    key: bytes | None = await pool.fetchval("SELECT data_key FROM personal_keys WHERE booking_code = $1", code)
    return key


async def opened(pool: asyncpg.Pool, code: str) -> list[object]:
    """Each stored event's personal data, opened with the booking's stored key."""
    key = await stored_key(pool, code)
    rows = await pool.fetch("SELECT event_id, data FROM events WHERE booking_code = $1 ORDER BY version", code)
    return [core_personal.revealed(row["data"], code, row["event_id"], key)[core_personal.FIELD]
            for row in rows if row["data"] and core_personal.FIELD in row["data"]]


async def test_a_create_stores_its_key_with_the_booking_and_another_process_reads_it(pool: asyncpg.Pool) -> None:
    first, second = DataKeys(pool), DataKeys(pool)
    code = random_code("KEYS")
    created = await appended(first, lambda item: append_one(pool, item), append_of(code, 0, with_traveller()), None)
    assert created.version == 1
    assert await stored_key(pool, code) == (await first.key(code, creating=False, deadline=None)).key
    other = {"name": "Ada Example", "seat": "14C"}
    await appended(second, lambda item: append_one(pool, item), append_of(code, None, with_traveller(other)), None)
    assert await opened(pool, code) == [TRAVELLER, other]


async def test_an_append_sealed_with_a_key_that_is_not_the_bookings_is_sealed_again(pool: asyncpg.Pool) -> None:
    first, second = DataKeys(pool), DataKeys(pool)
    code = random_code("KEYS")
    await appended(first, lambda item: append_one(pool, item), append_of(code, 0, with_traveller()), None)
    wrong = second.new(code).key  # e.g. kept from a create of this code that was refused
    calls: list[bytes | None] = []

    async def write(item: Append) -> AppendResult:
        calls.append(item.data_key)
        return await append_one(pool, item)

    other = {"name": "Ada Example", "seat": "3F"}
    await appended(second, write, append_of(code, None, with_traveller(other)), None)
    assert calls == [wrong, await stored_key(pool, code)]  # data_key_stale, then the booking's key
    assert await opened(pool, code) == [TRAVELLER, other]


async def test_an_erasure_made_by_another_process_refuses_the_personal_data_a_kept_key_would_seal(
        pool: asyncpg.Pool) -> None:
    first, second = DataKeys(pool), DataKeys(pool)
    code = random_code("KEYS")
    await appended(first, lambda item: append_one(pool, item), append_of(code, 0, with_traveller()), None)
    await second.erase(code)
    with pytest.raises(PersonalDataErased):
        await appended(first, lambda item: append_one(pool, item), append_of(code, None, with_traveller()), None)
    assert await pool.fetchval("SELECT version FROM bookings WHERE code = $1", code) == 1  # nothing written
    plain = NewEvent(uuid.uuid4(), "Note", None, {"reason": "no personal data"})
    later = await appended(first, lambda item: append_one(pool, item), append_of(code, None, plain), None)
    assert later.version == 2
    # A booking erased before it had a key, or before it existed, takes no personal data either.
    never = random_code("KEYS")
    await second.erase(never)
    with pytest.raises(PersonalDataErased):
        await appended(first, lambda item: append_one(pool, item), append_of(never, 0, with_traveller()), None)
    assert await pool.fetchval("SELECT count(*) FROM bookings WHERE code = $1", never) == 0


async def test_a_retried_create_sent_to_a_process_without_its_key_is_a_replay(pool: asyncpg.Pool) -> None:
    first, second = DataKeys(pool), DataKeys(pool)
    code = random_code("KEYS")
    event = with_traveller()
    created = await appended(first, lambda item: append_one(pool, item), append_of(code, 0, event), None)
    # The second process makes a new key for the create, and the retry first reads as a conflict.
    replayed = await appended(second, lambda item: append_one(pool, item), append_of(code, 0, event), None)
    assert replayed.replayed and replayed.events == created.events
    # The same event id with other personal data stays a conflict.
    changed = with_traveller({"name": "Someone Else"}, event_id=event.event_id)
    with pytest.raises(EventIdConflict):
        await appended(DataKeys(pool), lambda item: append_one(pool, item), append_of(code, 0, changed), None)


async def test_a_first_key_stored_meanwhile_without_the_lock_fails_the_call_and_the_append_is_sealed_again(
        pool: asyncpg.Pool) -> None:
    """A writer of personal_keys outside the append function (an API of 0018 during a rolling upgrade)
    commits a booking's first key while an append holding a new key waits to store its own."""
    keys = DataKeys(pool)
    code = random_code("KEYS")
    theirs = core_personal.new_key()
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("INSERT INTO personal_keys (booking_code, data_key) VALUES ($1, $2)", code, theirs)
        # Seen by nobody yet: the append's key check finds none and its INSERT waits for this row.
        task = asyncio.create_task(
            appended(keys, lambda item: append_one(pool, item), append_of(code, 0, with_traveller()), None))
        deadline = time.monotonic() + 30
        while not await pool.fetchval(WAITING):
            assert time.monotonic() < deadline, "the append never waited for the uncommitted key"
            await asyncio.sleep(0.05)
        await transaction.commit()
    result = await asyncio.wait_for(task, 30)
    assert result.version == 1  # a redo after the unique violation, sealed with the stored key
    assert await stored_key(pool, code) == theirs
    assert await opened(pool, code) == [TRAVELLER]
