"""The sink: Kafka topic booking-events -> DynamoDB table booking_events, in a consumer group.

Offsets are stored only after DynamoDB accepted every event of the batch (and committed in the
background), so a crash anywhere replays events instead of losing them; replays rewrite the same
item content and change nothing. While DynamoDB is down the sink retries with capped backoff,
pausing its partitions and polling so that it keeps its place in the group.

A message that is not Event JSON is never dropped silently: it goes to the dead-letter topic
(LEDGER_KAFKA_DEAD_LETTER_TOPIC) with headers naming its origin and the parse error, is logged at
ERROR, and only then is its offset stored. If the dead-letter topic cannot take it, the sink
retries and does not move past it.

A broker that lost its memory (the local Tansu keeps none across a restart) comes back with a new
topic whose offsets start again at 0, and may even receive this consumer's old offsets in an
auto-commit. Offsets are therefore stored with the topic's id as commit metadata; on every
assignment, a committed offset from another incarnation of the topic is ignored and the
partition is read from its beginning. The relay, which recreates the topic, sends recent events
again, and rewriting them changes nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import msgspec
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from cdc import dynamo, metrics
from cdc.backoff import Backoff
from cdc.kafka import EXISTING, consumer_config, ensure_topic, producer_config
from core.events import decode_event
from core.settings import Settings

log = logging.getLogger("booking_ledger.sink")

LAG_SECONDS = 2.0  # how often the consumer-lag gauge is brought up to date
# A consumer that has had no partitions, or has had events waiting without receiving any, for
# this long is closed and replaced: it rejoins the group (seen after quick broker restarts).
STALL_SECONDS = 45.0


class Sink:
    def __init__(self, settings: Settings, batch_size: int = 500, threads: int = 8) -> None:
        self.settings = settings
        self.batch_size = batch_size
        self.threads = threads
        self._paused = False
        self._carry: list[Message] = []
        self._topic_id: str | None = None
        # Per assigned partition, the next offset to store: what is below it is in DynamoDB.
        self._next: dict[int, int] = {}
        self._lag_updated = 0.0
        self._lag_partitions: set[str] = set()
        # Test-only: seconds to wait between DynamoDB's acceptance and storing the offsets,
        # so a test can kill the sink in exactly that window.
        self.store_delay = float(os.environ.get("LEDGER_SINK_TEST_STORE_DELAY", "0"))
        self.metrics = metrics.SinkMetrics()

    def run(self, stop: threading.Event) -> None:
        kafka, tables = self.settings.kafka, self.settings.dynamo
        metrics.serve(self.metrics.registry, self.settings.metrics.host, self.settings.metrics.sink_port, "sink")
        dynamodb = dynamo.client(tables)
        backoff = Backoff(log)
        while not stop.is_set():
            try:
                dynamo.ensure_table(dynamodb, tables.table)
                if ensure_topic(kafka, create=False) == EXISTING:  # the relay creates it
                    break
            except Exception as error:  # DynamoDB Local or the broker still starting
                log.debug("set-up attempt failed: %r", error)
            stop.wait(backoff.failed("sink waits for DynamoDB and for the relay to create topic %s", kafka.topic))
        backoff.succeeded("DynamoDB reachable and topic present")
        self._admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
        consumer = self._subscribe()
        log.info("sink consuming %s into DynamoDB table %s", kafka.topic, tables.table)
        dead_letters: Producer | None = None
        write_backoff = Backoff(log)
        try:
            with ThreadPoolExecutor(self.threads, thread_name_prefix="dynamodb") as executor:
                while not stop.is_set():
                    messages, self._carry = self._carry, []
                    first = consumer.poll(0.5)  # wait for something, then take what is already there
                    if first is not None:
                        messages += [first, *consumer.consume(self.batch_size - 1, timeout=0)]
                    if any(not m.error() for m in messages) or not self._waiting(consumer):
                        self._progress = time.monotonic()
                    elif time.monotonic() - self._progress > STALL_SECONDS:
                        log.warning("sink received nothing for %.0f s while %s: rejoining the group",
                                    STALL_SECONDS, "events wait" if consumer.assignment() else "without partitions")
                        consumer.close()  # commits the offsets stored so far
                        consumer = self._subscribe()
                        continue
                    events, last = [], {}
                    for message in messages:
                        if message.error():
                            self._on_error(message.error())
                            continue
                        try:
                            events.append(decode_event(message.value()))
                        except (msgspec.DecodeError, TypeError) as error:
                            dead_letters = dead_letters or Producer(producer_config(kafka))
                            self._dead_letter(dead_letters, consumer, message, error, stop)
                        last[(message.topic(), message.partition())] = message
                    if events:
                        dynamo.write_items(
                            dynamodb, tables.table, [dynamo.item_of(e) for e in events], executor=executor,
                            should_stop=stop.is_set, on_wait=lambda: self._keep_alive(consumer), backoff=write_backoff,
                            retries=self.metrics.dynamodb_retries,
                        )
                        self.metrics.written.inc(len(events))
                        self._progress = time.monotonic()  # a long DynamoDB outage is not a stall
                        metrics.observe_lag(self.metrics.commit_to_write, (e.recorded_at for e in events))
                        if self.store_delay:
                            stop.wait(self.store_delay)
                    for message in last.values():
                        self._store(consumer, message)
                    self._resume(consumer)
                    self._update_lag(consumer)
        except dynamo.Stopped:
            log.info("sink stopping with a batch unwritten; its offsets were not stored")
        finally:
            consumer.close()  # commits the offsets stored so far
            if dead_letters is not None:
                dead_letters.flush(5)

    def _subscribe(self) -> Consumer:
        consumer = Consumer(consumer_config(self.settings.kafka))
        consumer.subscribe([self.settings.kafka.topic], on_assign=self._on_assign)
        self._progress = time.monotonic()
        self._paused = False
        self._next = {}
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
            start = next_offset if next_offset >= 0 else low
            if start >= 0 and high > start:
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
            start = next_offset if next_offset >= 0 else (low if low >= 0 else (0 if high == 0 else -1))
            if high >= 0 and start >= 0:
                lags[str(partition)] = max(0, high - start)
        for gone in self._lag_partitions - lags.keys():  # moved to another sink in a rebalance
            self.metrics.consumer_lag.remove(gone)
        for partition, lag in lags.items():
            self.metrics.consumer_lag.labels(partition).set(lag)
        self._lag_partitions = set(lags)

    def _resume(self, consumer: Consumer) -> None:
        if self._paused:
            consumer.resume(consumer.assignment())
            self._paused = False

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Start each partition at its committed offset, unless that belongs to an older topic."""
        topic = self.settings.kafka.topic
        try:
            self._topic_id = str(self._admin.describe_topics(TopicCollection([topic]))[topic].result(10).topic_id)
            committed = consumer.committed(partitions, timeout=10)
        except KafkaException as error:
            log.warning("cannot read the topic id or committed offsets (%s): reading assigned partitions "
                        "from the beginning", error)
            self._topic_id, committed = None, [TopicPartition(p.topic, p.partition) for p in partitions]
        start = []
        for tp in committed:
            if tp.offset >= 0 and self._topic_id is not None and tp.metadata == self._topic_id:
                start.append(TopicPartition(tp.topic, tp.partition, tp.offset))
            else:
                if tp.offset >= 0:
                    log.warning("committed offset %d of %s[%d] is from another incarnation of the topic "
                                "(a broker that lost its memory): reading it from the beginning",
                                tp.offset, tp.topic, tp.partition)
                start.append(TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING))
        # No broker round trips in here (it runs inside the group protocol): a partition read from its
        # beginning gets its start from the watermarks cached by the first fetch (_update_lag).
        self._next = {tp.partition: tp.offset if tp.offset >= 0 else -1 for tp in start}
        self._lag_updated = 0.0
        consumer.assign(start)

    def _store(self, consumer: Consumer, message: Message) -> None:
        position = TopicPartition(message.topic(), message.partition(), message.offset() + 1,
                                  metadata=self._topic_id or "")
        try:
            consumer.store_offsets(offsets=[position])
            if message.partition() in self._next:
                self._next[message.partition()] = position.offset
        except KafkaException as error:  # the partition moved to another sink in a rebalance
            log.info("offset not stored for %s[%d]: %s", message.topic(), message.partition(), error)

    def _on_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        # UNKNOWN_TOPIC_OR_PART after a broker restart resolves itself once the relay recreated it.
        log.warning("consumer error: %s", error)

    def _dead_letter(
        self, producer: Producer, consumer: Consumer, message: Message, error: Exception, stop: threading.Event
    ) -> None:
        topic = self.settings.kafka.dead_letter_topic
        log.error("unparseable message at %s[%d]@%d moved to %s: %s",
                  message.topic(), message.partition(), message.offset(), topic, error)
        headers = [
            ("source-topic", message.topic().encode()),
            ("source-partition", str(message.partition()).encode()),
            ("source-offset", str(message.offset()).encode()),
            ("error", str(error).encode()),
        ]
        backoff = Backoff(log)
        while not stop.is_set():
            outcome: list[object] = []
            try:
                ensure_topic(self.settings.kafka, topic)
                producer.produce(topic, key=message.key(), value=message.value(), headers=headers,
                                 on_delivery=lambda err, _msg: outcome.append(err or True))
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
        raise dynamo.Stopped()
