"""The sink: Kafka topic booking-events -> DynamoDB table booking_events, in a consumer group.

Offsets are stored only after DynamoDB accepted every event of the batch (and committed in the
background), so a crash anywhere replays events instead of losing them; replays rewrite the same
item content and change nothing. While DynamoDB is down the sink retries with capped backoff,
pausing its partitions and polling so that it keeps its place in the group.

A message that is not Event JSON is never dropped silently: it goes to the dead-letter topic
(LEDGER_KAFKA_DEAD_LETTER_TOPIC) with headers naming its origin and the parse error, is logged at
ERROR, and only then is its offset stored. If the dead-letter topic cannot take it, the sink
retries and does not move past it.

Each partition starts at the group's committed offset (at the beginning without one). Apache Kafka
keeps the offsets with the group and drops them with a deleted topic, so a topic created again is
read from its beginning. ledger_sink_commit_to_write_seconds measures freshness: from the commit
of each event in the ledger to its write here.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
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

from cdc import dynamodb_writes, metrics, progress
from cdc.backoff import Backoff, Stopped
from cdc.kafka import EXISTING, consumer_config, ensure_topic, producer_config
from core.dynamodb import client as dynamodb_client
from core.dynamodb import ensure_table, item_of
from core.events import decode_event
from core.settings import Settings

log = logging.getLogger("booking_ledger.sink")

LAG_SECONDS = 2.0  # how often the consumer-lag gauge is brought up to date
# A consumer that has had no partitions, or has had events waiting without receiving any, for
# this long is closed and replaced: it rejoins the group (seen after quick broker restarts).
STALL_SECONDS = 45.0


def where(message: Message) -> tuple[str, int, int]:
    """The topic, partition and offset of a message the consumer delivered (not an error event)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and partition is not None and offset is not None, "a delivered message has a place"
    return topic, partition, offset


class Sink:
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
        self._dead_letters: Producer | None = None
        self._write_backoff = Backoff(log)
        self.metrics = metrics.SinkMetrics()

    def run(self, stop: threading.Event) -> None:
        """Consume the topic into DynamoDB until `stop` is set."""
        metrics.serve(self.metrics.registry, self.settings.metrics.host, self.settings.metrics.sink_port, "sink")
        dynamodb = dynamodb_client(self.settings.dynamo)
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
                        consumer.close()  # commits the offsets stored so far
                        consumer = self._subscribe()
                        continue
                    self._write_batch(consumer, messages, dynamodb, executor, stop)
        except Stopped:
            log.info("sink stopping with a batch unwritten; its offsets were not stored")
        finally:
            consumer.close()  # commits the offsets stored so far
            if self._dead_letters is not None:
                self._dead_letters.flush(5)

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
        events, last = [], {}
        for message in messages:
            error = message.error()
            if error is not None:
                self._on_error(error)
                continue
            try:
                event = decode_event(message.value() or b"")
                events.append(event)
            except (msgspec.DecodeError, TypeError) as failure:
                self._dead_letters = self._dead_letters or Producer(producer_config(self.settings.kafka))
                self._dead_letter(self._dead_letters, consumer, message, failure, stop)
            last[(message.topic(), message.partition())] = message
        if events:
            dynamodb_writes.write_items(
                dynamodb, self.settings.dynamo.table, [item_of(e) for e in events], executor=executor,
                should_stop=stop.is_set, on_wait=functools.partial(self._keep_alive, consumer),
                backoff=self._write_backoff, retries=self.metrics.dynamodb_retries,
            )
            self.metrics.written.inc(len(events))
            self._progress = time.monotonic()  # a long DynamoDB outage is not a stall
            metrics.observe_lag(self.metrics.commit_to_write, (e.recorded_at for e in events))
        for message in last.values():
            self._store(consumer, message)
        self._resume(consumer)
        self._update_lag(consumer)

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
        if not consumer.assignment():
            return True
        topic = self.settings.kafka.topic
        for partition, next_offset in self._next.items():
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except KafkaException:
                continue
            if progress.events_wait(next_offset, low, high):
                return True
        return False

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
        """Set ledger_sink_consumer_lag per owned partition, every LAG_SECONDS at most.

        The high watermark is the one the client cached from its last fetch (no broker round
        trip), so while partitions are paused for a DynamoDB outage it may lag behind the broker.
        """
        now = time.monotonic()
        if now - self._lag_updated < LAG_SECONDS:
            return
        self._lag_updated = now
        topic = self.settings.kafka.topic
        lags: dict[str, int] = {}
        for partition, next_offset in self._next.items():
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except KafkaException:
                continue
            partition_lag = progress.lag(next_offset, low, high)
            if partition_lag is not None:
                lags[str(partition)] = partition_lag
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

    def _dead_letter(
        self, producer: Producer, consumer: Consumer, message: Message, error: Exception, stop: threading.Event
    ) -> None:
        topic = self.settings.kafka.dead_letter_topic
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
            outcome: list[object] = []

            def delivered(err: KafkaError | None, _message: Message, outcome: list[object] = outcome) -> None:
                outcome.append(err or True)

            try:
                ensure_topic(self.settings.kafka, topic)
                producer.produce(topic, key=message.key(), value=message.value(), headers=headers,
                                 on_delivery=delivered)
                producer.flush(10)
            except (KafkaException, BufferError) as failure:
                outcome.append(failure)
            if outcome == [True]:
                self.metrics.dead_letters.inc()
                return
            delay = backoff.failed("dead-letter topic %s does not take messages: %s", topic, outcome)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not stop.is_set():
                self._keep_alive(consumer)
                time.sleep(0.2)
        raise Stopped()
