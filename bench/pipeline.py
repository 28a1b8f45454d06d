"""Relay, sink and end-to-end measurements against the bench's own broker and DynamoDB Local."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import asyncpg
from confluent_kafka import Producer

from cdc.kafka import ensure_topic, producer_config
from core import dynamodb
from core.events import EVENT_COLUMNS, encode_event, event_from_row
from core.outbox import OUTBOX_BACKLOG_SQL
from core.pg import connect
from core.settings import DynamoSettings, KafkaSettings


def scrape(port: int) -> dict[str, float]:
    """A process's Prometheus metrics, as {sample name with labels: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def histogram_quantiles(metrics: dict[str, float], name: str, quantiles=(0.5, 0.99)) -> dict[str, float | None]:
    """Quantiles from a Prometheus histogram's cumulative buckets, interpolated as Prometheus does."""
    buckets = sorted(
        (float(key.split('le="')[1].split('"')[0]), value)
        for key, value in metrics.items() if key.startswith(f"{name}_bucket{{")
    )
    total = buckets[-1][1] if buckets else 0
    found: dict[str, float | None] = {}
    for q in quantiles:
        if not total:
            found[f"p{round(q * 100)}_ms"] = None
            continue
        rank, lower_bound, lower_count = q * total, 0.0, 0.0
        for bound, count in buckets:
            if count >= rank:
                if bound == float("inf"):
                    found[f"p{round(q * 100)}_ms"] = lower_bound * 1000
                else:
                    share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
                    found[f"p{round(q * 100)}_ms"] = (lower_bound + (bound - lower_bound) * share) * 1000
                break
            lower_bound, lower_count = bound, count
    return found


def outbox(url: str) -> tuple[int, float]:
    async def run() -> tuple[int, float]:
        conn = await asyncpg.connect(url)
        try:
            count, age = await conn.fetchrow(OUTBOX_BACKLOG_SQL)
            return count, float(age or 0)
        finally:
            await conn.close()

    return asyncio.run(run())


def ledger_events(url: str, limit: int) -> list:
    async def run() -> list:
        conn = await connect(url)
        try:
            rows = await conn.fetch(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY position DESC LIMIT $1", limit)
            return [event_from_row(row) for row in rows]
        finally:
            await conn.close()

    return asyncio.run(run())


def raw_produce(settings: KafkaSettings, topic: str, messages: list[tuple[bytes, bytes]]) -> float:
    """Seconds a plain confluent-kafka loop, configured as the relay's producer, takes to have
    `messages` acknowledged."""
    ensure_topic(settings, topic)
    producer = Producer(producer_config(settings))
    failed = []
    started = time.perf_counter()
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=lambda err, _msg: err and failed.append(err))
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(60)
    elapsed = time.perf_counter() - started
    if failed:
        raise RuntimeError(f"raw produce: {len(failed)} messages not acknowledged: {failed[0]}")
    return elapsed


def raw_batch_write(settings: DynamoSettings, table: str, items: list, threads: int) -> float:
    """Seconds plain boto3 batch_write_item calls (25 items each, `threads` in parallel, unprocessed
    items sent again) take to store `items`."""
    client = dynamodb.client(settings)
    dynamodb.ensure_table(client, table)
    chunks = [items[i : i + 25] for i in range(0, len(items), 25)]

    def write(chunk: list) -> None:
        requests = [{"PutRequest": {"Item": item}} for item in chunk]
        while requests:
            answer = client.batch_write_item(RequestItems={table: requests})
            requests = answer.get("UnprocessedItems", {}).get(table, [])

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, chunks))
    return time.perf_counter() - started


@dataclass
class LagProbe:
    """Watches new bookings arrive in DynamoDB: for every `every`-th booking created after start,
    the time from its commit (recorded_at) to the first consistent read that finds it."""

    url: str
    settings: DynamoSettings
    every: int = 10
    lags: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, lag)
    backlog: list[tuple[float, int, float]] = field(default_factory=list)  # (t, rows, oldest age)
    unseen: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.started = time.time()
        self._threads = [threading.Thread(target=self._watch, daemon=True),
                         threading.Thread(target=self._sample_backlog, daemon=True)]
        for thread in self._threads:
            thread.start()

    def stop(self, drain_timeout: float) -> None:
        self._drain_deadline = time.monotonic() + drain_timeout
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _sample_backlog(self) -> None:
        async def run() -> None:
            conn = await asyncpg.connect(self.url)
            try:
                while not self._stop.is_set():
                    count, age = await conn.fetchrow(OUTBOX_BACKLOG_SQL)
                    self.backlog.append((time.time() - self.started, count, float(age or 0)))
                    await asyncio.sleep(0.5)
            finally:
                await conn.close()

        asyncio.run(run())

    def _watch(self) -> None:
        client = dynamodb.client(self.settings)

        async def fetch_new(conn: asyncpg.Connection, after: int) -> list:
            return await conn.fetch(
                "SELECT position, booking_code, extract(epoch FROM recorded_at) AS at FROM events "
                "WHERE position > $1 AND version = 1 AND recorded_at >= to_timestamp($2) ORDER BY position",
                after, self.started)

        loop = asyncio.new_event_loop()
        conn = loop.run_until_complete(asyncpg.connect(self.url))
        pending: dict[str, float] = {}
        after, count = 0, 0
        try:
            while not self._stop.is_set() or (pending and time.monotonic() < self._drain_deadline):
                for row in loop.run_until_complete(fetch_new(conn, after)):
                    after = row["position"]
                    count += 1
                    if count % self.every == 0:
                        pending[row["booking_code"]] = float(row["at"])
                waiting = list(pending)
                for start in range(0, len(waiting), 100):
                    codes = waiting[start : start + 100]
                    keys = [{"booking_code": {"S": c}, "version": {"N": "1"}} for c in codes]
                    answer = client.batch_get_item(
                        RequestItems={self.settings.table: {"Keys": keys, "ConsistentRead": True}})
                    now = time.time()
                    for item in answer["Responses"].get(self.settings.table, []):
                        code = item["booking_code"]["S"]
                        self.lags.append((pending[code] - self.started, now - pending.pop(code)))
                time.sleep(0.05)
            self.unseen = len(pending)
        finally:
            loop.run_until_complete(conn.close())
            loop.close()


def messages_of(events: list) -> list[tuple[bytes, bytes]]:
    return [(e.booking_code.encode(), encode_event(e)) for e in events]


