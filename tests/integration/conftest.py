"""The pipeline's real parts: a 3-node Apache Kafka cluster, DynamoDB Local, and relay/sink as processes."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import asyncpg
import pytest
from confluent_kafka import Consumer, TopicPartition

from core import dynamodb
from core.settings import DatabaseSettings, DynamoSettings, KafkaSettings, Settings
from devstack.harness import CLI, LedgerProcess, process_env
from devstack.kafka import KafkaCluster
from devstack.postgres import LocalPostgres
from devstack.processes import DynamoDBLocal, wait_until
from migrations.runner import upgrade
from service.ledger.append import Append, AppendResult, append
from service.ledger.groupcommit import GroupCommit
from tests import scratch
from tests.conftest import free_port, sql

__all__ = ["CLI", "Pipeline", "Worker", "Writer", "wait_until"]
LOGS = scratch.folder("booking-ledger-test-logs-")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The servers' and workers' logs are kept only when a test failed."""
    if exitstatus == 0:
        shutil.rmtree(LOGS, ignore_errors=True)


@dataclass
class Writer:
    """One write path of the append contract. `append` takes what service.ledger.append.append takes
    (but the pool) and must answer, or raise, exactly as it does."""

    name: str
    pool: asyncpg.Pool
    append: Callable[..., Awaitable[AppendResult]]


@pytest.fixture(params=["single", "group_commit"])
async def writer(request: pytest.FixtureRequest, pool: asyncpg.Pool) -> AsyncIterator[Writer]:
    """Each write path in turn, as eventsourcing runs its recorder tests over every backend: a single
    append (a batch of one), and group commit (concurrent appends share a call)."""
    if request.param == "single":
        yield Writer("single", pool, lambda **append_args: append(pool, **append_args))
        return
    group = GroupCommit(pool)
    yield Writer("group_commit", pool, lambda **append_args: group.append(Append(**append_args)))
    await group.close()


@pytest.fixture(scope="session")
def broker() -> Iterator[KafkaCluster]:
    """Three KRaft nodes: topics get 3 replicas and need 2 in sync, so one node may fail.

    A follower that stops fetching leaves the in-sync set after 10 s (Kafka's default is 30 s),
    so that acks=all produces do not wait half a minute for a frozen node in the fault tests.
    """
    cluster = KafkaCluster(LOGS / "kafka", [(free_port(), free_port()) for _ in range(3)], heap="384m",
                           replica_lag_ms=10_000)
    try:
        cluster.start(timeout=180)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def dynamodb_local() -> Iterator[DynamoDBLocal]:
    server = DynamoDBLocal(free_port(), log_file=LOGS / "dynamodb.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pipeline_template(postgres: LocalPostgres) -> str:
    """A migrated database to copy: each pipeline test gets its own ledger (and relay lock)."""
    sql(postgres.url, 'CREATE DATABASE "pipeline_template"')
    url = postgres.url.rsplit("/", 1)[0] + "/pipeline_template"
    upgrade(url)
    return url


Worker = LedgerProcess  # `booking-ledger relay|sink|api` as a child process we can kill -9


@dataclass
class Pipeline:
    """One test's own ledger database, topic, consumer group and DynamoDB table."""

    database_url: str
    broker: KafkaCluster
    dynamodb: DynamoDBLocal
    name: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    workers: list[Worker] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return Settings(
            database=DatabaseSettings(url=self.database_url, pool_size=20, command_timeout=30),
            kafka=KafkaSettings(bootstrap=self.broker.bootstrap, topic=f"events-{self.name}",
                                dead_letter_topic=f"dead-{self.name}", sink_group=f"sink-{self.name}",
                                partitions=3),
            dynamo=DynamoSettings(endpoint=self.dynamodb.endpoint, table=f"events_{self.name}", region="eu-west-1"),
        )

    def env(self, **extra: str) -> dict[str, str]:
        return process_env(self.settings, **extra)

    def start(self, kind: str, **extra: str) -> Worker:
        worker = Worker(kind, self.env(**extra), LOGS / f"{self.name}-{kind}-{len(self.workers)}.log").start()
        self.workers.append(worker)
        return worker

    def dynamodb_client(self):
        return dynamodb.client(self.settings.dynamo)

    def items(self, code: str) -> dict[int, dict]:
        client = self.dynamodb_client()
        try:
            page = client.query(TableName=self.settings.dynamo.table, KeyConditionExpression="booking_code = :c",
                                ExpressionAttributeValues={":c": {"S": code}}, ConsistentRead=True)
        except client.exceptions.ResourceNotFoundException:
            return {}
        return {int(item["version"]["N"]): item for item in page["Items"]}

    def topic_messages(self, expected: int, timeout: float = 30) -> list[tuple[str, bytes]]:
        """(key, value) of the topic's messages from the start, waiting for at least `expected`."""
        consumer = Consumer({"bootstrap.servers": self.broker.bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                             "enable.auto.commit": False, "session.timeout.ms": 6000})
        try:
            topic = self.settings.kafka.topic
            metadata = consumer.list_topics(topic, timeout=10)
            partitions = list(metadata.topics[topic].partitions) if topic in metadata.topics else []
            consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
            messages: list[tuple[str, bytes]] = []
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and len(messages) < expected:
                message = consumer.poll(0.5)
                if message is not None and not message.error():
                    messages.append((message.key().decode(), message.value()))
            # a little longer, to see duplicates that are on their way
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                message = consumer.poll(0.2)
                if message is not None and not message.error():
                    messages.append((message.key().decode(), message.value()))
            return messages
        finally:
            consumer.close()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


@pytest.fixture
def pipeline(postgres: LocalPostgres, pipeline_template: str, broker: KafkaCluster,
             dynamodb_local: DynamoDBLocal):
    name = f"pipeline_{uuid.uuid4().hex[:10]}"

    sql(postgres.url, f'CREATE DATABASE "{name}" TEMPLATE "pipeline_template"')
    result = Pipeline(postgres.url.rsplit("/", 1)[0] + "/" + name, broker, dynamodb_local)
    yield result
    result.stop()
