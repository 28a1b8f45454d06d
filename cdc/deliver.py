"""The webhook worker (`booking-ledger deliver`): each active subscription's events, in position
order, POSTed to its receiver, signed; on a failure retried, then paused on that event.

Why it never skips or repeats an event on its own:
- It tails the feed behind the same fence as GET /v1/events (ledger_feed_fence(), see
  service/ledger/reads.py): below it, no transaction is still running or yet to start, so an event
  that commits late is held back, never passed. And nothing is delivered that the synchronous
  standby does not hold (core.pg.standby_holds), so a failover cannot take back a delivered event.
- Each subscription has its cursor in Postgres (`subscriptions.position`: every matching event at
  or below it is delivered or skipped). It moves only after the receiver's 2xx, by a compare-and-set
  on its old value, so a worker that lost its lease cannot move it backwards. At least once: a crash
  between the 2xx and that update delivers the batch again (receivers dedupe by event_id).
- A delivery that fails is retried (capped exponential backoff with jitter) for
  LEDGER_WEBHOOK_RETRY_SECONDS; then the subscription pauses on that event, and the events after it
  wait. Only an operator moves it on: resume (deliver it again) or skip (exactly that event, recorded).
  A failed batch is retried as its first event alone: the pause then names the event that fails by
  itself, and a skip skips just that one. Events after it go one at a time until the failed
  batch's end is passed, then in batches again.
- One worker delivers at a time: the leader holds a session advisory lock (as the relay does); a
  standby takes over within a second or two of the leader's connection dying.

A delivery is `POST url` with a JSON array of Event JSON (as on the Kafka topic: with `hash`, and
`data.personal` sealed; the worker's role reads no data key. Once a booking's PersonalDataErased
event is recorded, its events are delivered with `"personal": "erased"`, as DynamoDB keeps them),
and the headers Ledger-Subscription,
Ledger-Delivery (the same id for the same events of one subscription, whichever try or worker sends
them) and Ledger-Signature (`t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`).
The receiver's address is resolved and checked before every delivery and connected to as checked
(core/webhooks.py); no redirect is followed, an answer is read to at most 64 KiB, and connect and
answer each have LEDGER_WEBHOOK_TIMEOUT_SECONDS (the whole answer twice that).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import httpx
import msgspec

from cdc import metrics
from cdc.leadership import Lease, pause
from core import personal, webhooks
from core.events import Event, encode_event, event_columns, event_from_row
from core.lease import DELIVER_LOCK
from core.logs import direct_logger
from core.outbox import OUTBOX_CHANNEL
from core.pg import connect_primary, init_connection, is_transient, standby_holds
from core.settings import Settings

log = logging.getLogger("booking_ledger.deliver")

MAX_BODY_BYTES = 1024 * 1024  # a delivery's body, about (at least one event)
POLL_SECONDS = 0.5  # how often the worker looks for new events and changed subscriptions without a NOTIFY
FIRST_RETRY = 0.5  # seconds before the first retry; doubles per failure, up to RETRY_CAP, with jitter
RETRY_CAP = 30.0
DELIVERY_NAMESPACE = uuid.UUID("5b0e4f3c-9f1d-4e5a-8c2b-6a7d8e9f0a1b")  # of the Ledger-Delivery ids
USER_AGENT = "booking-ledger-webhooks/1"
APPLICATION_NAME = "booking-ledger-deliver"  # its sessions in pg_stat_activity

SUBSCRIPTIONS_SQL = """
SELECT s.id, s.url, s.filter_department, s.filter_type, s.filter_booking_code, s.secret, s.position, s.status,
       k.revoked_at IS NOT NULL AS revoked
  FROM subscriptions s JOIN api_keys k ON k.id = s.key_id
"""

# One page of a subscription's events below the fence, and the fence itself (the same snapshot).
PAGE_SQL = f"""
SELECT f.fence, e.* FROM (SELECT ledger_feed_fence() AS fence) f
LEFT JOIN LATERAL (
    SELECT {event_columns()} FROM events
     WHERE position > $1 AND position + 0 < f.fence  -- a filter: see service/ledger/reads.py FEED_SQL
       AND ($2::text IS NULL OR department = $2)
       AND ($3::text IS NULL OR type = $3)
       AND ($4::text IS NULL OR booking_code = $4)
     ORDER BY position
     LIMIT $5
) e ON true
"""

DELIVERED_SQL = """
UPDATE subscriptions
   SET position = $3, delivered_at = now(), delivered_events = delivered_events + $4, attempts = 0,
       last_status = $5, last_error = NULL
 WHERE id = $1 AND position = $2 AND status = 'active'
