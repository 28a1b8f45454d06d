"""Alert rules fire in a real Prometheus and resolve after healing: the relay stopped (the outbox's
oldest event ages, no relay leads), DynamoDB Local killed (the sink's writes fail), the synchronous
standby killed (one more loss would stop writes), then the other one (writes stopped). The faults
overlap, so that the test takes about as long as the slowest part takes to start again (DynamoDB
Local's JVM: tens of seconds on a busy machine).

Prometheus scrapes the replicated stack of this folder's fixtures: the API, the relay, the sink,
Patroni's and etcd's /metrics and a Postgres exporter per node, every second, and evaluates the rules of
deploy/prometheus/alerts.yml every second, with every `for:` at 1 s and the outbox's age threshold
at 2 s instead of 60 (devstack.prometheus.rules_text): the same expressions, made to fire within
seconds.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from devstack.ha import HACluster
from devstack.harness import free_port
from devstack.processes import wait_until
from devstack.prometheus import PostgresExporter, Prometheus, Target, rules_text
from tests.ha.conftest import HAPipeline, Server

REPLICA_LAG = 16 * 1024 * 1024  # bytes: a replica this close streams (the test needs no more)
OUTBOX_RULE = "max(ledger_db_outbox_oldest_age_seconds or ledger_outbox_oldest_age_seconds) >"
OUTBOX_THRESHOLD = (f"{OUTBOX_RULE} 60", f"{OUTBOX_RULE} 2")
UNDER_TEST = ("LedgerOutboxStuck", "LedgerNoRelayLeader", "LedgerDynamoDBFailing", "LedgerStandbyMissing",
              "LedgerNoSynchronousStandby")


@pytest.fixture(scope="module")
def prometheus(ha_cluster: HACluster, ha_api: Server, ha_pipeline: HAPipeline, ha_root: Path) -> Iterator[Prometheus]:
    folder = ha_root / "prometheus"
    folder.mkdir(exist_ok=True)
    rules = folder / "alerts.yml"
    rules.write_text(rules_text(for_="1s", replace=dict([OUTBOX_THRESHOLD])))
    exporters = [PostgresExporter(free_port(), ha_cluster.node_url(node), log_file=folder / f"exporter-{node.name}.log")
                 for node in ha_cluster.nodes]
    targets = [Target("api", ha_api.url.removeprefix("http://")),
               Target("relay", f"127.0.0.1:{ha_pipeline.relay_metrics}"),
               Target("sink", f"127.0.0.1:{ha_pipeline.sink_metrics}"),
               *(Target("patroni", f"127.0.0.1:{node.rest_port}", labels={"node": node.name})
                 for node in ha_cluster.nodes),
               Target("etcd", f"127.0.0.1:{ha_cluster.etcd.port}"),
               *(Target("postgres", exporter.address, labels={"node": node.name})
                 for exporter, node in zip(exporters, ha_cluster.nodes, strict=True))]
    server = Prometheus(free_port(), folder, targets, [rules], scrape_interval="1s", evaluation_interval="1s",
                        log_file=folder / "prometheus.log")
    started = time.monotonic()
    try:
        for exporter in exporters:
            exporter.start()
        server.start()
        # Every target answers, and the rules under test see a healthy stack before anything is broken.
        wait_until(lambda: len(up := server.targets_up()) == len(targets) and all(up.values()) and up, timeout=60,
                   what="every target to be scraped")
        ha_cluster.wait_replicas(2, timeout=90)
        wait_until(lambda: not set(_active(server)) & set(UNDER_TEST), timeout=60,
                   what=f"none of {UNDER_TEST} pending or firing on the healthy stack")
        print(f"\nPrometheus and the exporters scraping a healthy stack after {time.monotonic() - started:.1f}s")
        yield server
    finally:
        server.stop()
        for exporter in exporters:
            exporter.stop()


def _active(server: Prometheus) -> list[str]:
    return sorted({a["labels"]["alertname"] for a in server.alerts()})


def _append(api: Server, key: str) -> None:
    """One new booking, answered 201 (committed, so in the outbox until the relay sends it)."""
    code = f"AL-{uuid.uuid4().hex[:12]}"
    answer = httpx.post(f"{api.url}/v1/bookings/{code}/events", headers={"Authorization": f"Bearer {key}"},
                        json={"expected_version": 0, "events": [
                            {"type": "BookingPriced", "price": {"amount": "10.00", "currency": "EUR"}}]}, timeout=30)
    assert answer.status_code == 201, answer.text


def test_the_rules_fire_and_resolve_after_healing(
    prometheus: Prometheus, ha_cluster: HACluster, ha_api: Server, ha_keys: dict[str, str], ha_pipeline: HAPipeline
) -> None:
    started = time.monotonic()
    timeline: list[str] = []

    def note(what: str) -> None:
        timeline.append(f"{time.monotonic() - started:5.1f}s {what}")

    synchronous = ha_cluster.node(ha_cluster.wait_replicas(1, synchronous=True, timeout=60)[0])
    # The other replica must stream, to become the synchronous one below. After an earlier test's failover it
    # may still be rejoining, or a few bytes behind: waited for (read once, it failed a run beside a CPU hog).
    other = wait_until(lambda: next((node for node in ha_cluster.nodes if node is not synchronous
                                     and node.name in ha_cluster.replicas(max_lag=REPLICA_LAG)), None),
                       timeout=120, what="the other replica streaming")
    relay, dynamodb = ha_pipeline.relay, ha_pipeline.dynamodb
    with ThreadPoolExecutor(1) as background:
        dynamodb_back = None
        try:
            # DynamoDB Local killed (its data is on disk), and the synchronous standby with its Patroni, kill -9:
            # the other replica becomes the synchronous one, so the appends below still commit.
            dynamodb.kill()
            synchronous.kill()
            note(f"DynamoDB Local and {synchronous.name} (the synchronous standby) killed")
            _append(ha_api, ha_keys["car"])  # the relay sends it; the sink cannot write it
            prometheus.wait_for_alert("LedgerStandbyMissing", timeout=60)
            note("LedgerStandbyMissing fires")
            prometheus.wait_for_alert("LedgerDynamoDBFailing", timeout=60)
            note("LedgerDynamoDBFailing fires")
            dynamodb_back = background.submit(dynamodb.start)
            relay.stop()
            _append(ha_api, ha_keys["hotel"])  # stays in the outbox
            note("relay stopped, one more append")
            other.kill()  # no standby left: strict synchronous mode commits nothing now
            note(f"{other.name} (the other standby) killed")
            prometheus.wait_for_alert("LedgerNoSynchronousStandby", timeout=60)
            note("LedgerNoSynchronousStandby fires")
            prometheus.wait_for_alert("LedgerOutboxStuck", timeout=60)
            note("LedgerOutboxStuck fires")
            prometheus.wait_for_alert("LedgerNoRelayLeader", timeout=30)
        finally:
            for part in (synchronous, other, relay):
                if not part.alive:
                    part.start()
            if dynamodb_back is None:
                dynamodb_back = background.submit(dynamodb.start)
        note("both standbys and the relay started again")
        for alert in ("LedgerOutboxStuck", "LedgerNoRelayLeader", "LedgerNoSynchronousStandby", "LedgerStandbyMissing"):
            prometheus.wait_for_alert(alert, "inactive", timeout=90)
            note(f"{alert} resolved")
        dynamodb_back.result()
        note("DynamoDB Local started again")
    prometheus.wait_for_alert("LedgerDynamoDBFailing", "inactive", timeout=60)
    note("LedgerDynamoDBFailing resolved")
    ha_cluster.wait_replicas(2, timeout=90)
    print("\n" + "\n".join(timeline))
