"""docker-compose.yml, really run: the production topology on the local images (docker-compose.local.yml).

Migrate runs once, then the API, two relays (one leads), the sink and the webhooks' worker (it
leads). An event appended through the
published API port reaches DynamoDB; the leading relay's container is killed and the standby takes
over; the broker's container is replaced and its volume still holds the topic and the sink's
offsets; `down -v` leaves nothing of the project behind.
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from botocore.exceptions import BotoCoreError

from core.dynamodb import client as dynamodb_client
from core.settings import DynamoSettings
from devstack.docker import COMPOSE_FILES, KEYS_ROLE, Compose, Engine, Images
from devstack.harness import free_port
from devstack.kafka import kafka_version
from devstack.processes import wait_until
from tests.conftest import random_code
from tests.docker.conftest import TEST_PROJECT_PREFIX

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]
LEADS = "relay is the leader"
# Run in the sink's container: the messages in the topic and the sink group's committed offsets.
KAFKA_COUNTS = """
from confluent_kafka import Consumer, TopicPartition
consumer = Consumer({"bootstrap.servers": "kafka:9092", "group.id": "booking-ledger-sink"})
topic = consumer.list_topics("booking-events", timeout=20).topics["booking-events"]
partitions = [TopicPartition("booking-events", p) for p in topic.partitions]
messages = sum(consumer.get_watermark_offsets(p, timeout=20)[1] for p in partitions)
committed = sum(max(p.offset, 0) for p in consumer.committed(partitions, timeout=20))
print(messages, committed)
"""


def append(api: str, key: str, code: str, expected_version: int) -> None:
    answer = httpx.post(f"{api}/v1/bookings/{code}/events", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                        json={"expected_version": expected_version,
                              "events": [{"type": "BookingPriced", "price": {"amount": "99.50", "currency": "EUR"}}]})
    assert answer.status_code == 201, answer.text


def versions_in_dynamodb(endpoint: str, code: str) -> list[int]:
    client = dynamodb_client(DynamoSettings(endpoint=endpoint, region="eu-west-1"))
    try:
        page = client.query(TableName="booking_events", KeyConditionExpression="booking_code = :c",
                            ExpressionAttributeValues={":c": {"S": code}}, ConsistentRead=True)
    except (client.exceptions.ResourceNotFoundException, BotoCoreError):
        return []  # no table yet, or DynamoDB Local still starting
    return sorted(int(item["version"]["N"]) for item in page["Items"])


@pytest.mark.timeout(30)
def test_the_broker_is_the_version_make_run_uses() -> None:
    production, local = (path.read_text() for path in COMPOSE_FILES)
    assert f"image: apache/kafka:{kafka_version()}\n" in production
    assert f"image: {Images.BROKER}\n" in local


def kafka_counts(engine: Engine, compose: Compose) -> tuple[int, int] | None:
    """(messages in the topic, offsets the sink committed), or None while the broker does not answer."""
    [sink] = compose.containers("sink")
    done = engine.docker("exec", sink, "python", "-c", KAFKA_COUNTS, capture=True, check=False)
    counts = done.stdout.split()
    return (int(counts[0]), int(counts[1])) if done.returncode == 0 and len(counts) == 2 else None


def test_the_compose_topology_appends_replicates_and_fails_over(docker_engine: Engine) -> None:
    compose = Compose(docker_engine, project=f"{TEST_PROJECT_PREFIX}{uuid.uuid4().hex[:8]}", api_port=free_port())
    try:
        compose.up()
        assert [c for c in compose.containers("migrate")], "migrate ran once"
        created = compose.run("exec", "-T", *KEYS_ROLE, "api", "booking-ledger", "keys", "create", "--department",
                              "hotel", "--scopes", "read,write", capture=True)
        key = created.stdout.strip().splitlines()[-1]
        dynamodb = "http://" + compose.published("dynamodb", 8000)
        code = random_code("COMPOSE")
        append(compose.api_url, key, code, expected_version=0)
        wait_until(lambda: versions_in_dynamodb(dynamodb, code) == [1], 90, interval=0.5, what="the event in DynamoDB")

        relays = compose.containers("relay")
        assert len(relays) == 2

        def logs(container: str) -> str:
            return docker_engine.docker("logs", container, capture=True).stderr + \
                docker_engine.docker("logs", container, capture=True).stdout

        leader = wait_until(lambda: next((r for r in relays if LEADS in logs(r)), None), 60, what="a leading relay")
        [deliver] = compose.containers("deliver")  # the webhooks' worker connects as its own role and leads
        wait_until(lambda: "deliver is the leader" in logs(deliver), 60, interval=0.5,
                   what="the deliver worker to lead")
        standby = next(r for r in relays if r != leader)
        assert LEADS not in logs(standby)
        docker_engine.docker("kill", leader, capture=True)
        killed_at = time.monotonic()
        wait_until(lambda: LEADS in logs(standby), 30, interval=0.2, what="the standby to lead")
        assert time.monotonic() - killed_at < 10

        append(compose.api_url, key, code, expected_version=1)
        wait_until(lambda: versions_in_dynamodb(dynamodb, code) == [1, 2], 90, interval=0.5,
                   what="the event appended after the failover in DynamoDB")

        # A new broker container on the same volume: the topic and the group's offsets are still there.
        def all_committed() -> tuple[int, int] | None:
            counts = kafka_counts(docker_engine, compose)
            return counts if counts and counts[0] == counts[1] >= 2 else None

        before = wait_until(all_committed, 60, interval=1, what="the sink to commit every message")
        [broker] = compose.containers("kafka")
        old_id = docker_engine.docker("inspect", "--format", "{{.Id}}", broker, capture=True).stdout
        compose.run("up", "--detach", "--no-build", "--no-deps", "--force-recreate", "kafka")
        assert docker_engine.docker("inspect", "--format", "{{.Id}}", broker, capture=True).stdout != old_id
        assert wait_until(lambda: kafka_counts(docker_engine, compose), 90, interval=1, what="the new broker") == before
        append(compose.api_url, key, code, expected_version=2)
        wait_until(lambda: versions_in_dynamodb(dynamodb, code) == [1, 2, 3], 120, interval=0.5,
                   what="the event appended after the broker was replaced in DynamoDB")
    finally:
        compose.down()
    label = f"label=com.docker.compose.project={compose.project}"
    for kind in ("ps", "network", "volume"):
        command = ["ps", "-aq"] if kind == "ps" else [kind, "ls", "-q"]
        assert docker_engine.docker(*command, "--filter", label, capture=True).stdout.split() == [], kind
