"""The sink: the Kafka topic booking-events into the DynamoDB table booking_events, as a member of
the consumer group LEDGER_SINK_GROUP (several sinks share the partitions).

- Nothing is lost: a partition's offset is stored only after DynamoDB accepted every event of the
  batch up to it, and stored offsets are committed in the background, so a crash replays events;
  a replayed event rewrites the same item content and changes nothing.
- Partitions progress side by side: the consumer fetches little ahead (cdc/kafka.py), so each batch
  holds events of every partition that has some, and a backlog on one partition does not hold back
  the events of the others.
- While DynamoDB is down, writes are retried with capped backoff; the sink pauses its partitions and
  keeps polling, so that it keeps its place in the group.
- A message that is not Event JSON is never dropped silently: it goes to the dead-letter topic
  (LEDGER_KAFKA_DEAD_LETTER_TOPIC, see DeadLetters), and only then is its offset stored. The relay's
  signed checkpoints (key `~checkpoint`, core/checkpoints.py) are for auditors: passed over.
- A PersonalDataErased event makes the sink rewrite every item of its booking with
  `"personal": "erased"` in place of the ciphertext (core/personal.py); a redelivery of older events
  is followed by the erasure again, since it comes after them in the partition.
- Each partition starts at the group's committed offset (at the beginning without one). Kafka drops
  a deleted topic's offsets with it, so a topic created again is read from its beginning.
- A consumer that has had no partitions, or events waiting and none arriving, for STALL_SECONDS is
  replaced by a new one, which joins the group again.

Each event written is one log line with the trace id of its message's `traceparent` header (the
append's trace, core/tracing.py); with spans exported, each write is a span under the relay's send.

Metrics: ledger_sink_consumer_lag per owned partition, ledger_sink_commit_to_write_seconds, the
freshness of each event, from its commit in the ledger to its write here, and
ledger_sink_dynamodb_failing, 1 from a failed DynamoDB write until one is accepted again.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from prometheus_client import Counter

from cdc import dynamodb_writes, metrics, progress
from cdc.backoff import Backoff, Stopped
from cdc.kafka import EXISTING, consumer_config, ensure_topic, producer_config
from core import checkpoints, personal, tracing
from core.dynamodb import client as dynamodb_client
from core.dynamodb import ensure_table, item_of
from core.events import Event, decode_event
from core.logs import direct_logger
from core.settings import KafkaSettings, Settings

log = logging.getLogger("booking_ledger.sink")

LAG_SECONDS = 2.0  # how often the consumer-lag gauge is brought up to date
# A consumer that has had no partitions, or has had events waiting without receiving any, for
# this long is closed and replaced: it rejoins the group (needed after quick broker restarts).
STALL_SECONDS = 45.0


def where(message: Message) -> tuple[str, int, int]:
    """The topic, partition and offset of a message the consumer delivered (not an error event)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and partition is not None and offset is not None, "a delivered message has a place"
    return topic, partition, offset



# Seen in a 55-minute partition campaign: a consumer whose group coordinator had become unreachable
# blocked in close() for good (its requests queued, never sent), and the sink with it, after its
# stall check had decided to replace it. A close is given this long; then the sink goes on.
CLOSE_SECONDS = 10.0


def close_within(consumer: Consumer, seconds: float = CLOSE_SECONDS) -> bool:
    """Close `consumer`, committing the offsets stored so far; True when it closed within `seconds`.
    A consumer still closing after that is left to finish in the background: what it had not
    committed is read again by the next one (at least once; the sink's writes are idempotent)."""
    failed: list[BaseException] = []

    def close() -> None:
        try:
            consumer.close()
        except BaseException as error:  # handed to the caller below
            failed.append(error)

    closing = threading.Thread(target=close, name="kafka-consumer-close", daemon=True)
    closing.start()
    closing.join(seconds)
    if failed:
        raise failed[0]
    if closing.is_alive():
        log.warning("sink's consumer did not close within %.0f s (its group coordinator is unreachable): "
                    "going on without it; what it had not committed is read again", seconds)
        return False
    return True


