"""The append transaction: booking row, events and outbox rows, in one call to ledger_append.

The function (ledger_append, which calls ledger_append_batch: migrations/sql/, the file with the
highest revision number is the one in force) does the whole transaction in one round trip: it
serializes appends per booking, answers idempotent retries, creates the booking or advances its
version, inserts the events and their outbox rows, and raises the contract's errors. A success is
returned only after Postgres committed it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from core.events import Event, event_from_row
from core.money import Money
from service.ledger.db import Tries, retrying

APPEND_SQL = "SELECT * FROM ledger_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"


@dataclass(frozen=True, slots=True)
class NewEvent:
    event_id: UUID
    type: str
    price: Money | None = None
    data: dict[str, Any] | None = None
    occurred_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AppendResult:
    booking_code: str
    version: int
    events: list[Event]
    replayed: bool  # True: an idempotent retry of an earlier request; nothing new was written


async def append(
    pool: asyncpg.Pool,
    *,
    code: str,
    department: str,
    may_write_any: bool,
    expected_version: int | None,
    events: Sequence[NewEvent],
) -> AppendResult:
    """Append `events` to booking `code` atomically (all or none).

    expected_version 0 creates the booking, owned by `department`; n >= 1 appends only at
    version n; None appends at whatever version the booking is. Raises the LedgerError
    subclasses of service.ledger.errors.

    While the primary fails over, the call is tried again (service.ledger.db.retrying) with the
    same event ids. When a try failed with its outcome unknown (the connection broke, maybe after
    the commit) and a later try finds the events recorded, they were stored by this call: the
    result is not `replayed` (the API answers 201, as if the first try had answered).
    """
    tries = Tries()
    rows = await retrying(pool, lambda conn: conn.fetch(
            APPEND_SQL,
            code,
            department,
            may_write_any,
            expected_version,
            [e.event_id for e in events],
            [e.type for e in events],
            [e.price.amount if e.price else None for e in events],
            [e.price.currency if e.price else None for e in events],
            [e.data for e in events],
            [e.occurred_at for e in events],
        ), tries)
    recorded = [event_from_row(row) for row in rows]
    return AppendResult(
        booking_code=code,
        version=recorded[-1].version,
        events=recorded,
        replayed=rows[0]["replayed"] and not tries.unknown_outcome,
    )
