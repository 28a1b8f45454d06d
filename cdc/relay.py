"""The outbox relay: committed outbox rows -> Kafka, in version order per booking.

Why this never skips or reorders an event:
- It does not tail by a cursor. Each pass reads the unsent rows that are visible now, in
  position order, sends them, and deletes them once Kafka acknowledged them. A row whose
  transaction commits late is simply visible on a later pass.
- Per booking, the append function gives v(n+1) a transaction id only after v(n) committed, so when
  v(n+1) is visible v(n) is visible too (or already sent) and has the smaller position.
- One relay sends at a time: the leader holds a session advisory lock on its connection; a
  standby polls for the lock and takes over within a second of the leader's connection dying.
- Nothing is sent that the synchronous standby does not hold: a commit can be visible on the
  primary alone (its wait for the standby cancelled, or the primary restarted while its standbys
  lagged), and a failover would discard it after Kafka had it. So each batch is sent only once a
  commit made after reading it has reached the standby (core.pg.standby_holds).
- Rows are deleted only for the unbroken prefix of clean delivery reports. After a failed
  report nothing past it is marked; the next pass resends from the oldest unsent row, and the
  duplicates this may cause downstream are absorbed by the sink's idempotent writes.

Each message carries its append's W3C trace context as the `traceparent` header (from the outbox
row; core/tracing.py): the same trace, the relay's send as the parent span (a span of its own when
spans are exported). Each event sent is one log line with its trace id.

Every LEDGER_CHECKPOINT_SECONDS the leader records a signed checkpoint over the events since the
last one (core/checkpoints.py; when a key file is set), and sends every checkpoint whose events have
all left the outbox (so Kafka has them) to each partition of the topic, after those events: key
`~checkpoint` (never a booking code), header `ledger-message: checkpoint`, value the checkpoint's
JSON. It is marked published once every partition acknowledged it; until then it is sent again.

A topic that had to be created again (an operator deleted it, or the cluster was replaced) lost
what the sink had not read yet. The relay alone creates the events topic; when it has to, it puts
the events of the last LEDGER_RELAY_RESEND_SECONDS back into the outbox, so they are sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import asyncpg
import msgspec
from confluent_kafka import KafkaException, Producer

from cdc import metrics
from cdc.backoff import Backoff
from cdc.kafka import CREATED, EXISTING, ensure_topic, producer_config
from cdc.leadership import Lease, pause
from core import checkpoints, tracing
from core.events import encode_event, event_columns, event_from_row
from core.lease import LEADER_LOCK, relay_application_name, relay_identity
from core.logs import direct_logger
from core.outbox import OUTBOX_BACKLOG_SQL, OUTBOX_CHANNEL
from core.pg import standby_holds
from core.settings import Settings

log = logging.getLogger("booking_ledger.relay")

BATCH_SQL = f"""
SELECT {event_columns('e')}, o.traceparent
  FROM outbox o JOIN events e ON e.position = o.position
 ORDER BY o.position
 LIMIT $1
"""
DELETE_SENT_SQL = "DELETE FROM outbox WHERE position = ANY($1::bigint[])"
TOPIC_CHECK_SECONDS = 10.0
STANDBY_SLOW_SECONDS = 1.0  # a wait for the synchronous standby this long is logged
BACKLOG_SECONDS = 5.0
RESEND_SQL = """
INSERT INTO outbox (position, booking_code, version)
SELECT position, booking_code, version FROM events
 WHERE recorded_at > now() - make_interval(secs => $1)
ON CONFLICT (position) DO NOTHING
"""

# Checkpoints not yet on the topic whose events all are (none of them is still in the outbox).
UNPUBLISHED_SQL = f"""
SELECT {checkpoints.CHECKPOINT_COLUMNS} FROM checkpoints
 WHERE NOT published
   AND through_position < coalesce((SELECT min(position) FROM outbox), 9223372036854775807)
 ORDER BY seq