RETURNING id
"""
FAILED_SQL = """
UPDATE subscriptions SET attempts = $3, last_status = $4, last_error = $5
 WHERE id = $1 AND position = $2 AND status = 'active'
RETURNING id
"""
PAUSE_SQL = """
UPDATE subscriptions
   SET status = 'paused', paused_at = now(), paused_position = $3, paused_event_id = $4, attempts = $5,
       last_status = $6, last_error = $7
 WHERE id = $1 AND position = $2 AND status = 'active'
RETURNING id
"""

def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The Ledger-Signature header's value for `body` sent at `timestamp` (Unix seconds)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def delivery_id(subscription_id: uuid.UUID, events: list[Event]) -> uuid.UUID:
    """The same id for the same events of one subscription: stable across retries and workers."""
    return uuid.uuid5(DELIVERY_NAMESPACE, f"{subscription_id}:{events[0].position}:{events[-1].position}")


def retry_delay(failures: int) -> float:
    """Capped exponential backoff with jitter: between half and all of FIRST_RETRY * 2^(failures-1), capped."""
    ceiling = min(RETRY_CAP, FIRST_RETRY * 2 ** min(failures - 1, 20))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass(frozen=True)
class Target:
    """What one subscription is: where to deliver, which events, and how to sign them."""

    id: uuid.UUID
    url: str
    department: str | None
    type: str | None
    booking_code: str | None
    secret: str


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status: int | None  # the receiver's HTTP status, None when there was no answer
    error: str | None  # why it failed, for the subscription's `reason`


class Deliverer:
    def __init__(self, settings: Settings, poll_interval: float = POLL_SECONDS) -> None:
        self.settings = settings
        self.webhook = settings.webhook
        self.poll_interval = poll_interval
        self.metrics = metrics.DeliverMetrics()
        self.lease = Lease("deliver", DELIVER_LOCK, settings.database.url, log, lambda: APPLICATION_NAME,
                           lambda leading: self.metrics.leader.set(1 if leading else 0))
        self._tasks: dict[Target, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()  # replaced on every NOTIFY; the tasks wait on the current one
        self._changed = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        self._client: httpx.AsyncClient | None = None
        self.sent_log = direct_logger("booking_ledger.deliver.sent")

    async def run(self, stop: asyncio.Event) -> None:
        """Campaign for leadership and deliver while leader, until `stop` is set."""
        metrics.serve(self.metrics.registry, self.settings.metrics.host, self.settings.metrics.deliver_port,
                      "deliver")
        await self.lease.run(stop, self._lead)

    @property
    def is_leader(self) -> bool:
        return self.lease.is_leader

    async def _lead(self, conn: asyncpg.Connection, stop: asyncio.Event) -> None:
        """While leader: one task per active subscription, started and stopped as the table changes."""
        await conn.add_listener(OUTBOX_CHANNEL, lambda *_: self._poke())
        await conn.add_listener(webhooks.SUBSCRIPTIONS_CHANNEL, lambda *_: self._changed.set())
        timeout = float(self.webhook.timeout_seconds)
        self._pool = await asyncpg.create_pool(
            self.settings.database.url, connect=connect_primary, min_size=0, max_size=8, command_timeout=30,
            init=init_connection, server_settings={"application_name": APPLICATION_NAME})
        self._client = httpx.AsyncClient(
            follow_redirects=False, trust_env=False, timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20))
        try:
            while not stop.is_set():
                self._changed.clear()
                await self._refresh(await conn.fetch(SUBSCRIPTIONS_SQL))
                await pause(stop, self.poll_interval, self._changed)
        finally:
            await self._stop_tasks()
            await self._client.aclose()
            try:
                await asyncio.wait_for(self._pool.close(), 5)
            except TimeoutError:
                self._pool.terminate()
            self._pool = self._client = None

    def _poke(self) -> None:
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    async def _refresh(self, rows: list[asyncpg.Record]) -> None:
        """Start a task for each active subscription that has none, stop those of the others."""
        wanted: dict[Target, int] = {}
        paused = 0
        for row in rows:
            if row["status"] == "paused":
                paused += 1
            if row["status"] != "active" or row["revoked"]:
                continue
            target = Target(row["id"], row["url"], row["filter_department"], row["filter_type"],
                            row["filter_booking_code"], row["secret"])
            wanted[target] = row["position"]
        self.metrics.paused.set(paused)
        self.metrics.active.set(len(wanted))
        for target, task in list(self._tasks.items()):
            if target not in wanted or task.done():
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
                del self._tasks[target]
                with contextlib.suppress(KeyError):
                    self.metrics.lag.remove(str(target.id))
        for target, position in wanted.items():
            if target not in self._tasks:
                self._tasks[target] = asyncio.create_task(self._deliver_subscription(target, position),
                                                          name=f"deliver-{target.id}")

    async def _stop_tasks(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    async def _deliver_subscription(self, target: Target, cursor: int) -> None:
        """Deliver `target`'s events after `cursor` until it pauses, changes or the worker stops."""
        try:
            await Subscription(self, target, cursor).run()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # The next refresh starts it again from its cursor in Postgres.
            expected = is_transient(error) or isinstance(error, asyncpg.PostgresError)
            level = logging.WARNING if expected else logging.ERROR
            log.log(level, "delivery to subscription %s stopped on an error (it starts again): %r", target.id, error)
            await asyncio.sleep(self.poll_interval)

    async def wait_for_events(self) -> None:
        wake = self._wake
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), self.poll_interval)

    async def with_connection(self, work: Callable[[asyncpg.Connection], Awaitable[object]]) -> object:
        assert self._pool is not None, "only while leading"
        async with self._pool.acquire(timeout=10) as conn:
            return await work(conn)

    async def post(self, target: Target, body: bytes, delivery: uuid.UUID) -> Outcome:
        """One attempt: the receiver checked, resolved and connected to as checked; its answer read to 64 KiB."""
        assert self._client is not None, "only while leading"
        allowed = self.webhook.allowed
        try:
            receiver = webhooks.parse(target.url, allowed)
            addresses = await webhooks.resolve(receiver, allowed)
        except webhooks.UnsafeUrl as error:
            return Outcome(False, None, f"refused: {error}")
        address = addresses[0]
        literal = f"[{address}]" if ipaddress.ip_address(address.split("%", 1)[0]).version == 6 else address
        default_port = 443 if receiver.scheme == "https" else 80
        named = f"[{receiver.host}]" if ":" in receiver.host else receiver.host  # an IPv6 literal
        host_header = named if receiver.port == default_port else f"{named}:{receiver.port}"
        timestamp = int(time.time())
        try:
            request = self._client.build_request(
                "POST", f"{receiver.scheme}://{literal}:{receiver.port}{receiver.target}", content=body,
                headers={"Host": host_header, "Content-Type": "application/json", "User-Agent": USER_AGENT,
                         "Ledger-Subscription": str(target.id), "Ledger-Delivery": str(delivery),
                         "Ledger-Signature": sign(target.secret, timestamp, body)},
                extensions={"sni_hostname": receiver.host} if receiver.scheme == "https" else {})
        except (httpx.InvalidURL, ValueError) as error:
            return Outcome(False, None, f"refused: {error}")
        try:
            async with asyncio.timeout(2 * self.webhook.timeout_seconds):
                response = await self._client.send(request, stream=True)
                try:
                    read = 0
                    async for chunk in response.aiter_raw():
                        read += len(chunk)
                        if read >= webhooks.MAX_ANSWER_BYTES:
                            break
                finally:
                    await response.aclose()
        except TimeoutError:
            return Outcome(False, None, f"no answer within {2 * self.webhook.timeout_seconds} s")
        except httpx.TimeoutException as error:
            return Outcome(False, None, f"timed out ({type(error).__name__})")
        except httpx.HTTPError as error:
            return Outcome(False, None, f"no answer: {type(error).__name__}")
        status = response.status_code
        if 200 <= status < 300:
            return Outcome(True, status, None)
        if 300 <= status < 400:
            return Outcome(False, status, f"HTTP {status}: redirects are not followed")
        return Outcome(False, status, f"HTTP {status}")


