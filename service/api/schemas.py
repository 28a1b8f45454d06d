"""Request and response bodies. Requests are decoded strictly: no type coercion, no unknown fields."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID, uuid4

import msgspec
from msgspec import Meta

from core import personal
from core.events import EVENT_TYPE_PATTERN, MAX_DATA_BYTES, Event, data_size, utc_instant
from core.money import PriceIn
from core.strictjson import decode_strict
from service.ledger.append import NewEvent

MAX_EVENTS = 100
MAX_VERSION = 2**31 - 1

EventType = Annotated[str, Meta(pattern=EVENT_TYPE_PATTERN, examples=["BookingPriced"])]


class EventIn(msgspec.Struct, forbid_unknown_fields=True):
    type: EventType
    event_id: UUID | None = None
    price: PriceIn | None = None
    data: dict[str, Any] | None = None
    occurred_at: Annotated[datetime, Meta(tz=True)] | None = None

    def __post_init__(self) -> None:
        if self.occurred_at is not None:
            self.occurred_at = utc_instant(self.occurred_at)
        if self.type == personal.ERASED_TYPE:
            raise ValueError(f"{personal.ERASED_TYPE} is appended by POST /v1/bookings/{{code}}/erase only")
        if self.data is not None and personal.FIELD in self.data and not isinstance(self.data[personal.FIELD], dict):
            raise ValueError("data.personal must be an object (personal data is kept there, sealed, and nowhere else)")

    def new_event(self) -> NewEvent:
        """The event for the ledger, with a new event_id when the request gives none."""
        return NewEvent(
            event_id=self.event_id or uuid4(),
            type=self.type,
            price=self.price.money() if self.price else None,
            data=self.data,
            occurred_at=self.occurred_at,
        )


class AppendIn(msgspec.Struct, forbid_unknown_fields=True):
    """1 to 100 events, appended atomically, versions assigned in list order."""

    events: Annotated[list[EventIn], Meta(min_length=1, max_length=MAX_EVENTS)]
    # A JSON integer: a number with a fraction or an exponent (1.0, 1e0) is refused, since
    # 0.9999999999999999999 would become 1.0 as a float.
    expected_version: Annotated[int, Meta(ge=0, le=MAX_VERSION)] | None = None

    def __post_init__(self) -> None:
        ids = [e.event_id for e in self.events if e.event_id is not None]
        if len(ids) != len(set(ids)):
            raise ValueError("event_id values must be distinct within one request")
        size = sum(data_size(e.data) for e in self.events if e.data is not None)
        if size > MAX_DATA_BYTES:
            raise ValueError(f"data of all events together is {size} bytes of compact JSON, "
                             f"over the {MAX_DATA_BYTES} byte limit")

    def new_events(self) -> list[NewEvent]:
        return [e.new_event() for e in self.events]


class AppendOut(msgspec.Struct):
    booking_code: str
    version: int
    events: list[Event]


class BookingEventsOut(msgspec.Struct):
    booking_code: str
    events: list[Event]
    next_from_version: int | None


class FeedOut(msgspec.Struct):
    events: list[Event]
    next_after: int


class ErasedOut(msgspec.Struct):
    booking_code: str
    version: int
    event: Event  # the PersonalDataErased event appended


class Problem(msgspec.Struct, omit_defaults=True):
    """RFC 9457 problem details; `code` is the stable, machine-readable part."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    department: str | None = None
    current_version: int | None = None
    event_ids: list[str] | None = None


def decode_append(body: bytes) -> AppendIn:
    """Decode and validate an append body strictly (core.strictjson); raises msgspec.ValidationError
    or DecodeError."""
    return decode_strict(body, AppendIn, "body")


def append_request_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """JSON Schema of the append body for the OpenAPI document: (reference, components)."""
    (schema,), components = msgspec.json.schema_components((AppendIn,), ref_template="#/components/schemas/{name}")
    # PriceIn (money's two-field rule) is written out by service/api/openapi.py's finishing pass.
    # `data` takes any JSON object.
    components["EventIn"]["properties"]["data"]["anyOf"][0]["additionalProperties"] = {}
    components["AppendIn"]["properties"]["expected_version"] = {
        "anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_VERSION}, {"type": "null"}],
        "description": "0 creates the booking; n >= 1 appends at version n; absent appends at any version. "
                       "A JSON integer: 1.0 or 1e0 is refused.",
    }
    return schema, components
