"""Nothing leaves the ledger that a failover can take back.

A commit whose wait for the synchronous standby is cancelled stays, visible, on the primary alone.
If the relay sent it to Kafka and the standby (which never had it) is then promoted, Kafka and
DynamoDB hold an event the ledger does not: a phantom; so would a feed that served it. Real
processes: etcd, three Patroni/Postgres nodes, the broker, the relay; both replicas frozen
(SIGSTOP) while the commit is made. The kernel still takes the WAL into a frozen standby's socket,
so their WAL receivers are killed while frozen, which throws that away: the standbys resume
without the commit, as if the network had lost it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from decimal import Decimal
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from core.pg import connect, is_transient
from core.settings import DatabaseSettings
from devstack.ha import HACluster, PatroniNode
from devstack.harness import APPEND_SQL
from devstack.processes import wait_until
from service.ledger.db import create_pool
from service.ledger.errors import StoreUnavailable
from service.ledger.reads import read_feed
from tests.ha.conftest import HAPipeline

WAITING = "waiting for the synchronous standby"  # the relay's log line while it holds a batch back


def _append_args(code: str) -> tuple[object, ...]:
    return (code, "hotel", False, 0, [uuid.uuid4()], ["BookingPriced"], [Decimal("10.00")], ["EUR"], [None], [None])


def _kill_wal_receiver(node: PatroniNode) -> None:
    for pid in node.pids():
        with contextlib.suppress(OSError):
            if b"walreceiver" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)


def _kafka_keys(pipeline: HAPipeline) -> set[str]:
    """The keys of every message in the events topic now."""
    kafka = pipeline.settings.kafka
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"phantoms-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        ends = wait_until(lambda: _ends(consumer, kafka.topic), timeout=30, interval=0.5, what="the topic's offsets")
        consumer.assign([TopicPartition(kafka.topic, p, OFFSET_BEGINNING) for p in ends if ends[p] > 0])
        read = dict.fromkeys(ends, 0)
        keys: set[str] = set()
        deadline = time.monotonic() + 30
        while any(read[p] < ends[p] for p in ends) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            keys.add((message.key() or b"").decode())
            read[message.partition()] = message.offset() + 1
        assert all(read[p] >= ends[p] for p in ends), "the topic could not be read to its end"
        return keys
    finally:
        consumer.close()


def _ends(consumer: Consumer, topic: str) -> dict[int, int] | None:
    """Each partition's end offset; None while the topic or a partition's leader is not there yet."""
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions} or None
    except (KafkaException, KeyError):
        return None


async def _commit_on_the_primary_alone(url: str, code: str) -> int:
    """Append `code` on the primary and cancel its commit's wait for the (frozen) standby: the
    commit stays, visible, on the primary's disk only. The feed's cursor before it."""
    client, admin = await connect(url, timeout=10), await connect(url, timeout=10)
    try:
        cursor = int(await admin.fetchval("SELECT coalesce(max(position), 0) FROM events"))
        pid = await client.fetchval("SELECT pg_backend_pid()")
        append = asyncio.create_task(client.fetch(APPEND_SQL, *_append_args(code)))
        for _ in range(300):
            if await admin.fetchval("SELECT wait_event FROM pg_stat_activity WHERE pid = $1", pid) == "SyncRep":
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the commit never waited for the standby")
        await admin.execute("SELECT pg_cancel_backend($1)", pid)
        assert (await asyncio.wait_for(append, 30))[0]["version"] == 1
        assert await admin.fetchval("SELECT count(*) FROM outbox WHERE booking_code = $1", code) == 1
        return cursor
    finally:
        client.terminate()
        admin.terminate()


async def _feed_after(url: str, cursor: int) -> list[str] | None:
    """The booking codes the feed serves after `cursor` (None: it answers 503 instead), as the API
    reads it, with a budget of two seconds."""
    pool = await create_pool(DatabaseSettings(url=url, pool_size=1, command_timeout=2, retry_seconds=0))
    try:
        events, _ = await read_feed(pool, cursor, 100)
        return [event.booking_code for event in events]
    except StoreUnavailable:
        return None
    finally:
        pool.terminate()


async def _cancel_relay_wait(url: str) -> int:
    """pg_cancel_backend of the relay's session that waits for the standby; how many there were."""
    conn = await connect(url, timeout=10)
    try:
        return int(await conn.fetchval(
            "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity "
            "WHERE wait_event = 'SyncRep' AND application_name LIKE 'booking-ledger-relay%'"))
    finally:
        conn.terminate()


