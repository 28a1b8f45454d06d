"""Group commit: the appends that reach one API process while its call to Postgres is in flight
share the next call and its commit (ledger_append_batch: migrations/sql/, the file with the highest
revision number is the one in force).

There is no timer: a lone append goes at once, and a batch is whatever queued up during the
previous call, bounded by events and bytes. Every append is still checked and answered on its
own, exactly as `service.ledger.append.append` answers it: the function returns one outcome per
append, and a refused append never fails its neighbours. If the batch call itself fails for an
unexpected reason (bad data that Postgres refuses, a bug), its members are redone one by one,
so a poisoned request hurts only itself. While the primary fails over, the batch is tried again
with the same event ids (service.ledger.db.retrying), as a single append is.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg

from core.events import event_from_row
from service.ledger.append import AppendResult, NewEvent, append
from service.ledger.db import REFUSALS, Tries, retrying
from service.ledger.errors import (
    InvalidData,
    LedgerError,
    StoreUnavailable,
)

BATCH_SQL = "SELECT * FROM ledger_append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"

# The outcomes that refuse an append, and the error (with the same words) a single append raises.
_REFUSALS: dict[str, tuple[type[LedgerError], str]] = {code: (kind, detail) for code, (_, kind, detail)
                                                       in REFUSALS.items()}

log = logging.getLogger("booking_ledger.groupcommit")


@dataclass(frozen=True, slots=True)
class Append:
    """One append, as `service.ledger.append.append` takes it; `size` is what it weighs (its body's bytes)."""

    code: str
    department: str
    may_write_any: bool
    expected_version: int | None
    events: Sequence[NewEvent]
    size: int = 0


class _Waiting:
    __slots__ = ("append", "future")

    def __init__(self, append: Append, future: asyncio.Future[AppendResult]) -> None:
        self.append = append
        self.future = future


class GroupCommit:
    """The one writer of an API process. `append` is `service.ledger.append.append`, batched."""

    def __init__(self, pool: asyncpg.Pool, max_events: int = 1024, max_bytes: int = 4 * 1024 * 1024,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.pool = pool
        self.on_batch = on_batch  # told each batch's number of appends (a metric)
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._queue: deque[_Waiting] = deque()
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # calls made, and the appends they carried (the bench reads them)
        self.appends = 0

    async def append(self, item: Append) -> AppendResult:
        """The answer `service.ledger.append.append` would give for `item` (raises its LedgerErrors)."""
        if self.max_events <= 0:
            return await _alone(self.pool, item)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AppendResult] = loop.create_future()
        self._queue.append(_Waiting(item, future))
        if self._writer is None:
            self._writer = loop.create_task(self._write())
        # A caller that goes away (its client disconnected) cancels only its wait: the batch it
        # joined is written, and its outcome is what a retry with the same event ids will find.
        return await future

    async def close(self) -> None:
        """Wait until every queued append has been answered."""
        if self._writer is not None:
            await asyncio.shield(self._writer)

    async def _write(self) -> None:
        try:
            while self._queue:
                await self._commit(self._take())
        finally:
            self._writer = None

    def _take(self) -> list[_Waiting]:
        """The next batch: appends in arrival order, at least one, within the events and bytes bounds."""
        batch = [self._queue.popleft()]
        events, size = len(batch[0].append.events), batch[0].append.size
        while self._queue:
            item = self._queue[0].append
            events += len(item.events)
            size += item.size
            if events > self.max_events or size > self.max_bytes:
                break
            batch.append(self._queue.popleft())
        return batch

    async def _commit(self, batch: list[_Waiting]) -> None:
        self.batches += 1
        self.appends += len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch))
        if len(batch) == 1:
            # Nothing to share: the single-append path answers exactly as it always did.
            await _settle(batch[0], _alone(self.pool, batch[0].append))
            return
        tries = Tries()
        try:
            rows = await retrying(self.pool, lambda conn: _call(conn, batch), tries)
        except StoreUnavailable as error:
            # Postgres is not there (the retry budget is spent): every member would get this answer.
            for waiting in batch:
                _answer(waiting, error=StoreUnavailable(error.detail, transient=error.transient, **error.context))
            return
        except Exception:
            log.warning("a batch of %d appends failed; redoing them one by one", len(batch), exc_info=True)
            for waiting in batch:  # in arrival order: appends to one booking keep their order
                await _settle(waiting, _alone(self.pool, waiting.append))
            return
        _answer_rows(batch, rows, tries.unknown_outcome)


async def _alone(pool: asyncpg.Pool, item: Append) -> AppendResult:
    return await append(pool, code=item.code, department=item.department, may_write_any=item.may_write_any,
                        expected_version=item.expected_version, events=item.events)


async def _settle(waiting: _Waiting, work: Awaitable[AppendResult]) -> None:
    try:
        result = await work
    except Exception as error:
        _answer(waiting, error=error)
    else:
        _answer(waiting, result=result)


def _answer(waiting: _Waiting, result: AppendResult | None = None, error: BaseException | None = None) -> None:
    if waiting.future.done():  # its caller went away
        return
    if result is not None:
        waiting.future.set_result(result)
    else:
        waiting.future.set_exception(error or RuntimeError("no answer"))


def _call(conn: asyncpg.Connection, batch: list[_Waiting]) -> Awaitable[list[asyncpg.Record]]:
    return conn.fetch(BATCH_SQL, *batch_arguments([waiting.append for waiting in batch]))


def batch_arguments(appends: Sequence[Append]) -> tuple[list[Any], ...]:
    """ledger_append_batch's eleven arguments (per-append arrays, then per-event arrays) for `appends`."""
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
    for item in appends:
        codes.append(item.code)
        departments.append(item.department)
        may_write_any.append(item.may_write_any)
        expected.append(item.expected_version)
        counts.append(len(item.events))
        for e in item.events:
            event_ids.append(e.event_id)
            types.append(e.type)
            amounts.append(e.price.amount if e.price else None)
            currencies.append(e.price.currency if e.price else None)
            data.append(e.data)
            occurred_at.append(e.occurred_at)
    return (codes, departments, may_write_any, expected, counts, event_ids, types, amounts, currencies, data,
            occurred_at)


def _answer_rows(batch: list[_Waiting], rows: list[asyncpg.Record], unknown_outcome: bool) -> None:
    """Each member's answer from its rows (rows come grouped by append; the groups are not in append order)."""
    by_append: list[list[asyncpg.Record]] = [[] for _ in batch]
    for row in rows:
        by_append[row["append_no"] - 1].append(row)
    for waiting, own in zip(batch, by_append, strict=True):
        if not own:
            _answer(waiting, error=RuntimeError("ledger_append_batch gave no answer for an append"))
            continue
        outcome = own[0]["outcome"]
        if outcome in ("created", "appended", "replayed"):
            events = [event_from_row(row) for row in own]
            _answer(waiting, result=AppendResult(
                booking_code=waiting.append.code,
                version=events[-1].version,
                events=events,
                # As for a single append: a try whose outcome was unknown may have stored them.
                replayed=outcome == "replayed" and not unknown_outcome,
            ))
        elif outcome in _REFUSALS:
            kind, detail = _REFUSALS[outcome]
            _answer(waiting, error=kind(detail, **(own[0]["detail"] or {})))
        else:  # invalid
            message = (own[0]["detail"] or {}).get("message", outcome)
            _answer(waiting, error=InvalidData(f"the ledger cannot store this input: {message}"))
