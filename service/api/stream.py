"""GET /v1/events/stream: the global feed as Server-Sent Events, woken by commits.

Every event comes from the paged feed's own query (service.ledger.reads.read_feed), so one
visibility fence serves both and the stream makes the feed's promise: nothing skipped, nothing
twice, in position order. The events reach a stream through the process's `FeedHub`
(service/ledger/feedhub.py), the feed's in-memory tail, which keeps them as SSE messages: a
stream at or past the hub's `start` takes them from there, one further behind reads the feed from
Postgres page by page until it is.

A stream answers with what the client can take. granian accepts a few sends ahead of a client that
does not read, however large each one is, and the kernel's socket buffer takes a few MB more; so a
stream reads the feed in small pages (STREAM_PAGE_BYTES) and sends about SEND_BYTES at a time
(whole messages), which bounds what the process holds for a stalled client. A send blocked longer than
LEDGER_STREAM_SEND_TIMEOUT drops the client with a final comment (it resumes with Last-Event-ID).
A stream also ends, with a comment, after LEDGER_STREAM_MAX_BYTES (no answer is unbounded) and
when its key is revoked, which it checks before every send: catching up on a large backlog never
outlives the key. Open streams are capped per key and in all, per API worker process: a key may
hold LEDGER_STREAM_MAX_PER_KEY streams in each worker (429 before it starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated

import msgspec
from litestar import Request, get
from litestar.params import Parameter
from litestar.response.base import ASGIResponse
from litestar.types import Receive, Scope, Send

from core.events import BOOKING_CODE_PATTERN, EVENT_TYPE_PATTERN, Event, whole
from service.api import metrics
from service.api.auth import READ_SCOPES, authenticated, header
from service.api.openapi import KEY_REQUIRED, MAX_POSITION, V1_READ
from service.api.problems import ApiError
from service.api.state import AppState, InjectedState
from service.ledger.keys import DEPARTMENT, ApiKey, authenticate
from service.ledger.reads import read_feed

# What one stream takes at a time, from Postgres or the hub: a stalled client holds no more than
# this (and one event over it) in the process, besides what granian queues.
STREAM_PAGE_EVENTS = 256
STREAM_PAGE_BYTES = 256 * 1024
# granian queues a few sends whatever their size, so sends are kept small: messages gathered up to
# this size, or one larger message alone (an event's data is at most 256 KiB).
SEND_BYTES = 64 * 1024
KEY_RECHECK_SECONDS = 1.0  # how often a stream looks its key up while the key cache cannot hear changes
FINAL_SEND_FACTOR = 6  # the last comment waits this many send timeouts for a slow client


def sse_message(event: Event) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (event.position, msgspec.json.encode(event))


def sse_comment(text: str) -> bytes:
    return b": " + text.replace("\n", " ").encode() + b"\n\n"


@dataclass(frozen=True, slots=True)
class Filters:
    department: str | None = None
    type: str | None = None
    booking_code: str | None = None

    def match(self, event: Event) -> bool:
        return ((self.department is None or event.department == self.department)
                and (self.type is None or event.type == self.type)
                and (self.booking_code is None or event.booking_code == self.booking_code))


class _Ended(Exception):
    """The stream ends; `comment` is its last line."""

    def __init__(self, reason: str, comment: str) -> None:
        super().__init__(comment)
        self.reason = reason
        self.comment = comment


class EventStream(ASGIResponse):
    """The stream of one request, as an ASGI response."""

    _should_set_content_length = False

    def __init__(self, state: AppState, key: ApiKey, presented: str, after: int, filters: Filters) -> None:
        super().__init__(status_code=200, media_type="text/event-stream",
                         headers={"X-Accel-Buffering": "no"})
        self._pool = state.pool
        self._keys = state.key_cache
        self._streams = state.streams
        self._settings = state.streams.settings
        self._hub = state.feed_hub
        self._key = key
        self._presented = presented
        self._cursor = after  # the position of the last event sent (or passed over by the filters)
        self._real_cursor = after == 0  # a cursor the feed handed out (see the module's docstring)
        self._filters = filters
        self._sent_bytes = 0
        self._gone = asyncio.Event()
        self._key_generation = self._keys.generation()  # the key was checked at this generation
        self._key_checked = time.monotonic()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = self._settings
        watcher = asyncio.create_task(self._watch_disconnect(receive))
        ended: _Ended | None = None
        try:
            await self.start_response(send)
            await self._send(send, sse_comment(f"events after position {self._cursor}"))
            await self._run(send)
        except _Ended as error:
            ended = error
        finally:
            watcher.cancel()
            self._streams.release(self._key.id)
            metrics.STREAMS_ENDED.labels(ended.reason if ended else "disconnected").inc()
        if ended is not None and not self._gone.is_set():
            # Counted and released already: a client that reads again soon still gets the reason
            # (the comment waits behind what the transport holds), and nothing more is kept for it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(send({"type": "http.response.body", "body": sse_comment(ended.comment),
                                             "more_body": False}), FINAL_SEND_FACTOR * settings.send_timeout)

    async def _watch_disconnect(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._gone.set()
                return

    async def _send(self, send: Send, body: bytes) -> None:
        """Send whole messages at once: a message cut by a timeout would leave the client a
        fragment that the final comment line completes as a truncated event."""
        try:
            await asyncio.wait_for(send({"type": "http.response.body", "body": body, "more_body": True}),
                                   self._settings.send_timeout)
        except TimeoutError:
            raise _Ended("too_slow", f"dropped: this client did not read for {self._settings.send_timeout} s; "
                         f"reconnect with Last-Event-ID: {self._cursor}") from None
        self._sent_bytes += len(body)

    async def _check_key(self) -> None:
        """End the stream when its key is revoked.

        Cheap enough for every send: while the key cache hears every change to api_keys, a
        look-up happens only when its generation moved; while it does not, at most once per
        KEY_RECHECK_SECONDS.
        """
        keys = self._keys
        if keys.listening and keys.generation() == self._key_generation:
            return
        now = time.monotonic()
        if not keys.listening and now - self._key_checked < KEY_RECHECK_SECONDS:
            return
        self._key_generation, self._key_checked = keys.generation(), now
        if await authenticate(self._pool, self._presented, keys) is None:
            raise _Ended("revoked", "end: the API key of this stream is revoked")

    async def _deliver(self, send: Send, messages: Iterable[tuple[int, bytes | None]]) -> bool:
        """Send the messages (position, SSE message, or None where the filters pass an event
        over) in pieces; the cursor follows what was sent. True when anything was sent."""
        sent = False
        for cursor, body in _pieces(messages):
            await self._check_key()
            if body:
                await self._send(send, body)
                sent = True
            self._cursor = cursor
            if self._sent_bytes >= self._settings.max_bytes:
                raise _Ended("max_bytes", f"end: this stream carried {self._sent_bytes} bytes, its most; "
                             f"reconnect with Last-Event-ID: {self._cursor}")
        return sent

    async def _run(self, send: Send) -> None:
        settings = self._settings
        hub = self._hub
        quiet_since = time.monotonic()
        while not self._gone.is_set():
            await self._check_key()
            changed = hub.changed()
            messages: list[tuple[int, bytes | None]]
            if hub.covers(self._cursor):
                match = self._filters.match
                messages = [(item.position, item.chunk if match(item.event) else None)
                            for item in hub.since(self._cursor, STREAM_PAGE_EVENTS, STREAM_PAGE_BYTES)]
            else:
                events, after = await read_feed(self._pool, self._cursor, STREAM_PAGE_EVENTS, STREAM_PAGE_BYTES)
                messages = [(event.position, sse_message(event) if self._filters.match(event) else None)
                            for event in events]
                del events  # only the messages are kept while the client reads them
                if messages:
                    self._real_cursor = True
                elif self._real_cursor:
                    hub.tail_from(after)
            if messages:
                if await self._deliver(send, messages):
                    quiet_since = time.monotonic()
                continue  # there may be more at once
            wait = settings.heartbeat_seconds - (time.monotonic() - quiet_since)
            if wait <= 0:
                await self._send(send, sse_comment("keep-alive"))
                quiet_since = time.monotonic()
                continue
            gone = asyncio.create_task(self._gone.wait())
            woken = asyncio.create_task(changed.wait())
            try:
                await asyncio.wait((gone, woken), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                woken.cancel()


def _pieces(messages: Iterable[tuple[int, bytes | None]]) -> Iterator[tuple[int, bytes]]:
    """(the cursor after a piece, its bytes): consecutive messages gathered up to SEND_BYTES (a
    larger message is a piece of its own), so that a stream can stop between any two."""
    parts: list[bytes] = []
    size = 0
    last: int | None = None
    for position, message in messages:
        if message is not None and parts and size + len(message) > SEND_BYTES:
            assert last is not None
            yield last, b"".join(parts)
            parts, size = [], 0
        if message is not None:
            parts.append(message)
            size += len(message)
        last = position
    if last is not None:
        yield last, b"".join(parts)


# ASCII digits only: str.isdigit() also takes "²" and other digits that int() refuses, and a
# bound on the length keeps int() away from huge numbers.
_POSITION = re.compile(r"[0-9]{1,19}")


def _last_event_id(request: Request) -> int | None:
    raw = header(request, b"last-event-id").strip(" \t")
    if not raw:
        return None
    if not _POSITION.fullmatch(raw) or int(raw) > MAX_POSITION:
        raise ApiError(422, "validation_error",
                       f"Last-Event-ID must be a position: an integer from 0 to {MAX_POSITION}, in digits")
    return int(raw)


@get(
    "/v1/events/stream",
    summary="The global feed as Server-Sent Events: every event after the position, then new ones as they commit",
    description=(
        "Each event is `id: <position>` and `data: <Event JSON>`. A reconnect with Last-Event-ID resumes "
        "after that position (it wins over `after`). Nothing is skipped or repeated, as in GET /v1/events. "
        "A comment line at least every 15 s keeps an idle connection open; a comment ends the stream when "
        "the client reads too slowly, after a bounded number of bytes, or when the key is revoked."
    ),
    security=KEY_REQUIRED,
    before_request=authenticated,
    opt={"scopes": READ_SCOPES, "read_route": "stream", "problems": V1_READ},
    operation_id="stream_events",
    media_type="text/event-stream",
)
async def event_stream(
    request: Request,
    app_state: InjectedState,
    after: Annotated[int, Parameter(ge=0, le=MAX_POSITION)] = 0,
    department: Annotated[str | None, Parameter(pattern=whole(DEPARTMENT.pattern), max_length=64)] = None,
    type: Annotated[str | None, Parameter(pattern=EVENT_TYPE_PATTERN, max_length=100)] = None,  # noqa: A002
    booking_code: Annotated[str | None, Parameter(pattern=BOOKING_CODE_PATTERN, max_length=64)] = None,
) -> EventStream:
    resume = _last_event_id(request)
    key: ApiKey = request.state.api_key
    app_state.streams.admit(key.id)
    metrics.READS.labels("stream", "ok").inc()
    presented = header(request, b"authorization").partition(" ")[2].strip()
    return EventStream(app_state, key, presented, resume if resume is not None else after,
                       Filters(department, type, booking_code))


STREAM_ROUTES = [event_stream]
