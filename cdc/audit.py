"""`booking-ledger audit`: check the hash chains (migration 0016) in the ledger, on the Kafka topic
and in DynamoDB, and name the first event that does not match in each.

1. Ledger: every booking's events, in version order, from one snapshot. Each event's hash is
   computed again here (core/chain.py, from the stored columns: no function of the ledger's owner
   is trusted) and compared with the recorded one; versions must run 1..n and the booking's head
   and version must be its last event's. A booking's first event that fails is a break.
2. Kafka: the topic from its first offsets to the ends it had when the audit began. Each message
   must be an event the ledger holds, with the ledger's hash and content (a message sent before
   0016 carries no hash: its content is still compared, and it is counted as unhashed).
3. DynamoDB: `verify`'s comparison (cdc/verify.py): every item equals the ledger's event, hash
   included; missing and extra items are named.
4. Checkpoints (core/checkpoints.py), in the ledger and on the topic: each follows the one before
   it (seq, positions, the digest it names), is signed by a trusted key, and its root is the root of
   the ledger's events in its range now. Trusted keys are those given (`--public-key`), else the
   public half of the signer's key file when readable here, else (said so) the keys the ledger names.
A mismatch in the ledger is tampering there (or a bug in the chain); one downstream only is that
copy's. Memory stays bounded by the page sizes, whatever the ledger's size.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import msgspec
from confluent_kafka import Consumer, KafkaException, TopicPartition

from cdc.verify import KEYS_EVENTS_SQL, verify
from core import checkpoints, merkle
from core.chain import GENESIS, LINK_COLUMNS, Break, Link
from core.events import Event, decode_event, event_from_row
from core.pg import connect
from core.settings import Settings

PAGE_SIZE = 2000
# A page of links in (booking_code, version) order after a key, with each booking's head and version.
LINKS_SQL = f"""
SELECT l.*, b.head AS booking_head, b.version AS booking_version
  FROM (SELECT {LINK_COLUMNS} FROM events
         WHERE (booking_code, version) > ($1, $2)
         ORDER BY booking_code, version
         LIMIT $3) l
  JOIN bookings b ON b.code = l.booking_code
 ORDER BY l.booking_code, l.version
"""


@dataclass(frozen=True, order=True)
class Mismatch:
    """One event (or message, or item) that does not match, ordered by position where known."""

    position: int
    source: str  # ledger | checkpoints | kafka | dynamodb
    text: str

    def __str__(self) -> str:
        return f"{self.source:<8} {self.text}"


@dataclass
class AuditReport:
    bookings: int = 0
    events: int = 0
    messages: int = 0
    unhashed_messages: int = 0
    items_checked: int = 0
    checkpoints: int = 0
    checkpoint_messages: int = 0
    keys_pinned: bool = True
    mismatches: list[Mismatch] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # sources not checked, and why

    def first(self, source: str) -> Mismatch | None:
        found = [m for m in self.mismatches if m.source == source]
        return min(found) if found else None

    def summary(self) -> Iterator[str]:
        for source in ("ledger", "checkpoints", "kafka", "dynamodb"):
            first = self.first(source)
            count = sum(m.source == source for m in self.mismatches)
            if first is not None:
                yield f"{source}: {count} mismatch(es); the first: {first.text}"
        yield (f"checked {self.bookings} bookings and {self.events} events in the ledger, {self.messages} Kafka "
               f"messages ({self.unhashed_messages} sent before the chain), {self.items_checked} DynamoDB events, "
               f"{self.checkpoints} checkpoints ({self.checkpoint_messages} on Kafka): {len(self.mismatches)} "
               f"mismatch(es)")
        if not self.keys_pinned:
            yield ("checkpoint signatures checked against the keys the ledger names: give --public-key (or a "
                   "readable LEDGER_CHECKPOINT_KEY_FILE) to check them against a key you trust")
        for skipped in self.skipped:
            yield f"not checked: {skipped}"


def trusted_keys(settings: Settings, given: Sequence[str]) -> list[bytes] | None:
    """The checkpoint keys to trust: those given (hex), else the signer's when its key file is here
    (None: neither). Raises ValueError or OSError for a key that cannot be read."""
    if given:
        keys = [bytes.fromhex(key) for key in given]
        if any(len(key) != 32 for key in keys):
            raise ValueError("an Ed25519 public key is 32 bytes (64 hex digits)")
        return keys
    path = Path(settings.audit.checkpoint_key_file) if settings.audit.checkpoint_key_file else None
    if path is None or not path.exists():
        return None
    return [checkpoints.Signer.load(path).public_key]


async def audit(settings: Settings, *, kafka: bool = True, dynamodb: bool = True, grace: float = 5.0,
                kafka_timeout: float = 30.0, public_keys: list[bytes] | None = None) -> AuditReport:
    report = AuditReport(keys_pinned=public_keys is not None)
    conn = await connect(settings.database.url, timeout=10)
    try:
        await _ledger(conn, report)
        await _checkpoints(conn, report, public_keys)
        if kafka:
            await _kafka(conn, settings, report, kafka_timeout, public_keys)
    finally:
        await conn.close()
    if dynamodb:
        stored = await verify(settings, grace=grace)
        report.items_checked = stored.events
        for drift in stored.drift:
            report.mismatches.append(Mismatch(0, "dynamodb", f"{drift.kind} {drift.booking_code} v{drift.version}"
                                                             + (f": {drift.detail}" if drift.detail else "")))
    report.mismatches.sort()
    return report


async def _ledger(conn: asyncpg.Connection, report: AuditReport) -> None:
    """Every chain, from one snapshot (appends running meanwhile are not half seen)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        code, version = "", 0
        chain = _Chain()
        while page := await conn.fetch(LINKS_SQL, code, version, PAGE_SIZE):
            for row in page:
                if row["booking_code"] != chain.code:
                    chain.close(report)
                    chain = _Chain(row["booking_code"], row["booking_head"], row["booking_version"])
                    report.bookings += 1
                chain.add(Link.from_row(row))
                report.events += 1
            code, version = page[-1]["booking_code"], page[-1]["version"]
        chain.close(report)


