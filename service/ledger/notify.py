"""NOTIFY and LISTEN: the wake-ups of the relay and of each API process.

OutboxNotifier wakes the relay after appends commit, coalescing wake-ups to one NOTIFY in flight
per process. The NOTIFY is sent after the commit, not inside the append transaction: Postgres serializes the
commits of notifying transactions on one lock, which would cap the append rate. At most one
NOTIFY per MIN_INTERVAL per process: a woken relay sends everything committed so far, so more
would cost the API and Postgres a statement per append for nothing. A lost wake-up costs
latency only; the relay polls as a safety net.

`listen` keeps one LISTEN connection to the primary for the life of a task (the API's key cache
and its event-stream hub each run one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

from core.outbox import OUTBOX_CHANNEL
from core.pg import connect_primary

log = logging.getLogger("booking_ledger.notify")

MIN_INTERVAL = 0.005  # seconds between two wake-ups from one process
FIRST_RETRY = 0.5  # seconds before a listener connects again; doubles per failure up to LAST_RETRY
LAST_RETRY = 5.0

# A NOTIFY gives its transaction an id, so its commit would wait for a WAL flush like an append's
# and compete with the appends for it. A wake-up needs no durability: commit it asynchronously.
NOTIFY_SQL = "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')"
NOTIFIER_SETTINGS = {"application_name": "booking-ledger-notify", "synchronous_commit": "off"}


class OutboxNotifier:
    """The wake-ups of one API process, sent on a connection of their own to the primary of `url`:
    a simple-protocol NOTIFY committed asynchronously, with no pool to go through (measured in
    bench/README.md: a NOTIFY per few appends is among the largest costs of an append)."""

    def __init__(self, url: str) -> None:
        self._url = url
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
        conn: asyncpg.Connection | None = None
        try:
            while True:
                await self._pending.wait()
                self._pending.clear()
                try:
                    if conn is None or conn.is_closed():
                        conn = await connect_primary(self._url, timeout=5, server_settings=NOTIFIER_SETTINGS)
                    await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}", timeout=5)
                except Exception as error:  # the relay's poll covers a missed wake-up
                    log.debug("outbox wake-up not sent: %r", error)
                    if conn is not None:
                        conn.terminate()
                        conn = None
                    await asyncio.sleep(0.5)
                await asyncio.sleep(MIN_INTERVAL)
        finally:
            if conn is not None:
                conn.terminate()


async def listen(
    url: str,
    channel: str,
    *,
    name: str,
    on_notify: Callable[[], None],
    on_connect: Callable[[], None],
    on_lost: Callable[[], None] = lambda: None,
    meanwhile: str,
    ping_interval: float = 5.0,
) -> None:
    """LISTEN on `channel` at the primary of `url` until cancelled.

    `on_notify` runs for every notification. `on_connect` runs each time the listener is in
    place, first and after every reconnect: a notification sent while nobody listened is lost, so
    it must act as if one had arrived. `on_lost` runs whenever the connection is given up
    (including on cancellation). A dead connection hears nothing without an error, so it is
    pinged every `ping_interval` seconds; a failed ping or connect is retried after a backoff of
    FIRST_RETRY doubling to LAST_RETRY seconds, each time against whichever host is the primary
    then. An outage is logged once, with `meanwhile` (what the process does without wake-ups).
    `name` is the connection's application_name.
    """
    delay = FIRST_RETRY
    warned = False
    while True:
        conn = None
        try:
            conn = await connect_primary(url, timeout=5, server_settings={"application_name": name})
            await conn.add_listener(channel, lambda *_: on_notify())
            on_connect()
            log.debug("listening on %s", channel)
            delay = FIRST_RETRY
            warned = False
            while True:
                await asyncio.sleep(ping_interval)
                await conn.fetchval("SELECT 1", timeout=ping_interval)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # One warning per outage; the retries after it are at debug level.
            log.log(logging.DEBUG if warned else logging.WARNING, "not listening on %s (%r): %s",
                    channel, error, meanwhile)
            warned = True
        finally:
            on_lost()
            if conn is not None:
                conn.terminate()
        await asyncio.sleep(delay)
        delay = min(delay * 2, LAST_RETRY)
