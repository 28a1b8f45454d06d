"""The append transaction: booking rows, events and outbox rows, in one call to ledger_append_batch.

The function (migrations/sql/ledger_append_batch.<revision>.sql, the version in force, and the parts
it calls) does the whole transaction in one round trip, for one append or many (group commit, the
import): it serializes appends per booking, answers idempotent retries, creates each booking or
advances its version, inserts the events and their outbox rows, and answers every append on its
own: its events, or why it was refused (a refused append writes nothing and fails no neighbour).
A success is returned only after Postgres committed it. This module is the one caller: it makes
the function's arguments and reads its answers; a single append is a batch of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg

from core.events import Event, event_from_row
from core.money import Money
from core.pg import warned_of_early_commit
from service.ledger.db import Tries, retrying
from service.ledger.errors import REFUSALS, DataKeyStale, InvalidData, OutcomeUnknown, StoreUnavailable

BATCH_SQL = "SELECT * FROM ledger_append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
# Each append's outcome alone: the import counts the stored events where they are.
OUTCOMES_SQL = f"SELECT append_no, min(outcome) AS outcome FROM ({BATCH_SQL}) answer GROUP BY append_no"
STORED = ("created", "appended", "replayed")
UNKNOWN_WORDS = ("the ledger could not confirm in time whether these events were stored, and they may "
                 "have been: send the same request again, with the same event_ids, to learn the outcome")


@dataclass(frozen=True, slots=True)
class NewEvent:
    event_id: UUID
    type: str
    price: Money | None = None
    data: dict[str, Any] | None = None
    occurred_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Append:
    """One append: `events` to booking `code`, atomically (all or none).

    expected_version 0 creates the booking, owned by `department`; n >= 1 appends only at version
    n; None appends at whatever version the booking is. `size` is what it weighs (its body's bytes).
    `data_key`: the key the events' personal data is sealed with (service/ledger/personal.py), None
    when they carry none.
    """

    code: str
    department: str
    may_write_any: bool
    expected_version: int | None
    events: Sequence[NewEvent]
    size: int = 0
    traceparent: str | None = None
    data_key: bytes | None = None


@dataclass(frozen=True, slots=True)
class AppendResult:
    booking_code: str
    version: int
    events: list[Event]
    replayed: bool  # True: an idempotent retry of an earlier request; nothing new was written


Answer = AppendResult | Exception  # an append's result, or the LedgerError that refuses it


async def append_batch(pool: asyncpg.Pool, appends: Sequence[Append], deadline: float | None = None) -> list[Answer]:
    """Each append's answer, in order, from one call (one transaction); appends to one booking apply
    in order. Raises, for all of them, what keeps the call from answering (a LedgerError: the store
    unavailable, or input Postgres refuses, which fails the whole call: redo the appends alone).

    While the primary fails over, the call is tried again (service.ledger.db.retrying) with the
    same event ids. When a try failed with its outcome unknown (the connection broke, maybe after
    the commit) and a later try finds an append's events recorded, they were stored by this call:
    its result is not `replayed` (the API answers 201, as if the first try had answered).

    `deadline` (time.monotonic()) bounds the call, tries and waits together; past it the call
    raises StoreUnavailable, or OutcomeUnknown when a try may have committed.
    """
    tries = Tries(deadline=deadline, bounds_itself=True)  # _call: a COMMIT is never cancelled from outside
    arguments = batch_arguments(appends)
    try:
        rows = await retrying(pool, lambda conn: _call(conn, arguments, tries), tries)
    except StoreUnavailable as error:
        if tries.unknown_outcome and not isinstance(error, OutcomeUnknown):
            raise OutcomeUnknown(f"{UNKNOWN_WORDS} ({error.detail})") from error
        raise
    by_append: list[list[asyncpg.Record]] = [[] for _ in appends]
    for row in rows:  # grouped by append, the groups not in append order
        by_append[row["append_no"] - 1].append(row)
    return [_answer(item, own, tries.unknown_outcome) for item, own in zip(appends, by_append, strict=True)]


async def append(pool: asyncpg.Pool, *, code: str, department: str, may_write_any: bool,
                 expected_version: int | None, events: Sequence[NewEvent]) -> AppendResult:
    """One append (see `Append`), a batch of one; raises the LedgerError subclasses of
    service.ledger.errors."""
    return await append_one(pool, Append(code, department, may_write_any, expected_version, events))


async def append_one(pool: asyncpg.Pool, item: Append) -> AppendResult:
    """One append, a batch of one; raises its refusal."""
    [answer] = await append_batch(pool, [item])
    return settled(answer)


async def _call(conn: asyncpg.Connection, arguments: tuple[list[Any], ...], tries: Tries) -> list[asyncpg.Record]:
    # A commit whose wait for the synchronous standby was cancelled (an operator's pg_cancel_backend)
    # answers as if all went well, with a warning: that try is then one whose outcome is unknown,
    # and the next finds the events and answers only once the standby holds them (0010).
    async with warned_of_early_commit(conn):
        return await conn.fetch(BATCH_SQL, *arguments, timeout=tries.timeout())


def settled(answer: Answer) -> AppendResult:
    """The result, or its refusal raised."""
    if isinstance(answer, Exception):
        raise answer
    return answer


async def append_outcomes(pool: asyncpg.Pool, appends: Sequence[Append]) -> dict[int, str]:
    """Each append's outcome by its number (from 1), without its events: `created` or `appended`
    when this call stored them (a replay after a try whose outcome was unknown included, as in
    `append_batch`), `replayed`, or the code of the refusal. Raises as `append_batch` does."""
    tries = Tries()
    rows = await retrying(pool, lambda conn: _outcomes(conn, appends), tries)
    return {row["append_no"]: _caused(row["outcome"], appends[row["append_no"] - 1], tries.unknown_outcome)
            for row in rows}


async def _outcomes(conn: asyncpg.Connection, appends: Sequence[Append]) -> list[asyncpg.Record]:
    # The append function's plans are cached per session, and the first ones were made while the
    # ledger may have been small (an empty one), then kept as it grows by every call. 0012 plans its
    # event-id lookup per call; planning the rest afresh too still measured faster for the import's
    # large calls (200,000 events: 12.2-14.0 s with this, 17.5 s without).
    await conn.execute("DISCARD PLANS")
    return await conn.fetch(OUTCOMES_SQL, *batch_arguments(appends))


def _answer(item: Append, rows: list[asyncpg.Record], unknown_outcome: bool) -> Answer:
    if not rows:
        return RuntimeError("ledger_append_batch gave no answer for an append")
    outcome, detail = _caused(rows[0]["outcome"], item, unknown_outcome), rows[0]["detail"] or {}
    if outcome in STORED:
        events = [event_from_row(row) for row in rows]
        return AppendResult(booking_code=item.code, version=events[-1].version, events=events,
                            replayed=outcome == "replayed")
    if outcome in REFUSALS:
        kind, words = REFUSALS[outcome]
        return kind(words, **detail)
    if outcome == DataKeyStale.code:
        return DataKeyStale(DataKeyStale.words)
    return InvalidData(f"the ledger cannot store this input: {detail.get('message', outcome)}")


def _caused(outcome: str, item: Append, unknown_outcome: bool) -> str:
    """The outcome as this call caused it: a replay found after a try whose outcome was unknown (the
    connection broke, maybe after the commit) is that try's write, so this call's."""
    if outcome == "replayed" and unknown_outcome:
        return "created" if item.expected_version == 0 else "appended"
    return outcome


def batch_arguments(appends: Sequence[Append]) -> tuple[list[Any], ...]:
    """ledger_append_batch's thirteen arguments (per-append arrays, per-event arrays, then each append's
    traceparent and data key) for `appends`."""
    codes: list[str] = []
    departments: list[str] = []
    may_write_any: list[bool] = []
    expected: list[int | None] = []
    counts: list[int] = []
    event_ids: list[UUID] = []
    types: list[str] = []
    amounts: list[Decimal | None] = []
    currencies: list[str | None] = []
    data: list[dict[str, Any] | None] = []
    occurred_at: list[datetime | None] = []
    traceparents: list[str | None] = []
    keys: list[bytes | None] = []
    for item in appends:
        codes.append(item.code)
        departments.append(item.department)
        may_write_any.append(item.may_write_any)
        expected.append(item.expected_version)
        counts.append(len(item.events))
        traceparents.append(item.traceparent)
        keys.append(item.data_key)
        for e in item.events:
            event_ids.append(e.event_id)
            types.append(e.type)
            amounts.append(e.price.amount if e.price else None)
            currencies.append(e.price.currency if e.price else None)
            data.append(e.data)
            occurred_at.append(e.occurred_at)
    return (codes, departments, may_write_any, expected, counts, event_ids, types, amounts, currencies, data,
            occurred_at, traceparents, keys)

