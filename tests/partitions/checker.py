"""The history checker of the partition campaign: pure code, no I/O.

It is given what the clients saw (every request and its answer, with wall times: `Write`, `Read`,
`FeedPage`), the faults with their wall times (`Fault`), and what is stored at the end (the
ledger's events and bookings, the Kafka topic's messages, the DynamoDB table's items), and says
for each invariant which facts break it:

- `acknowledged`: every event of a 2xx append is in the ledger once, with the version the answer
  gave and the content that was sent;
- `no_phantom`: every event in Kafka, in DynamoDB or served by the feed is in the ledger, with the
  same booking, version and position (a commit that a failover discarded has none of them there);
- `one_owner`: no booking code has two departments (ledger events, bookings row, DynamoDB items);
- `gapless`: each booking's versions are 1..n, n the bookings row's version;
- `feed`: the feed read across the run never repeats an event, never goes back in position, gives
  each booking's events in version order with none left out, and reaches every ledger event;
- `downstream_complete`: every ledger event reached Kafka and DynamoDB (after the drain), Kafka's
  first copy of each booking's events in version order (delivery is at least once);
- `read_your_writes`: a read that started after a 2xx append of a booking answered (through any
  API host) sees at least that version;
- `monotonic_reads`: one client's reads of one booking never see its version go back;
- `answered`: every request answered within the client's deadline, and no 5xx before the API's
  retry budget was spent (less the second it keeps to answer in time; a connection that an API
  process's death broke, status 0, is counted only).
`unavailability` gives, per fault kind, the time from each fault to the first 2xx append sent
after it (p50, p99, max) and the 5xx answers during faults; faults whose target is marked
`[primary]` (faults on the primary's host or on one of its links) also count in a row of their own.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from service.ledger.db import ANSWER_RESERVE_SECONDS, LAST_TRY_SECONDS


@dataclass(frozen=True)
class Sent:
    """One event as a client sent it."""

    event_id: str
    type: str
    amount: str | None = None
    currency: str | None = None


@dataclass(frozen=True)
class Write:
    """One POST of events: `status` None when no answer came within the client's deadline, 0 when
    the connection was refused or broken (the API process died)."""

    client: str
    host: str
    code: str
    department: str
    start: float
    end: float
    status: int | None
    sent: tuple[Sent, ...]
    versions: tuple[int, ...] = ()  # of the events, as the 2xx answer gave them


@dataclass(frozen=True)
class Read:
    """One GET of a booking's events; `version` the highest it saw (0: none)."""

    client: str
    host: str
    code: str
    start: float
    end: float
    status: int | None
    version: int = 0


@dataclass(frozen=True)
class Stored:
    """An event as a store holds it (the ledger, a Kafka message, a DynamoDB item, a feed page)."""

    event_id: str
    code: str
    version: int
    position: int
    department: str = ""
    type: str = ""
    amount: str | None = None
    currency: str | None = None


@dataclass(frozen=True)
class FeedPage:
    """One GET /v1/events?after=`after` of the feed reader; `events` in the order served."""

    client: str
    host: str
    start: float
    end: float
    status: int | None
    after: int
    events: tuple[Stored, ...] = ()


@dataclass(frozen=True)
class Fault:
    kind: str
    target: str
    start: float
    end: float


@dataclass
class Final:
    """What the stores hold once every fault is healed and the pipeline drained."""

    ledger: list[Stored]
    bookings: dict[str, tuple[str, int]]  # code -> (department, version)
    kafka: list[Stored]  # in offset order within each partition (the order across partitions is free)
    dynamodb: list[Stored]


@dataclass
class History:
    writes: list[Write] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    feed: list[FeedPage] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)


INVARIANTS = ("acknowledged", "no_phantom", "one_owner", "gapless", "feed", "downstream_complete",
              "read_your_writes", "monotonic_reads", "answered")


@dataclass
class Verdict:
    violations: dict[str, list[str]]
    unavailability: dict[str, dict[str, float]]
    counts: dict[str, int]

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())


