"""The booking console at /console: server-rendered pages for operators and support staff.

Sign-in takes an API key from a POSTed form and starts a server-side session
(service/ledger/sessions.py): the cookie holds only the session's random id, and is HttpOnly, Secure,
SameSite=Strict and scoped to /console; the key never appears in a cookie, a URL, a page or a log
line. Every page checks the session and its key again (a revoked key's sessions end at once; a
session also ends after SESSION_SECONDS and at sign-out) and needs the `read` scope; the API's
per-key rate limit is not applied (a person clicks, a page is a few queries). CSRF: the cookie is
SameSite=Strict, so no other site's request carries it, and the only state-changing routes
(sign-in, sign-out, a subscription's resume and skip) are POSTs that also need the console's own
origin in Origin (or Referer).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader
from litestar import Request, Response, Router, get, post
from litestar.datastructures import Cookie, ResponseHeader
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException
from litestar.params import Body, FromPath, FromQuery
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.template import TemplateConfig

from core.events import BOOKING_CODE_PATTERN
from service.api.state import InjectedState, app_state_of
from service.console import cluster, status
from service.console.chart import price_points, step_chart
from service.ledger import sessions, subscriptions
from service.ledger.errors import (
    BookingNotFound,
    LedgerError,
    StoreUnavailable,
    SubscriptionNotFound,
    SubscriptionNotPaused,
)
from service.ledger.keys import ApiKey, authenticate
from service.ledger.prices import Clock, PriceInForce, price_at
from service.ledger.reads import get_booking, read_booking_events

COOKIE = "ledger_console"
PATH = "/console"
SESSION_SECONDS = 8 * 3600
MAX_EVENTS = 1000  # the latest this many events are shown
_CODE = re.compile(BOOKING_CODE_PATTERN)

log = logging.getLogger("booking_ledger.console")
TEMPLATES = Path(__file__).parent / "templates"
_NOTICES = {
    "signed_out": "You are signed out.",
    "expired": "Your session is no longer valid (expired, or its key was revoked). Sign in again.",
}


class _SignInFirst(Exception):
    """No valid key in the cookie: the answer is the sign-in page."""

    def __init__(self, had_cookie: bool) -> None:
        super().__init__("sign in first")
        self.had_cookie = had_cookie


def _cookie(value: str, max_age: int) -> Cookie:
    return Cookie(key=COOKIE, value=value, max_age=max_age, path=PATH, secure=True, httponly=True, samesite="strict")


async def _signed_in(request: Request) -> ApiKey:
    """The key of the console cookie's session, checked now; _SignInFirst when there is none or it is
    no good (unknown, expired, signed out, its key revoked)."""
    presented = request.cookies.get(COOKIE)
    if not presented:
        raise _SignInFirst(had_cookie=False)
    key = await sessions.key_of(app_state_of(request).pool, presented)
    if key is None or not key.allows("read"):
        raise _SignInFirst(had_cookie=True)
    request.state.department = key.department  # for the request log line; never the key itself
    request.state.console_key = key  # for error pages' header
    return key


def _page(name: str, key: ApiKey | None, status_code: int = 200, **context: Any) -> Template:
    return Template(template_name=name, context={"key": key, **context}, status_code=status_code)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL without user info; None for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        return None
    return parts.scheme, parts.hostname, port or _DEFAULT_PORTS[parts.scheme]


def _same_origin(request: Request) -> bool:
    """True only for a POST that a browser says came from the console's own origin (login CSRF):
    an Origin that is exactly that origin (scheme, host, port, and no path), or, when a browser sent
    no Origin, a Referer on that origin. Neither header can be set by another site's page.

    The console's own scheme is X-Forwarded-Proto's when a proxy in front terminates TLS (a page
    cannot set that header either), else the connection's.
    """
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    forwarded = request.headers.get("x-forwarded-proto", "").split(",", 1)[0].strip().lower()
    scheme = forwarded if forwarded in _DEFAULT_PORTS else request.url.scheme
    own = _origin_of(f"{scheme}://{request.headers.get('host', '')}")
    if own is None:
        return False
    origin = request.headers.get("origin")
    if origin is not None:
        found = _origin_of(origin)
        return found == own and origin == f"{urlsplit(origin).scheme}://{urlsplit(origin).netloc}"
    referer = request.headers.get("referer")
    return referer is not None and _origin_of(referer) == own


@dataclass
class SignInForm:
    key: str = ""


@get("/", name="console:home")
async def home(request: Request, notice: FromQuery[str | None] = None) -> Template:
    try:
        key = await _signed_in(request)
    except _SignInFirst:
        return _page("sign_in.html", None, notice=_NOTICES.get(notice or ""))
    return _page("home.html", key)


@post("/sign-in", status_code=303)
async def sign_in(
    request: Request, data: Annotated[SignInForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    app_state: InjectedState,
) -> Response[Any]:
    if not _same_origin(request):
        return _page("sign_in.html", None, 403, error="This sign-in did not come from the console's own page.")
    presented = data.key.strip()
    key = await authenticate(app_state.pool, presented, app_state.key_cache) if presented else None
    if key is None:
        return _page("sign_in.html", None, 401, error="That key is unknown, revoked or mistyped.")
    if not key.allows("read"):
        return _page("sign_in.html", None, 403, error=f"This {key.department} key has no read scope.")
    request.state.department = key.department
    session = await sessions.start(app_state.pool, key, timedelta(seconds=SESSION_SECONDS))
    return Redirect(PATH, status_code=303, cookies=[_cookie(session, SESSION_SECONDS)])


@post("/sign-out", status_code=303)
async def sign_out(request: Request, app_state: InjectedState) -> Response[Any]:
    if not _same_origin(request):
        return _page("sign_in.html", None, 403, error="This sign-out did not come from the console's own page.")
    await sessions.end(app_state.pool, request.cookies.get(COOKIE, ""))
    return Redirect(f"{PATH}?notice=signed_out", status_code=303, cookies=[_cookie("", 0)])


def _moment(text: str) -> datetime:
    """The console's time field: RFC 3339, or a date and time without an offset, taken as UTC;
    ValueError with the notice to show."""
    try:
        moment = datetime.fromisoformat(text.strip().replace(" ", "T", 1))
    except ValueError:
        raise ValueError("That is not a time: write it as 2026-11-26T10:00:00Z or 2026-11-26 10:00.") from None
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:  # such as 0001-01-01T00:00:00+01:00: a valid time whose UTC is in year 0
        raise ValueError("That time is outside the years 1 to 9999 in UTC.") from None


@get("/booking")
async def booking(request: Request, app_state: InjectedState, code: FromQuery[str] = "", at: FromQuery[str] = "",
                  clock: FromQuery[str] = "recorded") -> Template | Redirect:
    key = await _signed_in(request)
    code = code.strip()
    if not code:
        return Redirect(PATH, status_code=303)
    if not _CODE.fullmatch(code):
        return _page("home.html", key, 422, code=code,
                     error="A booking code is 1 to 64 letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit.")
    pool = app_state.pool
    booking = await get_booking(pool, code)
    events, _ = await read_booking_events(pool, code, max(1, booking.version - MAX_EVENTS + 1), MAX_EVENTS)
    as_of: PriceInForce | None = None
    moment: datetime | None = None
    moment_error: str | None = None
    if at.strip():
        try:
            moment = _moment(at)
        except ValueError as error:
            moment_error = str(error)
    chosen: Clock = "occurred" if clock == "occurred" else "recorded"
    if moment is not None:
        as_of = await price_at(pool, code, moment, chosen)
    pending = await status.booking_outbox(pool, code)
    try:
        replicated, dynamodb_error = await app_state.read_store.latest_version(code), None
    except status.ReadStoreUnavailable as error:
        replicated, dynamodb_error = None, str(error)
    return _page(
        "booking.html", key, booking=booking, events=events,
        chart=step_chart(code, price_points(events), booking.version, point_href=lambda p: (
            f"{PATH}/booking?" + urlencode({"code": code, "at": p.at.isoformat(timespec="microseconds")}) + "#as-of")),
        as_of=as_of, at=at, moment=moment, clock=chosen, moment_error=moment_error,
        pending=pending, replicated=replicated, dynamodb_error=dynamodb_error,
    )


@get("/pipeline")
async def pipeline(request: Request, app_state: InjectedState) -> Template:
    key = await _signed_in(request)
    pool = app_state.pool
    outbox = await status.outbox(pool)
    leader = await status.relay_leader(pool)
    try:
        item_count, dynamodb_error = await app_state.read_store.check(), None
    except status.ReadStoreUnavailable as error:
        item_count, dynamodb_error = None, str(error)
    kafka = app_state.settings.kafka
    try:
        sink, kafka_error = await status.sink_progress(kafka), None
    except status.KafkaUnavailable as error:
        sink, kafka_error = None, str(error)
    return _page("pipeline.html", key, outbox=outbox, leader=leader, item_count=item_count,
                 dynamodb_error=dynamodb_error, dynamodb=app_state.read_store.settings, kafka=kafka, sink=sink,
                 kafka_error=kafka_error, freshness=_freshness(outbox, sink))


def _freshness(outbox: status.Outbox, sink: status.SinkProgress | None) -> float | None:
    """Seconds since the oldest committed event that DynamoDB does not hold yet was committed (still in
    the outbox, or in Kafka past what the sink wrote); 0 when none waits; None when Kafka did not say."""
    if sink is None:
        return None
    ages = [outbox.oldest_age_seconds or 0.0]
    if sink.oldest_waiting is not None:
        ages.append((datetime.now(UTC) - sink.oldest_waiting).total_seconds())
    return max(0.0, *ages)


@get("/subscriptions")
async def subscriptions_page(request: Request, app_state: InjectedState, notice: FromQuery[str] = "") -> Template:
    """The signed-in department's webhooks: status, lag, the last error, and resume/skip for a paused one."""
    key = await _signed_in(request)
    found = await subscriptions.list_subscriptions(app_state.pool, key.department)
    lags = {s.id: await subscriptions.lag_seconds(app_state.pool, key.department, s.id) for s in found}
    return _page("subscriptions.html", key, subscriptions=found, lags=lags, may_change=key.allows("subscribe"),
                 notice=_SUBSCRIPTION_NOTICES.get(notice))


