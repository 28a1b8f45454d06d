"""The price as of a moment or a version, by both clocks, and that it is one index lookup."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from core.money import Money
from devstack.harness import APPEND_SQL
from service.ledger.append import NewEvent, append
from service.ledger.errors import BookingNotFound
from service.ledger.prices import PRICE_SQL, price_at, price_at_version
from tests.conftest import random_code

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
US = timedelta(microseconds=1)


def ev(amount: str | None = None, currency: str = "EUR", occurred_at: datetime | None = None) -> NewEvent:
    return NewEvent(uuid.uuid4(), "PriceChanged" if amount else "Noted",
                    Money.parse(amount, currency) if amount else None, None, occurred_at)


async def _append(pool, code: str, *events: NewEvent, create: bool = False):
    return await append(pool, code=code, department="hotel", may_write_any=False,
                        expected_version=0 if create else None, events=list(events))


async def test_recorded_clock_exact_between_before_after_and_one_append(pool) -> None:
    code = random_code("ASOF")
    first = await _append(pool, code, ev(), ev("100.00"), create=True)  # v1 unpriced, v2 priced
    second = await _append(pool, code, ev("110.00"), ev(None), ev("120.00"))  # one append: v3..v5
    third = await _append(pool, code, ev("5.000", "KWD"))  # v6, another currency
    t1, t2, t3 = (r.events[0].recorded_at for r in (first, second, third))
    assert t1 < t2 < t3

    before = await price_at(pool, code, t1 - US)
    assert before.price is None and before.version is None and before.event_id is None
    exact = await price_at(pool, code, t1)  # inclusive: the event recorded exactly then counts
    assert exact.version == 2 and exact.price.amount == "100.00" and exact.event_id == first.events[1].event_id
    between = await price_at(pool, code, t2 - US)
    assert between.version == 2
    same_append = await price_at(pool, code, t2)  # the events of one append: the last priced one
    assert same_append.version == 5 and same_append.price.amount == "120.00"
    latest = await price_at(pool, code, t3 + timedelta(days=365))
    assert latest.version == 6 and (latest.price.amount, latest.price.currency) == ("5.000", "KWD")


async def test_occurred_clock_uses_occurred_at_or_else_recorded_at(pool) -> None:
    code = random_code("OCC")
    # History told out of order: v2 happened before v1 in business time; v3 has no occurred_at.
    created = await _append(pool, code, ev("200.00", occurred_at=T0 + timedelta(hours=2)),
                            ev("150.00", occurred_at=T0), create=True)
    late = await _append(pool, code, ev("300.00"))
    recorded = late.events[0].recorded_at

    assert (await price_at(pool, code, T0 - US, "occurred")).price is None
    assert (await price_at(pool, code, T0, "occurred")).version == 2
    assert (await price_at(pool, code, T0 + timedelta(hours=1), "occurred")).version == 2
    assert (await price_at(pool, code, T0 + timedelta(hours=2), "occurred")).version == 1
    assert (await price_at(pool, code, recorded - US, "occurred")).version == 1
    assert (await price_at(pool, code, recorded, "occurred")).version == 3
    # The recorded clock knows nothing of the business times given.
    assert (await price_at(pool, code, created.events[0].recorded_at, "recorded")).version == 2


async def test_recorded_at_follows_version_order_when_appends_wait_for_a_booking(pool) -> None:
    """An append that waited for the booking's lock is recorded after the one it waited for (0011).

    The waiting transaction begins first, so its start time (now()) is the earlier one: before
    0011, its event, the higher version, was recorded before the lower one.
    """
    code = random_code("WAIT")
    await _append(pool, code, ev("1.00"), create=True)

    def priced(amount: str) -> tuple:
        return (code, "hotel", False, None, [uuid.uuid4()], ["PriceChanged"], [amount], ["EUR"], [None], [None])

    async with pool.acquire() as holder, pool.acquire() as waiter:
        waiting = waiter.transaction()
        await waiting.start()
        await waiter.execute("SELECT 1")  # the waiting transaction has begun: its now() is fixed
        holding = holder.transaction()
        await holding.start()
        try:
            first = await holder.fetchrow(APPEND_SQL, *priced("2.00"))  # holds the booking's lock
            second_call = asyncio.create_task(waiter.fetchrow(APPEND_SQL, *priced("3.00")))
            await asyncio.sleep(0.3)
            assert not second_call.done()  # it waits for the lock
        finally:
            await holding.commit()
        second = await second_call
        await waiting.commit()
    assert (first["version"], second["version"]) == (2, 3)
    assert second["recorded_at"] >= first["recorded_at"]
    assert (await price_at(pool, code, first["recorded_at"])).version == 2
    assert (await price_at(pool, code, second["recorded_at"])).version == 3


async def test_version(pool) -> None:
    code = random_code("VER")
    await _append(pool, code, ev(), ev("10.00"), ev(), ev("12.50", "USD"), create=True)
    assert (await price_at_version(pool, code, 1)).price is None
    assert (await price_at_version(pool, code, 2)).price.amount == "10.00"
    assert (await price_at_version(pool, code, 3)).version == 2
    assert (await price_at_version(pool, code, 4)).price.currency == "USD"
    assert (await price_at_version(pool, code, 99)).version == 4


async def test_no_booking(pool) -> None:
    with pytest.raises(BookingNotFound):
        await price_at(pool, random_code("NONE"), T0)
    with pytest.raises(BookingNotFound):
        await price_at_version(pool, random_code("NONE"), 1)


async def test_one_index_lookup_on_a_long_history(pool) -> None:
    code = random_code("LONG")
    async with pool.acquire() as conn:
        for batch in range(10):  # 10,000 events, every other one priced
            n = 1000
            await conn.fetch(APPEND_SQL, code, "hotel", False, 0 if batch == 0 else None,
                             [uuid.uuid4() for _ in range(n)], ["PriceChanged"] * n,
                             [None if i % 2 else i for i in range(n)], [None if i % 2 else "EUR" for i in range(n)],
                             [None] * n, [T0 + timedelta(seconds=batch * n + i) for i in range(n)])
        await conn.execute("ANALYZE events")
        middle = T0 + timedelta(seconds=5000)
        for kind, bound, index in (("recorded", datetime.now(UTC), "events_priced_recorded"),
                                   ("occurred", middle, "events_priced_occurred"),
                                   ("version", 5001, "events_booking_code_version_key")):
            plan = "\n".join(r[0] for r in await conn.fetch(
                f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {PRICE_SQL[kind]}", code, bound))
            assert f"Index Scan Backward using {index} on events" in plan, plan
            assert "Sort" not in plan, plan
            # One entry read from the events index, whatever the history's length.
            scan = next(line for line in plan.splitlines() if "Index Scan Backward" in line)
            assert "rows=1 " in scan, plan
    assert (await price_at(pool, code, middle, "occurred")).version == 5001
