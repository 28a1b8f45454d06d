"""Group commit on a real Postgres: each append in a batch is answered as if it had gone alone."""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from core.money import Money
from core.settings import DatabaseSettings
from devstack.harness import APPEND_SQL
from devstack.postgres import LocalPostgres
from migrations import function_sql
from migrations.runner import upgrade
from service.ledger.append import BATCH_SQL, Append, AppendResult, NewEvent, append, batch_arguments
from service.ledger.db import create_pool, retrying
from service.ledger.errors import (
    BookingCodeTaken,
    BookingNotFound,
    EventIdConflict,
    InvalidData,
    LedgerError,
    NotOwner,
    StoreUnavailable,
    VersionConflict,
)
from service.ledger.groupcommit import GroupCommit
from service.ledger.reads import read_feed
from tests.conftest import random_code


def event(type_: str = "BookingPriced", amount: str | None = None, event_id: uuid.UUID | None = None,
          data: dict | None = None) -> NewEvent:
    price = Money.parse(amount, "EUR") if amount is not None else None
    return NewEvent(event_id=event_id or uuid.uuid4(), type=type_, price=price, data=data)


def item(code: str, expected: int | None, events: list[NewEvent] | None = None, department: str = "hotel") -> Append:
    return Append(code, department, False, expected, events or [event(amount="10.00")])


async def one_batch(writer: GroupCommit, items: list[Append]) -> list[AppendResult | LedgerError]:
    """Submitted together, so that all of them queue before the writer runs: one call carries them."""
    before = writer.batches
    answers = await asyncio.gather(*(writer.append(i) for i in items), return_exceptions=True)
    assert writer.batches - before == 1, "the appends did not share one batch"
    return answers  # type: ignore[return-value]


async def test_a_mixed_batch_answers_each_append_as_if_alone(pool) -> None:
    owned, other, fresh = random_code("OWN"), random_code("OTHER"), random_code("NEW")
    await append(pool, code=owned, department="hotel", may_write_any=False, expected_version=0,
                 events=[event(amount="1.00")])
    await append(pool, code=other, department="car", may_write_any=False, expected_version=0, events=[event()])
    earlier = [event(amount="2.00"), event("Note", data={"a": 1})]
    first = await append(pool, code=owned, department="hotel", may_write_any=False, expected_version=1,
                         events=earlier)
    writer = GroupCommit(pool)
    answers = await one_batch(writer, [
        item(owned, 0),                                              # collision
        item(owned, 7),                                              # version conflict
        item(owned, 1, earlier),                                     # replay of `first`
        item(owned, None, [event(event_id=earlier[0].event_id)]),    # event id reused, other content
        item(other, None),                                           # not the owner
        item(random_code("NONE"), 3),                                # no such booking
        item(fresh, 0, [event(amount="5.00"), event()]),             # good: creates
        item(owned, None, [event(amount="6.00")]),                   # good: appends
    ])
    taken, conflict, replay, reused, not_owner, missing, created, appended = answers
    assert isinstance(taken, BookingCodeTaken) and taken.context == {"department": "hotel"}
    assert isinstance(conflict, VersionConflict) and conflict.context == {"current_version": 3}
    assert isinstance(replay, AppendResult) and replay.replayed
    assert replay.events == first.events and replay.version == 3
    assert isinstance(reused, EventIdConflict) and reused.context == {"event_ids": [str(earlier[0].event_id)]}
    assert isinstance(not_owner, NotOwner) and not_owner.context == {"department": "car"}
    assert isinstance(missing, BookingNotFound)
    assert isinstance(created, AppendResult) and not created.replayed
    assert [e.version for e in created.events] == [1, 2]
    assert isinstance(appended, AppendResult) and [e.version for e in appended.events] == [4]
    # The two that wrote share a transaction; their positions follow arrival order.
    assert created.events[0].position >> 16 == appended.events[0].position >> 16
    assert created.events[-1].position < appended.events[0].position

    # Each answer is the one a single append gives (the refusals' words and context included);
    # the booking is at version 4 now.
    conflict.context["current_version"] = 4
    for alone, batched in [(item(owned, 0), taken), (item(owned, 7), conflict), (item(other, None), not_owner)]:
        with pytest.raises(type(batched)) as raised:
            await append(pool, code=alone.code, department=alone.department, may_write_any=False,
                         expected_version=alone.expected_version, events=alone.events)
        assert (str(raised.value), raised.value.context) == (str(batched), batched.context)  # type: ignore[union-attr]


