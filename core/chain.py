"""The hash chain in Python: the same bytes as ledger_event_canonical (migration 0016), so that
`booking-ledger audit` checks the ledger without trusting a function the ledger's owner could change.

An event's hash is SHA-256 over the hash of the event before it in its booking (32 zero bytes for
version 1) followed by its canonical form: twelve lines in UTF-8, each ended by a line feed —
`booking-ledger event v1`, position, event_id, booking_code, version, type, department, price
amount (as stored), price currency, occurred_at, recorded_at, data — an absent price, occurred_at or
data an empty line, a time whole microseconds since 1970-01-01T00:00:00Z, data the jsonb text
Postgres gives for it (`data::text`: the caller reads it so, this module does not re-encode JSON).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID

GENESIS = bytes(32)  # the "previous hash" of every booking's version 1
TAG = "booking-ledger event v1"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# The columns `Link.from_row` reads: data as Postgres' jsonb text, everything else as stored.
LINK_COLUMNS = ("position, event_id, booking_code, version, type, department, price_amount, price_currency, "
                "occurred_at, recorded_at, data::text AS data_text, hash")


def microseconds(moment: datetime) -> str:
    """A time as the canonical form writes it; infinity/-infinity (asyncpg: naive max/min) as words."""
    if moment.tzinfo is None:
        return "infinity" if moment == datetime.max else "-infinity"
    return str((moment - _EPOCH) // _MICROSECOND)


@dataclass(frozen=True, slots=True)
class Link:
    """One event as the chain covers it."""

    position: int
    event_id: UUID
    booking_code: str
    version: int
    type: str
    department: str
    price_amount: Decimal | None
    price_currency: str | None
    occurred_at: datetime | None
    recorded_at: datetime
    data_text: str | None
    hash: bytes | None = None  # as recorded (None: not known)

    @classmethod
    def from_row(cls, row) -> Link:
        return cls(**{field.name: row[field.name] for field in fields(cls)})

    def canonical(self) -> bytes:
        lines = (
            TAG, str(self.position), str(self.event_id), self.booking_code, str(self.version), self.type,
            self.department, "" if self.price_amount is None else format(self.price_amount, "f"),
            self.price_currency or "", "" if self.occurred_at is None else microseconds(self.occurred_at),
            microseconds(self.recorded_at), self.data_text or "",
        )
        return "".join(f"{line}\n" for line in lines).encode()

    def chained(self, previous: bytes) -> bytes:
        """This event's hash after `previous` (GENESIS for version 1)."""
        return hashlib.sha256(previous + self.canonical()).digest()


@dataclass(frozen=True, slots=True)
class Break:
    """Where a booking's chain stops holding: the first event whose recorded hash is not the one
    its content and its predecessor give (or whose version does not follow)."""

    booking_code: str
    version: int
    position: int
    event_id: UUID
    reason: str

    def __str__(self) -> str:
        return f"{self.booking_code} v{self.version} (position {self.position}, event {self.event_id}): {self.reason}"


def first_break(links: list[Link], previous: bytes = GENESIS, after_version: int = 0) -> Break | None:
    """The first break in one booking's events (in version order, starting after `after_version`
    whose hash is `previous`), or None when the chain holds."""
    for link in links:
        if link.version != after_version + 1:
            return Break(link.booking_code, link.version, link.position, link.event_id,
                         f"version {after_version + 1} is missing")
        expected = link.chained(previous)
        if link.hash != expected:
            return Break(link.booking_code, link.version, link.position, link.event_id,
                         "its hash does not match its content and the event before it")
        previous, after_version = expected, link.version
    return None
