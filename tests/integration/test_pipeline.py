"""Outbox -> relay -> Kafka -> sink -> DynamoDB, on the real broker and DynamoDB Local, with faults."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator

import asyncpg
import httpx
import msgspec
from confluent_kafka import Consumer, Producer, TopicPartition

from cdc.replay import replay
from cdc.verify import verify
from core import dynamodb
from core.events import decode_event, encode_event
from core.money import Money
from devstack.harness import APPEND_SQL, as_role
from service.ledger.append import NewEvent, append
from service.ledger.db import create_pool
from tests.conftest import free_port, random_code, sql
from tests.e2e.conftest import auth, make_key, signed_in, start_server
from tests.integration.conftest import CLI, Pipeline, Worker, wait_until


def append_events(pipeline: Pipeline, codes: list[str], per_booking: int) -> list:
    """Create each booking with one event, then append `per_booking - 1` more, one call each."""

    async def run() -> list:
        pool = await create_pool(pipeline.settings.database)
        try:
            events = []
            for code in codes:
                for version in range(per_booking):
                    result = await append(
                        pool, code=code, department="hotel", may_write_any=False,
                        expected_version=0 if version == 0 else None,
                        events=[NewEvent(uuid.uuid4(), "BookingPriced", Money.parse(f"{100 + version}", "EUR"),
                                         {"n": version}, None)],
                    )
                    events.extend(result.events)
            return events
        finally:
            await pool.close()

    return asyncio.run(run())


def in_dynamodb(pipeline: Pipeline, events: list) -> bool:
    by_code = defaultdict(dict)
    for event in events:
        by_code[event.booking_code][event.version] = dynamodb.item_of(event)
    return all(pipeline.items(code) == expected for code, expected in by_code.items())


def wait_replicated(pipeline: Pipeline, events: list, timeout: float = 90) -> None:
    wait_until(lambda: in_dynamodb(pipeline, events), timeout, interval=0.5, what="events in DynamoDB")


def outbox_size(pipeline: Pipeline) -> int:
    return sql(pipeline.database_url, "SELECT count(*) FROM outbox")


def assert_version_order(messages: list[tuple[str, bytes]]) -> None:
    """Per booking, no version arrives before the first arrival of the version below it."""
    seen: dict[str, set[int]] = defaultdict(set)
    for key, value in messages:
        event = decode_event(value)
        assert key == event.booking_code
        previous = event.version - 1
        assert event.version == 1 or previous in seen[key], f"{key} v{event.version} before v{previous}"
        seen[key].add(event.version)


def metric(text: str, name: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def samples(text: str, name: str) -> dict[str, float]:
    """Every sample of a labelled metric: {'{label="value",...}': value}."""
    return {line[len(name):].rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(name + "{")}


def scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def console_env(pipeline: Pipeline) -> dict[str, str]:
    settings = pipeline.settings
    return {"LEDGER_DYNAMODB_ENDPOINT": settings.dynamo.endpoint, "LEDGER_DYNAMODB_TABLE": settings.dynamo.table,
            "LEDGER_KAFKA_BOOTSTRAP": settings.kafka.bootstrap, "LEDGER_KAFKA_TOPIC": settings.kafka.topic,
            "LEDGER_SINK_GROUP": settings.kafka.sink_group}


def logged(text: str, event: str) -> list[dict]:
    """The JSON log lines of one kind (`event`) in a process's log."""
    lines = (line for line in text.splitlines() if line.startswith("{"))
    return [record for record in map(msgspec.json.decode, lines) if record.get("event") == event]


