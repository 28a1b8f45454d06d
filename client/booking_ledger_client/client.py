"""`LedgerClient` and `AsyncLedgerClient`: the plans of protocol.py run over httpx (and boto3).

Everything a method decides (requests, retries, errors, read-store fallback) lives in
protocol.py; the two classes here only carry steps out, one blocking, one with asyncio.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import TypeVar

import httpx

from booking_ledger_client import protocol
from booking_ledger_client.dynamodb import ReadStore
from booking_ledger_client.models import (
    AppendResult,
    Booking,
    BookingEvents,
    CreatedSubscription,
    EventInput,
    FeedPage,
    ReadResult,
    Subscription,
    prepare_events,
)
from booking_ledger_client.protocol import (
    DynamoFailed,
    DynamoQuery,
    HttpAnswer,
    HttpFailed,
    HttpRequest,
    Outcome,
    Plan,
    RetryPolicy,
    Sleep,
    Step,
)

__version__ = "0.1.0"
T = TypeVar("T")


class _Base:
    """Configuration both clients share."""

    def __init__(self, base_url: str, api_key: str, *, dynamodb_table: str | None = None,
                 dynamodb_endpoint: str | None = None, region: str | None = None, timeout: float = 10.0,
                 retry_seconds: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.policy = RetryPolicy(retry_seconds)
        self.store = ReadStore(dynamodb_table, dynamodb_endpoint, region, timeout) if dynamodb_table else None
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": f"booking-ledger-client/{__version__}",
        }

    def _query(self, step: DynamoQuery) -> Outcome:
        if self.store is None:
            return DynamoFailed(RuntimeError("no dynamodb_table configured"))
        try:
            return self.store.query(step.code, step.start_key)
        except Exception as error:  # botocore's errors, whatever their kind: the plan decides
            return DynamoFailed(error)

    def _store_required(self) -> None:
        if self.store is None:
            raise ValueError("wait_for_read_store needs the client to be made with dynamodb_table=...")


def _answer(response: httpx.Response) -> HttpAnswer:
    return HttpAnswer(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)


class LedgerClient(_Base):
    """A blocking client of the booking ledger for one department's API key.

    `base_url` is the API (e.g. "http://127.0.0.1:8000"). With `dynamodb_table` set,
    `read_events` reads the company-wide DynamoDB read store (`dynamodb_endpoint` None = AWS's
    own endpoints; `region` None = boto3's default chain). `timeout` bounds each HTTP try;
    `retry_seconds` bounds the retries of one call (429, 502, 503, 504, connection errors and
    timeouts, honouring `Retry-After`). Retries are safe: event ids are made before the first try.
    Use it as a context manager, or call `close()`.
    """

    def __init__(self, base_url: str, api_key: str, *, dynamodb_table: str | None = None,
                 dynamodb_endpoint: str | None = None, region: str | None = None, timeout: float = 10.0,
                 retry_seconds: float = 30.0) -> None:
        super().__init__(base_url, api_key, dynamodb_table=dynamodb_table, dynamodb_endpoint=dynamodb_endpoint,
                         region=region, timeout=timeout, retry_seconds=retry_seconds)
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=timeout)

    def create(self, code: str, events: Iterable[EventInput]) -> AppendResult:
        """Create booking `code` with `events` (expected_version 0); this key's department owns it.

        Raises BookingCodeTaken (`.department` names the owner) when the code exists. A retried
        create whose earlier try was stored comes back as success (`replayed=True`)."""
        return self._run(protocol.append(code, prepare_events(events), 0, self.policy))

    def append(self, code: str, events: Iterable[EventInput], expected_version: int | None = None) -> AppendResult:
        """Append `events` atomically; with `expected_version` only if the booking is at that
        version (else VersionConflict with `.current_version`). Returns the new version and the
        recorded events. NotOwner when a `write` key appends to another department's booking."""
        return self._run(protocol.append(code, prepare_events(events), expected_version, self.policy))

    def booking(self, code: str) -> Booking:
        """The booking as the ledger holds it now (owner, version, latest price); BookingNotFound if none."""
        return self._run(protocol.booking(code, self.policy))

    def events(self, code: str, from_version: int = 1) -> BookingEvents:
        """The booking's events from `from_version` on, read from the ledger (all pages)."""
        return self._run(protocol.booking_events(code, from_version, self.policy))

    def feed(self, after: int = 0, *, limit: int = 500, follow: bool = False,
             poll_interval: float = 1.0) -> Iterator[FeedPage]:
        """The global feed after position `after`, page by page, each following the previous
        page's `next_after`: nothing skipped, nothing twice. Ends at the first empty page, or
        with `follow=True` waits `poll_interval` seconds and asks again, for ever."""
        steps = protocol.feed(after, limit, follow, poll_interval, self.policy)
        outcome: Outcome = None
        while True:
            try:
                item = steps.send(outcome)
            except StopIteration:
                return
            if isinstance(item, FeedPage):
                outcome = None
                yield item
            else:
                outcome = self._perform(item)

    def read_events(self, code: str, min_version: int | None = None) -> ReadResult:
        """The booking's events, from the DynamoDB read store when it is configured and has caught
        up to `min_version` (a strongly consistent Query), else from the ledger.

        Pass the version your own append returned as `min_version` to read your writes. The
        result's `source` says where the events came from ("dynamodb" or "ledger"); the events
        are equal either way. Without `min_version` only DynamoDB is read (what it holds, perhaps
        nothing yet); without a table only the ledger."""
        return self._run(protocol.read_events(code, min_version, self.store is not None, self.policy))

    def wait_for_read_store(self, code: str, version: int, timeout: float = 30.0) -> ReadResult:
        """Wait until DynamoDB holds the booking up to `version`, then return what it holds.
        Raises ReadStoreBehind (with `.latest_version`) after `timeout` seconds."""
        self._store_required()
        return self._run(protocol.wait_for_read_store(code, version, timeout, self.policy))

    def create_subscription(self, url: str, filters: Mapping[str, str] | None = None,
                            after: int | None = None) -> CreatedSubscription:
        """Subscribe `url` (https; a public address) to the events that match `filters`
        (`department`, `type`, `booking_code`), after position `after` (default: from now on).
        The result carries the signing secret, which the ledger shows only this once (check
        deliveries with `verify_signature`). Tried once. Needs a key with the `subscribe` scope."""
        return self._run(protocol.create_subscription(url, filters, after, self.policy))

    def subscriptions(self) -> list[Subscription]:
        """The subscriptions of this key's department."""
        return self._run(protocol.subscriptions(self.policy))

    def subscription(self, subscription_id: str | uuid.UUID) -> Subscription:
        """One subscription: status, cursor, last error, the event it is paused on."""
        return self._run(protocol.subscription(str(subscription_id), self.policy))

    def delete_subscription(self, subscription_id: str | uuid.UUID) -> None:
        """Delete a subscription; nothing more is delivered to it."""
        self._run(protocol.delete_subscription(str(subscription_id), self.policy))

    def resume_subscription(self, subscription_id: str | uuid.UUID) -> Subscription:
        """Resume a paused subscription: the event it paused on is delivered again first."""
        return self._run(protocol.change_subscription(str(subscription_id), "resume", self.policy))

    def skip_subscription_event(self, subscription_id: str | uuid.UUID) -> Subscription:
        """Skip exactly the event a paused subscription is paused on (the ledger records it)."""
        return self._run(protocol.change_subscription(str(subscription_id), "skip", self.policy))

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _run(self, plan: Plan[T]) -> T:
        outcome: Outcome = None
        while True:
            try:
                step = plan.send(outcome)
            except StopIteration as stop:
                result: T = stop.value
                return result
            outcome = self._perform(step)

    def _perform(self, step: Step) -> Outcome:
        if isinstance(step, HttpRequest):
            try:
                return _answer(self._http.request(step.method, step.path, params=step.params, content=step.body))
            except httpx.TransportError as error:
                return HttpFailed(error)
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
            return None
        return self._query(step)


class AsyncLedgerClient(_Base):
    """The asyncio twin of LedgerClient: the same constructor, methods and behaviour, awaited.

    DynamoDB queries run in a worker thread (boto3 blocks). Use `async with`, or `await aclose()`."""

    def __init__(self, base_url: str, api_key: str, *, dynamodb_table: str | None = None,
                 dynamodb_endpoint: str | None = None, region: str | None = None, timeout: float = 10.0,
                 retry_seconds: float = 30.0) -> None:
        super().__init__(base_url, api_key, dynamodb_table=dynamodb_table, dynamodb_endpoint=dynamodb_endpoint,
                         region=region, timeout=timeout, retry_seconds=retry_seconds)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, timeout=timeout)

    async def create(self, code: str, events: Iterable[EventInput]) -> AppendResult:
        """See LedgerClient.create."""
        return await self._run(protocol.append(code, prepare_events(events), 0, self.policy))

    async def append(self, code: str, events: Iterable[EventInput],
                     expected_version: int | None = None) -> AppendResult:
        """See LedgerClient.append."""
        return await self._run(protocol.append(code, prepare_events(events), expected_version, self.policy))

    async def booking(self, code: str) -> Booking:
        """See LedgerClient.booking."""
        return await self._run(protocol.booking(code, self.policy))

    async def events(self, code: str, from_version: int = 1) -> BookingEvents:
        """See LedgerClient.events."""
        return await self._run(protocol.booking_events(code, from_version, self.policy))

    async def feed(self, after: int = 0, *, limit: int = 500, follow: bool = False,
                   poll_interval: float = 1.0) -> AsyncIterator[FeedPage]:
        """See LedgerClient.feed (an async iterator: `async for page in client.feed()`)."""
        steps = protocol.feed(after, limit, follow, poll_interval, self.policy)
        outcome: Outcome = None
        while True:
            try:
                item = steps.send(outcome)
            except StopIteration:
                return
            if isinstance(item, FeedPage):
                outcome = None
                yield item
            else:
                outcome = await self._perform(item)

    async def read_events(self, code: str, min_version: int | None = None) -> ReadResult:
        """See LedgerClient.read_events."""
        return await self._run(protocol.read_events(code, min_version, self.store is not None, self.policy))

    async def wait_for_read_store(self, code: str, version: int, timeout: float = 30.0) -> ReadResult:
        """See LedgerClient.wait_for_read_store."""
        self._store_required()
        return await self._run(protocol.wait_for_read_store(code, version, timeout, self.policy))

    async def create_subscription(self, url: str, filters: Mapping[str, str] | None = None,
                                  after: int | None = None) -> CreatedSubscription:
        """See LedgerClient.create_subscription."""
        return await self._run(protocol.create_subscription(url, filters, after, self.policy))

    async def subscriptions(self) -> list[Subscription]:
        """See LedgerClient.subscriptions."""
        return await self._run(protocol.subscriptions(self.policy))

    async def subscription(self, subscription_id: str | uuid.UUID) -> Subscription:
        """See LedgerClient.subscription."""
        return await self._run(protocol.subscription(str(subscription_id), self.policy))

    async def delete_subscription(self, subscription_id: str | uuid.UUID) -> None:
        """See LedgerClient.delete_subscription."""
        await self._run(protocol.delete_subscription(str(subscription_id), self.policy))

    async def resume_subscription(self, subscription_id: str | uuid.UUID) -> Subscription:
        """See LedgerClient.resume_subscription."""
        return await self._run(protocol.change_subscription(str(subscription_id), "resume", self.policy))

    async def skip_subscription_event(self, subscription_id: str | uuid.UUID) -> Subscription:
        """See LedgerClient.skip_subscription_event."""
        return await self._run(protocol.change_subscription(str(subscription_id), "skip", self.policy))

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncLedgerClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def _run(self, plan: Plan[T]) -> T:
        outcome: Outcome = None
        while True:
            try:
                step = plan.send(outcome)
            except StopIteration as stop:
                result: T = stop.value
                return result
            outcome = await self._perform(step)

    async def _perform(self, step: Step) -> Outcome:
        if isinstance(step, HttpRequest):
            try:
                response = await self._http.request(step.method, step.path, params=step.params, content=step.body)
                return _answer(response)
            except httpx.TransportError as error:
                return HttpFailed(error)
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            return None
        return await asyncio.to_thread(self._query, step)


__all__ = ["AsyncLedgerClient", "LedgerClient"]
