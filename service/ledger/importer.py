"""`booking-ledger import FILE`: a department's history into the ledger, through the append function.

The file is JSON Lines, one event a line: `{"booking_code", "department", "event_id", "type",
"price"?, "data"?, "occurred_at"?}`. Every event goes through the ledger's append function
(ledger_append_batch, with all its checks, the outbox and so Kafka and DynamoDB), never around it:

- Lines are read ahead (up to MAX_PENDING) and grouped by booking: a booking's lines become
  batches of up to BATCH_EVENTS consecutive lines of one department. A call of the function
  carries one batch of each of many bookings (up to CALL_EVENTS events), each with its own
  outcome, and CONNECTIONS calls run at once; a booking belongs to one worker, whose calls run one
  after the other.
- The events of one booking get versions in file order: each batch expects the version the one
  before it leaves (from a lookup of the booking, then counted), so a batch that was not written
  makes the booking's next one fail as well, and nothing is written out of order. From a refused
  batch on, the booking goes one append at a time through the single append's path
  (service.ledger.append), which says why, line by line.
- A booking stops at its first rejected line, whatever the reason: none of its lines after that
  one is written (they are "held back"). Otherwise the fixed line, imported again, would land
  after them, and the booking's current price would be an older one. A line whose booking code
  cannot be read at all (not a JSON object, over MAX_LINE_BYTES, no code, two, one not valid) could
  belong to any booking, so every line after it is held back. Held-back lines are still read, so
  one run reports every invalid line.
- A booking is appended to at whatever version it is; an unknown code is created by its first
  line's department. A code another department owns is rejected for that department
  (`booking_code_taken`), which stops the booking as any rejection does.
- An event id already recorded with the same content is skipped: the function answers a batch
  whose ids are all recorded as a retry, so running the import again writes nothing twice. A
  batch that mixes recorded and new ids (a file that grew since the last run) is written event
  by event, so each line gets its own outcome; an id recorded with other content is rejected
  (`event_id_conflict`).
- Invalid lines (not JSON, a duplicate key, an unknown or missing field, a bad code, money or
  time, data over 256 KiB) are reported by line number and skipped.
- `occurred_at` comes from the file; `recorded_at` is the time of the import (the ledger's clock:
  when it learnt of the event). Ask the price of imported history with `clock=occurred`.

Memory is bounded whatever the file's length: at most MAX_PENDING lines (or MAX_PENDING_BYTES)
wait to be written, and the only state kept across them is the set of bookings stopped so far.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import asyncpg
import msgspec

from core import personal
from core.events import BOOKING_CODE_PATTERN, MAX_DATA_BYTES, BookingCode, EventType, data_size, utc_instant, whole
from core.money import PriceIn
from core.outbox import OUTBOX_CHANNEL
from core.strictjson import decode_strict
from service.ledger.append import Append, NewEvent, append, append_outcomes
from service.ledger.db import retrying
from service.ledger.errors import BookingCodeTaken, EventIdConflict, InvalidData, NotOwner, StoreUnavailable
from service.ledger.keys import DEPARTMENT
from service.ledger.notify import NOTIFY_SQL

log = logging.getLogger("booking_ledger.import")

LOOKUP_SQL = "SELECT code, version FROM bookings WHERE code = ANY($1::text[])"

BATCH_EVENTS = 1000  # events per append at most (the append function's limit)
MAX_PENDING = 50_000  # lines read ahead before they are written (so a booking's lines share calls)
MAX_PENDING_BYTES = 64 * 1024 * 1024  # ... or this many bytes of them
CALL_EVENTS = 1000  # events per call of the append function (many bookings' appends)
CONNECTIONS = 2  # calls in flight at once
MAX_LINE_BYTES = 1024 * 1024
SHOWN_PER_REASON = 20  # line numbers kept per rejection reason for the summary
BOM = b"\xef\xbb\xbf"
BOOKING_CODE = re.compile(BOOKING_CODE_PATTERN)

Department = Annotated[str, msgspec.Meta(pattern=whole(DEPARTMENT.pattern))]


class ImportLine(msgspec.Struct, forbid_unknown_fields=True):
    booking_code: BookingCode
    department: Department
    event_id: UUID
    type: EventType
    price: PriceIn | None = None
    data: dict[str, Any] | None = None
    occurred_at: Annotated[datetime, msgspec.Meta(tz=True)] | None = None

    def __post_init__(self) -> None:
        if self.occurred_at is not None:
            self.occurred_at = utc_instant(self.occurred_at)
        if self.data is not None and data_size(self.data) > MAX_DATA_BYTES:
            raise ValueError(f"data is over {MAX_DATA_BYTES} bytes of compact JSON")
        # Personal data is sealed with its booking's key, which only the API holds: it comes through the API.
        if self.data is not None and personal.FIELD in self.data:
            raise ValueError("data.personal is not imported: send personal data through the API, which seals it")
        if self.type == personal.ERASED_TYPE:
            raise ValueError(f"{personal.ERASED_TYPE} is appended by an erasure only")

    def event(self) -> NewEvent:
        return NewEvent(self.event_id, self.type, self.price.money() if self.price else None, self.data,
                        self.occurred_at)


def parse_line(raw: bytes) -> ImportLine:
    """One line, strictly (as the API reads an append); ValueError with the reason."""
    if len(raw) > MAX_LINE_BYTES:
        raise ValueError(f"the line is over {MAX_LINE_BYTES} bytes")
    if raw.startswith(BOM):
        raise ValueError("the line starts with a UTF-8 byte order mark (BOM): save the file as UTF-8 without a BOM")
    try:
        text = raw.decode()
    except UnicodeDecodeError as error:
        raise ValueError(f"the line is not UTF-8: byte 0x{raw[error.start]:02x} at byte {error.start + 1} "
                         f"({error.reason})") from None
    try:
        return decode_strict(raw, ImportLine, "the line")
    except msgspec.DecodeError as error:
        surrogate = _lone_surrogate(text)
        if surrogate is not None:  # msgspec calls it "truncated"; it is an escape that is not text
            raise ValueError(f"a string holds {surrogate}, half of a UTF-16 surrogate pair alone, which is not "
                             f"text") from None
        raise ValueError(str(error) or type(error).__name__) from None


def _lone_surrogate(text: str) -> str | None:
    """The first lone surrogate escape (such as '\\ud800') in the strings of `text`'s JSON, if any."""
    try:
        pending: list[Any] = [json.loads(text)]
    except (ValueError, RecursionError):
        return None
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            pending += item
        elif isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError as error:
                return f"\\u{ord(item[error.start]):04x}"
    return None


