"""The hash chain (migration 0016) against a reference written here from docs/api.md's words alone:
the canonical form, Postgres' jsonb text, the chain. Postgres computes every hash in the append
transaction (and once, for the events already recorded, in the migration); this file computes each
again from what the test sent and the ledger's answer, without reading the ledger's text of them."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from core.money import Money
from core.pg import connect
from migrations.runner import upgrade
from service.ledger.append import BATCH_SQL, Append, NewEvent, append_batch, batch_arguments, settled
from tests.conftest import random_code

# Keys in every order jsonb can put them, strings with every kind of escape, numbers, nesting.
DATA: dict[str, Any] = {
    "reason": "initial quote",
    "nested": {"zz": [1, 2.5, True, None, "x", -7], "b": "é ü 日本 🙂", "aa": {}},
    "ctl": "line\nbreak\t\"quoted\" back\\slash \x01 \x1f \x7f \r \b \f /",
    "": [],
    "a": 12345678901234567890,
    "ü": False,
}


def jsonb_text(value: Any) -> str:
    """docs/api.md: data as Postgres writes a jsonb value."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # the test's floats are written without an exponent
    if isinstance(value, str):
        return quoted(value)
    if isinstance(value, list):
        return "[" + ", ".join(jsonb_text(v) for v in value) + "]"
    members = sorted(value.items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode()))
    return "{" + ", ".join(f"{quoted(k)}: {jsonb_text(v)}" for k, v in members) + "}"


def quoted(text: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    out = "".join(escapes.get(c, f"\\u{ord(c):04x}" if ord(c) < 0x20 else c) for c in text)
    return f'"{out}"'


def micros(moment: datetime) -> str:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return str(delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds)


def reference_hash(previous: bytes, sent: NewEvent, stored: Any) -> bytes:
    """docs/api.md: SHA-256(previous || canonical form), the canonical form from what was sent and the
    ledger's answer (position, version, recorded_at, department)."""
    lines = [
        "booking-ledger event v1", str(stored.position), str(sent.event_id), stored.booking_code,
        str(stored.version), sent.type, stored.department,
        "" if sent.price is None else str(sent.price.amount), "" if sent.price is None else sent.price.currency,
        "" if sent.occurred_at is None else micros(sent.occurred_at), micros(stored.recorded_at),
        "" if sent.data is None else jsonb_text(sent.data),
    ]
    return hashlib.sha256(previous + "".join(line + "\n" for line in lines).encode()).digest()


def new(type_: str = "PriceChanged", amount: str | None = None, currency: str = "EUR", **fields: Any) -> NewEvent:
    price = Money.parse(amount, currency) if amount is not None else None
    return NewEvent(event_id=uuid.uuid4(), type=type_, price=price, **fields)


def check_chain(sent_by_version: dict[int, NewEvent], stored: list[Any], hashes: dict[int, bytes]) -> bytes:
    """Every stored event's hash equals the reference's, version by version; the last hash."""
    previous = bytes(32)
    for event in sorted(stored, key=lambda e: e.version):
        expected = reference_hash(previous, sent_by_version[event.version], event)
        assert hashes[event.version] == expected, f"v{event.version}"
        previous = expected
    return previous


async def test_postgres_chains_every_write_path_as_the_reference_does(pool: asyncpg.Pool) -> None:
    first, second = random_code("C"), random_code("C")
    created = [new("BookingPriced", "120.5", data=DATA, occurred_at=datetime(1969, 7, 20, 20, 17, 40, 123456, UTC)),
               new("Note", data={"x": 1})]
    # One call: a booking created and appended twice (the chain runs on inside the call), a retry of
    # its creation in between (the events so far are written before it, the rest by a later write),
    # another booking created with a price in a currency without minor units.
    appends = [
        Append(first, "hotel", False, 0, created),
        Append(first, "hotel", False, None, [new(amount="99"), new(occurred_at=datetime(2026, 1, 2, tzinfo=UTC))]),
        Append(first, "hotel", False, 0, created),
        Append(first, "hotel", False, 4, [new(data={"k": "v"})]),
        Append(second, "car", False, 0, [new("BookingPriced", "15000", "JPY")]),
    ]
    answers = [settled(a) for a in await append_batch(pool, appends)]
    assert [a.version for a in answers] == [2, 4, 2, 5, 1]
    assert answers[2].replayed
    sent = {1: created[0], 2: created[1], 3: appends[1].events[0], 4: appends[1].events[1], 5: appends[3].events[0]}
    stored = [e for i in (0, 1, 3) for e in answers[i].events]
    assert all(e.hash is not None for a in answers for e in a.events)
    # The answer's hashes (replayed ones included) are the stored ones; both are the reference's.
    rows = await pool.fetch("SELECT version, hash FROM events WHERE booking_code = $1", first)
    recorded = {r["version"]: r["hash"] for r in rows}
    assert {e.version: bytes.fromhex(e.hash) for e in stored} == recorded
    assert [e.hash for e in answers[2].events] == [e.hash for e in answers[0].events]
    head = check_chain(sent, stored, recorded)
    assert await pool.fetchval("SELECT head FROM bookings WHERE code = $1", first) == head

    # A later call goes on from the booking's head.
    sent[6] = new(amount="1")
    [later] = [settled(a) for a in await append_batch(pool, [Append(first, "hotel", False, 5, [sent[6]])])]
    assert bytes.fromhex(later.events[0].hash) == reference_hash(head, sent[6], later.events[0])
    other = answers[4].events[0]
    assert bytes.fromhex(other.hash) == reference_hash(bytes(32), appends[4].events[0], other)


async def test_the_migration_chains_the_events_recorded_before_it(postgres) -> None:
    name = f"chain_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres.url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = postgres.url.rsplit("/", 1)[0] + "/" + name
    try:
        await asyncio.to_thread(upgrade, url, "0015")
        conn = await connect(url)
        try:
            code = random_code("M")
            events = [new("BookingPriced", "10", data=DATA), new(data={"b": [1, 2]}), new(amount="7.25")]
            # 0015's function takes no data keys (0019)
            old = await conn.fetch(BATCH_SQL.replace(", $13", ""), *batch_arguments([
                Append(code, "hotel", False, 0, events[:2]), Append(code, "hotel", False, 2, events[2:])])[:12])
            await asyncio.to_thread(upgrade, url)
            rows = await conn.fetch("SELECT position, booking_code, version, department, recorded_at, hash "
                                    "FROM events WHERE booking_code = $1 ORDER BY version", code)
            assert [r["position"] for r in rows] == [r["position"] for r in sorted(old, key=lambda r: r["version"])]
            stored = [_Stored(**dict(r)) for r in rows]
            head = check_chain(dict(enumerate(events, 1)), stored, {r["version"]: r["hash"] for r in rows})
            assert await conn.fetchval("SELECT head FROM bookings WHERE code = $1", code) == head
            assert await conn.fetchval("SELECT count(*) FROM events WHERE hash IS NULL") == 0
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


class _Stored:
    def __init__(self, **row: Any) -> None:
        self.__dict__.update(row)
