"""The Event as it leaves the ledger: in HTTP answers, on the Kafka topic and in DynamoDB."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID

import msgspec


class Price(msgspec.Struct, frozen=True):
    amount: str
    currency: str


def whole(pattern: str) -> str:
    r"""`pattern` anchored so that it matches a whole string, in Python and in JSON Schema alike.

    In Python's `re`, `$` also matches before a final newline: "R1\n" would pass `^...$` and
    become a second booking. `$(?!\n)` closes that hole; in ECMA 262 (JSON Schema, OpenAPI)
    `$` is already the end of the string and the lookahead changes nothing. msgspec and the
    framework check patterns with `re.search`, so the anchors must be in the pattern itself.
    """
    return f"^(?:{pattern})$(?!\\n)"


BOOKING_CODE_PATTERN = whole(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
EVENT_TYPE_PATTERN = whole(r"[A-Za-z][A-Za-z0-9_.-]{0,99}")
BookingCode = Annotated[str, msgspec.Meta(pattern=BOOKING_CODE_PATTERN)]
EventType = Annotated[str, msgspec.Meta(pattern=EVENT_TYPE_PATTERN)]


class Event(msgspec.Struct, frozen=True):
    """One recorded change to the price of a booking. Decoding checks codes and numbers, so a
    message that merely looks like an event is refused (and dead-lettered by the sink)."""

    event_id: UUID
    booking_code: BookingCode
    version: Annotated[int, msgspec.Meta(ge=1)]
    type: EventType
    price: Price | None
    data: dict[str, Any] | None
    department: str
    occurred_at: datetime | None
    recorded_at: datetime
    position: Annotated[int, msgspec.Meta(ge=0)]
    # SHA-256 chain hash, hex (migration 0016, core/chain.py); None only in messages sent before it.
    hash: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")] | None = None


# What an event may carry, checked where events come in (the API's schemas and the importer).
MAX_DATA_BYTES = 256 * 1024  # the data of one append, as compact JSON (data_size)
# occurred_at, converted to UTC, must lie strictly between these two instants. Both ends are
# what "no time" / "the end of time" marshal to (Go's zero time.Time is 0001-01-01T00:00:00Z),
# and asyncpg writes exactly these two values as -infinity / infinity, which no stream can carry.
OCCURRED_AFTER = datetime(1, 1, 1, tzinfo=UTC)
OCCURRED_BEFORE = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def utc_instant(moment: datetime) -> datetime:
    """`moment` in UTC, or a ValueError when it falls outside what the ledger stores and emits."""
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not OCCURRED_AFTER < utc < OCCURRED_BEFORE:
        raise ValueError(
            "occurred_at must lie, in UTC, after 0001-01-01T00:00:00Z and before 9999-12-31T23:59:59.999999Z "
            "(both excluded: they mean 'no time' in many encoders); omit occurred_at when it is unknown"
        )
    return utc


def data_size(data: dict[str, Any]) -> int:
    """Bytes of `data` as compact JSON with every number written out as Postgres writes it: that
    is the request's compact encoding, except that a number written with an exponent comes back
    without one. Postgres keeps it as numeric and writes every digit, so 1e308 is 309 digits and
    1e-300 is 302 characters in the answers of the reads (which pass jsonb's text through), on
    Kafka and in DynamoDB, and counts so. Integers count their digits as sent, so every number is
    bounded by the limit itself.
    """
    size = len(msgspec.json.encode(data))
    pending: list[Any] = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif type(value) is float:
            sent = msgspec.json.encode(value).decode()
            if "e" in sent:
                size += len(format(Decimal(sent), "f")) - len(sent)
    return size


EVENT_COLUMN_NAMES = (
    "event_id", "booking_code", "version", "type", "price_amount", "price_currency", "data",
    "department", "occurred_at", "recorded_at", "position", "hash",
)


def event_columns(table: str = "") -> str:
    """The columns an event query selects, in the names `event_from_row` reads."""
    prefix = f"{table}." if table else ""
    return ", ".join(prefix + column for column in EVENT_COLUMN_NAMES)


EVENT_COLUMNS = event_columns()


def encode_event(event: Event) -> bytes:
    """The Event JSON of the contract, as sent to Kafka."""
    return msgspec.json.encode(event)


def decode_event(data: bytes) -> Event:
    """Parse Event JSON strictly; raises msgspec.DecodeError/ValidationError."""
    return msgspec.json.decode(data, type=Event, strict=True)


def price_of(amount: Decimal | None, currency: str | None) -> Price | None:
    if amount is None or currency is None:
        return None
    return Price(format(amount, "f"), currency)


def event_from_row(row: Mapping[str, Any]) -> Event:
    occurred_at = row["occurred_at"]
    if occurred_at is not None and occurred_at.tzinfo is None:
        # Only -infinity / infinity, stored before migration 0005, come back without a zone
        # (asyncpg gives them as datetime.min / max); every time the ledger emits has an offset.
        occurred_at = occurred_at.replace(tzinfo=UTC)
    return Event(
        event_id=row["event_id"],
        booking_code=row["booking_code"],
        version=row["version"],
        type=row["type"],
        price=price_of(row["price_amount"], row["price_currency"]),
        data=row["data"],
        department=row["department"],
        occurred_at=occurred_at,
        recorded_at=row["recorded_at"],
        position=row["position"],
        hash=row["hash"].hex(),
    )