class Sink:
    """One sink process: batches of up to `batch_size` events, each written by `threads` DynamoDB writers."""

    def __init__(self, settings: Settings, batch_size: int = 500, threads: int = 8) -> None:
        self.settings = settings
        self.batch_size = batch_size
        self.threads = threads
        self._paused = False
        self._carry: list[Message] = []
        # Per assigned partition, the next offset to store: what is below it is in DynamoDB.
        self._next: dict[int, int] = {}
        self._assigned: set[int] = set()
        # Assigned partitions whose committed offset (where this consumer starts) is not read yet.
        self._unread: list[TopicPartition] = []
        self._lag_updated = 0.0
        self._lag_partitions: set[str] = set()
        self._progress = time.monotonic()  # when the consumer last received or had nothing waiting
        self._write_backoff = Backoff(log)
        self.metrics = metrics.SinkMetrics()
        self.metrics.dynamodb_failing.set_function(lambda: float(self._write_backoff.failing))
        self._dead_letters = DeadLetters(settings.kafka, self.metrics.dead_letters)
        self._written_log = direct_logger("booking_ledger.sink.written")

    def run(self, stop: threading.Event) -> None:
        """Consume the topic into DynamoDB until `stop` is set."""
        metrics.serve(self.metrics.registry, self.settings.metrics.host, self.settings.metrics.sink_port, "sink")
        dynamodb = dynamodb_client(self.settings.dynamo, validate=False)
        self._wait_for_table_and_topic(dynamodb, stop)
        if stop.is_set():
            return
        consumer = self._subscribe()
        log.info("sink consuming %s into DynamoDB table %s", self.settings.kafka.topic, self.settings.dynamo.table)
        try:
            with ThreadPoolExecutor(self.threads, thread_name_prefix="dynamodb") as executor:
                while not stop.is_set():
                    self._read_committed(consumer)
                    messages = self._fetch(consumer)
                    if self._stalled(consumer, messages):
                        close_within(consumer)  # commits the offsets stored so far
                        consumer = self._subscribe()
                        continue
                    self._write_batch(consumer, messages, dynamodb, executor, stop)
        except Stopped:
            log.info("sink stopping with a batch unwritten; its offsets were not stored")
        finally:
            close_within(consumer)  # commits the offsets stored so far
            self._dead_letters.close()

    def _wait_for_table_and_topic(self, dynamodb: Any, stop: threading.Event) -> None:
        """Until DynamoDB answers (the table made if missing) and the relay has created the topic."""
        kafka = self.settings.kafka
        backoff = Backoff(log)
        while not stop.is_set():
            try:
                ensure_table(dynamodb, self.settings.dynamo.table)
                if ensure_topic(kafka, create=False) == EXISTING:  # the relay creates it
                    backoff.succeeded("DynamoDB reachable and topic present")
                    return
            except Exception as error:  # DynamoDB Local or the broker still starting
                log.debug("set-up attempt failed: %r", error)
            stop.wait(backoff.failed("sink waits for DynamoDB and for the relay to create topic %s", kafka.topic))

    def _fetch(self, consumer: Consumer) -> list[Message]:
        """What a paused write left over, then a wait for one message and whatever is there already."""
        messages, self._carry = self._carry, []
        first = consumer.poll(0.5)
        if first is not None:
            messages += [first, *consumer.consume(self.batch_size - 1, timeout=0)]
        return messages

    def _stalled(self, consumer: Consumer, messages: list[Message]) -> bool:
        """True when the consumer has had no partitions, or events waiting and none arriving, for
        STALL_SECONDS: it should be replaced, so that it rejoins the group."""
        if any(not m.error() for m in messages) or not self._waiting(consumer):
            self._progress = time.monotonic()
            return False
        if time.monotonic() - self._progress <= STALL_SECONDS:
            return False
        log.warning("sink received nothing for %.0f s while %s: rejoining the group",
                    STALL_SECONDS, "events wait" if consumer.assignment() else "without partitions")
        return True

    def _write_batch(self, consumer: Consumer, messages: list[Message], dynamodb: Any,
                     executor: ThreadPoolExecutor, stop: threading.Event) -> None:
        """Write the batch's events to DynamoDB (unparseable messages to the dead-letter topic), and
        only then store each partition's offset past its last message."""
        keep_alive = functools.partial(self._keep_alive, consumer)
        events, contexts, last = self._decode(messages, keep_alive, stop)
        if events:
            writes = [tracing.span("sink.write", context, "consumer", booking_code=event.booking_code,
                                   version=event.version) if context is not None else None
                      for event, context in zip(events, contexts, strict=True)]
            erased = {e.booking_code for e in events if e.type == personal.ERASED_TYPE}
            dynamodb_writes.write_items(
                dynamodb, self.settings.dynamo.table, [item_of(e, e.booking_code in erased) for e in events],
                executor=executor, should_stop=stop.is_set, on_wait=keep_alive,
                backoff=self._write_backoff, retries=self.metrics.dynamodb_retries,
            )
            for code in sorted(erased):
                dynamodb_writes.erase_personal(dynamodb, self.settings.dynamo.table, code, executor=executor,
                                               should_stop=stop.is_set, on_wait=keep_alive,
                                               backoff=self._write_backoff, retries=self.metrics.dynamodb_retries)
            self.metrics.written.inc(len(events))
            self._progress = time.monotonic()  # a long DynamoDB outage is not a stall
            metrics.observe_lag(self.metrics.commit_to_write, (e.recorded_at for e in events))
            for event, context, write in zip(events, contexts, writes, strict=True):
                if write is not None:
                    write.end()
                self._written_log.info("written", booking_code=event.booking_code, version=event.version,
                                       position=event.position, trace_id=context.trace_id if context else None)
        for message in last:
            self._store(consumer, message)
        self._resume(consumer)
        self._update_lag(consumer)

    def _decode(self, messages: list[Message], keep_alive: Callable[[], None],
                stop: threading.Event) -> tuple[list[Event], list[tracing.TraceContext | None], list[Message]]:
        """The batch's events and the trace context each message carries (None without one), with
        what does not parse moved to the dead-letter topic; and each partition's last message (error
        events of the consumer are logged and skipped)."""
        events, contexts, last = [], [], {}
        for message in messages:
            error = message.error()
            if error is not None:
                self._on_error(error)
                continue
            if message.key() == checkpoints.KAFKA_KEY:  # not an event: for auditors, nothing to write
                last[(message.topic(), message.partition())] = message
                continue
            try:
                events.append(decode_event(message.value() or b""))
                contexts.append(_trace_context(message))
            except (msgspec.DecodeError, TypeError) as failure:
                self._dead_letters.move(message, failure, keep_alive, stop)
            last[(message.topic(), message.partition())] = message
        return events, contexts, list(last.values())

    def _subscribe(self) -> Consumer:
        """A new consumer in the sink's group (see _on_assign for where it starts)."""
        consumer = Consumer(consumer_config(self.settings.kafka))
        consumer.subscribe([self.settings.kafka.topic], on_assign=self._on_assign)
        self._progress = time.monotonic()
        self._paused = False
        self._next, self._assigned, self._unread = {}, set(), []
        self._carry = []  # fetched by the old consumer; the new one reads them again
        return consumer

    def _waiting(self, consumer: Consumer) -> bool:
        """True without partitions, or when an owned partition holds events beyond what was written
        (by the watermark cached at the last fetch; no broker round trip)."""
        return not consumer.assignment() or any(lag > 0 for lag in self._lags(consumer).values())

    def _lags(self, consumer: Consumer) -> dict[int, int]:
        """Per owned partition whose start and watermarks are known: the messages not yet written.

        The high watermark is the one the client cached from its last fetch (no broker round
        trip), so while partitions are paused for a DynamoDB outage it may lag behind the broker.
        """
        topic, lags = self.settings.kafka.topic, {}
        for partition, next_offset in self._next.items():
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except KafkaException:
                continue
            partition_lag = progress.lag(next_offset, low, high)
            if partition_lag is not None:
                lags[partition] = partition_lag
        return lags

    def _keep_alive(self, consumer: Consumer) -> None:
        """While a write is retried: stop fetching, but poll so the group keeps our partitions.

        Paused again on every call, so partitions gained in a rebalance meanwhile are paused too.
        """
        consumer.pause(consumer.assignment())
        self._paused = True
        message = consumer.poll(0)
        if message is not None and not message.error():
            self._carry.append(message)  # fetched before the pause took effect: keep it
        self._update_lag(consumer)

    def _update_lag(self, consumer: Consumer) -> None:
        """Set ledger_sink_consumer_lag per owned partition, every LAG_SECONDS at most."""
        now = time.monotonic()
        if now - self._lag_updated < LAG_SECONDS:
            return
        self._lag_updated = now
        lags = {str(partition): lag for partition, lag in self._lags(consumer).items()}
        for gone in self._lag_partitions - lags.keys():  # moved to another sink in a rebalance
            self.metrics.consumer_lag.remove(gone)
        for label, partition_lag in lags.items():
            self.metrics.consumer_lag.labels(label).set(partition_lag)
        self._lag_partitions = set(lags)

    def _resume(self, consumer: Consumer) -> None:
        if self._paused:
            consumer.resume(consumer.assignment())
            self._paused = False

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Take the new assignment; the consumer starts each partition at the group's committed
        offset (at the beginning without one) once this returns.

        No broker round trip in here: it runs inside the group protocol, and a call that waits for
        a coordinator still loading (after a broker restart) makes the rebalance time out, again and
        again. The committed offsets, for the lag gauge, are read by the main loop (_read_committed).
        """
        self._assigned = {tp.partition for tp in partitions}
        self._next = {}
        self._unread = list(partitions)
        self._lag_updated = 0.0

    def _read_committed(self, consumer: Consumer) -> None:
        """Learn where the partitions assigned last start, for the lag gauge and the stall check."""
        if not self._unread:
            return
        try:
            committed = consumer.committed(self._unread, timeout=2)
        except KafkaException as error:  # the coordinator is still loading: on the next pass
            log.debug("committed offsets not read yet: %s", error)
            return
        for tp in committed:
            if tp.partition in self._assigned:
                self._next.setdefault(tp.partition, tp.offset if tp.offset >= 0 else progress.NOT_STORED)
        self._unread = []

    def _store(self, consumer: Consumer, message: Message) -> None:
        topic, partition, offset = where(message)
        try:
            consumer.store_offsets(offsets=[TopicPartition(topic, partition, offset + 1)])
            if partition in self._assigned:
                self._next[partition] = offset + 1
        except KafkaException as error:  # the partition moved to another sink in a rebalance
            log.info("offset not stored for %s[%d]: %s", topic, partition, error)

    def _on_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        # UNKNOWN_TOPIC_OR_PART for a deleted topic resolves itself once the relay created it again.
        log.warning("consumer error: %s", error)


def _trace_context(message: Message) -> tracing.TraceContext | None:
    """The context of the message's `traceparent` header; None when it has none or a malformed one."""
    headers = message.headers() or []
    for name, value in headers.items() if isinstance(headers, dict) else headers:
        if name == tracing.HEADER:
            return tracing.parse(value)
    return None


