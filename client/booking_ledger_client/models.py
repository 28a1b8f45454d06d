"""The values the client takes and gives: money, events to send, recorded events and results."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

Source = Literal["dynamodb", "ledger"]


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount of money: `amount` is a decimal string ("129.90"), never a float."""

    amount: str
    currency: str

    @classmethod
    def of(cls, amount: Decimal | str | int, currency: str) -> Money:
        """Money from a Decimal, a decimal string or an int (a float is refused: it is not exact)."""
        if isinstance(amount, float):
            raise TypeError("money amounts are Decimal, str or int, never float")
        text = format(amount, "f") if isinstance(amount, Decimal) else str(amount)
        return cls(text, currency)

    @property
    def decimal(self) -> Decimal:
        """The amount as a Decimal."""
        return Decimal(self.amount)

    def to_json(self) -> dict[str, str]:
        """The money as the API writes it: {"amount": "129.90", "currency": "EUR"}."""
        return {"amount": self.amount, "currency": self.currency}


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append. Without `event_id` the client makes one before the first try, so
    its retries are recognised by the ledger as the same request (idempotency)."""

    type: str
    price: Money | None = None
    data: Mapping[str, Any] | None = None
    occurred_at: datetime | str | None = None
    event_id: uuid.UUID | str | None = None


EventInput = NewEvent | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Event:
    """One recorded event, the same whether it was read from the ledger or from DynamoDB."""

    event_id: uuid.UUID
    booking_code: str
    version: int
    type: str
    price: Money | None
    data: dict[str, Any] | None
    department: str
    occurred_at: datetime | None
    recorded_at: datetime
    position: int
    hash: str | None = None  # the event's chain hash (hex); None where the source predates it

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Event:
        """An event from the API's Event JSON (docs/api.md)."""
        price = obj.get("price")
        occurred_at = obj.get("occurred_at")
        data = obj.get("data")
        return cls(
            event_id=uuid.UUID(obj["event_id"]),
            booking_code=obj["booking_code"],
            version=int(obj["version"]),
            type=obj["type"],
            price=Money(price["amount"], price["currency"]) if price is not None else None,
            data=dict(data) if data is not None else None,
            department=obj["department"],
            occurred_at=parse_time(occurred_at) if occurred_at is not None else None,
            recorded_at=parse_time(obj["recorded_at"]),
            position=int(obj["position"]),
            hash=obj.get("hash"),
        )

    def to_json(self) -> dict[str, Any]:
        """The Event JSON of the contract."""
        return {
            "event_id": str(self.event_id),
            "booking_code": self.booking_code,
            "version": self.version,
            "type": self.type,
            "price": self.price.to_json() if self.price else None,
            "data": self.data,
            "department": self.department,
            "occurred_at": format_time(self.occurred_at) if self.occurred_at else None,
            "recorded_at": format_time(self.recorded_at),
            "position": self.position,
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class AppendResult:
    """A stored append: the booking's `version` after it and the recorded `events`.
    `replayed` is true when the ledger had them already (a retry); nothing new was written."""

    booking_code: str
    version: int
    events: list[Event]
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Booking:
    """A booking as the ledger holds it now; `price` is the latest price set, or None."""

    booking_code: str
    department: str
    version: int
    price: Money | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Booking:
        """A booking from the API's answer to GET /v1/bookings/{code}."""
        price = obj.get("price")
        return cls(
            booking_code=obj["booking_code"],
            department=obj["department"],
            version=int(obj["version"]),
            price=Money(price["amount"], price["currency"]) if price is not None else None,
            created_at=parse_time(obj["created_at"]),
            updated_at=parse_time(obj["updated_at"]),
        )


@dataclass(frozen=True, slots=True)
class BookingEvents:
    """Events of one booking in version order; `version` is the last one's (from_version - 1 when none)."""

    booking_code: str
    version: int
    events: list[Event]


@dataclass(frozen=True, slots=True)
class FeedPage:
    """One page of the global feed in position order; ask for the next one after `next_after`."""

    events: list[Event]
    next_after: int


@dataclass(frozen=True, slots=True)
class ReadResult:
    """Events 1..`version` of a booking with no gap, and where they were read: `source` is
    "dynamodb" (the read store) or "ledger" (the API, the system of record)."""

    booking_code: str
    version: int
    events: list[Event]
    source: Source


def parse_time(text: str) -> datetime:
    """An RFC 3339 time as the ledger writes it ("2026-11-26T10:00:00.123456Z")."""
    return datetime.fromisoformat(text)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a `Z`, as the ledger writes times."""
    if moment.tzinfo is None:
        raise ValueError("times sent to the ledger need a time zone (e.g. datetime.now(UTC))")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def prepare_events(events: Iterable[EventInput]) -> list[dict[str, Any]]:
    """The events as request JSON, each with an event_id made now (before the first try)."""
    prepared: list[dict[str, Any]] = []
    for event in events:
        if isinstance(event, NewEvent):
            body: dict[str, Any] = {"type": event.type}
            if event.price is not None:
                body["price"] = event.price
            if event.data is not None:
                body["data"] = event.data
            if event.occurred_at is not None:
                body["occurred_at"] = event.occurred_at
            if event.event_id is not None:
                body["event_id"] = event.event_id
        else:
            body = dict(event)
        body["event_id"] = str(body.get("event_id") or uuid.uuid4())
        price = body.get("price")
        if isinstance(price, Money):
            body["price"] = price.to_json()
        elif isinstance(price, Mapping) and isinstance(price.get("amount"), Decimal):
            body["price"] = Money.of(price["amount"], price["currency"]).to_json()
        if isinstance(body.get("occurred_at"), datetime):
            body["occurred_at"] = format_time(body["occurred_at"])
        if isinstance(body.get("data"), Mapping):
            body["data"] = dict(body["data"])
        prepared.append(body)
    if not prepared:
        raise ValueError("an append needs at least one event")
    return prepared


def _moment(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value).replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class Subscription:
    """A webhook subscription as the ledger shows it to its department (never its secret).

    `status` is "active", "paused" (on the event at `paused_position`, after `attempts` failed
    tries; `reason` and `last_status` say why) or "stopped" (the key that made it was revoked).
    `position`: every matching event at or below it was delivered or skipped."""

    id: uuid.UUID
    url: str
    filters: dict[str, str]
    status: str
    position: int
    created_at: datetime
    delivered_at: datetime | None
    delivered_events: int
    attempts: int
    last_status: int | None
    reason: str | None
    paused_at: datetime | None
    paused_position: int | None
    paused_event_id: uuid.UUID | None
    skipped_events: int

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Subscription:
        paused_event = obj.get("paused_event_id")
        return cls(
            id=uuid.UUID(str(obj["id"])), url=str(obj["url"]), filters=dict(obj.get("filters") or {}),
            status=str(obj["status"]), position=int(obj["position"]),
            created_at=datetime.fromisoformat(str(obj["created_at"]).replace("Z", "+00:00")),
            delivered_at=_moment(obj.get("delivered_at")),
            delivered_events=int(obj.get("delivered_events") or 0), attempts=int(obj.get("attempts") or 0),
            last_status=obj.get("last_status"), reason=obj.get("reason"), paused_at=_moment(obj.get("paused_at")),
            paused_position=obj.get("paused_position"),
            paused_event_id=uuid.UUID(str(paused_event)) if paused_event else None,
            skipped_events=int(obj.get("skipped_events") or 0),
        )


@dataclass(frozen=True, slots=True)
class CreatedSubscription:
    """A new subscription and its signing secret: the ledger shows the secret this once."""

    subscription: Subscription
    secret: str
