"""What every client method does, written once, without doing any I/O itself.

Each operation is a *plan*: a generator that yields the steps it needs (an HTTP request, a
DynamoDB query, a pause) and is sent each step's outcome. The plan builds the requests, retries,
interprets the answers and raises the typed errors; `LedgerClient` runs plans with httpx and
`time.sleep`, `AsyncLedgerClient` with httpx's async client and `asyncio.sleep`. So both clients
behave the same by construction, and only the transport differs.
"""

from __future__ import annotations

import email.utils
import json
import random
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

from booking_ledger_client.dynamodb import QueryPage, event_of_item, gapless
from booking_ledger_client.errors import (
    ERRORS_BY_CODE,
    BookingCodeTaken,
    LedgerError,
    RateLimited,
    ReadStoreBehind,
    Unavailable,
    VersionConflict,
)
from booking_ledger_client.models import (
    AppendResult,
    Booking,
    BookingEvents,
    CreatedSubscription,
    Event,
    FeedPage,
    ReadResult,
    Subscription,
)

T = TypeVar("T")


# --- steps a plan asks for, and their outcomes ---------------------------------------------------

@dataclass(frozen=True)
class HttpRequest:
    """Send this request to the API (path relative to the base URL)."""

    method: str
    path: str
    params: Mapping[str, int] | None = None
    body: bytes | None = None


@dataclass(frozen=True)
class HttpAnswer:
    """The API answered (any status). Header names in lower case."""

    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class HttpFailed:
    """No answer: connection refused or dropped, or a timeout. The request may have been stored."""

    error: Exception


@dataclass(frozen=True)
class Sleep:
    """Wait this many seconds."""

    seconds: float


@dataclass(frozen=True)
class DynamoQuery:
    """Query the read store for one page of a booking's items."""

    code: str
    start_key: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class DynamoFailed:
    """The read store could not be queried."""

    error: Exception


Step = HttpRequest | Sleep | DynamoQuery
Outcome = HttpAnswer | HttpFailed | QueryPage | DynamoFailed | None
Plan = Generator[Step, Outcome, T]


# --- retries ---------------------------------------------------------------------------------------

RETRIED_STATUSES = frozenset({429, 502, 503, 504})


@dataclass
class RetryPolicy:
    """Capped exponential backoff with jitter, bounded by `retry_seconds` in all.

    A `Retry-After` from the server is a lower bound for the next pause (spread by up to 20 %,
    so that many clients told the same do not come back at the same instant)."""

    retry_seconds: float
    first_delay: float = 0.05
    max_delay: float = 2.0
    clock: Callable[[], float] = time.monotonic
    random: Callable[[], float] = field(default=random.random)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """The pause before try `attempt + 2` (attempt 0 = after the first try)."""
        cap = min(self.max_delay, self.first_delay * 2.0**attempt)
        pause = cap / 2 + self.random() * cap / 2
        if retry_after is not None:
            pause = max(pause, retry_after * (1 + 0.2 * self.random()))
        return pause


@dataclass(frozen=True)
class Sent:
    """The final answer to a request, and whether an earlier try may have been stored unseen."""

    answer: HttpAnswer
    uncertain: bool


