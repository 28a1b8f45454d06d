"""The pipeline through Kafka faults, on the 3-node Apache Kafka cluster (replication factor 3,
min.insync.replicas 2, unclean leader election off).

Eight writers append through the API while a fault happens. After each fault: every append was
answered 201 (appends never wait for Kafka: the outbox holds what the broker cannot take yet),
every acknowledged event is in DynamoDB with the ledger's content and each booking's versions are
gapless there, the topic carries each booking's versions in order, and verify finds no drift.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import msgspec

from cdc.verify import verify
from core import dynamodb
from core.events import Event, decode_event
from tests.conftest import free_port, random_code
from tests.e2e.conftest import auth, make_key, start_server
from tests.integration.conftest import Pipeline, wait_until
from tests.integration.test_pipeline import assert_version_order, outbox_size
from tests.integration.test_sink_position import sink_written

WRITERS = 8
PAUSE = 0.1  # between one writer's appends: at most 80 appends/s in all


class Writers:
    """WRITERS threads, each creating bookings and appending to them over HTTP until stopped."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.acknowledged: list[Event] = []
        self.refused: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._write, daemon=True) for _ in range(WRITERS)]

    def _write(self) -> None:
        with httpx.Client(base_url=self.url, headers=auth(self.key), timeout=30) as client:
            while not self._stop.is_set():
                code = random_code("KF")
                for version in range(3):
                    body = {"expected_version": version, "events": [
                        {"type": "BookingPriced", "price": {"amount": f"{100 + version}.00", "currency": "EUR"}}]}
                    answer = client.post(f"/v1/bookings/{code}/events", json=body)
                    with self._lock:
                        if answer.status_code != 201:
                            self.refused.append((answer.status_code, answer.text))
                            return
                        self.acknowledged += [decode_event(msgspec.json.encode(e)) for e in answer.json()["events"]]
                    time.sleep(PAUSE)

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


@contextmanager
def writing(pipeline: Pipeline) -> Iterator[Writers]:
    """An API on the pipeline's ledger and WRITERS writers through it; relay and sink started."""
    server = start_server(pipeline.database_url)
    try:
        key = make_key(pipeline.database_url, "hotel", "read,write")
        with Writers(server.url, key) as writers:
            yield writers
    finally:
        server.stop()


def written_for(writers: Writers, seconds: float) -> None:
    """Let the writers run `seconds` more (and at least one append be acknowledged)."""
    start = writers.count()
    time.sleep(seconds)
    wait_until(lambda: writers.count() > start, 30, what="appends acknowledged")


def table_items(pipeline: Pipeline) -> dict[tuple[str, int], dict]:
    """Every item of the pipeline's DynamoDB table, by (booking code, version): one consistent scan."""
    client, items = pipeline.dynamodb_client(), {}
    for page in client.get_paginator("scan").paginate(TableName=pipeline.settings.dynamo.table, ConsistentRead=True):
        items.update({(item["booking_code"]["S"], int(item["version"]["N"])): item for item in page["Items"]})
    return items


def assert_nothing_lost(pipeline: Pipeline, writers: Writers, timeout: float = 180) -> None:
    assert writers.refused == [], f"appends failed: {writers.refused[:3]}"
    assert len(writers.acknowledged) > 50
    # Each acknowledged event with the ledger's content, and nothing else: versions are gapless
    # because the writers' acknowledged versions are (each booking 1, 2, 3, as far as it got).
    expected = {(e.booking_code, e.version): dynamodb.item_of(e) for e in writers.acknowledged}
    wait_until(lambda: table_items(pipeline) == expected, timeout, interval=1, what="every event in DynamoDB")
    wait_until(lambda: outbox_size(pipeline) == 0, 60, what="the outbox drained")
    assert_version_order(pipeline.topic_messages(len(writers.acknowledged)))
    report = asyncio.run(verify(pipeline.settings, grace=1))
    assert report.drift == []
    assert report.events == len(writers.acknowledged)


def with_fault(pipeline: Pipeline, fault: Callable[[Writers], None], **sink_env: str) -> Writers:
    pipeline.start("relay")
    pipeline.start("sink", **sink_env)
    with writing(pipeline) as writers:
        written_for(writers, 2)
        wait_until(lambda: outbox_size(pipeline) < writers.count(), 60, what="the relay to send")
        fault(writers)
        written_for(writers, 2)
    return writers


def test_the_leader_of_the_busiest_partitions_killed(pipeline: Pipeline, broker) -> None:
    def kill_leader(writers: Writers) -> None:
        node = broker.busiest_leader(pipeline.settings.kafka.topic)
        node.kill()
        try:
            written_for(writers, 5)
        finally:
            node.start(timeout=180)  # a JVM on a busy machine can take a minute

    writers = with_fault(pipeline, kill_leader)
    assert_nothing_lost(pipeline, writers)
    broker.wait_for_brokers(timeout=180)


def test_a_broker_frozen_past_its_session_timeout(pipeline: Pipeline, broker) -> None:
    def freeze_leader(writers: Writers) -> None:
        node = broker.busiest_leader(pipeline.settings.kafka.topic)
        node.freeze()  # broker.session.timeout.ms is 9 s: the controller fences it and moves its leaders
        try:
            written_for(writers, 12)
        finally:
            node.thaw()

    writers = with_fault(pipeline, freeze_leader)
    assert_nothing_lost(pipeline, writers)
    broker.wait_for_brokers(timeout=180)


def test_the_whole_cluster_stopped_for_20_seconds(pipeline: Pipeline, broker) -> None:
    def stop_cluster(writers: Writers) -> None:
        broker.stop()
        try:
            before = outbox_size(pipeline)
            written_for(writers, 20)
            assert outbox_size(pipeline) > before  # the ledger holds what Kafka cannot take
        finally:
            broker.start(timeout=180)

    writers = with_fault(pipeline, stop_cluster)
    assert_nothing_lost(pipeline, writers)


def test_one_of_two_sinks_killed_mid_batch(pipeline: Pipeline) -> None:
    # Offsets are committed every 10 minutes: what the killed sink wrote is uncommitted, and the
    # survivor, given its partitions, writes it again (which changes nothing).
    def kill_one_sink(writers: Writers) -> None:
        port = free_port()
        second = pipeline.start("sink", LEDGER_SINK_COMMIT_INTERVAL_MS="600000", LEDGER_SINK_METRICS_PORT=str(port))
        # It has partitions of its own once the group rebalanced: it writes.
        wait_until(lambda: sink_written(port) > 0, 60, what="the second sink to write")
        second.kill()
        written_for(writers, 3)

    writers = with_fault(pipeline, kill_one_sink, LEDGER_SINK_COMMIT_INTERVAL_MS="600000")
    assert_nothing_lost(pipeline, writers)