class DeadLetters:
    """Where messages that are not Event JSON go: the dead-letter topic, with headers naming their
    origin and the parse error, each one logged at ERROR. A message is moved before the sink stores
    an offset past it; while the topic does not take it, the sink retries and does not move on."""

    def __init__(self, settings: KafkaSettings, moved: Counter) -> None:
        self.settings = settings
        self.moved = moved  # ledger_sink_dead_letters_total
        self._producer: Producer | None = None  # made for the first dead letter

    def move(self, message: Message, error: Exception, keep_alive: Callable[[], None],
             stop: threading.Event) -> None:
        """Return once the dead-letter topic has `message`; raise Stopped if `stop` is set first.

        `keep_alive` runs every 0.2 s between attempts (the sink keeps its place in the group there).
        """
        topic = self.settings.dead_letter_topic
        source_topic, source_partition, source_offset = where(message)
        log.error("unparseable message at %s[%d]@%d moved to %s: %s",
                  source_topic, source_partition, source_offset, topic, error)
        headers: list[tuple[str, str | bytes | None]] = [
            ("source-topic", source_topic.encode()),
            ("source-partition", str(source_partition).encode()),
            ("source-offset", str(source_offset).encode()),
            ("error", str(error).encode()),
        ]
        backoff = Backoff(log)
        while not stop.is_set():
            outcome = self._send(topic, message, headers)
            if outcome == [True]:
                self.moved.inc()
                return
            delay = backoff.failed("dead-letter topic %s does not take messages: %s", topic, outcome)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not stop.is_set():
                keep_alive()
                time.sleep(0.2)
        raise Stopped()

    def _send(self, topic: str, message: Message, headers: list[tuple[str, str | bytes | None]]) -> list[object]:
        """One attempt: [True] when the topic acknowledged the message, else what went wrong."""
        outcome: list[object] = []

        def delivered(err: KafkaError | None, _message: Message) -> None:
            outcome.append(err or True)

        try:
            ensure_topic(self.settings, topic)
            self._producer = self._producer or Producer(producer_config(self.settings))
            self._producer.produce(topic, key=message.key(), value=message.value(), headers=headers,
                                   on_delivery=delivered)
            self._producer.flush(10)
        except (KafkaException, BufferError) as failure:
            outcome.append(failure)
        return outcome

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5)