"""
PUBLISHED_SQL = "UPDATE checkpoints SET published = true WHERE seq = $1"

async def _delete_sent(conn: asyncpg.Connection, positions: list[int]) -> None:
    """Remove sent rows from the outbox, without waiting for a WAL flush: a removal lost in a
    Postgres crash only means those events are sent again (at least once; the sink's writes are
    idempotent). The appends' commits then do not queue behind the relay's."""
    async with conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit = off")
        await conn.execute(DELETE_SENT_SQL, positions)


class Relay:
    def __init__(self, settings: Settings, batch_size: int = 500, poll_interval: float = 1.0) -> None:
        self.settings = settings
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        host, pid = relay_identity()
        self._identity = (host, str(pid))
        # The leader's sending state, set up anew each time it takes the lease (_lead).
        self._producer: Producer | None = None
        self._send_backoff = Backoff(log)
        self._topic_checked = self._backlog_checked = 0.0
        self.metrics = metrics.RelayMetrics()
        self.lease = Lease("relay", LEADER_LOCK, settings.database.url, log, relay_application_name, self._leading,
                           peers="relay")
        self._sent_log = direct_logger("booking_ledger.relay.sent")
        self._signer: checkpoints.Signer | None = None
        self._checkpoint_due = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Campaign for leadership and relay while leader, until `stop` is set."""
        metrics.serve(self.metrics.registry, self.settings.metrics.host, self.settings.metrics.relay_port, "relay")
        if self.settings.audit.checkpoint_key_file:
            # A key named but unreadable stops the relay: an operator who set it wants checkpoints.
            self._signer = checkpoints.Signer.load(Path(self.settings.audit.checkpoint_key_file))
            log.info("relay signs checkpoints with key %s every %d s", self._signer.key_id,
                     self.settings.audit.checkpoint_seconds)
        await self.lease.run(stop, self._lead)

    @property
    def is_leader(self) -> bool:
        return self.lease.is_leader

    def _leading(self, leading: bool) -> None:
        self.metrics.leader.set(1 if leading else 0)
        if leading:
            self.metrics.leader_info.labels(*self._identity).set(1)
        else:
            with contextlib.suppress(KeyError):
                self.metrics.leader_info.remove(*self._identity)

    async def _lead(self, conn: asyncpg.Connection, stop: asyncio.Event) -> None:
        """While leader: send the outbox to Kafka batch by batch, oldest first, until `stop` is set."""
        wake = asyncio.Event()
        await conn.add_listener(OUTBOX_CHANNEL, lambda *_: wake.set())
        if not await self._wait_for_topic(conn, stop):
            return
        self._producer = Producer(producer_config(self.settings.kafka))
        self._send_backoff = Backoff(log)
        self._topic_checked = self._backlog_checked = time.monotonic()
        while not stop.is_set():
            await self._observe_backlog(conn)
            await self._checkpoint(conn)
            wake.clear()
            rows = await conn.fetch(BATCH_SQL, self.batch_size)
            if rows:
                await self._held_by_standby(conn, len(rows))
                await self._relay_batch(conn, stop, rows)
            else:
                await self._idle(conn, stop, wake)

    async def _checkpoint(self, conn: asyncpg.Connection) -> None:
        """When due: record a checkpoint over the new events, then send those whose events left the outbox."""
        if self._signer is None or time.monotonic() < self._checkpoint_due:
            return
        self._checkpoint_due = time.monotonic() + self.settings.audit.checkpoint_seconds
        for made in await checkpoints.record(conn, self._signer):
            log.info("checkpoint %d recorded: %d events through position %d", made.seq, made.events,
                     made.through_position)
        assert self._producer is not None, "_lead makes the producer first"
        for row in await conn.fetch(UNPUBLISHED_SQL):
            checkpoint = checkpoints.from_row(row)
            if not await asyncio.to_thread(self._send_checkpoint, self._producer, checkpoint):
                log.warning("checkpoint %d not acknowledged by every partition; sent again later", checkpoint.seq)
                return
            await conn.execute(PUBLISHED_SQL, checkpoint.seq)

    def _send_checkpoint(self, producer: Producer, checkpoint: checkpoints.Checkpoint) -> bool:
        """Produce `checkpoint` to every partition of the topic; whether all acknowledged it."""
        topic = self.settings.kafka.topic
        reports: list[object] = []
        value = msgspec.json.encode(checkpoint)
        try:
            partitions = producer.list_topics(topic, timeout=5).topics[topic].partitions
            for partition in partitions:
                producer.produce(topic, key=checkpoints.KAFKA_KEY, value=value, partition=partition,
                                 headers=[checkpoints.KAFKA_HEADER],
                                 on_delivery=lambda error, _message: reports.append(error or True))
        except (KafkaException, BufferError, KeyError) as error:  # the broker or the topic is away: next time
            log.warning("cannot send checkpoint %d: %r", checkpoint.seq, error)
            return False
        deadline = time.monotonic() + 15
        while producer.flush(1.0) and time.monotonic() < deadline:
            pass
        return len(reports) == len(partitions) and all(report is True for report in reports)

    async def _held_by_standby(self, conn: asyncpg.Connection, count: int) -> None:
        """Return once the synchronous standby holds the batch just read; say so when that is slow.
        A standby that never comes: the command timeout ends the wait with an error, and the relay
        connects again and reads the outbox afresh."""
        started = time.monotonic()
        waiting = asyncio.ensure_future(standby_holds(conn))
        try:
            done, _ = await asyncio.wait({waiting}, timeout=STANDBY_SLOW_SECONDS)
            if not done:
                log.warning("waiting for the synchronous standby to hold %d events before sending them", count)
            await waiting
        finally:
            waiting.cancel()
        self.metrics.standby_wait.observe(time.monotonic() - started)

    async def _wait_for_topic(self, conn: asyncpg.Connection, stop: asyncio.Event) -> bool:
        """Wait until the topic exists (creating it if missing); False when stopped first."""
        while not await self._topic_ready(conn):
            await pause(stop, 2.0)
            if stop.is_set():
                return False
        return True

    async def _observe_backlog(self, conn: asyncpg.Connection) -> None:
        """Refresh the backlog gauges every BACKLOG_SECONDS."""
        if time.monotonic() - self._backlog_checked > BACKLOG_SECONDS:
            size, age = await conn.fetchrow(OUTBOX_BACKLOG_SQL)
            self.metrics.outbox_backlog.set(size)
            self.metrics.outbox_oldest_age.set(age or 0.0)
            self._backlog_checked = time.monotonic()

    async def _idle(self, conn: asyncpg.Connection, stop: asyncio.Event, wake: asyncio.Event) -> None:
        """Nothing to send: check now and then that the topic survived, then wait for a NOTIFY or a poll."""
        if time.monotonic() - self._topic_checked > TOPIC_CHECK_SECONDS:  # a broker restart while idle
            await self._topic_ready(conn)
            self._topic_checked = time.monotonic()
        await pause(stop, self.poll_interval, wake)

    async def _relay_batch(self, conn: asyncpg.Connection, stop: asyncio.Event, rows: list[asyncpg.Record]) -> None:
        """Send one batch and delete from the outbox exactly the prefix Kafka acknowledged; after any
        failure, a fresh producer and a backoff, and the next batch starts at the oldest unsent row."""
        assert self._producer is not None, "_lead makes the producer first"
        delivered = await asyncio.to_thread(self._send, self._producer, rows)
        if delivered:
            metrics.observe_lag(self.metrics.commit_to_ack, (row["recorded_at"] for row in rows[:delivered]))
            await _delete_sent(conn, [row["position"] for row in rows[:delivered]])
            self.metrics.sent.inc(delivered)
            self._log_sent(rows[:delivered])
        if delivered == len(rows):
            self._send_backoff.succeeded("Kafka acknowledges again; the outbox drains")
            return
        self.metrics.failed.inc(len(rows) - delivered)
        # A fresh producer after a failure: a fatal idempotence error leaves the old one unusable,
        # and the unsent rows are sent again from the oldest anyway.
        await asyncio.to_thread(_discard, self._producer)
        self._producer = Producer(producer_config(self.settings.kafka))
        delay = self._send_backoff.failed("Kafka did not acknowledge %d of %d events; resending from the oldest "
                                          "unsent", len(rows) - delivered, len(rows))
        await pause(stop, delay)
        await self._topic_ready(conn)  # the topic may have been deleted meanwhile

    def _log_sent(self, rows: list[asyncpg.Record]) -> None:
        """One line per event Kafka acknowledged, with its trace id: how an operator follows one
        price change from the API's request line to the sink's write."""
        for row in rows:
            context = tracing.parse(row["traceparent"])
            self._sent_log.info("sent", booking_code=row["booking_code"], version=row["version"],
                                position=row["position"], trace_id=context.trace_id if context else None)

    async def _topic_ready(self, conn: asyncpg.Connection) -> bool:
        state = await asyncio.to_thread(ensure_topic, self.settings.kafka)
        resend = self.settings.kafka.resend_seconds
        if state == CREATED and resend > 0:
            status = await conn.execute(RESEND_SQL, float(resend))
            log.warning("topic was missing (a new cluster, or deleted): queued the events of the last %d s "
                        "again (%s rows)", resend, status.split()[-1])
        return state in (EXISTING, CREATED)

    def _send(self, producer: Producer, rows: list[asyncpg.Record]) -> int:
        """Produce `rows` in order; the number of leading rows whose delivery report was clean."""
        topic = self.settings.kafka.topic
        reports: list[object] = [None] * len(rows)

        def report(index: int, send: tracing.Spanned | None):
            def on_delivery(error, _message) -> None:
                reports[index] = error or True
                if send is not None and error:
                    send.end(error=str(error))
                elif send is not None:
                    send.end()

            return on_delivery

        for index, row in enumerate(rows):
            event = event_from_row(row)
            parent = tracing.parse(row["traceparent"])  # None for rows written without one (the import)
            send: tracing.Spanned | None = None
            headers: list[tuple[str, str | bytes | None]] | None = None
            if parent is not None:
                send = tracing.span("relay.send", parent, "producer", booking_code=event.booking_code,
                                    version=event.version)
                headers = [(tracing.HEADER, send.context.traceparent)]
            try:
                while True:
                    try:
                        producer.produce(topic, key=event.booking_code.encode(), value=encode_event(event),
                                         headers=headers, on_delivery=report(index, send))
                        break
                    except BufferError:  # the client's queue is full: let it drain
                        producer.poll(0.1)
            except KafkaException as error:  # refused before sending (size, fatal state): stop here
                log.error("cannot produce %s v%d: %s", event.booking_code, event.version, error)
                reports[index] = error
                if send is not None:
                    send.end(error=str(error))
                break
        deadline = time.monotonic() + 15
        while producer.flush(1.0) and time.monotonic() < deadline:
            pass
        delivered = 0
        for outcome in reports:
            if outcome is not True:
                if outcome is not None:
                    log.debug("delivery failed: %s", outcome)
                break
            delivered += 1
        return delivered


def _discard(producer: Producer) -> None:
    """Drop what a producer still holds, off the event loop, so that destroying it does not wait
    on an unreachable broker."""
    producer.purge()
    producer.flush(0)