def test_appends_through_the_api_reach_dynamodb_with_identical_content(pipeline: Pipeline) -> None:
    """... and one trace id finds each append in the API's, the relay's and the sink's logs: the one
    its traceparent header gave, or a new one when it had none."""
    server = start_server(pipeline.database_url, **console_env(pipeline))
    relay_metrics, sink_metrics = free_port(), free_port()
    relay = pipeline.start("relay", LEDGER_RELAY_METRICS_PORT=str(relay_metrics))
    sink = pipeline.start("sink", LEDGER_SINK_METRICS_PORT=str(sink_metrics))
    given_trace = uuid.uuid4().hex
    try:
        key = make_key(pipeline.database_url, "hotel", "read,write")
        code = random_code("E2E")
        with httpx.Client(timeout=30) as client:
            traced = {**auth(key), "traceparent": f"00-{given_trace}-{uuid.uuid4().hex[:16]}-01"}
            first = client.post(f"{server.url}/v1/bookings/{code}/events", headers=traced, json={
                "expected_version": 0,
                "events": [{"type": "BookingPriced", "price": {"amount": "120.00", "currency": "EUR"},
                            "data": {"reason": "quote", "nested": {"b": [1, 2.5, None]}},
                            "occurred_at": "2026-11-26T10:00:00Z"},
                           {"type": "Note"}]})
            second = client.post(f"{server.url}/v1/bookings/{code}/events", headers=auth(key), json={
                "expected_version": 2,
                "events": [{"type": "PriceChanged", "price": {"amount": "5", "currency": "KWD"}}]})
        assert first.status_code == 201 and second.status_code == 201
        events = [msgspec.convert(e, type=type(decode_event(msgspec.json.encode(e))))
                  for e in first.json()["events"] + second.json()["events"]]
        wait_replicated(pipeline, events, timeout=60)
        items = pipeline.items(code)
        assert items[1]["price_amount"] == {"S": "120.00"} and items[1]["price_currency"] == {"S": "EUR"}
        assert msgspec.json.decode(items[1]["data"]["S"]) == {"reason": "quote", "nested": {"b": [1, 2.5, None]}}
        assert "price_amount" not in items[2] and "data" not in items[2]
        assert items[3]["price_amount"] == {"S": "5.000"}
        assert outbox_size(pipeline) == 0
        relay_text, sink_text = scrape(relay_metrics), scrape(sink_metrics)
        assert "ledger_relay_leader 1.0" in relay_text
        assert samples(relay_text, "ledger_relay_leader_info") == {
            f'{{host="{socket.gethostname()}",pid="{relay.process.pid}"}}': 1.0}
        assert metric(relay_text, "ledger_relay_sent_total") >= 3
        assert metric(relay_text, "ledger_relay_commit_to_ack_seconds_count") >= 3
        assert metric(sink_text, "ledger_sink_written_total") >= 3
        assert metric(sink_text, "ledger_sink_commit_to_write_seconds_count") >= 3
        # Every partition of the topic (3 here) has a lag, and all of it is written by now.
        wait_until(lambda: samples(scrape(sink_metrics), "ledger_sink_consumer_lag") == {
            f'{{partition="{p}"}}': 0.0 for p in range(3)}, 15, what="a lag of 0 on every partition")

        # The console sees the same: replicated, the relay process by name as the leader and since
        # when, every partition written up to its end (once the sink committed its offsets).
        with httpx.Client(base_url=server.url, timeout=15) as client:
            cookie = signed_in(server.url, key)
            booking_page = client.get("/console/booking", params={"code": code}, headers=cookie).text

            last = [""]

            def caught_up() -> str | None:
                last[0] = client.get("/console/pipeline", headers=cookie).text
                return last[0] if "DynamoDB holds every committed event" in last[0] else None

            try:
                pipeline_page = wait_until(caught_up, 15, what="the pipeline page to show no event waiting")
            except TimeoutError:
                raise AssertionError(last[0][last[0].find("<main>"):]) from None
        assert "up to date" in booking_page and "0 events" in booking_page
        assert f"{socket.gethostname()}, pid {relay.process.pid}" in pipeline_page
        assert "DynamoDB unreachable" not in pipeline_page and "nothing waits" in pipeline_page
        assert "Kafka unreachable" not in pipeline_page and "<dd>–</dd>" not in pipeline_page  # connected since
        partitions = re.findall(r'<tr><td class="num">(\d+)</td><td class="num">(\d+)</td><td class="num">(\d+)</td>'
                                r'<td class="num ok">0</td>', pipeline_page)
        assert sorted(int(p) for p, *_ in partitions) == [0, 1, 2]
        assert sum(int(end) for *_, end in partitions) >= 3 and all(written == end for _, written, end in partitions)

        # One trace id per append, in every process's log: the given one, and a new one.
        appends = [line for line in logged(server.log(), "request") if line["method"] == "POST"]
        assert appends[0]["trace_id"] == given_trace
        made_trace = appends[1]["trace_id"]
        assert len(made_trace) == 32 and made_trace != given_trace
        expected = {(code, 1, given_trace), (code, 2, given_trace), (code, 3, made_trace)}

        def traced(process: Worker, event: str) -> set[tuple[str, int, str]]:
            return {(line["booking_code"], line["version"], line["trace_id"]) for line in logged(process.log(), event)}

        wait_until(lambda: traced(relay, "sent") >= expected, 15, what="the relay's lines")
        wait_until(lambda: traced(sink, "written") >= expected, 15, what="the sink's lines")
    finally:
        server.stop()