def retry_after(answer: HttpAnswer) -> float | None:
    """`Retry-After` in seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    value = answer.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def send(request: HttpRequest, policy: RetryPolicy) -> Plan[Sent]:
    """Send `request`, retrying 429, 502, 503, 504, connection errors and timeouts within
    `policy.retry_seconds`. Other answers (2xx, every other 4xx, 500) are returned at once.
    When retries run out, raises RateLimited / Unavailable (or the error answer's own class)."""
    deadline = policy.clock() + policy.retry_seconds
    uncertain = False
    attempt = 0
    while True:
        outcome = yield request
        if isinstance(outcome, HttpAnswer):
            if outcome.status not in RETRIED_STATUSES:
                return Sent(outcome, uncertain)
            hint = retry_after(outcome)
        elif isinstance(outcome, HttpFailed):
            hint = None
        else:
            raise TypeError(f"a request was answered with {outcome!r}")
        pause = policy.delay(attempt, hint)
        if policy.clock() + pause > deadline:
            raise failure(outcome)
        # A 429 is refused before anything is written; any other failure may hide a commit.
        uncertain = uncertain or not (isinstance(outcome, HttpAnswer) and outcome.status == 429)
        yield Sleep(pause)
        attempt += 1


def failure(outcome: HttpAnswer | HttpFailed) -> LedgerError:
    """The error to raise for a failed try."""
    if isinstance(outcome, HttpAnswer):
        return error_of(outcome)
    error = Unavailable({"code": "unavailable", "title": "No answer",
                         "detail": f"no answer from the ledger: {type(outcome.error).__name__}: {outcome.error}"})
    error.__cause__ = outcome.error
    return error


# --- answers ---------------------------------------------------------------------------------------

def error_of(answer: HttpAnswer) -> LedgerError:
    """The typed error of an error answer; its problem+json body is kept on the exception."""
    problem: dict[str, Any] = {}
    try:
        body = json.loads(answer.body)
        if isinstance(body, dict):
            problem = body
    except ValueError:
        pass
    if not isinstance(problem.get("code"), str):
        # Not the ledger's problem+json (a proxy's page, say): name it by status.
        code = {429: "rate_limited", 502: "unavailable", 503: "unavailable", 504: "unavailable"}.get(
            answer.status, "unexpected_answer")
        problem = {"code": code, "status": answer.status,
                   "detail": answer.body[:200].decode("utf-8", "replace"), **problem}
    cls = ERRORS_BY_CODE.get(problem["code"], LedgerError)
    error = cls(problem, answer.status)
    if isinstance(error, RateLimited | Unavailable):
        error.retry_after = retry_after(answer)
    return error


def ok_json(sent: Sent) -> Any:
    """The JSON of a 2xx answer; raises the typed error of any other."""
    if not 200 <= sent.answer.status < 300:
        raise error_of(sent.answer)
    return json.loads(sent.answer.body)


def encode(body: Mapping[str, Any]) -> bytes:
    """Request JSON, compact and UTF-8."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def booking_path(code: str, suffix: str = "") -> str:
    """The path of a booking; codes are plain ASCII by contract, quoting keeps odd input harmless."""
    return f"/v1/bookings/{quote(code, safe='')}{suffix}"


# --- operations ------------------------------------------------------------------------------------

def append(code: str, events: Sequence[Mapping[str, Any]], expected_version: int | None,
           policy: RetryPolicy) -> Plan[AppendResult]:
    """Append prepared events (each with its event_id already made); see LedgerClient.append."""
    body: dict[str, Any] = {"events": list(events)}
    if expected_version is not None:
        body["expected_version"] = expected_version
    sent = yield from send(HttpRequest("POST", booking_path(code, "/events"), body=encode(body)), policy)
    if sent.answer.status in (200, 201):
        obj = json.loads(sent.answer.body)
        return AppendResult(obj["booking_code"], int(obj["version"]), [Event.from_json(e) for e in obj["events"]],
                            replayed=sent.answer.status == 200)
    error = error_of(sent.answer)
    # The ledger answers a replay of stored event ids with 200, so a retry normally ends above.
    # Should a retry still be told the code is taken, or the version moved on, after a try
    # whose answer was lost, look before refusing: if the booking holds exactly our event ids
    # where this append put them, that try committed, and this is a success, not a conflict.
    if sent.uncertain and isinstance(error, BookingCodeTaken | VersionConflict):
        stored = yield from stored_append(code, events, expected_version or 0, policy)
        if stored is not None:
            return stored
    raise error


def stored_append(code: str, events: Sequence[Mapping[str, Any]], base: int,
                  policy: RetryPolicy) -> Plan[AppendResult | None]:
    """The append of `events` right after version `base`, if the booking holds exactly them there."""
    request = HttpRequest("GET", booking_path(code, "/events"), {"from_version": base + 1, "limit": len(events)})
    sent = yield from send(request, policy)
    if sent.answer.status == 404:
        return None
    recorded = [Event.from_json(e) for e in ok_json(sent)["events"]]
    if [str(e.event_id) for e in recorded] != [str(e["event_id"]) for e in events]:
        return None
    return AppendResult(code, recorded[-1].version, recorded, replayed=True)


def booking(code: str, policy: RetryPolicy) -> Plan[Booking]:
    """GET /v1/bookings/{code}."""
    sent = yield from send(HttpRequest("GET", booking_path(code)), policy)
    return Booking.from_json(ok_json(sent))


def booking_events(code: str, from_version: int, policy: RetryPolicy, page_size: int = 1000) -> Plan[BookingEvents]:
    """Every event of a booking from `from_version` on, following `next_from_version` to the end."""
    events: list[Event] = []
    next_from: int | None = from_version
    while next_from is not None:
        request = HttpRequest("GET", booking_path(code, "/events"), {"from_version": next_from, "limit": page_size})
        obj = ok_json((yield from send(request, policy)))
        events += [Event.from_json(e) for e in obj["events"]]
        next_from = obj["next_from_version"]
    return BookingEvents(code, events[-1].version if events else from_version - 1, events)


def feed_page(after: int, limit: int, policy: RetryPolicy) -> Plan[FeedPage]:
    """One page of the global feed after position `after`."""
    obj = ok_json((yield from send(HttpRequest("GET", "/v1/events", {"after": after, "limit": limit}), policy)))
    return FeedPage([Event.from_json(e) for e in obj["events"]], int(obj["next_after"]))


Feed = Generator[Step | FeedPage, Outcome, None]


def feed(after: int, limit: int, follow: bool, poll_interval: float, policy: RetryPolicy) -> Feed:
    """Pages of the feed, each asked for after the previous page's `next_after`, so nothing is
    skipped (the ledger holds back events of transactions still open instead of passing them).
    Empty pages are not yielded; the first one ends the feed unless `follow`."""
    while True:
        page = yield from feed_page(after, limit, policy)
        after = page.next_after
        if page.events:
            yield page
        elif not follow:
            return
        else:
            yield Sleep(poll_interval)


def read_store(code: str) -> Plan[list[Event]]:
    """The booking's events 1..n that the read store holds without a gap (strongly consistent)."""
    items: list[dict[str, Any]] = []
    start_key: Mapping[str, Any] | None = None
    while True:
        outcome = yield DynamoQuery(code, start_key)
        if isinstance(outcome, DynamoFailed):
            raise outcome.error
        if not isinstance(outcome, QueryPage):
            raise TypeError(f"a query was answered with {outcome!r}")
        items += outcome.items
        start_key = outcome.last_key
        if start_key is None:
            return gapless([event_of_item(item) for item in items])


def read_events(code: str, min_version: int | None, has_store: bool, policy: RetryPolicy) -> Plan[ReadResult]:
    """See LedgerClient.read_events."""
    if has_store:
        try:
            stored = yield from read_store(code)
        except Exception:
            if min_version is None:
                raise
            stored = []  # the read store is down: the ledger answers instead
        version = stored[-1].version if stored else 0
        if min_version is None or version >= min_version:
            return ReadResult(code, version, stored, "dynamodb")
    ledger = yield from booking_events(code, 1, policy)
    return ReadResult(code, ledger.version, ledger.events, "ledger")


def wait_for_read_store(code: str, version: int, timeout: float, policy: RetryPolicy) -> Plan[ReadResult]:
    """See LedgerClient.wait_for_read_store."""
    deadline = policy.clock() + timeout
    pause = 0.05
    latest = 0
    last_error: Exception | None = None
    while True:
        try:
            stored = yield from read_store(code)
            latest, last_error = (stored[-1].version if stored else 0), None
            if latest >= version:
                return ReadResult(code, latest, stored, "dynamodb")
        except Exception as error:  # an outage of the read store: keep waiting, within the timeout
            last_error = error
        if policy.clock() + pause > deadline:
            behind = ReadStoreBehind({"code": "read_store_behind", "latest_version": latest,
                                      "detail": f"DynamoDB holds {code} up to version {latest}, "
                                                f"not {version}, after {timeout} s"})
            raise behind from last_error
        yield Sleep(pause)
        pause = min(pause * 2, 0.5)


# --- subscriptions (webhooks) ------------------------------------------------------------------------

def subscription_path(subscription_id: str, suffix: str = "") -> str:
    return f"/v1/subscriptions/{quote(str(subscription_id), safe='')}{suffix}"


def create_subscription(url: str, filters: Mapping[str, str] | None, after: int | None,
                        policy: RetryPolicy) -> Plan[CreatedSubscription]:
    """POST /v1/subscriptions, tried once: a retry after a lost answer could make a second one
    (list them to find out)."""
    body: dict[str, Any] = {"url": url}
    if filters:
        body["filters"] = dict(filters)
    if after is not None:
        body["after"] = after
    once = RetryPolicy(0.0, clock=policy.clock, random=policy.random)
    obj = ok_json((yield from send(HttpRequest("POST", "/v1/subscriptions", body=encode(body)), once)))
    return CreatedSubscription(Subscription.from_json(obj), str(obj["secret"]))


def subscriptions(policy: RetryPolicy) -> Plan[list[Subscription]]:
    """GET /v1/subscriptions: the key's department's."""
    obj = ok_json((yield from send(HttpRequest("GET", "/v1/subscriptions"), policy)))
    return [Subscription.from_json(item) for item in obj["subscriptions"]]


def subscription(subscription_id: str, policy: RetryPolicy) -> Plan[Subscription]:
    """GET /v1/subscriptions/{id}."""
    return Subscription.from_json(ok_json((yield from send(HttpRequest("GET", subscription_path(subscription_id)),
                                                           policy))))


def delete_subscription(subscription_id: str, policy: RetryPolicy) -> Plan[None]:
    """DELETE /v1/subscriptions/{id}; a retry that finds it gone (404) after an unseen success is a success."""
    sent = yield from send(HttpRequest("DELETE", subscription_path(subscription_id)), policy)
    if sent.answer.status == 404 and sent.uncertain:
        return None
    if not 200 <= sent.answer.status < 300:
        raise error_of(sent.answer)
    return None


def change_subscription(subscription_id: str, action: str, policy: RetryPolicy) -> Plan[Subscription]:
    """POST /v1/subscriptions/{id}/resume or /skip. A skip is tried once: a retry after a lost answer
    could skip the next event it paused on."""
    request = HttpRequest("POST", subscription_path(subscription_id, f"/{action}"))
    if action == "skip":
        policy = RetryPolicy(0.0, clock=policy.clock, random=policy.random)
    return Subscription.from_json(ok_json((yield from send(request, policy))))