_SUBSCRIPTION_NOTICES = {
    "resumed": "Resumed: the event it was paused on is delivered again first.",
    "skipped": "Skipped the event it was paused on; the next ones are delivered.",
    "not_paused": "That subscription is not paused (any more): nothing was changed.",
}


@post("/subscriptions/{subscription_id:uuid}/{action:str}", status_code=303)
async def change_subscription(request: Request, subscription_id: FromPath[uuid.UUID], action: FromPath[str],
                              app_state: InjectedState) -> Response[Any]:
    """Resume, or skip the event it is paused on. CSRF: the session cookie is SameSite=Strict, and
    the POST must come from the console's own origin (as sign-in and sign-out)."""
    key = await _signed_in(request)
    if not _same_origin(request):
        return _page("error.html", key, 403, title="Not from the console",
                     message="This change did not come from the console's own page; nothing was changed.")
    if not key.allows("subscribe") or action not in ("resume", "skip"):
        return _page("error.html", key, 403, title="Not allowed",
                     message="Resuming or skipping needs a key with the subscribe scope.")
    try:
        if action == "resume":
            await subscriptions.resume_subscription(app_state.pool, key.department, subscription_id)
        else:
            await subscriptions.skip_paused_event(app_state.pool, key.department, key.id, subscription_id)
    except SubscriptionNotPaused:
        return Redirect(f"{PATH}/subscriptions?notice=not_paused", status_code=303)
    return Redirect(f"{PATH}/subscriptions?notice={'resumed' if action == 'resume' else 'skipped'}",
                    status_code=303)


