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
auto-commit. The topic's identity is therefore kept where no broker can drop it: in the name of
the consumer group, LEDGER_SINK_GROUP + "." + the topic's id. (Commit metadata would do on Apache
Kafka, but Tansu returns committed offsets without it, which made every restart read everything
again.) A group's committed offsets can only belong to its own incarnation of the topic: a restarted
sink resumes where the last one stopped, and after the topic was created again the sink joins a new
group, which starts at the beginning. The old offsets a stale consumer commits land in the old
group, where nobody reads them. The relay, which recreates the topic, sends recent events again,
and rewriting them changes nothing.

ledger_sink_commit_to_write_seconds measures freshness. Restarts, rebalances and rejoins no longer
read anything again (but the up to one second of offsets a killed sink had not committed yet), and
after the topic was created again, what the new topic held at this sink's first fetch of a partition
(the relay's re-sent events, written before) is not observed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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

from cdc import dynamo, metrics, progress
from cdc.backoff import Backoff
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


def group_of(sink_group: str, topic_id: str) -> str:
    """The consumer group of the sink for one incarnation of the topic."""
    return f"{sink_group}.{topic_id}"


class Sink:
    def __init__(self, settings: Settings, batch_size: int = 500, threads: int = 8) -> None:
        self.settings = settings
        self.batch_size = batch_size
        self.threads = threads
        self._paused = False
        self._carry: list[Message] = []
        self._topic_id: str | None = None  # of the incarnation whose group this consumer is in
        # Why this consumer must be replaced by one in the current incarnation's group, if it must.
        self._rejoin: str | None = None
        # Per assigned partition, the next offset to store: what is below it is in DynamoDB.
        self._next: dict[int, int] = {}
        # Per assigned partition, the first offset whose freshness is observed (None: the high
        # watermark of the first fetch, in a topic created again while this sink ran).
        self._fresh_from: dict[int, int | None] = {}
        self._recreated = False
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
        self._admin = AdminClient({"bootstrap.servers": self.settings.kafka.bootstrap})
        try:
            consumer = self._subscribe(stop)
        except dynamo.Stopped:
            return
        log.info("sink consuming %s into DynamoDB table %s", self.settings.kafka.topic, self.settings.dynamo.table)
        try:
            with ThreadPoolExecutor(self.threads, thread_name_prefix="dynamodb") as executor:
                while not stop.is_set():
                    if self._rejoin is not None:
                        consumer = self._join_again(consumer, stop)
                        continue
                    messages = self._fetch(consumer)
                    if self._stalled(consumer, messages):
                        consumer.close()  # commits the offsets stored so far
                        consumer = self._subscribe(stop)
                        continue
                    self._write_batch(consumer, messages, dynamodb, executor, stop)
        except dynamo.Stopped:
            log.info("sink stopping with a batch unwritten; its offsets were not stored")
        finally:
            with contextlib.suppress(RuntimeError):  # already closed when stopped while joining again
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

    def _join_again(self, consumer: Consumer, stop: threading.Event) -> Consumer:
        """Replace the consumer by one in the current topic incarnation's group (see _on_assign)."""
        log.warning("sink joins the consumer group again: %s", self._rejoin)
        consumer.close()  # its offsets go to the old topic's group, where nobody reads them
        previous = self._topic_id
        consumer = self._subscribe(stop)
        self._recreated = self._topic_id != previous
        return consumer

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
        events, fresh, last = [], [], {}
        for message in messages:
            error = message.error()
            if error is not None:
                self._on_error(error)
                continue
            try:
                event = decode_event(message.value() or b"")
                events.append(event)
                if self._first_read(consumer, message):
                    fresh.append(event)
            except (msgspec.DecodeError, TypeError) as failure:
                self._dead_letters = self._dead_letters or Producer(producer_config(self.settings.kafka))
                self._dead_letter(self._dead_letters, consumer, message, failure, stop)
            last[(message.topic(), message.partition())] = message
        if events:
            dynamo.write_items(
                dynamodb, self.settings.dynamo.table, [item_of(e) for e in events], executor=executor,
                should_stop=stop.is_set, on_wait=functools.partial(self._keep_alive, consumer),
                backoff=self._write_backoff, retries=self.metrics.dynamodb_retries,
            )
            self.metrics.written.inc(len(events))
            self._progress = time.monotonic()  # a long DynamoDB outage is not a stall
            metrics.observe_lag(self.metrics.commit_to_write, (e.recorded_at for e in fresh))
        for message in last.values():
            self._store(consumer, message)
        self._resume(consumer)
        self._update_lag(consumer)

    def _subscribe(self, stop: threading.Event) -> Consumer:
        """A consumer in the group of the topic's current incarnation (raises Stopped on `stop`)."""
        backoff = Backoff(log)
        while True:
            try:
                self._topic_id = self._current_topic_id()
                break
            except KafkaException as error:
                if stop.wait(backoff.failed("cannot read the id of topic %s: %s", self.settings.kafka.topic, error)):
                    raise dynamo.Stopped() from None
        backoff.succeeded("topic id read")
        config = consumer_config(self.settings.kafka)
        config["group.id"] = group_of(self.settings.kafka.sink_group, self._topic_id)
        consumer = Consumer(config)
        consumer.subscribe([self.settings.kafka.topic], on_assign=self._on_assign)
        self._progress = time.monotonic()
        self._paused = False
        self._rejoin = None
        self._next = {}
        self._fresh_from = {}
        self._carry = []  # fetched by the old consumer; the new one reads them again
        return consumer

    def _current_topic_id(self) -> str:
        topic = self.settings.kafka.topic
        return str(self._admin.describe_topics(TopicCollection([topic]))[topic].result(10).topic_id)

    def _first_read(self, consumer: Consumer, message: Message) -> bool:
        """False for a message whose freshness is not observed (see the module's docstring)."""
        topic, partition, offset = where(message)
        if partition not in self._fresh_from:  # revoked meanwhile
            return False
        fresh_from = self._fresh_from[partition]
        if fresh_from is None:  # a new topic: what its first fetch saw was re-sent by the relay
            try:
                _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except KafkaException:
                return False
            if high < 0:
                return False
            self._fresh_from[partition] = fresh_from = high
        return offset >= fresh_from

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
        """Start each partition at the group's committed offset (from the beginning without one),
        unless the topic was created again since this consumer joined its group."""
        try:
            current = self._current_topic_id()
            committed = consumer.committed(partitions, timeout=10)
        except KafkaException as error:
            self._rejoin = f"cannot read the topic id or the committed offsets ({error})"
            consumer.assign([])
            return
        if current != self._topic_id:
            # Its offsets in this group, even if committed a moment ago, belong to the old topic.
            self._rejoin = ("the topic was created again (a broker that lost its memory): "
                            "its new group reads it from the beginning")
            consumer.assign([])
            return
        # No further broker round trips in here (it runs inside the group protocol): a partition read
        # from its beginning gets its start from the watermarks cached by the first fetch (_update_lag).
        self._next = {tp.partition: tp.offset if tp.offset >= 0 else progress.NOT_STORED for tp in committed}
        unknown = None if self._recreated else 0
        self._fresh_from = {tp.partition: tp.offset if tp.offset >= 0 else unknown for tp in committed}
        self._lag_updated = 0.0
        consumer.assign([TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                         for tp in committed])

    def _store(self, consumer: Consumer, message: Message) -> None:
        topic, partition, offset = where(message)
        try:
            consumer.store_offsets(offsets=[TopicPartition(topic, partition, offset + 1)])
            if partition in self._next:
                self._next[partition] = offset + 1
        except KafkaException as error:  # the partition moved to another sink in a rebalance
            log.info("offset not stored for %s[%d]: %s", topic, partition, error)

    def _on_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        # UNKNOWN_TOPIC_OR_PART after a broker restart resolves itself once the relay recreated it.
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
        raise dynamo.Stopped()
