"""Wakes the relay after appends commit, coalescing wake-ups to one NOTIFY in flight per process.

The NOTIFY is sent after the commit, not inside the append transaction: Postgres serializes the
commits of notifying transactions on one lock, which would cap the append rate. At most one
NOTIFY per MIN_INTERVAL per process: a woken relay sends everything committed so far, so more
would cost the API and Postgres a statement per append for nothing. A lost wake-up costs
latency only; the relay polls as a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from core.events import OUTBOX_CHANNEL

log = logging.getLogger("booking_ledger.notify")

MIN_INTERVAL = 0.005  # seconds between two wake-ups from one process

# A NOTIFY gives its transaction an id, so its commit would wait for a WAL flush like an append's
# and compete with the appends for it. A wake-up needs no durability: commit it asynchronously.
NOTIFY_SQL = "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')"


class OutboxNotifier:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._pending = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-notifier")

    def poke(self) -> None:
        """Ask for a wake-up; returns at once. Many pokes during one NOTIFY make one more NOTIFY."""
        self._pending.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            try:
                await self._pool.execute(NOTIFY_SQL, OUTBOX_CHANNEL)
            except Exception as error:  # the relay's poll covers a missed wake-up
                log.debug("outbox wake-up not sent: %r", error)
                await asyncio.sleep(0.5)
            await asyncio.sleep(MIN_INTERVAL)
