"""What the console shows about replication: the outbox, the relay's lease, the sink's progress
through Kafka, the DynamoDB copy.

Everything here reads; nothing changes the ledger. The outbox and the lease come from Postgres,
the sink's progress from Kafka (its group's committed offsets against each partition's end; the
console never joins the group), the latest replicated version from the DynamoDB read store
(layout: core/dynamodb.py).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import msgspec
from confluent_kafka import Consumer, KafkaException, TopicPartition

from core import dynamodb
from core.events import decode_event
from core.lease import LEADER_LOCK_CLASSID, LEADER_LOCK_OBJID, RELAY_APPLICATION_PREFIX
from core.outbox import OUTBOX_BACKLOG_SQL
from core.settings import DynamoSettings, KafkaSettings
from service.ledger.db import connection

BOOKING_OUTBOX_SQL = "SELECT count(*) FROM outbox WHERE booking_code = $1"

# The session holding the relay's advisory lock in this database, if any relay leads.
LEADER_SQL = """
SELECT a.pid, a.application_name, host(a.client_addr) AS client_addr, a.backend_start
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
   AND l.classid = $1::oid AND l.objid = $2::oid
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


@dataclass(frozen=True)
class Outbox:
    backlog: int
    oldest_age_seconds: float | None  # None when empty


@dataclass(frozen=True)
class RelayLeader:
    pid: int  # the Postgres backend's pid
    application_name: str  # `booking-ledger-relay HOST PID SINCE` (core/lease.py)
    client_addr: str | None  # None for a Unix socket, or not shown to the API's role
    backend_start: datetime | None  # when its connection opened, if shown to the API's role

    def _parts(self) -> tuple[str, str, datetime | None] | None:
        """(host, pid, connection start) from the application_name of a relay, else None."""
        prefix, *words = self.application_name.split(" ")
        if prefix != RELAY_APPLICATION_PREFIX or len(words) not in (2, 3) or not words[1].isdigit():
            return None
        if len(words) == 2:
            return words[0], words[1], None
        if not words[2].isdigit():
            return None
        return words[0], words[1], datetime.fromtimestamp(int(words[2]), UTC)

    @property
    def name(self) -> str:
        """`HOST, pid PID` of the relay process when its session says so, else what it says."""
        parts = self._parts()
        if parts is not None:
            return f"{parts[0]}, pid {parts[1]}"
        return self.application_name or "(a session without an application_name)"

    @property
    def since(self) -> datetime | None:
        """When the leader's connection opened: Postgres's own record when the API's role may see it
        (pg_read_all_stats), else what the relay's application_name says."""
        parts = self._parts()
        return self.backend_start or (parts[2] if parts else None)


async def outbox(pool: asyncpg.Pool) -> Outbox:
    async with connection(pool) as conn:
        row = await conn.fetchrow(OUTBOX_BACKLOG_SQL)
    return Outbox(row["backlog"], row["oldest_age"])


async def booking_outbox(pool: asyncpg.Pool, code: str) -> int:
    """How many of the booking's events still wait to be sent to Kafka."""
    async with connection(pool) as conn:
        return await conn.fetchval(BOOKING_OUTBOX_SQL, code)


async def relay_leader(pool: asyncpg.Pool) -> RelayLeader | None:
    """The relay holding the lease now, or None (no relay runs, or it is between leaders)."""
    async with connection(pool) as conn:
        row = await conn.fetchrow(LEADER_SQL, LEADER_LOCK_CLASSID, LEADER_LOCK_OBJID)
    if row is None:
        return None
    return RelayLeader(row["pid"], row["application_name"], row["client_addr"], row["backend_start"])


class ReadStoreUnavailable(Exception):
    """DynamoDB did not answer in time, or answered with an error."""


