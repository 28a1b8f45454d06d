"""`booking-ledger verify`: compare the ledger with DynamoDB, in batches, in parallel.

1. Ledger -> DynamoDB: events in position order, a page at a time, below a fence taken at the
   start (every transaction still open then writes above it, so the range checked is final);
   each page is looked up with BatchGetItem (100 keys a call, calls in parallel) and compared
   item by item: missing or different.
2. DynamoDB -> ledger (a full run only): a Scan in segments (one per SEGMENT_ITEMS of the ledger's
   events, SCAN_PARALLEL on threads at a time), each round of pages looked up in the ledger with one
   query: items the ledger lacks are extra.
Events still in the outbox are on their way, not drift: they are counted as pending. Keys that
drift on the first look are looked at again after a grace period, so events in flight between
relay and sink are not reported; what remains is drift.

Incremental runs (`since`) check only events with a position above it, and report the position
up to which everything was found in order (`Report.checked_through`): the next run starts there.
Memory stays bounded by the page size and the number of pages in flight, whatever the ledger's size.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import asyncpg

from core import personal
from core.dynamodb import Item, item_of, read_raw
from core.dynamodb import client as dynamodb_client
from core.events import EVENT_COLUMNS, Event, event_from_row
from core.pg import connect
from core.settings import Settings

Key = tuple[str, int]  # (booking_code, version)

# Every transaction still running or yet to start writes positions at or above this (the same
# arithmetic as ledger_feed_fence, which the reader role may not call).
FENCE_SQL = """SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::bigint
                       + (SELECT xid_offset FROM ledger_position_offset)) * 65536"""
EVENTS_SQL = f"SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 AND position < $2 ORDER BY position LIMIT $3"
KEYS_EVENTS_SQL = f"""SELECT {EVENT_COLUMNS} FROM events
    WHERE (booking_code, version) IN (SELECT * FROM unnest($1::text[], $2::int[]))"""
ABSENT_SQL = """SELECT k.code, k.version FROM unnest($1::text[], $2::int[]) AS k(code, version)
    WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.booking_code = k.code AND e.version = k.version)"""
PENDING_SQL = "SELECT booking_code, version FROM outbox WHERE booking_code = ANY($1::text[])"
BOOKINGS_SQL = "SELECT count(DISTINCT booking_code) FROM events WHERE position > $1 AND position < $2"
COUNT_BELOW_SQL = "SELECT count(*) FROM events WHERE position < $1"
PENDING_BELOW_SQL = "SELECT booking_code, version, position FROM outbox WHERE position < $1 LIMIT $2"
PENDING_LIMIT = 100_000  # a longer outbox (an outage) makes a full run find missing events the ledger's way
SUSPECT_LIMIT = 10_000  # drifted keys kept for the second look; beyond it drift is reported as first seen
SCAN_PAGE = 1000  # items per Scan page: memory is SCAN_PARALLEL x 2 pages (one compared, one on its way)
# A Scan is cut into about one segment per SEGMENT_ITEMS items (by the ledger's count), SCAN_PARALLEL
# scanned at a time. DynamoDB Local's CPU per scanned item grows with its segment's size: at 1,000,000
# items 4 segments cost it about 200 us an item, 64 segments 26 (bench/README.md, issue 26); DynamoDB
# itself charges by the item either way.
SEGMENT_ITEMS = 10_000
SCAN_PARALLEL = 4
MAX_SEGMENTS = 1_000_000  # DynamoDB's bound on TotalSegments
COUNT_SQL = "SELECT count(*) FROM events"
BATCH_GET_LIMIT = 100  # BatchGetItem's maximum keys per call


async def ledger_items(conn: asyncpg.Connection, rows: Sequence[asyncpg.Record]) -> list[Item]:
    """The DynamoDB items of these event rows as the read store must hold them: with personal data
    shown erased for bookings whose personal data was erased (one more query, only when some event
    carries personal data)."""
    events: list[Event] = [event_from_row(row) for row in rows]
    sealed = list({e.booking_code for e in events if personal.sealed_in(e.data) is not None})
    erased = {r["booking_code"] for r in await conn.fetch(personal.ERASED_BOOKINGS_SQL, sealed)} if sealed else set()
    return [item_of(e, e.booking_code in erased) for e in events]


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
    since: int | None = None  # None: a full run
    checked_through: int = 0  # every event at or below this was checked and found (the next `since`)
    stored_highest: int = 0  # the highest position DynamoDB holds (a full run's scan; 0 otherwise)

    def summary(self) -> str:
        kinds = {k: sum(d.kind == k for d in self.drift) for k in ("missing", "extra", "different")}
        scope = "" if self.since is None else f" after position {self.since}"
        return (f"checked {self.bookings} bookings, {self.events} events{scope}: {len(self.drift)} drift "
                f"({kinds['missing']} missing, {kinds['extra']} extra, {kinds['different']} different), "
                f"{self.pending} pending in the outbox; checked through position {self.checked_through}")


async def verify(settings: Settings, grace: float = 5.0, since: int | None = None, page_size: int = 2000,
                 threads: int = 16, segments: int | None = None) -> Report:
    """Compare ledger and DynamoDB; with `since`, only the events above that position (no Scan).
    `segments`: the Scan's (None: scan_segments of the ledger's events)."""
    conn = await connect(settings.database.url, timeout=10)
    dynamodb = dynamodb_client(settings.dynamo, validate=False)
    read_raw(dynamodb)
    check = _Check(settings.database.url, conn, dynamodb, settings.dynamo.table, Report(since=since))
    try:
        fence = await conn.fetchval(FENCE_SQL)
        with ThreadPoolExecutor(threads) as executor:
            check.executor = executor
            if since is None:
                missing = await check.scan(fence, segments)
                if missing is None or missing > 0:  # uncounted, or some are missing: the ledger's way names them
                    await check.ledger_pass(-1, fence, page_size, count=missing is None)
            else:
                await check.ledger_pass(since, fence, page_size)
            check.report.bookings = await conn.fetchval(BOOKINGS_SQL, -1 if since is None else since, fence)
            if check.suspects:
                await asyncio.sleep(grace)
                for batch in _pages(sorted(check.suspects), page_size):
                    check.report.drift.extend(await check.second_look(batch))
        lowest = check.lowest_unsettled
        check.report.checked_through = fence - 1 if lowest is None else lowest - 1
        if since is not None:
            check.report.checked_through = max(check.report.checked_through, since)
    finally:
        await conn.close()
    check.report.drift.sort()
    return check.report


class _Check:
    """One run's state: the report, the keys to look at again, the lowest position not settled."""

    def __init__(self, url: str, conn: asyncpg.Connection, dynamodb, table: str, report: Report) -> None:
        self.url, self.conn, self.dynamodb, self.table, self.report = url, conn, dynamodb, table, report
        self.executor: ThreadPoolExecutor | None = None
        self.suspects: set[Key] = set()
        self.lowest_unsettled: int | None = None

    def unsettled(self, position: int) -> None:
        self.lowest_unsettled = position if self.lowest_unsettled is None else min(self.lowest_unsettled, position)

    def suspect(self, drift: Sequence[Drift]) -> None:
        for d in drift:
            key = (d.booking_code, d.version)
            if key in self.suspects or len(self.suspects) < SUSPECT_LIMIT:
                self.suspects.add(key)
            else:
                self.report.drift.append(d)

    async def ledger_pass(self, after: int, fence: int, page_size: int, count: bool = True) -> None:
        """Ledger -> DynamoDB for the events in (after, fence): BatchGetItem per page."""
        loop = asyncio.get_running_loop()
        reader = await connect(self.url, timeout=10)
        try:
            page = await reader.fetch(EVENTS_SQL, after, fence, page_size)
            while page:
                # The next page is read while this one is compared.
                following = asyncio.ensure_future(reader.fetch(EVENTS_SQL, page[-1]["position"], fence, page_size))
                expected = {(r["booking_code"], r["version"]): (r["position"], item)
                            for r, item in zip(page, await ledger_items(self.conn, page), strict=True)}
                stored = await _batch_get(loop, self._executor(), self.dynamodb, self.table, list(expected))
                absent = [key for key in expected if key not in stored]
                pending = await _pending(self.conn, absent) if absent else set()
                drift: list[Drift] = []
                for key, (position, item) in expected.items():
                    found = _judge(key, item, stored.get(key), key in pending)
                    if found is None and key in pending and count:
                        self.report.pending += 1
                    if found is not None or key in pending:
                        self.unsettled(position)
                    if found is not None:
                        drift.append(found)
                self.suspect(drift)
                if count:
                    self.report.events += len(page)
                page = await following
        finally:
            await reader.close()

    async def scan(self, fence: int, segments: int | None) -> int | None:
        """DynamoDB -> ledger: a parallel Scan of whole items, each round's pages looked up in the
        ledger with one query (extra, different). What is missing shows in the counts: the ledger's
        events below the fence, less those found, less those still pending. Returns that number, or
        None when the outbox is too long to hold its keys (an outage): then nothing is counted."""
        loop = asyncio.get_running_loop()
        pending = {(r["booking_code"], r["version"]): r["position"]
                   for r in await self.conn.fetch(PENDING_BELOW_SQL, fence, PENDING_LIMIT)}
        counting = len(pending) < PENDING_LIMIT
        expected_count = await self.conn.fetchval(COUNT_BELOW_SQL, fence)
        found = 0
        pending_seen: set[Key] = set()  # pending events DynamoDB has already (sent again, say)
        scan = partial(_scan_items, self.dynamodb, self.table)
        async for items in _scanned(loop, self._executor(), scan, segments or scan_segments(expected_count)):
            found += await self._compare(items, fence, pending, pending_seen)
        if not counting:
            return None
        self.report.events = expected_count
        self.report.pending = len(pending) - len(pending_seen)
        for key, position in pending.items():
            if key not in pending_seen:
                self.unsettled(position)
        return expected_count - found - self.report.pending

    async def _compare(self, items: list[Item], fence: int, pending: dict[Key, int], pending_seen: set[Key]) -> int:
        """One round of scanned items against the ledger (one query): drift is reported, pending
        events DynamoDB already holds are noted; returns how many items are ledger events below the fence."""
        keys = [(item["booking_code"]["S"], int(item["version"]["N"])) for item in items]
        for item in items:
            if "position" in item:
                self.report.stored_highest = max(self.report.stored_highest, int(item["position"]["N"]))
        rows = await self.conn.fetch(KEYS_EVENTS_SQL, [k[0] for k in keys], [k[1] for k in keys]) if keys else []
        expected = {(r["booking_code"], r["version"]): (r["position"], item)
                    for r, item in zip(rows, await ledger_items(self.conn, rows), strict=True)}
        drift: list[Drift] = []
        found = 0
        for key, item in zip(keys, items, strict=True):
            position, wanted = expected.get(key, (None, None))
            judged = _judge(key, wanted, item, False)
            if judged is not None:
                drift.append(judged)
                if position is not None:
                    self.unsettled(position)
            if position is not None and position < fence:
                found += 1
                if key in pending:
                    pending_seen.add(key)
        self.suspect(drift)
        return found

    async def second_look(self, keys: Sequence[Key]) -> list[Drift]:
        rows = await self.conn.fetch(KEYS_EVENTS_SQL, [k[0] for k in keys], [k[1] for k in keys])
        expected = {(r["booking_code"], r["version"]): item
                    for r, item in zip(rows, await ledger_items(self.conn, rows), strict=True)}
        stored = await _batch_get(asyncio.get_running_loop(), self._executor(), self.dynamodb, self.table, keys)
        pending = await _pending(self.conn, keys)
        return [d for key in keys if (d := _judge(key, expected.get(key), stored.get(key), key in pending))]

    def _executor(self) -> ThreadPoolExecutor:
        assert self.executor is not None
        return self.executor


