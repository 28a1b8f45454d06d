"""The pages the API passes through as Postgres wrote them are the events msgspec would write.

service.ledger.reads.event_json writes each event's JSON in SQL; the decoded path (read_feed,
read_booking_events, then core.events.Event encoded by msgspec) is the reference. Every field but
`data` must be byte for byte the same (times with and without microseconds, the infinities stored
before migration 0005, escapes, a missing price); `data` is jsonb's own text: the same value.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial

import asyncpg
import msgspec

from core import personal as core_personal
from core.money import Money
from service.ledger import personal
from service.ledger.append import Append, NewEvent, append, append_one
from service.ledger.reads import (
    read_booking_events,
    read_booking_events_json,
    read_feed,
    read_feed_json,
)
from tests.conftest import random_code

EVENTS = [
    NewEvent(uuid.uuid4(), "BookingPriced", Money(Decimal("129.90"), "EUR"), {"room": "Zimmer \"Süd\"\n\t\\ ✓"},
             datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),  # no microseconds: none written
    NewEvent(uuid.uuid4(), "Noted", None, None, datetime(2026, 1, 2, 3, 4, 5, 120, tzinfo=UTC)),
    NewEvent(uuid.uuid4(), "PriceChanged", Money(Decimal("0"), "JPY"),
             {"n": [1, 2.5, -0.001, 1e-7, 12345678901234567890, True, None], "nested": {"b": {}, "a": []}}),
    NewEvent(uuid.uuid4(), "PriceChanged", Money(Decimal("1.234"), "KWD"), {}, datetime(1, 1, 2, tzinfo=UTC)),
]


def _fields(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "data"} for e in events]


def _check(passed: bytes, reference: list) -> None:
    mine = json.loads(b"[" + passed + b"]")
    theirs = json.loads(msgspec.json.encode(reference))
    assert mine == theirs  # the same values, data included
    for own, other in zip(mine, reference, strict=True):  # every other field written alike
        encoded = msgspec.json.encode(other)
        for name, value in own.items():
            if name != "data":
                assert msgspec.json.encode(value) in encoded, (name, value, encoded)
    assert _fields(mine) == _fields(theirs)


async def test_a_booking_page_and_a_feed_page_are_the_events_msgspec_writes(pool: asyncpg.Pool) -> None:
    code = random_code("JSON")
    first = await append(pool, code=code, department="hotel", may_write_any=False, expected_version=0,
                         events=EVENTS[:2])
    await append(pool, code=code, department="hotel", may_write_any=False, expected_version=None,
                 events=EVENTS[2:])

    events, next_from = await read_booking_events(pool, code, 1, 100)
    page = await read_booking_events_json(pool, code, 1, 100)
    assert len(events) == 4 and page.next == next_from is None
    _check(page.events, events)
    assert b'"occurred_at":"2026-01-02T03:04:05Z"' in page.events
    assert b'"occurred_at":"2026-01-02T03:04:05.000120Z"' in page.events

    partial, next_from = await read_booking_events(pool, code, 2, 2)
    page = await read_booking_events_json(pool, code, 2, 2)
    assert page.next == next_from == 4
    _check(page.events, partial)

    after = first.events[0].position - 1
    feed, cursor = await read_feed(pool, after, 1000)
    feed_page = await read_feed_json(pool, after, 1000)
    assert feed_page.next == cursor and {e.event_id for e in events} <= {e.event_id for e in feed}
    _check(feed_page.events, feed)


async def test_the_infinities_of_old_rows_and_empty_pages(pool: asyncpg.Pool, database_url: str) -> None:
    code = random_code("JSONINF")
    await append(pool, code=code, department="car", may_write_any=False, expected_version=0,
                 events=[NewEvent(uuid.uuid4(), "Old"), NewEvent(uuid.uuid4(), "Older")])
    owner = await asyncpg.connect(database_url)
    try:  # what rows written before migration 0005 may hold (its check is NOT VALID: old rows stay)
        async with owner.transaction():
            await owner.execute("ALTER TABLE events DROP CONSTRAINT events_occurred_at_finite")
            await owner.execute("UPDATE events SET occurred_at = CASE version WHEN 1 THEN '-infinity'::timestamptz "
                                "ELSE 'infinity'::timestamptz END WHERE booking_code = $1", code)
            await owner.execute("ALTER TABLE events ADD CONSTRAINT events_occurred_at_finite "
                                "CHECK (isfinite(occurred_at)) NOT VALID")
    finally:
        await owner.close()
    events, _ = await read_booking_events(pool, code, 1, 10)
    page = await read_booking_events_json(pool, code, 1, 10)
    _check(page.events, events)

    empty = await read_booking_events_json(pool, code, 3, 10)
    assert empty.events == b"" and empty.next is None
    head = await read_feed_json(pool, 2**62, 10)
    assert head.events == b"" and head.next == 2**62


async def test_pages_with_personal_data_show_it_opened_then_erased_as_the_decoded_path_does(
        pool: asyncpg.Pool) -> None:
    code = random_code("JSONPII")
    marker = f"Traveller-{uuid.uuid4().hex}"
    keys = personal.DataKeys(pool)
    first = await personal.appended(keys, partial(append_one, pool), Append(code, "hotel", False, 0, [
        NewEvent(uuid.uuid4(), "BookingPriced", Money(Decimal("10.00"), "EUR"), {"personal": {"name": marker}}),
        NewEvent(uuid.uuid4(), "Noted", None, {"reason": "x", "personal": {"seat": "1A"}, "n": 1.5}),
        NewEvent(uuid.uuid4(), "Plain", data={"k": "v"}),
    ]), None)
    stored = [row["data"] for row in await pool.fetch("SELECT data FROM events WHERE booking_code = $1 "
                                                      "ORDER BY version", code)]
    assert [d.get("personal", "")[:7] for d in stored] == ["enc:v1:", "enc:v1:", ""]
    assert marker not in json.dumps(stored)
    after = first.events[0].position - 1
    deadline = time.monotonic() + 30  # the feed shows them once every older transaction has ended
    while len((await read_feed(pool, after, 3))[0]) < 3:
        assert time.monotonic() < deadline, "the feed never reached the booking's events"
        await asyncio.sleep(0.05)

    async def both_ways() -> tuple[list[dict], list[dict]]:
        events, next_from = await read_booking_events(pool, code, 1, 100)
        page = await read_booking_events_json(pool, code, 1, 100)
        assert page.next == next_from is None
        _check(page.events, events)
        feed, cursor = await read_feed(pool, after, 3)
        feed_page = await read_feed_json(pool, after, 3)
        assert feed_page.next == cursor == first.events[-1].position
        _check(feed_page.events, feed)
        return json.loads(b"[" + page.events + b"]"), json.loads(b"[" + feed_page.events + b"]")

    opened, opened_feed = await both_ways()
    assert [e["data"].get("personal") for e in opened] == [{"name": marker}, {"seat": "1A"}, None]
    assert [e["hash"] for e in opened] == [e.hash for e in first.events]
    assert opened_feed == opened
    plain = await read_booking_events_json(pool, code, 3, 100)  # a page without personal data passes through
    _check(plain.events, (await read_booking_events(pool, code, 3, 100))[0])

    await keys.erase(code)
    erased, erased_feed = await both_ways()
    assert [e["data"].get("personal") for e in erased] == ["erased", "erased", None]
    assert [{**e, "data": None} for e in erased] == [{**e, "data": None} for e in opened]  # hashes and all
    assert erased_feed == erased and marker not in json.dumps(erased)


async def test_concurrent_first_uses_of_a_bookings_key_agree_on_one_key(pool: asyncpg.Pool) -> None:
    """Eight API processes (a DataKeys each) send a booking's first personal data at once, each sealed
    with a key of its own making: one key is stored, and every event opens with it."""
    code = random_code("KEY1ST")
    await append(pool, code=code, department="hotel", may_write_any=False, expected_version=0,
                 events=[NewEvent(uuid.uuid4(), "Created")])
    results = await asyncio.gather(*(
        personal.appended(personal.DataKeys(pool), partial(append_one, pool), Append(
            code, "hotel", False, None, [NewEvent(uuid.uuid4(), "Noted", None, {"personal": {"n": n}})]), None)
        for n in range(8)))
    assert sorted(r.version for r in results) == list(range(2, 10))
    data_key = await pool.fetchval("SELECT data_key FROM personal_keys WHERE booking_code = $1", code)
    rows = await pool.fetch("SELECT event_id, data FROM events WHERE booking_code = $1 AND version > 1", code)
    assert sorted(core_personal.open_sealed(data_key, code, row["event_id"], row["data"]["personal"])["n"]
                  for row in rows) == list(range(8))