async def test_a_batch_of_independent_appends_answers_each_as_if_alone(pool) -> None:
    """No code and no event id twice in one call: every outcome, each as a single append gets it."""
    codes = {name: random_code(name.upper()) for name in
             ("taken", "conflict", "replay", "reused", "other", "fresh", "owned", "priced", "any", "big")}
    for name in ("taken", "conflict", "reused", "owned", "priced", "any", "big"):
        await append(pool, code=codes[name], department="hotel", may_write_any=False, expected_version=0,
                     events=[event(amount="1.00")])
    await append(pool, code=codes["other"], department="car", may_write_any=False, expected_version=0,
                 events=[event()])
    earlier = [event(amount="2.00"), event("Note", data={"a": 1})]
    first = await append(pool, code=codes["replay"], department="hotel", may_write_any=False, expected_version=0,
                         events=earlier)
    used = await append(pool, code=codes["reused"], department="hotel", may_write_any=False, expected_version=1,
                        events=[event(amount="3.00")])
    writer = GroupCommit(pool)
    items = [
        item(codes["taken"], 0),                                                     # collision
        item(codes["conflict"], 7),                                                  # version conflict
        item(codes["replay"], 0, earlier),                                           # replay of `first`
        item(codes["reused"], None, [event(), event(event_id=used.events[0].event_id)]),  # id reused, other content
        item(codes["other"], None),                                                  # not the owner
        item(random_code("NONE"), 3),                                                # no such booking
        item(codes["fresh"], 0, [event(amount="5.00"), event(), event(amount="5.50"), event()]),  # creates
        item(codes["owned"], 1, [event(amount="6.00")]),                             # appends at version 1
        item(codes["priced"], None, [event()]),                                      # appends, no new price
        Append(codes["any"], "car", True, None, [event(amount="7.00")]),             # write:any
        item(codes["big"], None, [event() for _ in range(1001)]),                    # over 1000 events
    ]
    answers = await one_batch(writer, items)
    taken, conflict, replay, reused, not_owner, missing, created, appended, unpriced, anyone, big = answers
    assert isinstance(taken, BookingCodeTaken) and taken.context == {"department": "hotel"}
    assert isinstance(conflict, VersionConflict) and conflict.context == {"current_version": 1}
    assert isinstance(replay, AppendResult) and replay.replayed and replay.events == first.events
    assert isinstance(reused, EventIdConflict) and reused.context == {"event_ids": [str(used.events[0].event_id)]}
    assert isinstance(not_owner, NotOwner) and not_owner.context == {"department": "car"}
    assert isinstance(missing, BookingNotFound)
    assert isinstance(big, InvalidData)
    assert isinstance(created, AppendResult) and not created.replayed
    assert [e.version for e in created.events] == [1, 2, 3, 4]
    assert [e.version for e in appended.events] == [2] and [e.version for e in unpriced.events] == [2]  # type: ignore[union-attr]
    assert [e.department for e in anyone.events] == ["car"]  # type: ignore[union-attr]
    written = [*created.events, *appended.events, *unpriced.events, *anyone.events]  # type: ignore[union-attr]
    positions = [e.position for e in written]
    assert positions == sorted(positions) and len({p >> 16 for p in positions}) == 1  # argument order, one transaction
    conn_prices = {code: await _price(pool, code) for code in (codes["fresh"], codes["owned"], codes["priced"],
                                                               codes["any"])}
    assert conn_prices == {codes["fresh"]: "5.50", codes["owned"]: "6.00", codes["priced"]: "1.00",
                           codes["any"]: "7.00"}
    # Nothing of a refused append was written, and each refusal is what a single append answers.
    assert await _price(pool, codes["reused"]) == "3.00"
    for alone, batched in zip(items[:6], answers[:6], strict=True):
        if isinstance(batched, AppendResult):
            continue
        with pytest.raises(type(batched)) as raised:
            await append(pool, code=alone.code, department=alone.department, may_write_any=False,
                         expected_version=alone.expected_version, events=alone.events)
        assert (str(raised.value), raised.value.context) == (str(batched), batched.context)  # type: ignore[union-attr]


async def _price(pool: asyncpg.Pool, code: str) -> str:
    return str(await pool.fetchval("SELECT price_amount FROM bookings WHERE code = $1", code))


