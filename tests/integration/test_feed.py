"""The global feed never skips an event whose transaction commits late, and never repeats one."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from devstack.harness import APPEND_SQL
from service.ledger.append import NewEvent, append
from service.ledger.reads import read_feed
from tests.conftest import random_code


async def _drain(pool, after: int, page: int = 7) -> tuple[list, int]:
    seen = []
    while True:
        events, after = await read_feed(pool, after, page)
        if not events:
            return seen, after
        seen.extend(events)


async def _head(pool) -> int:
    return (await _drain(pool, 0, 1000))[1]


def _args(code: str) -> list:
    return [code, "hotel", False, 0, [uuid.uuid4()], ["Held"], [None], [None], [None], [None]]


async def test_a_transaction_held_open_holds_back_later_commits_and_is_not_skipped(pool, database_url) -> None:
    cursor = await _head(pool)
    held = await asyncpg.connect(database_url)
    try:
        transaction = held.transaction()
        await transaction.start()
        held_rows = await held.fetch(APPEND_SQL, *_args(random_code("HELD")))  # written, not committed

        # A later transaction commits while the first is still open; its position is higher.
        later = await append(pool, code=random_code("LATER"), department="car", may_write_any=False,
                             expected_version=0, events=[NewEvent(uuid.uuid4(), "Later")])
        assert later.events[0].position > held_rows[0]["position"]

        # A reader tailing now must not see (and so not pass) the later event.
        seen, stalled_at = await _drain(pool, cursor)
        assert later.events[0].event_id not in {e.event_id for e in seen}
        assert stalled_at < held_rows[0]["position"]

        await transaction.commit()
    finally:
        await held.close()

    # Once the held transaction commits, the reader continues from where it stopped and gets
    # both, in position order, without a gap and without a repeat.
    rest, _ = await _drain(pool, stalled_at)
    ids = [e.event_id for e in seen + rest]
    assert held_rows[0]["event_id"] in ids and later.events[0].event_id in ids
    assert ids.index(held_rows[0]["event_id"]) < ids.index(later.events[0].event_id)
    assert len(ids) == len(set(ids))
    positions = [e.position for e in seen + rest]
    assert positions == sorted(positions)


async def test_a_rolled_back_transaction_leaves_no_event_and_does_not_stall_the_feed(pool, database_url) -> None:
    cursor = await _head(pool)
    conn = await asyncpg.connect(database_url)
    try:
        transaction = conn.transaction()
        await transaction.start()
        rows = await conn.fetch(APPEND_SQL, *_args(random_code("ROLLBACK")))
        await transaction.rollback()
    finally:
        await conn.close()
    after = await append(pool, code=random_code(), department="car", may_write_any=False, expected_version=0,
                         events=[NewEvent(uuid.uuid4(), "After")])
    seen, _ = await _drain(pool, cursor)
    ids = {e.event_id for e in seen}
    assert rows[0]["event_id"] not in ids and after.events[0].event_id in ids


async def test_paging_under_concurrent_writers_returns_every_event_once(pool) -> None:
    cursor = await _head(pool)
    written: set[uuid.UUID] = set()
    pages: list = []
    done = asyncio.Event()

    async def writer(n: int) -> None:
        for _ in range(15):
            result = await append(pool, code=random_code(f"W{n}"), department="hotel", may_write_any=False,
                                  expected_version=0, events=[NewEvent(uuid.uuid4(), "A"), NewEvent(uuid.uuid4(), "B")])
            written.update(e.event_id for e in result.events)

    async def reader() -> None:
        after = cursor
        while True:
            finished = done.is_set()
            events, after = await read_feed(pool, after, 5)
            pages.extend(events)
            if finished and not events:
                return
            if not events:
                await asyncio.sleep(0.01)

    reading = asyncio.create_task(reader())
    await asyncio.gather(*(writer(n) for n in range(8)))
    done.set()
    await reading
    ids = [e.event_id for e in pages]
    assert len(ids) == len(set(ids)), "an event came twice"
    assert written <= set(ids), "an event was skipped"
    assert [e.position for e in pages] == sorted(e.position for e in pages)