def check(history: History, final: Final, retry_budget: float, deadline: float,
          downstream: bool = True) -> Verdict:
    """Every invariant over `history` and `final`; `downstream` False skips Kafka/DynamoDB completeness."""
    violations = {
        "acknowledged": acknowledged(history.writes, final.ledger),
        "no_phantom": no_phantom(final.ledger, final.kafka, final.dynamodb, history.feed),
        "one_owner": one_owner(final.ledger, final.bookings, final.dynamodb),
        "gapless": gapless(final.ledger, final.bookings),
        "feed": feed(history.feed, final.ledger),
        "downstream_complete": downstream_complete(final.ledger, final.kafka, final.dynamodb) if downstream else [],
        "read_your_writes": read_your_writes(history.writes, history.reads),
        "monotonic_reads": monotonic_reads(history.reads),
        "answered": answered(history, retry_budget, deadline),
    }
    statuses = Counter(str(op.status) for op in (*history.writes, *history.reads, *history.feed))
    counts = {
        "writes": len(history.writes), "writes_2xx": sum(_ok(w.status) for w in history.writes),
        "reads": len(history.reads), "feed_pages": len(history.feed), "faults": len(history.faults),
        "ledger_events": len(final.ledger), "kafka_messages": len(final.kafka),
        "dynamodb_items": len(final.dynamodb),
        **{f"status_{status}": n for status, n in sorted(statuses.items())},
    }
    return Verdict(violations, unavailability(history), counts)