async def test_each_append_of_a_batch_keeps_its_own_trace_context(pool) -> None:
    """The outbox rows of each append carry that append's traceparent (the relay's Kafka header),
    also when several appends to one booking share the call; an append without one leaves NULL."""
    shared, alone, untraced = random_code("TRACE"), random_code("TRACE"), random_code("TRACE")
    contexts = [f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01" for _ in range(3)]
    writer = GroupCommit(pool)
    answers = await one_batch(writer, [
        replace(item(shared, 0, [event(), event()]), traceparent=contexts[0]),
        replace(item(alone, 0), traceparent=contexts[1]),
        replace(item(shared, 2), traceparent=contexts[2]),
        item(untraced, 0),
    ])
    assert all(isinstance(answer, AppendResult) for answer in answers), answers
    rows = await pool.fetch("SELECT booking_code, version, traceparent FROM outbox WHERE booking_code = ANY($1)",
                            [shared, alone, untraced])
    assert {(r["booking_code"], r["version"]): r["traceparent"] for r in rows} == {
        (shared, 1): contexts[0], (shared, 2): contexts[0], (alone, 1): contexts[1], (shared, 3): contexts[2],
        (untraced, 1): None}


async def test_forty_concurrent_creators_of_one_code_give_exactly_one_creation(pool) -> None:
    code = random_code("RACE")
    writers = [GroupCommit(pool), GroupCommit(pool)]  # as two API processes: batches race each other too
    answers = await asyncio.gather(
        *(writers[n % 2].append(item(code, 0, department=f"dept{n % 3}")) for n in range(40)),
        return_exceptions=True,
    )
    created = [a for a in answers if isinstance(a, AppendResult)]
    assert len(created) == 1 and not created[0].replayed
    assert all(isinstance(a, BookingCodeTaken) for a in answers if a is not created[0])


async def test_appends_to_one_booking_inside_one_batch_apply_in_arrival_order(pool) -> None:
    code = random_code("ORDER")
    writer = GroupCommit(pool)
    answers = await one_batch(writer, [item(code, 0), item(code, 1), item(code, None, [event(), event()]),
                                       item(code, 4), item(code, 4)])
    *good, late = answers
    assert all(isinstance(a, AppendResult) for a in good)
    assert [[e.version for e in a.events] for a in good] == [[1], [2], [3, 4], [5]]  # type: ignore[union-attr]
    positions = [e.position for a in good for e in a.events]  # type: ignore[union-attr]
    assert positions == sorted(positions) and len(set(p >> 16 for p in positions)) == 1
    assert isinstance(late, VersionConflict) and late.context == {"current_version": 5}


async def test_an_event_id_seen_earlier_in_the_same_batch_is_a_replay_or_a_conflict(pool) -> None:
    code, other, between = random_code("AGAIN"), random_code("AGAIN"), random_code("MID")
    first = [event(amount="1.00"), event("Note", data={"n": 1})]
    twice = uuid.uuid4()
    writer = GroupCommit(pool)
    answers = await one_batch(writer, [
        item(code, 0, first),                                         # creates
        item(between, 0),                                             # good, in between
        item(code, 0, first),                                         # the same request again: a replay
        item(other, 0, [event(event_id=first[1].event_id)]),          # one of its ids, another booking
        item(other, 0, [event(event_id=twice), event(event_id=twice)]),  # one id twice in one append
        item(code, None, [event(amount="3.00")]),                     # good: after them
    ])
    created, good, replay, reused, doubled, appended = answers
    assert isinstance(created, AppendResult) and not created.replayed
    assert isinstance(good, AppendResult) and good.version == 1
    assert isinstance(replay, AppendResult) and replay.replayed and replay.events == created.events
    assert isinstance(reused, EventIdConflict) and reused.context == {"event_ids": [str(first[1].event_id)]}
    assert isinstance(doubled, EventIdConflict) and doubled.context == {}
    assert isinstance(appended, AppendResult) and [e.version for e in appended.events] == [3]
    positions = [e.position for a in (created, good, appended) for e in a.events]
    assert positions == sorted(positions) and len(set(p >> 16 for p in positions)) == 1
    with pytest.raises(BookingNotFound):
        await append(pool, code=other, department="hotel", may_write_any=False, expected_version=None,
                     events=[event()])


async def test_a_poisoned_member_fails_alone_and_its_neighbours_succeed(pool) -> None:
    writer = GroupCommit(pool)
    code = random_code("POISON")
    answers = await one_batch(writer, [
        item(code, 0),
        item(random_code("BAD"), 0, [event(data={"text": "nul \u0000 here"})]),  # jsonb refuses it
        item(code, 1),
    ])
    assert isinstance(answers[0], AppendResult) and isinstance(answers[2], AppendResult)
    assert isinstance(answers[1], InvalidData)
    assert [answers[0].events[0].version, answers[2].events[0].version] == [1, 2]


async def test_a_member_refused_by_the_final_insert_fails_alone_and_nothing_of_the_call_stays(pool) -> None:
    """The events of a call are written at its end, after the booking rows: a CHECK that refuses one
    of them there must still fail the whole call (booking rows included), and the redo one by one
    answers each member as if alone."""
    writer = GroupCommit(pool)
    code, bad = random_code("LATE"), random_code("BAD")
    infinite = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)  # asyncpg sends 'infinity'
    answers = await one_batch(writer, [
        item(code, 0),
        item(bad, 0, [event(), NewEvent(uuid.uuid4(), "Late", occurred_at=infinite)]),  # events_occurred_at_finite
        item(code, 1),
    ])
    first, refused, second = answers
    assert isinstance(refused, InvalidData)
    assert isinstance(first, AppendResult) and isinstance(second, AppendResult)
    assert [first.events[0].version, second.events[0].version] == [1, 2]
    assert first.events[0].position >> 16 != second.events[0].position >> 16  # redone alone, not in the call
    assert await pool.fetchval("SELECT count(*) FROM bookings WHERE code = $1", bad) == 0


