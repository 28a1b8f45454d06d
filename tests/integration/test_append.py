"""The append transaction on a real Postgres: collisions, versions, idempotency, atomicity.

Every test that appends runs over every write path (the `writer` fixture: a single append, group
commit), which must answer alike."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import asyncpg
import pytest

from core.money import Money
from service.ledger.append import BATCH_SQL, Append, NewEvent, batch_arguments
from service.ledger.errors import (
    BookingCodeTaken,
    BookingNotFound,
    EventIdConflict,
    InvalidData,
    NotOwner,
    VersionConflict,
)
from service.ledger.reads import get_booking, read_booking_events
from tests.conftest import random_code


def event(type_: str = "BookingPriced", amount: str | None = None, **fields) -> NewEvent:
    price = Money.parse(amount, "EUR") if amount is not None else None
    return NewEvent(event_id=fields.pop("event_id", None) or uuid.uuid4(), type=type_, price=price, **fields)


async def create(writer, code, department="hotel", events=None):
    return await writer.append(code=code, department=department, may_write_any=False, expected_version=0,
                               events=events or [event(amount="100.00")])


async def test_create_then_append_advances_versions_and_price(writer) -> None:
    code = random_code()
    created = await create(writer, code, events=[event(amount="100"), event("Note")])
    assert (created.version, created.replayed) == (2, False)
    assert [e.version for e in created.events] == [1, 2]
    appended = await writer.append(code=code, department="hotel", may_write_any=False, expected_version=2,
                                   events=[event("PriceChanged", amount="80.5")])
    assert appended.version == 3
    booking = await get_booking(writer.pool, code)
    assert (booking.department, booking.version) == ("hotel", 3)
    assert booking.price is not None and booking.price.amount == "80.50"
    # An event without a price leaves the booking's price as it was.
    await writer.append(code=code, department="hotel", may_write_any=False, expected_version=None,
                        events=[event("Note")])
    assert (await get_booking(writer.pool, code)).price.amount == "80.50"


async def test_create_of_a_taken_code_names_the_owner(writer) -> None:
    code = random_code()
    await create(writer, code, department="hotel")
    with pytest.raises(BookingCodeTaken) as taken:
        await create(writer, code, department="car")
    assert taken.value.context == {"department": "hotel"}


async def test_forty_concurrent_creators_from_two_departments_exactly_one_wins(writer) -> None:
    code = random_code("COLLIDE")
    results = await asyncio.gather(
        *(create(writer, code, department=("hotel", "car")[i % 2]) for i in range(40)), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, Exception)]
    losers = [r for r in results if isinstance(r, Exception)]
    assert len(winners) == 1
    assert all(isinstance(r, BookingCodeTaken) for r in losers), losers
    events, _ = await read_booking_events(writer.pool, code, 1, 100)
    assert len(events) == 1 and events[0].event_id == winners[0].events[0].event_id
    assert {r.context["department"] for r in losers} == {winners[0].events[0].department}


async def test_forty_concurrent_appends_at_one_expected_version_exactly_one_wins(writer) -> None:
    code = random_code()
    await create(writer, code)
    results = await asyncio.gather(
        *(writer.append(code=code, department="hotel", may_write_any=False, expected_version=1, events=[event("X")])
                        for _ in range(40)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, Exception) for r in results) == 1
    conflicts = [r for r in results if isinstance(r, Exception)]
    assert all(isinstance(r, VersionConflict) and r.context == {"current_version": 2} for r in conflicts)
    events, _ = await read_booking_events(writer.pool, code, 1, 100)
    assert [e.version for e in events] == [1, 2]


async def test_concurrent_appends_without_expected_version_stay_contiguous_and_position_ordered(writer) -> None:
    code = random_code()
    await create(writer, code)
    await asyncio.gather(*(
        writer.append(code=code, department="hotel", may_write_any=False, expected_version=None,
                      events=[event("X"), event("Y")])
        for _ in range(40)
    ))
    events, _ = await read_booking_events(writer.pool, code, 1, 1000)
    assert [e.version for e in events] == list(range(1, 82))
    positions = [e.position for e in events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)


async def test_a_retry_with_the_same_event_ids_returns_the_first_outcome(writer) -> None:
    code = random_code()
    batch = [event(amount="10", data={"k": [1, 2]}), event("Note", occurred_at=None)]
    first = await create(writer, code, events=batch)
    again = await create(writer, code, events=batch)
    assert again.replayed and not first.replayed
    assert again.events == first.events
    assert (await get_booking(writer.pool, code)).version == 2
    # A retry of an append with expected_version, after the booking moved on, still replays.
    later = [event("PriceChanged", amount="11")]
    await writer.append(code=code, department="hotel", may_write_any=False, expected_version=2, events=later)
    await writer.append(code=code, department="hotel", may_write_any=False, expected_version=None, events=[event("Z")])
    replay = await writer.append(code=code, department="hotel", may_write_any=False, expected_version=2, events=later)
    assert replay.replayed and replay.version == 3


async def test_concurrent_retries_of_one_request_write_it_once(writer) -> None:
    code = random_code()
    batch = [event(amount="10")]
    results = await asyncio.gather(*(create(writer, code, events=batch) for _ in range(10)))
    assert sum(not r.replayed for r in results) == 1
    assert len({r.events[0].position for r in results}) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"type_": "Other"},
        {"amount": "10.01"},
        {"data": {"k": 1}},
    ],
)
async def test_same_event_id_with_other_content_is_a_conflict(writer, change) -> None:
    code = random_code()
    event_id = uuid.uuid4()
    await create(writer, code, events=[event(event_id=event_id, amount="10")])
    fields = {"type_": "BookingPriced", "amount": "10", **change}
    with pytest.raises(EventIdConflict):
        await create(writer, code, events=[event(event_id=event_id, **fields)])


async def test_same_event_id_for_another_booking_or_department_is_a_conflict(writer) -> None:
    code, other = random_code(), random_code()
    first = event(amount="10")
    await create(writer, code, events=[first])
    with pytest.raises(EventIdConflict):
        await create(writer, other, events=[first])
    with pytest.raises(EventIdConflict):
        await create(writer, code, department="car", events=[first])
    with pytest.raises(BookingNotFound):
        await get_booking(writer.pool, other)


async def test_a_batch_that_fails_writes_nothing(writer, database_url) -> None:
    code = random_code()
    used = event(amount="1")
    await create(writer, random_code(), events=[used])
    with pytest.raises(EventIdConflict):
        await create(writer, code, events=[event(amount="2"), used])  # second event's id is taken elsewhere
    with pytest.raises(BookingNotFound):
        await get_booking(writer.pool, code)
    # \u0000 passes JSON validation but jsonb cannot hold it: refused, and nothing is written.
    with pytest.raises(InvalidData):
        await create(writer, code, events=[event(), event(data={"bad": "\u0000"})])
    with pytest.raises(BookingNotFound):
        await get_booking(writer.pool, code)
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM events WHERE booking_code = $1", code) == 0
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE booking_code = $1", code) == 0
    finally:
        await conn.close()


async def test_appends_check_existence_and_ownership(writer) -> None:
    code = random_code()
    with pytest.raises(BookingNotFound):
        await writer.append(code=code, department="hotel", may_write_any=False, expected_version=None, events=[event()])
    with pytest.raises(BookingNotFound):
        await writer.append(code=code, department="hotel", may_write_any=False, expected_version=1, events=[event()])
    await create(writer, code, department="hotel")
    with pytest.raises(NotOwner) as not_owner:
        await writer.append(code=code, department="car", may_write_any=False, expected_version=None, events=[event()])
    assert not_owner.value.context == {"department": "hotel"}
    result = await writer.append(code=code, department="pricing", may_write_any=True, expected_version=1,
                                 events=[event("Repriced", amount="5")])
    assert result.events[0].department == "pricing"
    assert (await get_booking(writer.pool, code)).department == "hotel"


async def test_every_event_gets_an_outbox_row_in_the_same_transaction(writer, database_url) -> None:
    code = random_code()
    created = await create(writer, code, events=[event(), event(), event()])
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT position, version FROM outbox WHERE booking_code = $1 ORDER BY version", code)
    finally:
        await conn.close()
    assert [(r["position"], r["version"]) for r in rows] == [(e.position, e.version) for e in created.events]


async def test_money_is_stored_exactly(writer, database_url) -> None:
    code = random_code()
    await create(writer, code, events=[event(amount="999999999999999999.99")])
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchval("SELECT price_amount FROM events WHERE booking_code = $1", code)
    finally:
        await conn.close()
    assert stored == Decimal("999999999999999999.99")


async def test_an_append_must_be_the_first_write_of_its_transaction(database_url) -> None:
    # A transaction that already holds an id could wait for a booking's lock with an id smaller
    # than the version before it: position order would no longer be version order.
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.fetch(BATCH_SQL, *batch_arguments([Append(random_code(), "hotel", False, 0, [event("A")])]))
            with pytest.raises(asyncpg.PostgresError, match="first write of its transaction"):
                await conn.fetch(BATCH_SQL, *batch_arguments([Append(random_code(), "hotel", False, 0, [event("B")])]))
    finally:
        await conn.close()
