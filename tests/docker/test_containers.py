"""The service image as containers (testcontainers) against containerized Postgres, broker and DynamoDB Local.

What the Compose test does with the production file, this does piece by piece from Python, the way a
department's own test suite would use our image: Postgres through testcontainers' Postgres module,
`booking-ledger migrate` as a one-shot container, then the API, a relay and a sink; append and read
through the API, and see the event replicated into DynamoDB. Ports are published on 127.0.0.1 only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack.docker import ROOT, Engine, Images
from devstack.harness import run_sql
from devstack.processes import wait_until
from migrations.runner import head_revision
from tests.conftest import random_code, sql
from tests.docker.test_compose import versions_in_dynamodb

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]


def on_loopback(container: Any, port: int) -> Any:
    """Publish `port` on 127.0.0.1 (a port of Docker's choosing), never on every interface."""
    container.ports.pop(str(port), None)
    container.ports[f"{port}/tcp"] = ("127.0.0.1",)
    return container


@pytest.fixture
def started(docker_engine: Engine) -> Iterator[list[Any]]:
    """Containers a test starts (appended in order), removed in reverse order afterwards."""
    containers: list[Any] = []
    yield containers
    for container in reversed(containers):
        container.stop()


def test_the_service_image_migrates_appends_reads_and_replicates(started: list[Any]) -> None:
    from testcontainers.community.postgres import PostgresContainer
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network

    network = Network().create()
    started.append(network)
    network.stop = network.remove  # type: ignore[method-assign]

    def start(container: Any, *aliases: str) -> Any:
        container.with_network(network).with_network_aliases(*aliases)
        started.append(container)
        return container.start()

    postgres = start(on_loopback(PostgresContainer(Images.POSTGRES, username="ledger", password="ledger",
                                                   dbname="ledger", driver=None), 5432), "postgres")
    start(DockerContainer(Images.BROKER), "kafka")
    dynamodb = start(on_loopback(DockerContainer(Images.DYNAMODB), 8000), "dynamodb")
    # As a DBA would: the roles (deploy/roles.sql) and, for this test, their passwords.
    database = postgres.get_connection_url(host="127.0.0.1")
    run_sql(database, (ROOT / "deploy" / "roles.sql").read_text(),
            (ROOT / "deploy" / "compose-passwords.sql").read_text())
    env = {"LEDGER_KAFKA_BOOTSTRAP": "kafka:9092", "LEDGER_DYNAMODB_ENDPOINT": "http://dynamodb:8000",
           "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}

    def as_role(role: str) -> str:
        return f"postgresql://{role}:{role}@postgres:5432/ledger"

    def service(role: str, *command: str) -> Any:
        return (DockerContainer(Images.SERVICE).with_envs(**env, LEDGER_DATABASE_URL=as_role(role))
                .with_command(list(command)))

    migrate = start(service("ledger_owner", "booking-ledger", "migrate"))
    assert migrate.get_wrapped_container().wait(timeout=120)["StatusCode"] == 0, migrate.get_logs()
    assert sql(database, "SELECT version_num FROM alembic_version") == head_revision()

    api = start(on_loopback(service("ledger_api", "booking-ledger", "api").with_env("LEDGER_HTTP_HOST", "0.0.0.0")
                            .with_env("LEDGER_HTTP_WORKERS", "1"), 8000))
    start(service("ledger_relay", "booking-ledger", "relay"))
    start(service("ledger_api", "booking-ledger", "sink"))  # the sink uses no Postgres
    url = f"http://127.0.0.1:{api.get_exposed_port(8000)}"

    def ready() -> bool:
        try:
            return httpx.get(url + "/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 90, interval=0.3, what="the API container to be ready")
    exit_code, output = api.exec(["env", f"LEDGER_DATABASE_URL={as_role('ledger_keys')}", "booking-ledger", "keys",
                                  "create", "--department", "hotel", "--scopes", "read,write"])
    assert exit_code == 0, output
    headers = {"Authorization": f"Bearer {output.decode().strip().splitlines()[-1]}"}
    code = random_code("TC")
    appended = httpx.post(f"{url}/v1/bookings/{code}/events", headers=headers, timeout=30, json={
        "expected_version": 0, "events": [{"type": "BookingPriced", "price": {"amount": "42.00", "currency": "EUR"}}]})
    assert appended.status_code == 201, appended.text
    read = httpx.get(f"{url}/v1/bookings/{code}/events", headers=headers, timeout=30)
    assert read.status_code == 200
    assert [(e["version"], e["price"]) for e in read.json()["events"]] == [(1, {"amount": "42.00", "currency": "EUR"})]

    endpoint = f"http://127.0.0.1:{dynamodb.get_exposed_port(8000)}"
    wait_until(lambda: versions_in_dynamodb(endpoint, code) == [1], 90, interval=0.5, what="the event in DynamoDB")