def _ok(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def _by_id(events: Iterable[Stored]) -> dict[str, list[Stored]]:
    found: dict[str, list[Stored]] = defaultdict(list)
    for event in events:
        found[event.event_id].append(event)
    return found


def acknowledged(writes: list[Write], ledger: list[Stored]) -> list[str]:
    stored = _by_id(ledger)
    found = []
    for write in writes:
        if not _ok(write.status):
            continue
        for index, sent in enumerate(write.sent):
            rows = stored.get(sent.event_id, [])
            if not rows:
                found.append(f"acknowledged event {sent.event_id} ({write.code}, answered {write.status} "
                             f"at {write.end:.3f} by {write.host}) is not in the ledger")
                continue
            if len(rows) > 1:
                found.append(f"acknowledged event {sent.event_id} is in the ledger {len(rows)} times")
            row = rows[0]
            version = write.versions[index] if index < len(write.versions) else None
            if row.code != write.code or (version is not None and row.version != version):
                found.append(f"event {sent.event_id}: acknowledged as {write.code} v{version}, "
                             f"the ledger has {row.code} v{row.version}")
            if (row.type, row.amount, row.currency) != (sent.type, sent.amount, sent.currency):
                found.append(f"event {sent.event_id}: the ledger's content differs from what was acknowledged")
    return found


def no_phantom(ledger: list[Stored], kafka: list[Stored], dynamodb: list[Stored],
               pages: list[FeedPage]) -> list[str]:
    stored = {e.event_id: e for e in ledger}
    found = []
    seen: set[tuple[str, str, int, int]] = set()
    sources = [("Kafka", e) for e in kafka] + [("DynamoDB", e) for e in dynamodb] + \
              [("the feed", e) for page in pages if _ok(page.status) for e in page.events]
    for where, event in sources:
        key = (where, event.event_id, event.version, event.position)
        if key in seen:
            continue
        seen.add(key)
        row = stored.get(event.event_id)
        if row is None:
            found.append(f"phantom in {where}: event {event.event_id} ({event.code} v{event.version}, "
                         f"position {event.position}) is not in the ledger")
        elif (row.code, row.version, row.position) != (event.code, event.version, event.position):
            found.append(f"phantom in {where}: event {event.event_id} as {event.code} v{event.version} at "
                         f"position {event.position}; the ledger has v{row.version} at {row.position}")
    return found


def one_owner(ledger: list[Stored], bookings: dict[str, tuple[str, int]], dynamodb: list[Stored]) -> list[str]:
    owners: dict[str, set[str]] = defaultdict(set)
    for code, (department, _version) in bookings.items():
        owners[code].add(department)
    for event in (*ledger, *dynamodb):
        if event.department:
            owners[event.code].add(event.department)
    return [f"booking {code} has {len(found)} owners: {sorted(found)}" for code, found in sorted(owners.items())
            if len(found) > 1]


def gapless(ledger: list[Stored], bookings: dict[str, tuple[str, int]]) -> list[str]:
    versions: dict[str, list[int]] = defaultdict(list)
    for event in ledger:
        versions[event.code].append(event.version)
    found = []
    for code in sorted(set(versions) | set(bookings)):
        got = sorted(versions.get(code, []))
        expected = bookings.get(code, ("", len(got)))[1]
        if got != list(range(1, expected + 1)):
            found.append(f"booking {code}: versions {_short(got)}, bookings row says {expected}")
    return found


def _short(values: list[int]) -> str:
    return str(values) if len(values) <= 8 else f"[{values[0]}, {values[1]}, ..., {values[-1]}] ({len(values)})"


def feed(pages: list[FeedPage], ledger: list[Stored]) -> list[str]:
    """The pages of each feed reader in the order they were read (each reader starts at 0)."""
    found: list[str] = []
    readers: dict[str, list[FeedPage]] = defaultdict(list)
    for page in pages:
        if _ok(page.status):
            readers[page.client].append(page)
    every = {e.event_id for e in ledger}
    for reader, own in readers.items():
        own.sort(key=lambda p: p.start)
        seen: set[str] = set()
        last_position = 0
        last_version: dict[str, int] = {}
        for page in own:
            if page.after < last_position:
                found.append(f"{reader}: asked after {page.after} once it had read up to {last_position}")
            for event in page.events:
                if event.event_id in seen:
                    found.append(f"{reader}: event {event.event_id} ({event.code} v{event.version}) served twice")
                    continue
                seen.add(event.event_id)
                if event.position <= last_position:
                    found.append(f"{reader}: position {event.position} after {last_position}")
                last_position = max(last_position, event.position)
                expected = last_version.get(event.code, 0) + 1
                if event.version != expected:
                    found.append(f"{reader}: {event.code} v{event.version} where v{expected} was next "
                                 f"(position {event.position})")
                last_version[event.code] = max(last_version.get(event.code, 0), event.version)
        missing = every - seen
        if missing:
            found.append(f"{reader}: {len(missing)} ledger events never served, e.g. {sorted(missing)[:3]}")
    return found


def downstream_complete(ledger: list[Stored], kafka: list[Stored], dynamodb: list[Stored]) -> list[str]:
    found = []
    in_kafka = {e.event_id for e in kafka}
    in_dynamodb = {(e.code, e.version): e.event_id for e in dynamodb}
    lost_kafka = [e for e in ledger if e.event_id not in in_kafka]
    lost_dynamodb = [e for e in ledger if in_dynamodb.get((e.code, e.version)) != e.event_id]
    if lost_kafka:
        found.append(f"{len(lost_kafka)} ledger events not in Kafka, e.g. "
                     + ", ".join(f"{e.code} v{e.version}" for e in lost_kafka[:3]))
    if lost_dynamodb:
        found.append(f"{len(lost_dynamodb)} ledger events not in DynamoDB as in the ledger, e.g. "
                     + ", ".join(f"{e.code} v{e.version}" for e in lost_dynamodb[:3]))
    first: dict[str, list[int]] = defaultdict(list)
    seen: set[tuple[str, int]] = set()
    for event in kafka:
        if (event.code, event.version) not in seen:
            seen.add((event.code, event.version))
            first[event.code].append(event.version)
    for code, versions in sorted(first.items()):
        if versions != sorted(versions):
            found.append(f"Kafka: {code}'s first copies in the order {_short(versions)}")
    return found


def read_your_writes(writes: list[Write], reads: list[Read]) -> list[str]:
    acked: dict[str, list[tuple[float, int, str]]] = defaultdict(list)  # code -> (answered, version, host)
    for write in writes:
        if _ok(write.status) and write.versions:
            acked[write.code].append((write.end, max(write.versions), write.host))
    for entries in acked.values():
        entries.sort()
    found = []
    for read in reads:
        if not _ok(read.status):
            continue
        due = max((version for end, version, _ in acked.get(read.code, []) if end < read.start), default=0)
        if read.version < due:
            found.append(f"{read.client} read {read.code} through {read.host} at {read.start:.3f}: v{read.version}, "
                         f"after v{due} was acknowledged")
    return found


def monotonic_reads(reads: list[Read]) -> list[str]:
    last: dict[tuple[str, str], Read] = {}
    found = []
    for read in sorted((r for r in reads if _ok(r.status)), key=lambda r: r.start):
        key = (read.client, read.code)
        before = last.get(key)
        if before is not None and read.version < before.version:
            found.append(f"{read.client} read {read.code} v{read.version} through {read.host} after "
                         f"v{before.version} through {before.host}")
        if before is None or read.version >= before.version:
            last[key] = read
    return found


def answered(history: History, retry_budget: float, deadline: float) -> list[str]:
    found = []
    for op in (*history.writes, *history.reads, *history.feed):
        took = op.end - op.start
        what = f"{type(op).__name__.lower()} by {op.client} through {op.host} at {op.start:.3f}"
        if op.status is None:
            found.append(f"{what}: no answer within {deadline:.0f} s (gave up after {took:.1f} s)")
        # The API answers a little before its budget ends, so that the answer arrives within it
        # (service/ledger/db.py: ANSWER_RESERVE_SECONDS), and starts no try with less than
        # LAST_TRY_SECONDS left: a 5xx in that last stretch is the budget spent.
        # (Status 0: a broken connection.)
        elif op.status >= 500 and took < retry_budget - ANSWER_RESERVE_SECONDS - LAST_TRY_SECONDS:
            found.append(f"{what}: {op.status} after {took:.1f} s, inside the {retry_budget:.0f} s retry budget")
    return found


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def writes_back(history: History) -> dict[Fault, float]:
    """Per fault: seconds from its start to the end of the first 2xx append sent after it (a fault
    after which no append succeeded has none)."""
    done = sorted((w.start, w.end) for w in history.writes if _ok(w.status))
    gaps: dict[Fault, float] = {}
    for fault in history.faults:
        firsts = [end for start, end in done if start >= fault.start]
        if firsts:
            gaps[fault] = min(firsts) - fault.start
    return gaps


def unavailability(history: History, after_heal: float = 30.0) -> dict[str, dict[str, float]]:
    """Per fault kind: fault → first 2xx append sent after it (p50/p99/max s), and 5xx answers in its window."""
    back = writes_back(history)
    kinds: dict[str, list[Fault]] = defaultdict(list)
    for fault in history.faults:
        kinds[fault.kind].append(fault)
        if "[primary]" in fault.target:  # on the primary's host or one of its links
            kinds[f"{fault.kind} (primary)"].append(fault)
    errors = [op for op in (*history.writes, *history.reads, *history.feed)
              if op.status is not None and op.status >= 500]
    table: dict[str, dict[str, float]] = {}
    for kind, faults in sorted(kinds.items()):
        gaps = [back[fault] for fault in faults if fault in back]
        table[kind] = {
            "faults": len(faults),
            "p50": statistics.median(gaps) if gaps else float("nan"),
            "p99": _percentile(gaps, 0.99) if gaps else float("nan"),
            "max": max(gaps) if gaps else float("nan"),
            "5xx": sum(1 for op in errors if any(f.start <= op.end <= f.end + after_heal for f in faults)),
        }
    return table