class Subscription:
    """The delivery loop of one subscription (a task of the leading worker)."""

    def __init__(self, worker: Deliverer, target: Target, cursor: int) -> None:
        self.worker = worker
        self.target = target
        self.cursor = cursor  # as stored in Postgres
        self.scanned = cursor  # below the fence, nothing after `cursor` and up to here matches
        self.careful_until = 0  # deliver one event at a time up to this position (after a failed batch)
        self.lag = worker.metrics.lag.labels(str(target.id))

    async def run(self) -> None:
        while True:
            events = await self._next_events()
            if not events:
                self.lag.set(0)
                await self.worker.wait_for_events()
                continue
            self.lag.set(max(0.0, time.time() - events[0].recorded_at.timestamp()))
            if not await self._deliver(events):
                return

    async def _next_events(self) -> list[Event]:
        """The next batch: events after the cursor below the fence that the standby holds."""
        limit = 1 if self.scanned < self.careful_until else self.worker.webhook.batch_max
        target = self.target

        async def read(conn: asyncpg.Connection) -> tuple[list[asyncpg.Record], set[str]]:
            rows = await conn.fetch(PAGE_SQL, self.scanned, target.department, target.type, target.booking_code,
                                    limit)
            if rows[0]["event_id"] is None:
                return rows, set()
            await standby_holds(conn)
            return rows, await _erased(conn, rows)

        page = await self.worker.with_connection(read)
        assert isinstance(page, tuple)
        rows, erased = page
        if rows[0]["event_id"] is None:
            self.scanned = max(self.scanned, rows[0]["fence"] - 1)
            return []
        events: list[Event] = []
        size = 2
        for row in rows:
            event = event_from_row(row)
            if event.booking_code in erased:
                event = msgspec.structs.replace(event, data=personal.erased(event.data))
            size += len(encode_event(event)) + 1
            if events and size > MAX_BODY_BYTES:
                break
            events.append(event)
        return events

    async def _deliver(self, events: list[Event]) -> bool:
        """Deliver `events`, retrying; True once delivered and the cursor moved, False when the
        subscription paused or changed under us (the worker's next refresh decides what runs)."""
        worker, target = self.worker, self.target
        started = time.monotonic()
        failures = 0
        while True:
            body = b"[" + b",".join(encode_event(event) for event in events) + b"]"
            delivery = delivery_id(target.id, events)
            outcome = await worker.post(target, body, delivery)
            if outcome.ok:
                worker.metrics.deliveries.labels("delivered").inc()
                return await self._delivered(events, outcome)
            failures += 1
            worker.metrics.deliveries.labels("failed").inc()
            if failures == 1:
                log.warning("delivery %s to subscription %s failed (%s); retrying for up to %d s", delivery,
                            target.id, outcome.error, worker.webhook.retry_seconds)
            if len(events) > 1:  # from now on its first event alone (see the module's docstring)
                self.careful_until = events[-1].position
                events = events[:1]
            left = worker.webhook.retry_seconds - (time.monotonic() - started)
            if left <= 0:
                return await self._pause(events[0], failures, outcome)
            if not await self._update(FAILED_SQL, failures, outcome.status, _bounded(outcome.error)):
                return False
            await asyncio.sleep(min(retry_delay(failures), left))

    async def _update(self, statement: str, *args: object) -> bool:
        target = self.target
        changed = await self.worker.with_connection(
            lambda conn: conn.fetchval(statement, target.id, self.cursor, *args))
        return changed is not None

    async def _delivered(self, events: list[Event], outcome: Outcome) -> bool:
        last = events[-1].position
        if not await self._update(DELIVERED_SQL, last, len(events), outcome.status):
            return False
        metrics.observe_lag(self.worker.metrics.commit_to_ack, (event.recorded_at for event in events))
        self.worker.metrics.events.inc(len(events))
        self.cursor = self.scanned = last
        for event in events:
            self.worker.sent_log.info("delivered", subscription=str(self.target.id), event_id=str(event.event_id),
                                       position=event.position)
        return True

    async def _pause(self, event: Event, failures: int, outcome: Outcome) -> bool:
        await self._update(PAUSE_SQL, event.position, event.event_id, failures, outcome.status,
                           _bounded(outcome.error))
        log.warning("subscription %s paused on event %s (position %d) after %d failed attempts: %s",
                    self.target.id, event.event_id, event.position, failures, outcome.error)
        self.lag.set(max(0.0, time.time() - event.recorded_at.timestamp()))
        return False


async def _erased(conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> set[str]:
    """The bookings of `rows` with sealed personal data whose personal data was erased (one more
    query, only for a page with personal data)."""
    sealed = list({row["booking_code"] for row in rows if personal.sealed_in(row["data"]) is not None})
    return {r["booking_code"] for r in await conn.fetch(personal.ERASED_BOOKINGS_SQL, sealed)} if sealed else set()


def _bounded(error: str | None) -> str | None:
    """An error's text as stored: at most 1000 bytes of UTF-8."""
    return None if error is None else error.encode()[:1000].decode(errors="ignore")