@get("/cluster")
async def cluster_page(request: Request, app_state: InjectedState) -> Template:
    key = await _signed_in(request)
    return _page("cluster.html", key, view=await cluster.read(app_state.settings.cluster))


def _sign_in_first(request: Request, exc: _SignInFirst) -> Response[Any]:
    if not exc.had_cookie:
        return Redirect(PATH, status_code=303)
    # An expired or signed-out session, or a revoked key: forget the cookie, and say why.
    return Redirect(f"{PATH}?notice=expired", status_code=303, cookies=[_cookie("", 0)])


def _ledger_error(request: Request, exc: LedgerError) -> Response[Any]:
    if isinstance(exc, BookingNotFound):
        code = request.query_params.get("code", "")
        return _page("not_found.html", _key_of(request), 404, code=code)
    if isinstance(exc, SubscriptionNotFound):
        return _page("error.html", _key_of(request), 404, title="No such subscription",
                     message="Your department has no subscription with this id.")
    if isinstance(exc, StoreUnavailable):
        return _page("error.html", _key_of(request), 503, title="The ledger is not reachable",
                     message="Postgres does not answer right now. Try again in a moment.")
    return _unexpected(request, exc)


def _key_of(request: Request) -> ApiKey | None:
    return getattr(request.state, "console_key", None)


def _http_error(request: Request, exc: HTTPException) -> Response[Any]:
    return _page("error.html", _key_of(request), exc.status_code, title="That request did not work",
                 message="The form or address was not understood. Go back and try again.")


def _unexpected(request: Request, exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _page("error.html", None, 500, title="Something went wrong",
                 message="The console failed to show this page; the error has been logged.")


_HEADERS = [
    ResponseHeader(name="Content-Security-Policy", value=(
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'")),
    ResponseHeader(name="Cache-Control", value="no-store"),
    ResponseHeader(name="Referrer-Policy", value="same-origin"),
    ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
]

console = Router(
    PATH,
    route_handlers=[home, sign_in, sign_out, booking, pipeline, subscriptions_page, change_subscription, cluster_page],
    include_in_schema=False,
    response_headers=_HEADERS,
    exception_handlers={
        _SignInFirst: _sign_in_first,
        LedgerError: _ledger_error,
        HTTPException: _http_error,
        Exception: _unexpected,
    },
)


def template_config() -> TemplateConfig:
    """Jinja with autoescape on: every value a page shows is escaped unless it is Markup (the chart)."""
    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True)
    environment.filters.update(when=_when, duration=_duration, compact_json=_compact_json, size=_size)
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment))


def _when(value: datetime | None) -> str:
    return "–" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"  # the database session's zone is UTC


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours < 48 else f"{hours // 24} days {hours % 24} h"


def _size(count: int | None) -> str:
    """A byte count for people: 0 B, 512 B, 16.0 KiB, 3.2 MiB."""
    if count is None:
        return "unknown"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _compact_json(value: object, limit: int = 160) -> str:
    if value is None:
        return ""
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))  # spaces: the cell can wrap
    return text if len(text) <= limit else text[: limit - 1] + "…"