class _Chain:
    """One booking's chain as its pages go by: the hash so far, and its first break."""

    def __init__(self, code: str = "", head: bytes | None = None, booking_version: int = 0) -> None:
        self.code, self.head, self.booking_version = code, head, booking_version
        self.previous, self.version, self.position = GENESIS, 0, 0
        self.broken: Break | None = None

    def add(self, link: Link) -> None:
        self.position = link.position
        if self.broken is not None:
            return
        if link.version != self.version + 1:
            self.broken = Break(link.booking_code, link.version, link.position, link.event_id,
                                f"version {self.version + 1} is missing before it")
            return
        expected = link.chained(self.previous)
        if link.hash != expected:
            self.broken = Break(link.booking_code, link.version, link.position, link.event_id,
                                "its hash does not match its content and the event before it")
            return
        self.previous, self.version = expected, link.version

    def close(self, report: AuditReport) -> None:
        if not self.code:
            return
        if self.broken is not None:
            report.mismatches.append(Mismatch(self.broken.position, "ledger", str(self.broken)))
        elif self.version != self.booking_version or self.head != self.previous:
            head = (self.head or b"").hex()[:16]
            report.mismatches.append(Mismatch(
                self.position, "ledger", f"{self.code}: the booking says version {self.booking_version}, head "
                                         f"{head}..., its events end at version {self.version} with hash "
                                         f"{self.previous.hex()[:16]}..."))


CHECKPOINTS_SQL = f"SELECT {checkpoints.CHECKPOINT_COLUMNS} FROM checkpoints WHERE seq > $1 ORDER BY seq LIMIT 100"


async def _checkpoints(conn: asyncpg.Connection, report: AuditReport, public_keys: list[bytes] | None) -> None:
    previous: checkpoints.Checkpoint | None = None
    while rows := await conn.fetch(CHECKPOINTS_SQL, previous.seq if previous is not None else 0):
        for row in rows:
            checkpoint = checkpoints.from_row(row)
            report.checkpoints += 1
            leaves = [merkle.leaf(r["position"], r["hash"])
                      for r in await conn.fetch(checkpoints.LEAVES_SQL, checkpoint.after_position,
                                                checkpoint.through_position)]
            problem = _checkpoint_problem(checkpoint, previous, public_keys, leaves)
            if problem is not None:
                report.mismatches.append(Mismatch(checkpoint.after_position + 1, "checkpoints",
                                                  f"checkpoint {checkpoint.seq} (positions {checkpoint.after_position} "
                                                  f"excluded to {checkpoint.through_position}): {problem}"))
            previous = checkpoint


def _checkpoint_problem(checkpoint: checkpoints.Checkpoint, previous: checkpoints.Checkpoint | None,
                        public_keys: list[bytes] | None, leaves: list[bytes]) -> str | None:
    expected_seq = previous.seq + 1 if previous is not None else 1
    if checkpoint.seq != expected_seq:
        return f"checkpoint {expected_seq} is missing before it"
    if checkpoint.after_position != (previous.through_position if previous is not None else 0):
        return "it does not start where the checkpoint before it ended"
    if checkpoint.previous != (previous.digest() if previous is not None else checkpoints.NO_PREVIOUS).hex():
        return "it does not name the checkpoint before it"
    public_key = bytes.fromhex(checkpoint.public_key)
    if checkpoint.key_id != checkpoints.key_id(public_key):
        return "its key id is not its key's"
    if not any(checkpoint.signed_by(key) for key in (public_keys if public_keys is not None else [public_key])):
        return "its signature is not by a trusted key"
    if len(leaves) != checkpoint.events or merkle.root(leaves).hex() != checkpoint.root:
        return f"its root is not the root of the ledger's {len(leaves)} events in its range"
    return None