async def _append(url: str, code: str) -> None:
    """Append `code` on the new primary, trying again while it is still being promoted."""
    args, deadline = _append_args(code), time.monotonic() + 60
    while True:
        try:
            conn = await connect(url, timeout=10)
            try:
                await asyncio.wait_for(conn.fetch(APPEND_SQL, *args), 30)
                return
            finally:
                conn.terminate()
        except Exception as error:
            if not is_transient(error) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _in_ledger(url: str, code: str) -> bool:
    conn = await connect(url, timeout=30)
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM events WHERE booking_code = $1", code))
    finally:
        conn.terminate()


def test_the_relay_never_sends_a_commit_the_standby_lacks(ha_cluster: HACluster, ha_pipeline: HAPipeline) -> None:
    old = ha_cluster.wait_ready()
    ha_cluster.wait_replicas(2, timeout=90)
    replicas = [n for n in ha_cluster.nodes if n is not old]
    phantom, marker = f"PH-{uuid.uuid4().hex[:12]}", f"PM-{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    for node in replicas:
        node.freeze()  # Patroni and Postgres: the standby every commit waits for is not there
    try:
        cursor = asyncio.run(_commit_on_the_primary_alone(ha_cluster.node_url(old), phantom))
        # The feed (and the event stream, which reads through it) does not serve it either.
        assert asyncio.run(_feed_after(ha_cluster.node_url(old), cursor)) is None
        # The relay either sends it (the fault) or says it waits for the standby before sending.
        wait_until(lambda: WAITING in ha_pipeline.relay.log() or phantom in _kafka_keys(ha_pipeline), timeout=30,
                   interval=0.5, what="the relay to send the commit or to wait for the standby")
        if WAITING in ha_pipeline.relay.log():
            # An operator cancels the relay's wait: Postgres ends it and commits, with a warning
            # only. The relay must take that as "not confirmed", not as "the standby has it".
            assert asyncio.run(_cancel_relay_wait(ha_cluster.node_url(old))) >= 1
            wait_until(lambda: "ended early" in ha_pipeline.relay.log() and ha_pipeline.relay.log().count(WAITING) >= 2,
                       timeout=30, interval=0.5, what="the relay to wait for the standby again")
        sent_before_failover = phantom in _kafka_keys(ha_pipeline)
        old.kill()  # the primary is lost with the only copy of that commit
        for node in replicas:
            _kill_wal_receiver(node)
    finally:
        for node in replicas:
            node.thaw()  # the synchronous standby is promoted once the old leader's key expires
    try:
        new = wait_until(lambda: (p := ha_cluster.primary()) and p is not old and p, timeout=60, what="a new leader")
        asyncio.run(_append(ha_cluster.url, marker))  # the relay sends in commit order: once the marker is out,
        wait_until(lambda: marker in _kafka_keys(ha_pipeline), timeout=60, interval=0.5,  # so is all before it
                   what="the relay to send an append made after the failover")
        in_ledger = asyncio.run(_in_ledger(ha_cluster.url, phantom))
        in_kafka = phantom in _kafka_keys(ha_pipeline)
        print(f"\ncommit on {old.name} alone, {new.name} promoted: in the ledger {in_ledger}, sent before the "
              f"failover {sent_before_failover}, in Kafka {in_kafka}; {time.monotonic() - started:.1f}s")
        assert not in_ledger  # the failover discarded it, as it must: no standby had it
        assert not in_kafka, "a phantom: Kafka holds an event the ledger does not"
    finally:
        old.start()  # it rejoins as a replica (pg_rewind throws away the discarded commit)
        ha_cluster.wait_replicas(2, timeout=120)
