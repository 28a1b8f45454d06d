"""Thin routes: authenticate, validate, call one ledger function, shape the answer."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Annotated
from uuid import uuid4

import msgspec
from litestar import MediaType, Request, Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, Operation, Reference, RequestBody
from litestar.params import Parameter

from core import personal as core_personal
from core import tracing
from service.api import metrics
from service.api.auth import ERASE_SCOPES, READ_SCOPES, WRITE_SCOPES, authenticated, deadline_of
from service.api.http_rules import check_json_body, read_body
from service.api.openapi import APPEND, BOOKING_READ, ERASE, KEY_REQUIRED, MAX_POSITION, V1_READ, BookingCode
from service.api.schemas import (
    AppendOut,
    BookingEventsOut,
    ErasedOut,
    FeedOut,
    decode_append,
)
from service.api.state import InjectedState
from service.ledger import personal
from service.ledger.append import Append, NewEvent
from service.ledger.errors import NotOwner
from service.ledger.keys import ApiKey
from service.ledger.reads import Booking, get_booking, read_booking_events_json, read_feed_json

MAX_BODY_BYTES = 1024 * 1024
log = logging.getLogger("booking_ledger.api")


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
    opt={"scopes": WRITE_SCOPES, "problems": APPEND},
    operation_id="append_events",
    request_max_body_size=MAX_BODY_BYTES,
    summary="Append events to a booking (expected_version 0 creates it)",
    responses={200: ResponseSpec(AppendOut, description="idempotent retry: the events recorded before")},
)
async def append_events(request: Request, code: BookingCode, app_state: InjectedState) -> Response[AppendOut]:
    key: ApiKey = request.scope["state"]["api_key"]  # set by `authenticated`
    with metrics.counting_append() as count:
        check_json_body(request)
        raw = await read_body(request, MAX_BODY_BYTES, app_state.settings.http.body_timeout)
        count.start()
        body = decode_append(raw)
        sent = body.new_events()
        deadline = deadline_of(request)
        with tracing.span("ledger.append", request.scope["state"].get("trace"), booking_code=code,
                          events=len(body.events)) as trace:
            item = Append(
                code=code,
                department=key.department,
                may_write_any=key.allows("write:any"),
                expected_version=body.expected_version,
                events=sent,
                size=len(raw),
                traceparent=trace.traceparent,
            )
            write = partial(app_state.writer.append, deadline=deadline)
            result = await personal.appended(app_state.data_keys, write, item, deadline)  # sealed there
        count.answered(result)
    if not result.replayed:
        app_state.notifier.poke()
    return Response(
        AppendOut(booking_code=result.booking_code, version=result.version,
                  events=personal.as_sent(result.events, sent)),
        status_code=200 if result.replayed else 201,
    )


@post(
    "/v1/bookings/{code:str}/erase",
    status_code=201,
    security=KEY_REQUIRED,
    before_request=authenticated,
    opt={"scopes": ERASE_SCOPES, "problems": ERASE},
    operation_id="erase_personal_data",
    summary="Erase a booking's personal data: its key is destroyed, a PersonalDataErased event appended",
)
async def erase_personal_data(request: Request, code: BookingCode, app_state: InjectedState) -> Response[ErasedOut]:
    key: ApiKey = request.scope["state"]["api_key"]  # set by `authenticated`
    booking = await get_booking(app_state.pool, code, deadline_of(request))
    if booking.department != key.department and not key.allows("write:any"):
        raise NotOwner("booking belongs to another department", department=booking.department)
    # The key goes first: from that moment no read opens the booking's personal data, whatever follows.
    await app_state.data_keys.erase(code)
    with tracing.span("ledger.erase", request.scope["state"].get("trace"), booking_code=code) as trace:
        result = await app_state.writer.append(Append(
            code=code, department=key.department, may_write_any=key.allows("write:any"), expected_version=None,
            events=[NewEvent(uuid4(), core_personal.ERASED_TYPE)], traceparent=trace.traceparent,
        ), deadline_of(request))
    app_state.notifier.poke()
    log.info("personal data of booking %s erased (version %d)", code, result.version)
    return Response(ErasedOut(booking_code=code, version=result.version, event=result.events[0]), status_code=201)


@get(
    "/v1/bookings/{code:str}",
    summary="A booking: owner, version, latest price",
    security=KEY_REQUIRED,
    before_request=authenticated,
    opt={"scopes": READ_SCOPES, "read_route": "booking", "problems": BOOKING_READ},
    operation_id="get_booking",
)
async def booking(request: Request, code: BookingCode, app_state: InjectedState) -> Booking:
    with metrics.counting_read("booking"):
        return await get_booking(app_state.pool, code, deadline_of(request))


@get(
    "/v1/bookings/{code:str}/events",
    summary="A booking's events in version order",
    security=KEY_REQUIRED,
    before_request=authenticated,
    opt={"scopes": READ_SCOPES, "read_route": "booking_events", "problems": BOOKING_READ},
    operation_id="get_booking_events",
    responses={200: ResponseSpec(BookingEventsOut, description="Request fulfilled, document follows",
                                    generate_examples=False)},
)
async def booking_events(
    request: Request,
    code: BookingCode,
    app_state: InjectedState,
    from_version: Annotated[int, Parameter(ge=1, le=2**31 - 1)] = 1,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
) -> Response[bytes]:
    with metrics.counting_read("booking_events"):
        page = await read_booking_events_json(app_state.pool, code, from_version, limit,
                                              deadline=deadline_of(request))
    return json_answer(b'{"booking_code":%s,"events":[%s],"next_from_version":%s}',
                       msgspec.json.encode(code), page.events, msgspec.json.encode(page.next))


@get(
    "/v1/events",
    summary="The global feed in position order",
    security=KEY_REQUIRED,
    before_request=authenticated,
    opt={"scopes": READ_SCOPES, "read_route": "feed", "problems": V1_READ},
    operation_id="get_feed",
    responses={200: ResponseSpec(FeedOut, description="Request fulfilled, document follows", generate_examples=False)},
)
async def feed(
    request: Request,
    app_state: InjectedState,
    after: Annotated[int, Parameter(ge=0, le=MAX_POSITION)] = 0,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 500,
) -> Response[bytes]:
    with metrics.counting_read("feed"):
        page = await read_feed_json(app_state.pool, after, limit, deadline=deadline_of(request))
    return json_answer(b'{"events":[%s],"next_after":%d}', page.events, page.next)


def json_answer(template: bytes, *parts: bytes | int | None) -> Response[bytes]:
    """An answer whose JSON is `template` % `parts`: pages of events pass through as Postgres wrote
    them (service.ledger.reads.event_json), documented in OpenAPI by the route's `responses`."""
    return Response(template % parts, media_type=MediaType.JSON)


ROUTES = [append_events, erase_personal_data, booking, booking_events, feed]
