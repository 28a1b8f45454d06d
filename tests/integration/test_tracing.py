"""Spans of one append, from the request to the DynamoDB write, on the SDK's in-memory exporter: the
API (in this process, on the test's Postgres), the relay's send to the session's Kafka and the
sink's write to DynamoDB Local, each run in this process so that one exporter sees every span."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import asyncpg
from confluent_kafka import Consumer, Producer, TopicPartition
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from cdc.kafka import consumer_config, ensure_topic, producer_config
from cdc.relay import BATCH_SQL, Relay
from cdc.sink import Sink
from core import dynamodb, tracing
from migrations.runner import head_revision
from service.api.app import create_app
from service.ledger.keys import create_key
from tests.conftest import random_code
from tests.integration.conftest import Pipeline


def _hex(number: int, digits: int) -> str:
    return format(number, f"0{digits}x")


def _parent(span: ReadableSpan) -> str | None:
    return _hex(span.parent.span_id, 16) if span.parent else None


def _id(span: ReadableSpan) -> str:
    return _hex(span.context.span_id, 16)


async def test_one_append_is_one_trace_from_the_request_to_the_dynamodb_write(pipeline: Pipeline) -> None:
    exporter = InMemorySpanExporter()
    tracing.configure("test", exporter=exporter)
    settings = pipeline.settings
    trace_id, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    code = random_code("TRACE")
    try:
        conn = await asyncpg.connect(pipeline.database_url)
        try:
            _, key = await create_key(conn, "hotel", ("read", "write"))
            async with AsyncTestClient(create_app(head_revision(), settings)) as client:
                answer = await client.post(
                    f"/v1/bookings/{code}/events",
                    headers={"Authorization": f"Bearer {key}", "traceparent": f"00-{trace_id}-{caller_span}-01"},
                    json={"expected_version": 0, "events": [{"type": "Priced"}, {"type": "Note"}]})
                assert answer.status_code == 201, answer.text
            rows = [row for row in await conn.fetch(BATCH_SQL, 1000) if row["booking_code"] == code]
        finally:
            await conn.close()
        assert len(rows) == 2

        await asyncio.to_thread(ensure_topic, settings.kafka)
        producer = Producer(producer_config(settings.kafka))
        assert await asyncio.to_thread(Relay(settings)._send, producer, rows) == 2
        del producer  # closed now, not when the broker has gone
        await asyncio.to_thread(_sink_writes, settings, code)

        spans = exporter.get_finished_spans()
        assert {_hex(span.context.trace_id, 32) for span in spans} == {trace_id}
        [request] = [s for s in spans if s.kind == SpanKind.SERVER]
        assert request.name == "POST /v1/bookings/{code}/events" and _parent(request) == caller_span
        assert request.attributes is not None and request.attributes["status"] == 201
        [append] = [s for s in spans if s.name == "ledger.append"]
        assert _parent(append) == _id(request)
        # The outbox rows carry the append call's context: the relay's sends are its children, and
        # each sink write is the child of the send that carried its event.
        assert {row["traceparent"] for row in rows} == {f"00-{trace_id}-{_id(append)}-01"}
        sends = {s.attributes["version"]: s for s in spans if s.name == "relay.send"}  # type: ignore[index]
        writes = {s.attributes["version"]: s for s in spans if s.name == "sink.write"}  # type: ignore[index]
        assert set(sends) == set(writes) == {1, 2}
        assert all(_parent(send) == _id(append) and send.kind == SpanKind.PRODUCER for send in sends.values())
        assert all(_parent(writes[v]) == _id(sends[v]) and writes[v].kind == SpanKind.CONSUMER for v in (1, 2))
    finally:
        tracing.shutdown()


def _sink_writes(settings, code: str, timeout: float = 60) -> None:
    """The sink's own write of the events of `code`, read from the topic's partitions (assigned, not
    subscribed: no wait for the group)."""
    sink = Sink(settings)
    store = dynamodb.client(settings.dynamo)
    dynamodb.ensure_table(store, settings.dynamo.table)
    consumer = Consumer(consumer_config(settings.kafka))
    consumer.assign([TopicPartition(settings.kafka.topic, p, 0) for p in range(settings.kafka.partitions)])
    deadline = time.monotonic() + timeout
    try:
        with ThreadPoolExecutor(2) as executor:
            written: set[str] = set()
            while written != {"1", "2"}:
                assert time.monotonic() < deadline, "the sink got no events"
                messages = [m for m in consumer.consume(100, timeout=0.5) if not m.error() and m.key() == code.encode()]
                sink._write_batch(consumer, messages, store, executor, threading.Event())
                written = set(_versions(settings, store, code))
    finally:
        consumer.close()


def _versions(settings, store, code: str) -> list[str]:
    page = store.query(TableName=settings.dynamo.table, KeyConditionExpression="booking_code = :c",
                       ExpressionAttributeValues={":c": {"S": code}}, ConsistentRead=True)
    return [item["version"]["N"] for item in page["Items"]]