async def stored_extras(settings: Settings, on_extra: Callable[[list[Key]], None], segments: int | None = None,
                        threads: int = 8) -> int:
    """Scan DynamoDB for items the ledger lacks, handing each page's extra keys to `on_extra`;
    returns the highest position DynamoDB holds (replay --prune deletes what it is given).
    `segments`: the Scan's (None: scan_segments of the ledger's events)."""
    conn = await connect(settings.database.url, timeout=10)
    dynamodb = dynamodb_client(settings.dynamo, validate=False)
    try:
        segments = segments or scan_segments(await conn.fetchval(COUNT_SQL))
        with ThreadPoolExecutor(threads) as executor:
            return await _scan_for_extra(asyncio.get_running_loop(), executor, conn, dynamodb, settings.dynamo.table,
                                         segments, on_extra)
    finally:
        await conn.close()


def scan_segments(items: int) -> int:
    """The segments of a Scan of about `items` items: one per SEGMENT_ITEMS, at least one."""
    return max(1, min(MAX_SEGMENTS, -(-items // SEGMENT_ITEMS)))


async def _scanned(loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor,
                   scan: Callable[[int, int, dict | None], dict], segments: int) -> AsyncIterator[list[Item]]:
    """The items of a Scan in `segments` segments, SCAN_PARALLEL of them at a time, a round of pages
    (one page of each segment under way) at a time; the next round is fetched while the caller
    works on this one. `scan(segment, segments, start)` reads one page."""
    waiting = deque(range(segments))
    active: list[int] = []
    starts: dict[int, dict | None] = {}

    def next_round() -> asyncio.Future | None:
        while len(active) < SCAN_PARALLEL and waiting:
            active.append(waiting.popleft())
            starts[active[-1]] = None
        if not active:
            return None
        return asyncio.gather(*(loop.run_in_executor(executor, scan, s, segments, starts[s]) for s in active))

    upcoming = next_round()
    while upcoming is not None:
        pages = await upcoming
        items: list[Item] = []
        for segment, page in zip(list(active), pages, strict=True):
            items.extend(page["Items"])
            starts[segment] = page.get("LastEvaluatedKey")
            if not starts[segment]:
                active.remove(segment)
                del starts[segment]
        upcoming = next_round()
        yield items


def _judge(key: Key, expected: Item | None, stored: Item | None, pending: bool) -> Drift | None:
    if expected is None:
        return None if stored is None else Drift(*key, "extra")
    if stored is None:
        return None if pending else Drift(*key, "missing")
    if stored != expected:
        return Drift(*key, "different", _difference(expected, stored))
    return None


async def _pending(conn: asyncpg.Connection, keys: Sequence[Key]) -> set[Key]:
    codes = sorted({code for code, _ in keys})
    wanted = set(keys)
    return {key for r in await conn.fetch(PENDING_SQL, codes) if (key := (r["booking_code"], r["version"])) in wanted}


async def _batch_get(loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor, dynamodb, table: str,
                     keys: Sequence[Key]) -> dict[Key, Item]:
    chunks = [keys[i : i + BATCH_GET_LIMIT] for i in range(0, len(keys), BATCH_GET_LIMIT)]
    found: dict[Key, Item] = {}
    for part in await asyncio.gather(*(loop.run_in_executor(executor, _get_items, dynamodb, table, chunk)
                                       for chunk in chunks)):
        found.update(part)
    return found


def _get_items(dynamodb, table: str, keys: Sequence[Key]) -> dict[Key, Item]:
    """The items of these keys (at most 100), strongly consistent; unprocessed keys are asked again."""
    wanted = [{"booking_code": {"S": code}, "version": {"N": str(version)}} for code, version in keys]
    request = {table: {"Keys": wanted, "ConsistentRead": True}}
    found: dict[Key, Item] = {}
    while request:
        answer = dynamodb.batch_get_item(RequestItems=request)
        for item in answer["Responses"].get(table, []):
            found[(item["booking_code"]["S"], int(item["version"]["N"]))] = item
        request = answer.get("UnprocessedKeys") or {}
    return found


async def _scan_for_extra(loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor, conn: asyncpg.Connection,
                          dynamodb, table: str, segments: int, on_extra: Callable[[list[Key]], None]) -> int:
    """Scan the keys in `segments` parallel segments; extra keys go to `on_extra`; returns the
    highest position seen."""
    highest = 0
    async for items in _scanned(loop, executor, partial(_scan_keys, dynamodb, table), segments):
        keys: list[Key] = []
        for item in items:
            keys.append((item["booking_code"]["S"], int(item["version"]["N"])))
            if "position" in item:
                highest = max(highest, int(item["position"]["N"]))
        if keys:
            absent = await conn.fetch(ABSENT_SQL, [k[0] for k in keys], [k[1] for k in keys])
            if absent:
                on_extra([(r["code"], r["version"]) for r in absent])
    return highest


def _scan_items(dynamodb, table: str, segment: int, segments: int, start: dict | None) -> dict:
    options = {"TableName": table, "Segment": segment, "TotalSegments": segments, "ConsistentRead": True,
               "Limit": SCAN_PAGE}
    if start:
        options["ExclusiveStartKey"] = start
    return dynamodb.scan(**options)


def _scan_keys(dynamodb, table: str, segment: int, segments: int, start: dict | None) -> dict:
    options = {"TableName": table, "ProjectionExpression": "booking_code, version, #p",
               "ExpressionAttributeNames": {"#p": "position"}, "Segment": segment, "TotalSegments": segments,
               "Limit": 2000}
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


def _pages(items: Sequence[Key], size: int) -> Iterator[Sequence[Key]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