async def test_a_batch_answers_and_writes_as_the_append_by_append_loop_does(pool) -> None:
    """Seeded random batches (one booking appended to several times, ids repeated within and across
    appends, recorded ids with the same or other content, refusals, bad counts), each called on the
    same state by the function in force and by 0011's append-by-append loop (the reference: every
    check and write in arrival order), rolled back: the same answers, booking rows, events and outbox
    rows (positions compared by their index in the call)."""
    rnd = random.Random(12)
    async with pool.acquire() as conn:
        # A session-temporary copy of the reference, so nothing of it outlives the connection. It knows
        # no hash chain (0016): it writes a placeholder hash, and hashes are left out of the comparison
        # (tests/integration/test_chain.py checks them).
        await conn.execute(function_sql("ledger_append_batch", "0011")
                           .replace("FUNCTION ledger_append_batch(", "FUNCTION pg_temp.reference_batch(")
                           .replace("data, department, occurred_at, recorded_at)\n",
                                    "data, department, occurred_at, recorded_at, hash)\n")
                           .replace("r.occurred_at, v_recorded\n", "r.occurred_at, v_recorded, ''::bytea\n"))
        for _ in range(60):
            codes = [random_code("REF") for _ in range(3)]
            recorded: list[NewEvent] = []
            for code in codes[:2]:
                owner = rnd.choice(["hotel", "car"])
                for version in range(rnd.randint(1, 2)):
                    events = [_random_event(rnd) for _ in range(rnd.randint(1, 2))]
                    await append(pool, code=code, department=owner, may_write_any=False,
                                 expected_version=None if version else 0, events=events)
                    recorded += events
            items, used = [], []
            for _ in range(rnd.randint(2, 7)):
                events: list[NewEvent] = []
                for _ in range(rnd.choice([0, 1, 1, 2, 3])):
                    pick = rnd.random()
                    if pick < 0.15:
                        again = rnd.choice(recorded)
                    elif pick < 0.35 and used:
                        again = rnd.choice(used)
                    elif pick < 0.4 and events:
                        again = rnd.choice(events)
                    else:
                        events.append(_random_event(rnd))
                        continue
                    events.append(again if rnd.random() < 0.7 else replace(again, type="Other"))
                used += events
                items.append(Append(rnd.choice(codes), rnd.choice(["hotel", "car"]), rnd.random() < 0.2,
                                    rnd.choice([0, 0, None, None, 1, 2, 3, 4]), events))
            arguments = batch_arguments(items)
            answers = [await _call_and_roll_back(conn, function, arguments, codes)
                       for function in ("ledger_append_batch", "pg_temp.reference_batch")]
            assert answers[0] == answers[1], items