@contextlib.contextmanager
def outbox_rows_locked(database_url: str) -> Iterator[None]:
    """Hold a lock on every outbox row, in another session: the relay can read and send them, but
    its DELETE of the sent rows waits until the block ends."""
    locked, release = threading.Event(), threading.Event()

    async def hold() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            async with conn.transaction():
                await conn.execute("SELECT position FROM outbox FOR UPDATE")
                locked.set()
                await asyncio.to_thread(release.wait)
        finally:
            await conn.close()

    holder = threading.Thread(target=asyncio.run, args=(hold(),))
    holder.start()
    try:
        assert locked.wait(30), "could not lock the outbox rows"
        yield
    finally:
        release.set()
        holder.join(30)


def test_relay_killed_between_produce_and_mark_loses_and_reorders_nothing(pipeline: Pipeline) -> None:
    codes = [random_code("KILL") for _ in range(3)]
    events = append_events(pipeline, codes, per_booking=4)
    with outbox_rows_locked(pipeline.database_url):
        relay = pipeline.start("relay")
        # Kafka has the events, the outbox still holds them: kill -9 in exactly that window.
        wait_until(lambda: len(pipeline.topic_messages(len(events), timeout=2)) >= len(events), 60,
                   what="messages in Kafka")
        assert outbox_size(pipeline) == len(events)
        relay.kill()
    pipeline.start("relay")
    pipeline.start("sink")
    wait_replicated(pipeline, events)
    wait_until(lambda: outbox_size(pipeline) == 0, 30, what="outbox drained")
    messages = pipeline.topic_messages(2 * len(events))
    assert len(messages) == 2 * len(events)  # every event twice: sent, not marked, sent again
    assert_version_order(messages)
    for code in codes:
        assert sorted(pipeline.items(code)) == [1, 2, 3, 4]


def test_two_relays_one_sends_and_the_standby_takes_over(pipeline: Pipeline) -> None:
    first = pipeline.start("relay")
    first.wait_for_log("relay is the leader")
    second = pipeline.start("relay")
    second.wait_for_log("relay is standby")
    pipeline.start("sink")
    before = append_events(pipeline, [random_code("HA")], per_booking=3)
    wait_replicated(pipeline, before)
    assert "relay is the leader" not in second.log()
    first.kill()
    killed_at = time.monotonic()
    second.wait_for_log("relay is the leader", timeout=10)
    assert time.monotonic() - killed_at < 5
    after = append_events(pipeline, [random_code("HA")], per_booking=3)
    wait_replicated(pipeline, after)


def test_sink_killed_after_write_before_offset_store(pipeline: Pipeline) -> None:
    codes = [random_code("SINK") for _ in range(4)]
    events = append_events(pipeline, codes, per_booking=3)
    pipeline.start("relay")
    # Offsets are committed every 10 minutes, not every second: the events are in DynamoDB and
    # their offsets are not committed when it is killed.
    sink = pipeline.start("sink", LEDGER_SINK_COMMIT_INTERVAL_MS="600000")
    wait_replicated(pipeline, events)
    sink.kill()
    pipeline.start("sink")  # consumes the same messages again
    more = append_events(pipeline, [random_code("SINK")], per_booking=2)
    wait_replicated(pipeline, events + more)
    report = asyncio.run(verify(pipeline.settings, grace=1))
    assert report.drift == [] and report.events == len(events) + len(more)


