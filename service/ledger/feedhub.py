"""The feed's in-memory tail in one API process, woken by commits, shared by its live readers.

Every event comes from the paged feed's own query (service.ledger.reads.read_feed), so one
visibility fence serves both: nothing skipped, nothing twice, in position order.

- One `FeedHub` per API process LISTENs on the outbox channel (the API NOTIFYs it after its
  commits, service/ledger/notify.py) and polls once a second as a safety net (a wake-up can be
  lost, and a rolled-back transaction moves the fence without one). Woken, it reads the feed from
  its own head and keeps the events in a ring bounded by bytes, then wakes every reader: one
  query per wake-up per process, however many readers there are.
- The ring holds exactly the feed after its `start`. A reader whose cursor is at or past `start`
  takes its events from the ring; one further behind (a new reader with an old cursor, or one
  that fell behind) reads the feed from Postgres page by page until it is. The ring starts at the
  cursor where a reader, having read real events (or from 0), found nothing more: a cursor the
  feed itself handed out, so the ring is a suffix of the feed.
- The hub tails the feed, and LISTENs, only while it has readers (`join`, `leave`; it stops
  listening LISTEN_LINGER seconds after the last one left): a listening session costs Postgres and
  this process a wake-up per NOTIFY, one per few appends, for nothing when nobody reads (measured:
  bench/README.md, "Where the time goes"). Each event is kept encoded
  once, by the `encode` its owner gives (the API's event stream keeps SSE messages), and the
  ring's bound counts those bytes.
- When the feed brings a booking's PersonalDataErased event, the ring's events of that booking are
  kept again with their personal data erased (its key was destroyed before the event was written).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import msgspec

from core import personal
from core.events import Event
from core.outbox import OUTBOX_CHANNEL
from service.ledger.notify import listen
from service.ledger.reads import read_feed

log = logging.getLogger("booking_ledger.stream")

POLL_SECONDS = 1.0  # the hub reads the feed at least this often while it has readers
PAGE = 1000  # events per read of the feed by the hub
LISTEN_LINGER = 30.0  # seconds the hub goes on listening after its last reader left


@dataclass(frozen=True, slots=True)
class FeedItem:
    position: int
    event: Event
    chunk: bytes  # the event as the hub's `encode` made it


class FeedHub:
    """The feed's recent events and the wake-ups of one API process, shared by its readers."""

    def __init__(self, pool: asyncpg.Pool, url: str, buffer_bytes: int, encode: Callable[[Event], bytes]) -> None:
        self._pool = pool
        self._url = url
        self._buffer_bytes = buffer_bytes
        self._encode = encode
        self._ring: deque[FeedItem] = deque()
        self._ring_bytes = 0
        self.start: int | None = None  # the ring holds every feed event after `start` (None: not tailing)
        self.head = 0  # the feed cursor after the ring's last event
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._readers = 0
        self._idle_since = 0.0  # loop time the last reader left
        self._tail_task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None

    # -- life ------------------------------------------------------------------------------
    def start_tasks(self) -> None:
        self._tail_task = asyncio.create_task(self._tail(), name="feed-hub-tail")

    async def stop(self) -> None:
        tasks = [task for task in (self._tail_task, self._listener) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._listener = None

    async def _listen(self) -> None:
        await listen(self._url, OUTBOX_CHANNEL, name="booking-ledger-stream", on_notify=self._wake.set,
                     on_connect=self._wake.set,  # whatever committed while nobody listened
                     meanwhile=f"streams poll every {POLL_SECONDS:g}s")

    async def _tail(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
            self._wake.clear()
            if not self._readers:
                self._reset()  # nobody reads: do not keep tailing
                if self._listener is not None and asyncio.get_running_loop().time() - self._idle_since > LISTEN_LINGER:
                    self._listener.cancel()
                    self._listener = None
                continue
            try:
                await self._read_on()
            except Exception as error:  # a reader reads Postgres itself meanwhile
                log.warning("the stream hub could not read the feed: %r", error)
                await asyncio.sleep(POLL_SECONDS)
            self._signal()

    async def _read_on(self) -> None:
        while self.start is not None:
            events, after = await read_feed(self._pool, self.head, PAGE)
            if not events:
                return
            for event in events:
                if event.type == personal.ERASED_TYPE:
                    self._forget(event.booking_code)
                item = FeedItem(event.position, event, self._encode(event))
                self._ring.append(item)
                self._ring_bytes += len(item.chunk)
            self.head = after
            while self._ring_bytes > self._buffer_bytes and len(self._ring) > 1:
                dropped = self._ring.popleft()
                self._ring_bytes -= len(dropped.chunk)
                self.start = dropped.position

    def _forget(self, code: str) -> None:
        """Booking `code`'s personal data was erased: the ring's copies of its events show it erased
        too (the key went first, so a reader reading Postgres sees it already)."""
        for index, item in enumerate(self._ring):
            if item.event.booking_code == code and item.event.data and personal.FIELD in item.event.data:
                event = msgspec.structs.replace(item.event, data={**item.event.data, personal.FIELD: personal.ERASED})
                forgotten = FeedItem(item.position, event, self._encode(event))
                self._ring_bytes += len(forgotten.chunk) - len(item.chunk)
                self._ring[index] = forgotten

    def _reset(self) -> None:
        self._ring.clear()
        self._ring_bytes = 0
        self.start = None

    def _signal(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # -- what readers use ----------------------------------------------------------------------
    def join(self) -> None:
        """Count a new reader; the hub tails the feed while it has any."""
        self._readers += 1
        if self._listener is None and self._tail_task is not None:
            self._listener = asyncio.create_task(self._listen(), name="feed-hub-listen")
        self._wake.set()

    def leave(self) -> None:
        self._readers -= 1
        if not self._readers:
            self._idle_since = asyncio.get_running_loop().time()

    def changed(self) -> asyncio.Event:
        """Set at the hub's next pass over the feed (after a commit, or POLL_SECONDS)."""
        return self._changed

    def covers(self, cursor: int) -> bool:
        return self.start is not None and cursor >= self.start

    def tail_from(self, cursor: int) -> None:
        """Start the ring at `cursor`, a feed cursor after which the feed had nothing yet."""
        if self.start is None:
            self.start = self.head = cursor
            self._wake.set()

    def since(self, cursor: int, limit: int, max_bytes: int) -> list[FeedItem]:
        """Ring events after `cursor` (which `covers`), oldest first: at most `limit`, and no more
        after the one that reaches `max_bytes`."""
        first = bisect.bisect_right(self._ring, cursor, key=lambda item: item.position)
        newer: list[FeedItem] = []
        size = 0
        for item in itertools.islice(self._ring, first, first + limit):
            newer.append(item)
            size += len(item.chunk)
            if size >= max_bytes:
                break
        return newer
