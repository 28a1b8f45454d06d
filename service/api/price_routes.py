"""GET /v1/bookings/{code}/price: the price in force at a moment (?at=, &clock=) or a version (?version=)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from litestar import Request, get
from litestar.params import FromQuery, Parameter

from core.events import Price, utc_instant
from service.api import metrics
from service.api.auth import READ_SCOPES, authenticated, deadline_of
from service.api.openapi import BOOKING_READ, KEY_REQUIRED, BookingCode
from service.api.problems import ApiError
from service.api.schemas import MAX_VERSION
from service.api.state import InjectedState
from service.ledger.prices import Clock, PriceInForce, price_at, price_at_version

_Moment = Annotated[datetime, msgspec.Meta(tz=True)]
# Postgres keeps microseconds; more digits are cut (not rounded up, which could pass an event
# recorded just after the moment asked for).
_EXCESS_DIGITS = re.compile(r"(\.\d{6})\d+")


class PriceAtOut(msgspec.Struct):
    booking_code: str
    price: Price | None
    version: int | None  # of the event that set the price; null before the first price
    event_id: UUID | None
    at: datetime
    clock: str


class PriceAtVersionOut(msgspec.Struct):
    booking_code: str
    price: Price | None
    version: int | None
    event_id: UUID | None
    as_of_version: int


def parse_moment(text: str) -> datetime:
    """An RFC 3339 time with an offset, in UTC; ApiError 422 otherwise."""
    try:
        return utc_instant(msgspec.convert(_EXCESS_DIGITS.sub(r"\1", text), _Moment))
    except (msgspec.ValidationError, ValueError) as error:
        raise ApiError(422, "validation_error",
                       f"at must be an RFC 3339 time with an offset, such as 2026-11-26T10:00:00Z "
                       f"(send '+' as %2B in a query string): {error}") from None


@get(
    "/v1/bookings/{code:str}/price",
    summary="The price in force at a moment (at, clock) or at a version",
    description=(
        "The last priced event at or before the moment (inclusive; of events at the same instant, "
        "such as those of one append, the highest version) or at or below the version. "
        "clock=recorded (default) uses recorded_at, what the ledger knew then; clock=occurred uses "
        "occurred_at, or recorded_at where an event has none. Give exactly one of at and version."
    ),
    security=KEY_REQUIRED,
    before_request=authenticated,
    opt={"scopes": READ_SCOPES, "read_route": "price", "problems": BOOKING_READ},
    operation_id="get_price",
)
async def booking_price(
    request: Request,
    code: BookingCode,
    app_state: InjectedState,
    at: Annotated[str | None, Parameter(description="RFC 3339 time with an offset", max_length=64)] = None,
    clock: FromQuery[Literal["recorded", "occurred"] | None] = None,  # its description: service/api/openapi.py
    version: Annotated[int | None, Parameter(ge=1, le=MAX_VERSION)] = None,
) -> PriceAtOut | PriceAtVersionOut:
    with metrics.counting_read("price"):
        if (at is None) == (version is None):
            raise ApiError(422, "validation_error", "give exactly one of at and version")
        pool = app_state.pool
        if version is not None:
            if clock is not None:
                raise ApiError(422, "validation_error", "clock applies to at, not to version")
            found: PriceInForce = await price_at_version(pool, code, version, deadline_of(request))
            return PriceAtVersionOut(booking_code=code, price=found.price, version=found.version,
                                     event_id=found.event_id, as_of_version=version)
        assert at is not None
        moment = parse_moment(at)
        chosen: Clock = clock or "recorded"
        found = await price_at(pool, code, moment, chosen, deadline_of(request))
        return PriceAtOut(booking_code=code, price=found.price, version=found.version, event_id=found.event_id,
                          at=moment, clock=chosen)


PRICE_ROUTES = [booking_price]
