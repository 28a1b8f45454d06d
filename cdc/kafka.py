"""Kafka clients configured for the pipeline, and topic creation when the topic is missing.

Brokers do not create topics on demand (a topic auto-created by a produce or a fetch would get the
broker's partition count): the relay creates the events topic, the sink the dead-letter topic.
"""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from core.settings import KafkaSettings

log = logging.getLogger("booking_ledger.kafka")


def producer_config(settings: KafkaSettings) -> dict[str, object]:
    return {
        "bootstrap.servers": settings.bootstrap,
        "client.id": "booking-ledger-relay",
        # The relay creates the topic itself, with our partition count, and learns from that
        # that it was missing (see relay.py); a topic auto-created by a produce would hide both.
        "allow.auto.create.topics": False,
        # Idempotent and fully acknowledged: a retry inside the client never duplicates or
        # reorders a partition, and an acknowledged message is on every in-sync replica.
        "enable.idempotence": True,
        "acks": "all",
        "max.in.flight.requests.per.connection": 5,  # the most idempotence keeps in order
        "linger.ms": 2,
        "batch.num.messages": 1000,
        # A message not acknowledged in this time is reported failed; the relay sends it again.
        "message.timeout.ms": 10_000,
        "socket.connection.setup.timeout.ms": 3_000,
        "reconnect.backoff.max.ms": 1_000,
    }


def consumer_config(settings: KafkaSettings) -> dict[str, object]:
    return {
        "bootstrap.servers": settings.bootstrap,
        "group.id": settings.sink_group,
        "client.id": "booking-ledger-sink",
        "auto.offset.reset": "earliest",
        # Offsets are stored by the sink only after DynamoDB accepted the events, then
        # committed in the background; nothing is committed past an unwritten event.
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "auto.commit.interval.ms": settings.commit_interval_ms,
        # A sink that died is noticed, and its partitions handed to another, within 6 s.
        "session.timeout.ms": 6_000,
        "heartbeat.interval.ms": 1_000,
        "fetch.wait.max.ms": 100,
        # Partitions side by side: the client keeps one queue for all partitions, served in the
        # order fetches returned, and fetches ahead while it holds fewer than queued.min.messages.
        # With the default (100,000) a partition that got a backlog first fills the queue, and the
        # events of the others wait behind all of it. Here the queue holds about two of the sink's
        # batches (plus one fetch), so every partition with events has its share of the next ones.
        # A fetch still takes up to 1 MB of a partition (max.partition.fetch.bytes): the relay's
        # batches are as large, and a partition whose batch is over the limit gets nothing from a
        # fetch in which it is not the first.
        "queued.min.messages": 1_000,
        "fetch.queue.backoff.ms": 10,  # how soon to look again once the queue is below that (default 1 s)
        "reconnect.backoff.max.ms": 1_000,
        # Notice a topic that was created again, or new partitions, within seconds.
        "topic.metadata.refresh.interval.ms": 5_000,
    }


EXISTING, CREATED, MISSING, UNREACHABLE = "existing", "created", "missing", "unreachable"


def ensure_topic(settings: KafkaSettings, topic: str | None = None, timeout: float = 10, create: bool = True) -> str:
    """Make sure `topic` (default: the events topic) exists, creating it when `create`.

    Returns EXISTING, CREATED, MISSING (not there and not created) or UNREACHABLE.
    """
    topic = topic or settings.topic
    admin = AdminClient({"bootstrap.servers": settings.bootstrap, "socket.connection.setup.timeout.ms": 3_000})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as error:
        log.warning("broker %s not reachable to check topic %s: %s", settings.bootstrap, topic, error)
        return UNREACHABLE
    if topic in metadata.topics and metadata.topics[topic].error is None:
        return EXISTING
    if not create:
        return MISSING
    replicas = settings.replication_factor or -1  # -1: the broker's default.replication.factor
    futures = admin.create_topics([NewTopic(topic, num_partitions=settings.partitions, replication_factor=replicas)])
    try:
        futures[topic].result(timeout)
        log.info("created topic %s with %d partitions", topic, settings.partitions)
        return CREATED
    except KafkaException as error:
        if error.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return EXISTING
        log.warning("could not create topic %s: %s", topic, error)
        return UNREACHABLE