def test_dynamodb_frozen_appends_still_succeed_and_it_catches_up(pipeline: Pipeline, dynamodb_local) -> None:
    server = start_server(pipeline.database_url, **console_env(pipeline))
    sink_metrics = free_port()
    pipeline.start("relay")
    pipeline.start("sink", LEDGER_SINK_METRICS_PORT=str(sink_metrics))

    def lag() -> float:
        return sum(samples(scrape(sink_metrics), "ledger_sink_consumer_lag").values())

    try:
        key = make_key(pipeline.database_url, "hotel", "read,write")
        warmup = append_events(pipeline, [random_code("WARM")], per_booking=1)
        wait_replicated(pipeline, warmup)
        dynamodb_local.freeze()
        codes = []
        try:
            with httpx.Client(timeout=10) as client:
                for _ in range(20):
                    code = random_code("FROZEN")
                    response = client.post(f"{server.url}/v1/bookings/{code}/events", headers=auth(key),
                                           json={"expected_version": 0, "events": [{"type": "BookingPriced"}]})
                    assert response.status_code == 201
                    assert client.get(f"{server.url}/v1/bookings/{code}", headers=auth(key)).status_code == 200
                    codes.append(code)
                # The sink holds a batch it cannot write: its lag shows it.
                wait_until(lambda: lag() >= 1, 15, what="consumer lag while DynamoDB is frozen")
                page = client.get(f"{server.url}/console/booking", params={"code": codes[0]},
                                  headers=signed_in(server.url, key))
                assert page.status_code == 200 and "DynamoDB unreachable" in page.text
            time.sleep(1)  # DynamoDB stays frozen a while longer
        finally:
            dynamodb_local.thaw()
        wait_until(lambda: all(pipeline.items(code) for code in codes), 90, interval=0.5, what="catch-up")
        wait_until(lambda: lag() == 0, 15, what="consumer lag back to 0")
        assert asyncio.run(verify(pipeline.settings, grace=1)).drift == []
    finally:
        server.stop()


def test_redelivered_and_out_of_order_messages_change_nothing(pipeline: Pipeline) -> None:
    code = random_code("OOO")
    events = append_events(pipeline, [code], per_booking=5)
    pipeline.start("relay")
    pipeline.start("sink")
    wait_replicated(pipeline, events)
    producer = Producer({"bootstrap.servers": pipeline.broker.bootstrap})
    for event in [events[4], events[3], events[4], events[0], events[2]]:  # v5 before v4, duplicates
        producer.produce(pipeline.settings.kafka.topic, key=code.encode(), value=encode_event(event))
    producer.flush(10)
    probe = append_events(pipeline, [random_code("PROBE")], per_booking=1)  # behind the redeliveries
    wait_replicated(pipeline, probe)
    assert in_dynamodb(pipeline, events)
    assert asyncio.run(verify(pipeline.settings, grace=1)).drift == []


def test_unparseable_messages_go_to_the_dead_letter_topic(pipeline: Pipeline) -> None:
    sink = pipeline.start("sink")
    pipeline.start("relay")
    sink.wait_for_log("sink consuming")
    producer = Producer({"bootstrap.servers": pipeline.broker.bootstrap})
    producer.produce(pipeline.settings.kafka.topic, key=b"BAD", value=b'{"not": "an event"}')
    producer.flush(10)
    events = append_events(pipeline, [random_code("AFTER")], per_booking=1)
    wait_replicated(pipeline, events)  # the sink went on past the bad message
    sink.wait_for_log("unparseable message")
    consumer_topic = pipeline.settings.kafka.dead_letter_topic
    consumer = Consumer({"bootstrap.servers": pipeline.broker.bootstrap, "group.id": uuid.uuid4().hex})
    try:
        consumer.assign([TopicPartition(consumer_topic, 0, 0)])
        message = wait_until(lambda: (m := consumer.poll(0.5)) is not None and not m.error() and m, 30,
                             what="dead letter")
        assert message.value() == b'{"not": "an event"}'
        assert dict(message.headers())["source-topic"] == pipeline.settings.kafka.topic.encode()
    finally:
        consumer.close()


