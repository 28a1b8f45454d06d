"""Group commit: the appends that reach one API process while its call to Postgres is in flight
share the next call and its commit (service.ledger.append.append_batch).

There is no timer: a lone append goes at once, and a batch is whatever queued up during the
previous call, bounded by events and bytes. Every append is still checked and answered on its
own, exactly as `service.ledger.append.append` answers it (a single append is a batch of one),
and a refused append never fails its neighbours. If the batch call itself fails for an
unexpected reason (bad data that Postgres refuses, a bug), its members are redone one by one,
so a poisoned request hurts only itself.

Every append is answered within its budget from its arrival (the retry budget, at least one
statement's timeout; its deadline lies a little before the end: service.ledger.db.request_deadline,
taken by the API when the request arrived, so its key's look-up counts too), whatever Postgres does
meanwhile: a batch's call ends at its members' last deadline, and an append still waiting when its
own deadline passes is answered then: 503 `unavailable` if it was still queued (it is taken out: nothing of it is ever
written), 503 `unknown_outcome` if its batch was under way (it may commit; the same request sent
again says). A batch with too little time left is not sent at all (503 `unavailable`, at each
member's deadline). Without
this, appends queued behind a call that hangs (a commit waiting for a standby that is gone)
waited for it, then for their own call, one after the other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

import asyncpg

from service.ledger.append import UNKNOWN_WORDS, Answer, Append, AppendResult, append_batch, settled
from service.ledger.db import RetryPolicy, request_deadline
from service.ledger.errors import OutcomeUnknown, StoreUnavailable

log = logging.getLogger("booking_ledger.groupcommit")


# A batch whose members have less time than this left is not sent: a call cut that short would most
# likely end with its outcome unknown, where not sending it leaves none.
MIN_TRY_SECONDS = 0.5
NOT_TAKEN = "the ledger store did not take this request within the write budget; nothing of it was stored"


class _Waiting:
    __slots__ = ("append", "deadline", "future")

    def __init__(self, append: Append, deadline: float, future: asyncio.Future[AppendResult]) -> None:
        self.append = append
        self.deadline = deadline
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

    async def append(self, item: Append, deadline: float | None = None) -> AppendResult:
        """The answer `service.ledger.append.append` would give for `item` (raises its LedgerErrors),
        by `deadline` (the request's: service.ledger.db.request_deadline; None: one taken now)."""
        policy: RetryPolicy | None = getattr(self.pool, "retry", None)
        reserve = policy.reserve if policy is not None else 0.0
        if deadline is None:
            deadline = request_deadline(self.pool)
        if self.max_events <= 0:
            [answer] = await append_batch(self.pool, [item], deadline)
            return settled(answer)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AppendResult] = loop.create_future()
        waiting = _Waiting(item, deadline if deadline is not None else float("inf"), future)
        self._queue.append(waiting)
        if self._writer is None:
            self._writer = loop.create_task(self._write())
        # A caller that goes away (its client disconnected) cancels only its wait: the batch it
        # joined is written, and its outcome is what a retry with the same event ids will find.
        if deadline is None:
            return await future
        try:
            return await asyncio.wait_for(future, deadline - time.monotonic() + reserve / 2)
        except TimeoutError:  # wait_for cancelled `future`: its batch, if any, no longer answers it
            if waiting in self._queue:
                self._queue.remove(waiting)  # never written
                raise StoreUnavailable(NOT_TAKEN) from None
            raise OutcomeUnknown(UNKNOWN_WORDS) from None

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
        deadline = _deadline(batch)
        if deadline is not None and deadline - time.monotonic() < MIN_TRY_SECONDS:
            # Not sent; each is answered at its own deadline, not before: its budget is spent first.
            loop = asyncio.get_running_loop()
            for waiting in batch:
                loop.call_later(max(waiting.deadline - time.monotonic(), 0.0), _answer, waiting,
                                StoreUnavailable(NOT_TAKEN))
            return
        try:
            answers: list[Answer] = await append_batch(self.pool, [waiting.append for waiting in batch], deadline)
        except StoreUnavailable as error:
            # Postgres is not there (the budget is spent): every member gets this answer.
            answers = [type(error)(error.detail, transient=error.transient, **error.context) for _ in batch]
        except Exception as error:
            if len(batch) > 1:
                log.warning("a batch of %d appends failed; redoing them one by one", len(batch), exc_info=True)
                for waiting in batch:  # in arrival order: appends to one booking keep their order
                    await self._alone(waiting)
                return
            answers = [error]
        for waiting, answer in zip(batch, answers, strict=True):
            _answer(waiting, answer)

    async def _alone(self, waiting: _Waiting) -> None:
        try:
            [answer] = await append_batch(self.pool, [waiting.append], _deadline([waiting]))
        except Exception as error:
            answer = error
        _answer(waiting, answer)


def _deadline(batch: list[_Waiting]) -> float | None:
    """A batch's call ends at its last member's deadline (None: no deadline)."""
    last = max(waiting.deadline for waiting in batch)
    return None if last == float("inf") else last


def _answer(waiting: _Waiting, answer: Answer) -> None:
    if waiting.future.done():  # its caller went away
        return
    if isinstance(answer, Exception):
        waiting.future.set_exception(answer)
    else:
        waiting.future.set_result(answer)