def booking_of(raw: bytes) -> str | None:
    """The booking an invalid line names, when it names exactly one valid code; else None."""
    try:
        value = json.loads(raw.removeprefix(BOM), object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        return None
    codes = [code for key, code in value if key == "booking_code"] if isinstance(value, _Pairs) else []
    if len(codes) == 1 and isinstance(codes[0], str) and BOOKING_CODE.fullmatch(codes[0]):
        return codes[0]
    return None


class _Pairs(list[tuple[str, Any]]):
    """A JSON object's (key, value) pairs in order, duplicates kept."""



@dataclass
class Summary:
    lines: int = 0
    bookings_created: int = 0
    imported: int = 0
    already_present: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> lines
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> "line N: why", a few
    held_back: int = 0  # lines not written because an earlier line of their booking was rejected
    held_back_examples: list[str] = field(default_factory=list)

    @property
    def rejected_lines(self) -> int:
        return sum(self.rejected.values())

    def reject(self, reason: str, line: int, why: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < SHOWN_PER_REASON:
            shown.append(f"line {line}: {why}")

    def hold_back(self, line: int, why: str) -> None:
        self.held_back += 1
        if len(self.held_back_examples) < SHOWN_PER_REASON:
            self.held_back_examples.append(f"line {line}: {why}")

    def text(self) -> str:
        out = [f"{self.lines} lines: {self.imported} events imported ({self.bookings_created} bookings created), "
               f"{self.already_present} already present, {self.rejected_lines} rejected, {self.held_back} held back"]
        for reason in sorted(self.rejected):
            out.append(f"rejected {reason}: {self.rejected[reason]}")
            out += _shown(self.examples[reason], self.rejected[reason])
        if self.held_back:
            out.append(f"held back (after a rejected line of their booking): {self.held_back}")
            out += _shown(self.held_back_examples, self.held_back)
            out.append("  fix the rejected lines and import the file again: the held-back lines follow them in order")
        return "\n".join(out)


def _shown(examples: list[str], count: int) -> list[str]:
    return [f"  {example}" for example in examples] + ([f"  ... and {count - len(examples)} more"]
                                                       if count > len(examples) else [])


@dataclass
class _Batch:
    department: str
    lines: list[tuple[int, NewEvent]] = field(default_factory=list)
    data_bytes: int = 0


@dataclass
class _Booking:
    """One booking's pending lines in a flush, and what this run knows of it."""

    code: str
    batches: deque[_Batch]
    version: int = 0  # the version it is at, as far as this run knows (0: it does not exist)
    exists: bool = False
    slow: bool = False  # an append of it was not written: the rest go one at a time (`_write`)


class Importer:
    def __init__(self, pool: asyncpg.Pool, connections: int = CONNECTIONS, call_events: int = CALL_EVENTS) -> None:
        self._pool = pool
        self._connections = connections
        self._call_events = call_events
        self.summary = Summary()
        self._pending: dict[str, list[_Batch]] = {}
        self._pending_lines = 0
        self._pending_bytes = 0
        self._stopped: dict[str, tuple[int, str]] = {}  # booking code -> its first rejected line, and why
        self._all_stopped: int | None = None  # the first rejected line whose booking cannot be read
        self.calls = 0  # calls of the append function, many appends each
        self.single_calls = 0  # ... and of the single append (after a refusal)

    async def run(self, lines: Iterator[tuple[int, bytes]], progress: Callable[[int, Summary], None]) -> Summary:
        for number, raw in lines:
            self.summary.lines += 1
            progress(len(raw), self.summary)
            if not raw.strip():
                continue
            try:
                line = parse_line(raw)
            except ValueError as error:
                self.summary.reject("invalid", number, str(error))
                self._stop(booking_of(raw), number, "invalid")
                continue
            held = self._held(line.booking_code, number)
            if held is not None:
                self.summary.hold_back(number, held)
                continue
            await self._add(number, line, len(raw))
        await self._flush()
        return self.summary

    def _stop(self, code: str | None, number: int, reason: str) -> None:
        """Line `number` was rejected: hold back the lines after it of booking `code` (of every booking
        when its code cannot be read)."""
        if code is None:
            self._all_stopped = min(number, self._all_stopped or number)
        elif code not in self._stopped or number < self._stopped[code][0]:
            self._stopped[code] = (number, reason)

    def _held(self, code: str, number: int) -> str | None:
        """Why line `number` of booking `code` is held back, or None when it is not."""
        stop = self._stopped.get(code)
        if stop is not None and number > stop[0]:
            return f"booking {code} stopped at line {stop[0]} ({stop[1]})"
        if self._all_stopped is not None and number > self._all_stopped:
            return f"every booking stopped at line {self._all_stopped}, whose booking code cannot be read"
        return None

    def _hold_back(self, code: str, lines: list[tuple[int, NewEvent]]) -> bool:
        """Holds back `lines` when the first of them is held back (the rest follow it in the file)."""
        held = self._held(code, lines[0][0]) if lines else None
        if held is None:
            return False
        for number, _ in lines:
            self.summary.hold_back(number, held)
        return True

    async def _add(self, number: int, line: ImportLine, raw_size: int) -> None:
        size = data_size(line.data) if line.data is not None else 0
        batches = self._pending.setdefault(line.booking_code, [])
        if (not batches or batches[-1].department != line.department or len(batches[-1].lines) >= BATCH_EVENTS
                or batches[-1].data_bytes + size > MAX_DATA_BYTES):
            batches.append(_Batch(line.department))
        batches[-1].lines.append((number, line.event()))
        batches[-1].data_bytes += size
        self._pending_lines += 1
        self._pending_bytes += raw_size
        if self._pending_lines >= MAX_PENDING or self._pending_bytes >= MAX_PENDING_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        pending, self._pending, self._pending_lines, self._pending_bytes = self._pending, {}, 0, 0
        if not pending:
            return
        # Groups of bookings of about `call_events` events; a worker writes a group in order, and a
        # booking is in one group only, so its batches are written in file order.
        groups: list[list[_Booking]] = [[]]
        events = 0
        for code, batches in pending.items():
            size = sum(len(batch.lines) for batch in batches)
            if groups[-1] and events + size > self._call_events:
                groups.append([])
                events = 0
            groups[-1].append(_Booking(code, deque(batches)))
            events += size
        queue = iter(groups)

        async def worker() -> None:
            for group in queue:
                await self._group(group)

        await asyncio.gather(*(worker() for _ in range(min(self._connections, len(groups)))))

    async def _group(self, bookings: list[_Booking]) -> None:
        found = await retrying(self._pool, lambda conn: conn.fetch(LOOKUP_SQL, [b.code for b in bookings]))
        versions = {row["code"]: row["version"] for row in found}
        for booking in bookings:
            booking.version = versions.get(booking.code, 0)
            booking.exists = booking.code in versions
        todo = deque(bookings)
        while todo:
            # The next call: the next batch of each booking in turn, up to `call_events` events (at
            # least one batch). One append per booking per call (the function looks up repeated
            # event ids once per call); a booking's next batch goes in a later call of this worker,
            # expecting the version the one before it leaves (a batch that was not written makes the
            # next one fail too, so nothing is written out of file order).
            call: list[tuple[_Booking, _Batch, Append]] = []
            later: list[_Booking] = []
            events = 0
            while todo and (not call or events + len(todo[0].batches[0].lines) <= self._call_events):
                booking = todo.popleft()
                batch = booking.batches.popleft()
                call.append((booking, batch, Append(booking.code, batch.department, False, booking.version,
                                                    [event for _, event in batch.lines])))
                booking.version += len(batch.lines)
                events += len(batch.lines)
                if booking.batches:
                    later.append(booking)
            await self._call(call)
            for booking, batch, _ in call:
                if booking.slow:  # from this batch on, one append at a time, the single append's answers
                    for each in [batch, *booking.batches]:
                        if not self._hold_back(booking.code, each.lines):
                            await self._write(booking, each.department, each.lines)
                    booking.batches.clear()
            todo.extend(booking for booking in later if booking.batches)
        await retrying(self._pool, lambda conn: conn.execute(NOTIFY_SQL, OUTBOX_CHANNEL))  # wake the relay

    async def _call(self, call: list[tuple[_Booking, _Batch, Append]]) -> None:
        """One call of the append function carrying many bookings' appends, each with its own outcome."""
        self.calls += 1
        try:
            outcomes = await append_outcomes(self._pool, [item for _, _, item in call])
        except StoreUnavailable:
            raise
        except Exception as error:  # Postgres refused the whole call (data it cannot store): one at a time
            log.info("a call of %d appends was refused as a whole (%s); writing them one at a time", len(call), error)
            outcomes = {}
        for number, (booking, batch, item) in enumerate(call, start=1):
            outcome = outcomes.get(number)
            if outcome in ("created", "appended"):  # (a replay after a try whose outcome was unknown included)
                self.summary.imported += len(batch.lines)
                self.summary.bookings_created += item.expected_version == 0
                booking.exists = True
            elif outcome == "replayed":
                self.summary.already_present += len(batch.lines)
                booking.exists = True
            else:  # refused (taken, not ours, a conflict, ...): the single append says why, line by line
                booking.slow = True

    async def _write(self, booking: _Booking, department: str, lines: list[tuple[int, NewEvent]]) -> None:
        """`lines` as one append; when it is refused, the first line at fault is rejected and the
        booking stops there (the lines after it are held back)."""
        code = booking.code
        events = [event for _, event in lines]
        try:
            # A code known to exist is appended to; any other is first created, and appended to
            # when it exists and is ours after all.
            if booking.exists:
                result = await self._append(code, department, None, events)
            else:
                try:
                    result = await self._append(code, department, 0, events)
                    if not result.replayed:
                        self.summary.bookings_created += 1
                except BookingCodeTaken as taken:
                    if taken.context.get("department") != department:
                        raise
                    result = await self._append(code, department, None, events)
                booking.exists = True
        except (BookingCodeTaken, NotOwner) as error:
            booking.exists = True
            owner = error.context.get("department", "another department")
            self.summary.reject("booking_code_taken", lines[0][0],
                                f"booking {code} belongs to {owner}, not {department}")
            self._stop(code, lines[0][0], "booking_code_taken")
            self._hold_back(code, lines[1:])
            return
        except (EventIdConflict, InvalidData) as error:
            if len(lines) > 1:  # find the line at fault; those before it get their own outcome
                for at, one in enumerate(lines):
                    if self._hold_back(code, lines[at:]):
                        return
                    await self._write(booking, department, [one])
                return
            reason = "event_id_conflict" if isinstance(error, EventIdConflict) else "invalid"
            self.summary.reject(reason, lines[0][0], f"event {lines[0][1].event_id}: {error.detail}")
            self._stop(code, lines[0][0], reason)
            return
        if result.replayed:
            self.summary.already_present += len(lines)
        else:
            self.summary.imported += len(lines)

    async def _append(self, code: str, department: str, expected: int | None, events: list[NewEvent]) -> Any:
        self.single_calls += 1
        return await append(self._pool, code=code, department=department, may_write_any=False,
                            expected_version=expected, events=events)


def read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, raw line) of `path`, one at a time; of a line over MAX_LINE_BYTES only
    its start is read (and reported as too long), so no line needs unbounded memory."""
    with path.open("rb") as file:
        number = 0
        while raw := file.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while (rest := file.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                    pass
            yield number, raw.rstrip(b"\r\n")