async def _kafka(conn: asyncpg.Connection, settings: Settings, report: AuditReport, timeout: float,
                 public_keys: list[bytes] | None) -> None:
    """The topic up to the ends it had at the start, a batch of messages at a time against the ledger."""
    loop = asyncio.get_running_loop()
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": f"audit-{uuid.uuid4().hex}",
                         "client.id": "booking-ledger-audit", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "enable.partition.eof": False})
    try:
        ends = await loop.run_in_executor(None, _assign, consumer, settings.kafka.topic, timeout)
        if ends is None:
            report.skipped.append(f"Kafka topic {settings.kafka.topic} (not found, or the broker did not answer "
                                  f"within {timeout:g}s)")
            return
        deadline = loop.time() + timeout
        while ends:
            batch = await loop.run_in_executor(None, _poll, consumer, ends, PAGE_SIZE)
            if not batch and loop.time() > deadline:
                report.skipped.append(f"Kafka partitions {sorted(ends)}: not read to their ends within {timeout:g}s")
                return
            if batch:
                deadline = loop.time() + timeout
                await _compare_messages(conn, batch, report, public_keys)
    finally:
        await loop.run_in_executor(None, consumer.close)


def _assign(consumer: Consumer, topic: str, timeout: float) -> dict[int, int] | None:
    """Assigns the topic's partitions from their first offsets; the ends to read to, by partition."""
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
    except KafkaException:
        return None
    if topic not in metadata.topics or metadata.topics[topic].error is not None:
        return None
    ends: dict[int, int] = {}
    assignment = []
    for partition in metadata.topics[topic].partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
        if high > low:
            ends[partition] = high
            assignment.append(TopicPartition(topic, partition, low))
    consumer.assign(assignment)
    return ends


def _poll(consumer: Consumer, ends: dict[int, int], size: int) -> list[tuple[str, bytes | None, bytes]]:
    """Up to `size` messages (where: partition/offset, key, value); partitions read to their ends leave `ends`."""
    batch: list[tuple[str, bytes | None, bytes]] = []
    for message in consumer.consume(size, timeout=1.0):
        if message.error() is not None:
            continue
        partition, offset, value = message.partition(), message.offset(), message.value()
        if partition is None or offset is None:
            continue
        if partition in ends and offset < ends[partition]:
            key = message.key()
            batch.append((f"partition {partition} offset {offset}", key if isinstance(key, bytes) else None,
                          value or b""))
            if offset + 1 >= ends[partition]:
                del ends[partition]
    return batch


async def _compare_messages(conn: asyncpg.Connection, batch: list[tuple[str, bytes | None, bytes]],
                            report: AuditReport, public_keys: list[bytes] | None) -> None:
    decoded: list[tuple[str, Event]] = []
    for where, key, value in batch:
        if key == checkpoints.KAFKA_KEY:
            report.checkpoint_messages += 1
            await _compare_checkpoint(conn, where, value, report, public_keys)
            continue
        report.messages += 1
        try:
            decoded.append((where, decode_event(value)))
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            report.mismatches.append(Mismatch(0, "kafka", f"{where}: not an event ({error})"))
    rows = await conn.fetch(KEYS_EVENTS_SQL, [e.booking_code for _, e in decoded], [e.version for _, e in decoded])
    ledger = {(r["booking_code"], r["version"]): event_from_row(r) for r in rows}
    for where, event in decoded:
        held = ledger.get((event.booking_code, event.version))
        name = f"{event.booking_code} v{event.version} (position {event.position}, {where})"
        if held is None:
            report.mismatches.append(Mismatch(event.position, "kafka", f"{name}: the ledger holds no such event"))
            continue
        if event.hash is None:
            report.unhashed_messages += 1
            held = msgspec.structs.replace(held, hash=None)
        if event.hash is not None and event.hash != held.hash:
            report.mismatches.append(Mismatch(held.position, "kafka", f"{name}: its hash is not the ledger's"))
        elif event != held:
            report.mismatches.append(Mismatch(held.position, "kafka", f"{name}: its content is not the ledger's"))


async def _compare_checkpoint(conn: asyncpg.Connection, where: str, value: bytes, report: AuditReport,
                              public_keys: list[bytes] | None) -> None:
    try:
        sent = msgspec.json.decode(value, type=checkpoints.Checkpoint)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        report.mismatches.append(Mismatch(0, "kafka", f"{where}: not a checkpoint ({error})"))
        return
    row = await conn.fetchrow(f"SELECT {checkpoints.CHECKPOINT_COLUMNS} FROM checkpoints WHERE seq = $1", sent.seq)
    name = f"checkpoint {sent.seq} ({where})"
    if row is None:
        report.mismatches.append(Mismatch(sent.after_position + 1, "kafka", f"{name}: the ledger holds no such one"))
    elif checkpoints.from_row(row) != sent:
        report.mismatches.append(Mismatch(sent.after_position + 1, "kafka", f"{name}: it is not the ledger's"))
    elif not any(sent.signed_by(key) for key in (public_keys or [bytes.fromhex(sent.public_key)])):
        report.mismatches.append(Mismatch(sent.after_position + 1, "kafka", f"{name}: not signed by a trusted key"))
