"""What the relay's wait for the synchronous standby costs (not part of `make test`):

    .venv/bin/python -m tests.ha.measure_relay --rounds 3

One replicated cluster (devstack.ha) and one broker. Each round runs the relay in this process
twice, alternating: as it is (each batch waits for the synchronous standby, core.pg.standby_holds)
and with that wait replaced by nothing (what it did before). Each leg measures
- throughput: `--backlog` events appended while no relay runs, then the time to drain them;
- latency: `--lone` single appends, one every 50 ms, each followed by the NOTIFY the API sends,
  from its commit (recorded_at) to Kafka's acknowledgement (the relay's
  ledger_relay_commit_to_ack_seconds), p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import statistics
import time
import uuid

import asyncpg

import cdc.relay
from bench.pipeline import histogram_quantiles, scrape
from cdc.relay import Relay
from core.outbox import OUTBOX_CHANNEL
from core.pg import connect
from core.settings import DatabaseSettings, KafkaSettings, MetricsSettings, Settings
from devstack.ha import HACluster
from devstack.harness import APPEND_SQL, free_port
from devstack.kafka import KafkaCluster
from tests import scratch
from tests.e2e.conftest import cli


async def _no_wait(conn: asyncpg.Connection, timeout: float | None = None) -> None:
    return None


async def _append(conn: asyncpg.Connection, count: int) -> None:
    for _ in range(count):
        code = f"MR-{uuid.uuid4().hex[:12]}"
        await conn.fetch(APPEND_SQL, code, "hotel", False, 0, [uuid.uuid4()], ["BookingPriced"], [None], [None],
                         [None], [None])


async def _outbox(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM outbox"))


async def leg(settings: Settings, wait: bool, backlog: int, lone: int) -> dict[str, float | None]:
    cdc.relay.standby_holds = _ORIGINAL if wait else _no_wait
    port = free_port()
    settings = dataclasses.replace(settings, metrics=dataclasses.replace(settings.metrics, relay_port=port))
    conn = await connect(settings.database.url, timeout=30)
    writers = [await connect(settings.database.url, timeout=30) for _ in range(8)]
    try:
        await asyncio.gather(*(_append(w, backlog // len(writers)) for w in writers))
        pending = await _outbox(conn)
        stop = asyncio.Event()
        relay = Relay(settings)
        started = time.monotonic()
        task = asyncio.create_task(relay.run(stop))
        while await _outbox(conn) > 0:
            await asyncio.sleep(0.05)
        drained = time.monotonic() - started
        before = scrape(port)
        for _ in range(lone):
            await _append(conn, 1)
            await conn.execute("SELECT pg_notify($1, '')", OUTBOX_CHANNEL)  # as the API does after a commit
            await asyncio.sleep(0.05)
        while await _outbox(conn) > 0:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        after = scrape(port)
        stop.set()
        await task
        lone_only = {k: v - before.get(k, 0.0) for k, v in after.items()}
        latency = histogram_quantiles(lone_only, "ledger_relay_commit_to_ack_seconds")
        waits = histogram_quantiles(lone_only, "ledger_relay_standby_wait_seconds")
        return {"events_per_s": round(pending / drained), "drain_s": round(drained, 2),
                "lag_p50_ms": _ms(latency["p50_ms"]), "lag_p99_ms": _ms(latency["p99_ms"]),
                "standby_wait_p50_ms": _ms(waits["p50_ms"])}
    finally:
        for c in (conn, *writers):
            await c.close()


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


_ORIGINAL = cdc.relay.standby_holds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backlog", type=int, default=8000)
    parser.add_argument("--lone", type=int, default=200)
    args = parser.parse_args()
    root = scratch.folder("ledger-measure-relay-")
    cluster = HACluster.on_free_ports(root / "cluster")
    broker = KafkaCluster(root / "kafka", [(free_port(), free_port())], heap="384m")
    results: dict[str, list[dict[str, float | None]]] = {"waits for the standby": [], "no wait (before)": []}
    try:
        cluster.start()
        cluster.wait_replicas(2, timeout=120)
        cli(cluster.url, "migrate")
        broker.start()
        settings = Settings(database=DatabaseSettings(url=cluster.url),
                            kafka=KafkaSettings(bootstrap=broker.bootstrap, partitions=3),
                            metrics=MetricsSettings())
        for _ in range(args.rounds):
            for name, wait in (("waits for the standby", True), ("no wait (before)", False)):
                results[name].append(asyncio.run(leg(settings, wait, args.backlog, args.lone)))
                print(name, json.dumps(results[name][-1]), flush=True)
    finally:
        broker.stop()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    for name, runs in results.items():
        medians = {key: statistics.median(v for r in runs if (v := r[key]) is not None)
                   for key in runs[0] if any(r[key] is not None for r in runs)}
        print(f"{name}: medians over {len(runs)} rounds: {json.dumps(medians)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