def _random_event(rnd: random.Random) -> NewEvent:
    amount = rnd.choice([None, "1.00", "2.50"])
    return NewEvent(uuid.uuid4(), rnd.choice(["Priced", "Note"]), Money.parse(amount, "EUR") if amount else None,
                    rnd.choice([None, {"n": 1}]))


async def _call_and_roll_back(conn: asyncpg.Connection, function: str, arguments: tuple[list[Any], ...],
                              codes: list[str]) -> tuple[list[tuple[Any, ...]], ...]:
    """The call's rows (by append, then version) and the state it leaves for `codes`, undone after."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        if function == "ledger_append_batch":
            rows = await conn.fetch(BATCH_SQL, *arguments)
        else:  # 0011's function takes no trace context (0014)
            rows = await conn.fetch(BATCH_SQL.replace("ledger_append_batch", function).replace(", $12, $13", ""),
                                    *arguments[:11])
        base = await conn.fetchval("SELECT (pg_current_xact_id()::text::bigint"
                                   " + (SELECT xid_offset FROM ledger_position_offset)) * 65536")
        answer = sorted(
            (tuple({**{name: value for name, value in row.items() if name != "hash"},
                    "position": _in_call(row["position"], base),
                    "recorded_at": None if (row["position"] or 0) >= base else row["recorded_at"]}.values())
             for row in rows),
            key=lambda row: (row[0], row[6] or 0))
        bookings = [tuple(row) for row in await conn.fetch(
            "SELECT code, department, version, price_amount, price_currency FROM bookings"
            " WHERE code = ANY($1) ORDER BY code", codes)]
        events = [(*row.values(),) for row in await conn.fetch(
            "SELECT event_id, booking_code, version, type, price_amount, price_currency, data, department, position"
            " FROM events WHERE booking_code = ANY($1) ORDER BY booking_code, version", codes)]
        events = [(*row[:-1], _in_call(row[-1], base)) for row in events]
        outbox = [(_in_call(row["position"], base), row["booking_code"], row["version"]) for row in await conn.fetch(
            "SELECT position, booking_code, version FROM outbox WHERE booking_code = ANY($1)"
            " ORDER BY position", codes)]
        return answer, bookings, events, outbox
    finally:
        await transaction.rollback()


def _in_call(position: int | None, base: int) -> Any:
    """A position written by the call as its index in the call; an earlier one as it is."""
    return ("call", position - base) if position is not None and position >= base else position


async def test_a_transaction_held_open_holds_back_a_later_batch_and_is_not_skipped(pool, database_url) -> None:
    cursor = 0
    while True:
        events, cursor = await read_feed(pool, cursor, 1000)
        if not events:
            break
    held = await asyncpg.connect(database_url)
    try:
        transaction = held.transaction()
        await transaction.start()
        held_rows = await held.fetch(APPEND_SQL, random_code("HELD"), "hotel", False, 0, [uuid.uuid4()],
                                     ["Held"], [None], [None], [None], [None])
        writer = GroupCommit(pool)
        later = await one_batch(writer, [item(random_code("LATER"), 0) for _ in range(5)])
        later_ids = {e.event_id for a in later for e in a.events}  # type: ignore[union-attr]
        assert min(e.position for a in later for e in a.events) > held_rows[0]["position"]  # type: ignore[union-attr]

        seen, stalled_at = [], cursor
        while True:
            events, stalled_at = await read_feed(pool, stalled_at, 3)
            if not events:
                break
            seen.extend(events)
        assert not later_ids & {e.event_id for e in seen}
        assert stalled_at < held_rows[0]["position"]
        await transaction.commit()
    finally:
        await held.close()
    rest = []
    after = stalled_at
    while True:
        events, after = await read_feed(pool, after, 3)
        if not events:
            break
        rest.extend(events)
    ids = [e.event_id for e in seen + rest]
    assert held_rows[0]["event_id"] in ids and later_ids <= set(ids)
    assert ids.index(held_rows[0]["event_id"]) < min(ids.index(i) for i in later_ids)
    assert len(ids) == len(set(ids))


async def test_positions_after_the_migration_are_above_every_old_one(postgres: LocalPostgres) -> None:
    name = f"positions_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres.url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = postgres.url.rsplit("/", 1)[0] + "/" + name
    try:
        await asyncio.to_thread(upgrade, url, "0006")
        conn = await asyncpg.connect(url)
        try:
            # Events written with the old formula (xid * 1000), and a copy of the old function,
            # standing for a call of it that was still running when 0007 committed.
            code = random_code("OLD")
            await conn.execute("SELECT pg_current_xact_id()")
            for n in range(3):
                await conn.fetch(APPEND_SQL, code, "hotel", False, n, [uuid.uuid4()], ["Old"], [None], [None],
                                 [None], [None])
            # (It writes a placeholder hash, as if 0016 had come first: the position floor is what refuses it.)
            await conn.execute(function_sql("ledger_append", "0005")
                               .replace("FUNCTION ledger_append(", "FUNCTION ledger_append_0005(")
                               .replace("data, department, occurred_at, recorded_at)\n",
                                        "data, department, occurred_at, recorded_at, hash)\n")
                               .replace("r.occurred_at, now()\n", "r.occurred_at, now(), ''::bytea\n"))
            old_max = await conn.fetchval("SELECT max(position) FROM events")
            assert old_max % 1000 == 0
            await asyncio.to_thread(upgrade, url)

            pool = await create_pool(DatabaseSettings(url=url, pool_size=4, command_timeout=30, retry_seconds=0))
            try:
                writer = GroupCommit(pool)
                new = await one_batch(writer, [item(code, 3), item(random_code("NEW"), 0)])
                new_positions = [e.position for a in new for e in a.events]  # type: ignore[union-attr]
                assert min(new_positions) > old_max
                single = await append(pool, code=code, department="hotel", may_write_any=False,
                                      expected_version=4, events=[event()])
                assert single.events[0].position > max(new_positions)
                # A reader that had read everything old goes on without a gap.
                feed, _ = await read_feed(pool, old_max, 100)
                assert [e.position for e in feed] == sorted([*new_positions, single.events[0].position])
                # An old-formula write after 0007 is refused (and the API retries it as transient).
                with pytest.raises(StoreUnavailable):
                    await append_sql(pool, "ledger_append_0005", code)
            finally:
                await pool.close()
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def append_sql(pool: asyncpg.Pool, function: str, code: str) -> None:
    await retrying(pool, lambda conn: conn.fetch(
        f"SELECT * FROM {function}($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        code, "hotel", False, None, [uuid.uuid4()], ["Late"], [None], [None], [None], [None]))


async def test_every_append_is_answered_by_its_deadline_while_a_batch_hangs(database_url) -> None:
    """A call that hangs (here on a booking's lock, held by another transaction; in production a
    commit waiting for a standby that is gone) neither holds its own members past the budget nor the
    appends queued behind it: the batch's members hear `unknown_outcome`, the queued ones
    `unavailable` and are never written."""
    budget = 1.5
    pool = await create_pool(DatabaseSettings(url=database_url, pool_size=4, command_timeout=1, retry_seconds=1))
    held = await asyncpg.connect(database_url)
    code, queued = random_code("HANG"), [random_code("QUEUED") for _ in range(5)]
    try:
        transaction = held.transaction()
        await transaction.start()
        await held.fetch(APPEND_SQL, code, "hotel", False, 0, [uuid.uuid4()], ["Held"], [None], [None], [None], [None])
        writer = GroupCommit(pool)
        started = asyncio.get_running_loop().time()

        async def timed(item: Append) -> tuple[str, float]:
            try:
                await writer.append(item)
                outcome = "stored"
            except LedgerError as error:
                outcome = error.code
            return outcome, asyncio.get_running_loop().time() - started

        hung = asyncio.create_task(timed(Append(code, "hotel", False, None, [event()])))
        await asyncio.sleep(0.2)  # the first call is under way; the next ones queue behind it
        answers = await asyncio.gather(hung, *(timed(Append(c, "hotel", False, 0, [event()])) for c in queued))
        await transaction.rollback()
        await writer.close()
    finally:
        await held.close()
        await pool.close()
    assert answers[0][0] == "unknown_outcome", answers
    assert {outcome for outcome, _ in answers[1:]} == {"unavailable"}, answers
    assert max(took for _, took in answers) < budget + 1.0, answers
    stored = await asyncpg.connect(database_url)
    try:  # what was answered `unavailable` was taken out of the queue, never written
        assert await stored.fetchval("SELECT count(*) FROM bookings WHERE code = ANY($1)", queued) == 0
    finally:
        await stored.close()
