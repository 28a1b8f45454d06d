"""A replicated ledger for the failover tests: etcd + three Patroni/Postgres nodes (devstack.ha),
migrated through the multi-host URL, the real API (two workers) in front of it, and on demand the
pipeline behind it (broker, DynamoDB Local, a relay and a sink)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cdc.verify import Report, verify
from core.pg import connect_primary
from core.settings import DatabaseSettings, DynamoSettings, KafkaSettings, Settings
from devstack.ha import HACluster
from devstack.harness import LedgerProcess, free_port, process_env
from devstack.kafka import KafkaCluster
from devstack.processes import DynamoDBLocal
from tests.e2e.conftest import Server, make_key, start_server

if shutil.which("patroni") is None or shutil.which("etcd") is None:
    pytest.skip("Patroni and etcd are not installed (make install: scripts/system-deps.sh)", allow_module_level=True)

# The cluster itself (ha_root, ha_cluster) is tests/conftest.py's: the console's browser test shows it too.


@pytest.fixture(scope="session")
def ha_api(ha_cluster: HACluster) -> Iterator[Server]:
    server = start_server(ha_cluster.url, workers=2, LEDGER_RATE_LIMIT="0")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ha_keys(ha_cluster: HACluster) -> dict[str, str]:
    return {dept: make_key(ha_cluster.url, dept, "read,write") for dept in ("hotel", "car", "flight")}


@dataclass
class HAPipeline:
    """The broker, DynamoDB Local (its data on disk: it may be stopped and started again), and a relay
    and a sink on the cluster's multi-host URL, each serving its metrics."""

    settings: Settings
    relay: LedgerProcess
    sink: LedgerProcess
    relay_metrics: int
    sink_metrics: int
    dynamodb: DynamoDBLocal

    def outbox(self) -> int:
        async def count() -> int:
            conn = await connect_primary(self.settings.database.url, timeout=30)
            try:
                return int(await conn.fetchval("SELECT count(*) FROM outbox"))
            finally:
                await conn.close()

        return asyncio.run(count())

    def verify(self) -> Report:
        return asyncio.run(verify(self.settings))


@pytest.fixture(scope="session")
def ha_pipeline(ha_cluster: HACluster, ha_root: Path) -> Iterator[HAPipeline]:
    logs = ha_root / "pipeline"
    logs.mkdir(exist_ok=True)
    broker = KafkaCluster(logs / "kafka", [(free_port(), free_port())], heap="384m")
    dynamodb = DynamoDBLocal(free_port(), data_dir=logs / "dynamodb", log_file=logs / "dynamodb.log")
    processes: list[LedgerProcess] = []
    try:
        broker.start()
        dynamodb.start()
        settings = Settings(
            database=DatabaseSettings(url=ha_cluster.url),
            kafka=KafkaSettings(bootstrap=broker.bootstrap, partitions=3, sink_group="ha-sink"),
            dynamo=DynamoSettings(endpoint=dynamodb.endpoint, region="eu-west-1"),
        )
        relay_metrics = free_port()
        relay = LedgerProcess("relay", process_env(settings, LEDGER_RELAY_METRICS_PORT=str(relay_metrics)),
                              logs / "relay.log").start()
        processes.append(relay)
        sink_metrics = free_port()
        sink = LedgerProcess("sink", process_env(settings, LEDGER_SINK_METRICS_PORT=str(sink_metrics)),
                             logs / "sink.log").start()
        processes.append(sink)
        relay.wait_for_log("relay is the leader")
        yield HAPipeline(settings, relay, sink, relay_metrics, sink_metrics, dynamodb)
    finally:
        for process in processes:
            process.stop()
        broker.stop()
        dynamodb.stop()