def test_relay_does_not_skip_a_row_whose_transaction_commits_late(pipeline: Pipeline) -> None:
    pipeline.start("relay")
    pipeline.start("sink")

    async def held_then_later() -> tuple[list, list]:
        held = await asyncpg.connect(pipeline.database_url)
        try:
            transaction = held.transaction()
            await transaction.start()
            code = random_code("HELD")
            rows = await held.fetch(APPEND_SQL, code, "hotel", False, 0, [uuid.uuid4()], ["Held"], [None], [None],
                                    [None], [None])
            later = await asyncio.to_thread(append_events, pipeline, [random_code("LATER")], 1)
            await asyncio.to_thread(wait_replicated, pipeline, later)  # the relay passed the held row's position
            await transaction.commit()
            return rows, later
        finally:
            await held.close()

    rows, later = asyncio.run(held_then_later())
    assert rows[0]["position"] < later[0].position
    wait_until(lambda: pipeline.items(rows[0]["booking_code"]), 30, what="the late-committed event")


def test_replay_rebuilds_an_empty_table_and_verify_finds_tampering(pipeline: Pipeline) -> None:
    codes = [random_code("REPLAY") for _ in range(5)]
    events = append_events(pipeline, codes, per_booking=3)
    written = asyncio.run(replay(pipeline.settings, progress=False))
    assert written == len(events)
    assert in_dynamodb(pipeline, events)
    assert asyncio.run(replay(pipeline.settings, progress=False)) == len(events)  # idempotent
    assert asyncio.run(verify(pipeline.settings, grace=0)).drift == []

    # As if relayed long ago: an event still in the outbox counts as pending, not missing.
    sql(pipeline.database_url, "DELETE FROM outbox")
    client = pipeline.dynamodb_client()
    table = pipeline.settings.dynamo.table
    client.delete_item(TableName=table, Key={"booking_code": {"S": codes[0]}, "version": {"N": "2"}})
    client.update_item(TableName=table, Key={"booking_code": {"S": codes[1]}, "version": {"N": "1"}},
                       UpdateExpression="SET price_amount = :a", ExpressionAttributeValues={":a": {"S": "1.00"}})
    client.put_item(TableName=table, Item={"booking_code": {"S": "GHOST-1"}, "version": {"N": "1"}})
    client.put_item(TableName=table, Item={"booking_code": {"S": codes[2]}, "version": {"N": "9"}})
    report = asyncio.run(verify(pipeline.settings, grace=0))
    found = {(d.kind, d.booking_code, d.version) for d in report.drift}
    assert found == {("missing", codes[0], 2), ("different", codes[1], 1), ("extra", "GHOST-1", 1),
                     ("extra", codes[2], 9)}
    assert "price_amount" in next(d.detail for d in report.drift if d.kind == "different")

    # The commands as an operator runs them: replay repairs what is missing or different;
    # extra items are reported, not deleted.
    replayed = subprocess.run([CLI, "replay"], env=as_role(pipeline.env(), "replay"), capture_output=True, text=True,
                              timeout=120)
    assert replayed.returncode == 0 and f"replayed {len(events)} events" in replayed.stdout
    assert "event" in replayed.stderr  # the progress bar
    checked = subprocess.run([CLI, "verify", "--grace", "0"], env=as_role(pipeline.env(), "verify"),
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 1
    drift_lines = sorted(tuple(line.split()[:2]) for line in checked.stdout.splitlines()[:-1])
    assert drift_lines == sorted([("extra", "GHOST-1"), ("extra", codes[2])])
    summary = checked.stdout.splitlines()[-1]
    assert summary.startswith(f"checked 5 bookings, {len(events)} events: 2 drift (0 missing, 2 extra")
