"""Thin routes: authenticate, validate, call one ledger function, shape the answer."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Annotated

import msgspec
from litestar import Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, Operation, Reference, RequestBody
from litestar.params import Parameter

from service.api import metrics
from service.api.auth import READ_SCOPES, WRITE_SCOPES, authenticated
from service.api.http_rules import check_json_body, read_body
from service.api.openapi import KEY_REQUIRED, MAX_POSITION, BookingCode, problem_responses
from service.api.problems import ApiError, ClientGone
from service.api.schemas import (
    AppendOut,
    BookingEventsOut,
    FeedOut,
    decode_append,
)
from service.ledger.append import Append, NewEvent
from service.ledger.errors import LedgerError
from service.ledger.reads import Booking, get_booking, read_booking_events, read_feed

MAX_BODY_BYTES = 1024 * 1024


@dataclass
class _AppendOperation(Operation):
    """Documents the append body, which the route decodes itself (strictly) instead of the framework."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            content={"application/json": OpenAPIMediaType(schema=Reference(ref="#/components/schemas/AppendIn"))},
        )


@post(
    "/v1/bookings/{code:str}/events",
    status_code=201,
    operation_class=_AppendOperation,
    security=KEY_REQUIRED,
    before_request=authenticated,
    opt={"scopes": WRITE_SCOPES},
    request_max_body_size=MAX_BODY_BYTES,
    summary="Append events to a booking (expected_version 0 creates it)",
    responses={200: ResponseSpec(AppendOut, description="idempotent retry: the events recorded before")}
    | problem_responses(401, 403, 404, 408, 409, 413, 415, 422, 429, 503),
)
async def append_events(request: Request, code: BookingCode) -> Response[AppendOut]:
    key = request.scope["state"]["api_key"]  # set by `authenticated`
    started: float | None = None  # the duration measures the work, not how slowly a client sends
    outcome = "internal_error"
    try:
        check_json_body(request)
        raw = await read_body(request, MAX_BODY_BYTES, request.app.state.body_timeout)
        started = time.perf_counter()
        body = decode_append(raw)
        result = await request.app.state.writer.append(Append(
            code=code,
            department=key.department,
            may_write_any=key.allows("write:any"),
            expected_version=body.expected_version,
            events=[
                NewEvent(
                    event_id=e.event_id or uuid.uuid4(),
                    type=e.type,
                    price=e.price.money() if e.price else None,
                    data=e.data,
                    occurred_at=e.occurred_at,
                )
                for e in body.events
            ],
            size=len(raw),
        ))
        outcome = "replayed" if result.replayed else "appended"
    except (LedgerError, ApiError, ClientGone) as error:
        outcome = error.code
        raise
    except msgspec.DecodeError:  # includes ValidationError
        outcome = "validation_error"
        raise
    except HTTPException as error:  # e.g. 413 while reading the body
        outcome = f"http_{error.status_code}"
        raise
    finally:
        metrics.APPENDS.labels(outcome).inc()
        if started is not None:
            metrics.APPEND_SECONDS.observe(time.perf_counter() - started)
    if not result.replayed:
        request.app.state.notifier.poke()
        metrics.APPENDED_EVENTS.inc(len(result.events))
    return Response(
        AppendOut(booking_code=result.booking_code, version=result.version, events=result.events),
        status_code=200 if result.replayed else 201,
    )


@get(
    "/v1/bookings/{code:str}",
    summary="A booking: owner, version, latest price",
    security=KEY_REQUIRED,
    before_request=authenticated,
    opt={"scopes": READ_SCOPES, "read_route": "booking"},
    responses=problem_responses(401, 403, 404, 422, 429, 503),
)
async def booking(request: Request, code: BookingCode) -> Booking:
    with metrics.counting_read("booking"):
        return await get_booking(request.app.state.pool, code)


@get(
    "/v1/bookings/{code:str}/events",
    summary="A booking's events in version order",
    security=KEY_REQUIRED,
    before_request=authenticated,
    opt={"scopes": READ_SCOPES, "read_route": "booking_events"},
    responses=problem_responses(401, 403, 404, 422, 429, 503),
)
async def booking_events(
    request: Request,
    code: BookingCode,
    from_version: Annotated[int, Parameter(ge=1, le=2**31 - 1)] = 1,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
) -> BookingEventsOut:
    with metrics.counting_read("booking_events"):
        events, next_from = await read_booking_events(request.app.state.pool, code, from_version, limit)
    return BookingEventsOut(booking_code=code, events=events, next_from_version=next_from)


@get(
    "/v1/events",
    summary="The global feed in position order",
    security=KEY_REQUIRED,
    before_request=authenticated,
    opt={"scopes": READ_SCOPES, "read_route": "feed"},
    responses=problem_responses(401, 403, 422, 429, 503),
)
async def feed(
    request: Request,
    after: Annotated[int, Parameter(ge=0, le=MAX_POSITION)] = 0,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 500,
) -> FeedOut:
    with metrics.counting_read("feed"):
        events, next_after = await read_feed(request.app.state.pool, after, limit)
    return FeedOut(events=events, next_after=next_after)


ROUTES = [append_events, booking, booking_events, feed]