class ReadStore:
    """Short, bounded reads of the DynamoDB table, run in a thread so the event loop never waits.

    The client is made on first use (not at import or start-up) and reused.
    """

    def __init__(self, settings: DynamoSettings, timeout: float = 3.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self._client = None
        self._lock = threading.Lock()

    def _dynamodb(self):
        with self._lock:
            if self._client is None:
                self._client = dynamodb.client(self.settings, connect_timeout=1, read_timeout=2, attempts=1)
            return self._client

    async def _call(self, work):
        try:
            return await asyncio.wait_for(asyncio.to_thread(work), self.timeout)
        except TimeoutError:
            raise ReadStoreUnavailable(f"no answer within {self.timeout:g} s") from None
        except Exception as error:  # botocore's errors, missing credentials, a refused connection
            raise ReadStoreUnavailable(type(error).__name__) from error

    async def latest_version(self, code: str) -> int | None:
        """The highest version of the booking in DynamoDB, None when it has no item yet."""

        def query() -> int | None:
            answer = self._dynamodb().query(**dynamodb.latest_version_query(self.settings.table, code))
            items = answer.get("Items", [])
            return int(items[0][dynamodb.SORT_KEY]["N"]) if items else None

        return await self._call(query)

    async def check(self) -> int | None:
        """Raise ReadStoreUnavailable unless the table answers; its approximate item count."""

        def describe() -> int | None:
            return self._dynamodb().describe_table(TableName=self.settings.table)["Table"].get("ItemCount")

        return await self._call(describe)


class KafkaUnavailable(Exception):
    """The broker did not answer in time, or the topic is not there."""


@dataclass(frozen=True)
class PartitionProgress:
    partition: int
    written_up_to: int  # the sink group's committed offset (the partition's start when it has none)
    end: int  # the partition's high watermark
    oldest_waiting: datetime | None  # recorded_at of the first event not yet written, if any waits

    @property
    def lag(self) -> int:
        """Events in the partition the sink has not written (committed) yet."""
        return max(0, self.end - self.written_up_to)


@dataclass(frozen=True)
class SinkProgress:
    partitions: list[PartitionProgress]

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def oldest_waiting(self) -> datetime | None:
        waiting = [p.oldest_waiting for p in self.partitions if p.oldest_waiting is not None]
        return min(waiting) if waiting else None


def _a_broker_listens(bootstrap: str, timeout: float) -> bool:
    """True when some bootstrap server accepts a TCP connection: a refused broker is known at once,
    where the client would wait out its whole metadata timeout (a page view's seconds)."""
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition("://")[2].rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
            return True
        except (OSError, ValueError):
            continue
    return False


def _sink_progress(settings: KafkaSettings, timeout: float) -> SinkProgress:
    """The sink group's progress per partition of the events topic, read with a consumer of the
    group's id that only asks (assign, no subscribe: it never joins the group, never commits)."""
    if not _a_broker_listens(settings.bootstrap, timeout / 2):
        raise KafkaUnavailable(f"no broker at {settings.bootstrap} accepts a connection")
    consumer = Consumer({
        "bootstrap.servers": settings.bootstrap, "group.id": settings.sink_group,
        "client.id": "booking-ledger-console", "enable.auto.commit": False, "enable.partition.eof": False,
        "socket.connection.setup.timeout.ms": int(timeout * 1000), "reconnect.backoff.max.ms": 500,
        "fetch.wait.max.ms": 100,
    })
    deadline = time.monotonic() + timeout
    try:
        try:
            topic = consumer.list_topics(settings.topic, timeout=timeout).topics.get(settings.topic)
            if topic is None or topic.error is not None:
                raise KafkaUnavailable(f"topic {settings.topic} not found")
            committed = consumer.committed([TopicPartition(settings.topic, p) for p in sorted(topic.partitions)],
                                           timeout=max(0.1, deadline - time.monotonic()))
            bounds = {tp.partition: (tp.offset, *consumer.get_watermark_offsets(
                TopicPartition(settings.topic, tp.partition), timeout=max(0.1, deadline - time.monotonic())))
                for tp in committed}
        except KafkaException as error:
            raise KafkaUnavailable(str(error.args[0].str() if error.args else error)) from None
        starts = {p: (offset if offset >= 0 else low) for p, (offset, low, _high) in bounds.items()}
        waiting = [TopicPartition(settings.topic, p, starts[p])
                   for p, (_, _, high) in bounds.items() if high > starts[p]]
        oldest = _first_events(consumer, waiting, deadline)
        return SinkProgress([PartitionProgress(p, starts[p], high, oldest.get(p))
                             for p, (_, _, high) in sorted(bounds.items())])
    finally:
        consumer.close()


def _first_events(consumer: Consumer, waiting: list[TopicPartition], deadline: float) -> dict[int, datetime]:
    """recorded_at of the event at each given offset (what the sink writes next), as far as the
    time allows; a message that is not Event JSON (it goes to the dead-letter topic) is left out."""
    found: dict[int, datetime] = {}
    if not waiting:
        return found
    consumer.assign(waiting)
    while len(found) < len(waiting) and time.monotonic() < deadline:
        message = consumer.poll(0.1)
        if message is None or message.error() or message.partition() in found:
            continue
        partition = message.partition()
        assert partition is not None, "a delivered message has a partition"
        try:
            found[partition] = decode_event(message.value() or b"").recorded_at
        except (msgspec.DecodeError, TypeError):
            found[partition] = datetime.fromtimestamp(message.timestamp()[1] / 1000, UTC)
        consumer.pause([TopicPartition(waiting[0].topic, partition)])
    return found


async def sink_progress(settings: KafkaSettings, timeout: float = 2.0) -> SinkProgress:
    """How far the sink has written each partition; KafkaUnavailable when the broker does not say in time."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(_sink_progress, settings, timeout), timeout + 2)
    except TimeoutError:
        raise KafkaUnavailable(f"no answer within {timeout + 2:g} s") from None
