"""`booking-ledger verify`: compare the ledger with DynamoDB, booking by booking.

Memory stays bounded by the page size, whatever the size of the ledger:
1. Ledger -> DynamoDB: bookings in code order, a page at a time; each booking's events are
   compared with a Query of its DynamoDB items (missing, different, extra versions).
2. DynamoDB -> ledger: a paged Scan of the keys finds items of bookings the ledger lacks.
Events still in the outbox are on their way, not drift: they are counted as pending. Bookings
that drift on the first look are looked at again after a grace period, so events in flight
between relay and sink are not reported; what remains is drift.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import asyncpg

from core.dynamodb import Item, item_of
from core.dynamodb import client as dynamodb_client
from core.events import EVENT_COLUMNS, event_from_row
from core.pg import connect
from core.settings import Settings

CODES_SQL = "SELECT code FROM bookings WHERE code > $1 ORDER BY code LIMIT $2"
EVENTS_SQL = f"SELECT {EVENT_COLUMNS} FROM events WHERE booking_code = ANY($1::text[]) ORDER BY booking_code, version"
PENDING_SQL = "SELECT booking_code, version FROM outbox WHERE booking_code = ANY($1::text[])"
KNOWN_SQL = "SELECT code FROM bookings WHERE code = ANY($1::text[])"
SUSPECT_LIMIT = 10_000  # drifted bookings kept for the second look; beyond it drift is reported as first seen


@dataclass(frozen=True, order=True)
class Drift:
    booking_code: str
    version: int
    kind: str  # missing | extra | different
    detail: str = ""

    def __str__(self) -> str:
        text = f"{self.kind:<9} {self.booking_code} v{self.version}"
        return f"{text}  {self.detail}" if self.detail else text


@dataclass
class Report:
    bookings: int = 0
    events: int = 0
    pending: int = 0
    drift: list[Drift] = field(default_factory=list)

    def summary(self) -> str:
        kinds = {k: sum(d.kind == k for d in self.drift) for k in ("missing", "extra", "different")}
        return (f"checked {self.bookings} bookings, {self.events} events: {len(self.drift)} drift "
                f"({kinds['missing']} missing, {kinds['extra']} extra, {kinds['different']} different), "
                f"{self.pending} pending in the outbox")


async def verify(settings: Settings, grace: float = 5.0, page_size: int = 200) -> Report:
    conn = await connect(settings.database.url, timeout=10)
    dynamodb = dynamodb_client(settings.dynamo)
    table = settings.dynamo.table
    report = Report()
    suspects: set[str] = set()
    try:
        with ThreadPoolExecutor(8) as executor:

            def suspect(drift: list[Drift]) -> None:
                for d in drift:
                    if d.booking_code in suspects or len(suspects) < SUSPECT_LIMIT:
                        suspects.add(d.booking_code)
                    else:
                        report.drift.append(d)

            after = ""
            while codes := [r["code"] for r in await conn.fetch(CODES_SQL, after, page_size)]:
                after = codes[-1]
                suspect(await _compare(conn, dynamodb, table, codes, executor, report))
            start: dict | None = None
            while True:
                page = await asyncio.to_thread(_scan_keys, dynamodb, table, start)
                codes = sorted({item["booking_code"]["S"] for item in page["Items"]})
                known = {r["code"] for r in await conn.fetch(KNOWN_SQL, codes)}
                unknown = [code for code in codes if code not in known]
                if unknown:
                    suspect(await _compare(conn, dynamodb, table, unknown, executor, None))
                start = page.get("LastEvaluatedKey")
                if not start:
                    break
            if suspects:
                await asyncio.sleep(grace)
                for batch in _pages(sorted(suspects), page_size):
                    report.drift.extend(await _compare(conn, dynamodb, table, batch, executor, None))
    finally:
        await conn.close()
    report.drift.sort()
    return report


async def _compare(
    conn: asyncpg.Connection, dynamodb, table: str, codes: Sequence[str], executor: ThreadPoolExecutor,
    report: Report | None,
) -> list[Drift]:
    """Drift of these bookings; counts bookings, events and pending events into `report` when given."""
    expected: dict[str, dict[int, Item]] = {code: {} for code in codes}
    rows = await conn.fetch(EVENTS_SQL, list(codes))
    for row in rows:
        expected[row["booking_code"]][row["version"]] = item_of(event_from_row(row))
    pending = {(r["booking_code"], r["version"]) for r in await conn.fetch(PENDING_SQL, list(codes))}
    loop = asyncio.get_running_loop()
    actual = await asyncio.gather(*(loop.run_in_executor(executor, _query_items, dynamodb, table, c) for c in codes))
    drift: list[Drift] = []
    for code, stored in zip(codes, actual, strict=True):
        for version, item in expected[code].items():
            if version not in stored:
                if (code, version) in pending:
                    if report is not None:
                        report.pending += 1
                else:
                    drift.append(Drift(code, version, "missing"))
            elif stored[version] != item:
                drift.append(Drift(code, version, "different", _difference(item, stored[version])))
        drift.extend(Drift(code, version, "extra") for version in sorted(stored.keys() - expected[code].keys()))
    if report is not None:
        report.bookings += sum(1 for code in codes if expected[code])
        report.events += len(rows)
    return drift


def _query_items(dynamodb, table: str, code: str) -> dict[int, Item]:
    items: dict[int, Item] = {}
    options = {"TableName": table, "KeyConditionExpression": "booking_code = :c",
               "ExpressionAttributeValues": {":c": {"S": code}}, "ConsistentRead": True}
    while True:
        page = dynamodb.query(**options)
        for item in page["Items"]:
            items[int(item["version"]["N"])] = item
        if "LastEvaluatedKey" not in page:
            return items
        options["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _scan_keys(dynamodb, table: str, start: dict | None) -> dict:
    options = {"TableName": table, "ProjectionExpression": "booking_code", "Limit": 1000}
    if start:
        options["ExclusiveStartKey"] = start
    return dynamodb.scan(**options)


def _difference(ledger: Item, stored: Item) -> str:
    names = sorted(ledger.keys() | stored.keys())
    return "; ".join(
        f"{name}: ledger {_value(ledger.get(name))} dynamodb {_value(stored.get(name))}"
        for name in names if ledger.get(name) != stored.get(name)
    )


def _value(attribute: dict[str, str] | None) -> str:
    return "absent" if attribute is None else repr(next(iter(attribute.values())))


def _pages(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
