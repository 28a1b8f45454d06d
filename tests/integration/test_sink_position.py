"""The sink's place in the topic, kept as the consumer group's committed offsets on Apache Kafka:
a restarted sink resumes where the last one stopped, and a topic deleted and created again is read
from its beginning (Kafka drops a deleted topic's offsets with it)."""

from __future__ import annotations

import httpx
from confluent_kafka.admin import AdminClient

from tests.conftest import free_port, random_code
from tests.integration.conftest import Pipeline, wait_until
from tests.integration.test_pipeline import append_events, outbox_size, wait_replicated


def sink_counts(port: int) -> tuple[float, float]:
    """(ledger_sink_written_total, ledger_sink_commit_to_write_seconds_count) of one sink process."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and line[0] != "#"}
    return values["ledger_sink_written_total"], values["ledger_sink_commit_to_write_seconds_count"]


def sink_written(port: int) -> float:
    """ledger_sink_written_total of one sink process; 0 while its metrics do not answer yet."""
    try:
        return sink_counts(port)[0]
    except (httpx.HTTPError, KeyError):
        return 0


def start_sink(pipeline: Pipeline):
    port = free_port()
    worker = pipeline.start("sink", LEDGER_SINK_METRICS_PORT=str(port))
    wait_until(lambda: _up(port), 60, what="the sink's metrics")
    return worker, port


def _up(port: int) -> bool:
    try:
        sink_counts(port)
        return True
    except (httpx.HTTPError, KeyError):
        return False


def test_a_restarted_sink_resumes_and_a_new_topic_is_read_from_its_beginning(pipeline: Pipeline) -> None:
    pipeline.start("relay")
    first, port = start_sink(pipeline)
    before = append_events(pipeline, [random_code("POS") for _ in range(10)], per_booking=3)
    wait_replicated(pipeline, before)
    wait_until(lambda: sink_counts(port)[0] == len(before), 15, what="the first sink's count")
    first.stop()  # closing commits its offsets

    # A new sink process resumes at the committed offsets: it writes only the new events, and
    # observes the freshness of each of them, once.
    second, port = start_sink(pipeline)
    after = append_events(pipeline, [random_code("POS") for _ in range(4)], per_booking=2)
    wait_replicated(pipeline, before + after)
    wait_until(lambda: sink_counts(port) == (len(after), len(after)), 15,
               what=f"the second sink to write {len(after)} events (not {len(before) + len(after)})")

    # An operator deletes the topic. The relay creates it again and sends recent events again; the
    # sink reads the new topic from its beginning: the old topic's offsets went with it.
    wait_until(lambda: outbox_size(pipeline) == 0, 30, what="the relay sent everything")
    topic = pipeline.settings.kafka.topic
    admin = AdminClient({"bootstrap.servers": pipeline.broker.bootstrap})
    admin.delete_topics([topic])[topic].result(30)
    dynamodb, table = pipeline.dynamodb_client(), pipeline.settings.dynamo.table
    removed = before[:5]
    for event in removed:  # to see them come back through the new topic
        dynamodb.delete_item(TableName=table, Key={"booking_code": {"S": event.booking_code},
                                                   "version": {"N": str(event.version)}})
    during = append_events(pipeline, [random_code("POS") for _ in range(3)], per_booking=1)
    wait_replicated(pipeline, before + after + during, timeout=120)
    resent = len(pipeline.topic_messages(len(before + after + during)))
    assert resent >= len(before + after + during)
    written = wait_until(lambda: sink_counts(port)[0] >= len(after) + resent and sink_counts(port)[0], 60,
                         what="the sink to write every message of the new topic")
    assert written == len(after) + resent
