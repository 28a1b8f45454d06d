"""Losing replicas: one lost, writes pause until the other is the synchronous one; both lost,
nothing is acknowledged (synchronous_mode_strict) until one returns, and nothing is lost.

Real processes: etcd, three Patroni/Postgres nodes, the API; writers over HTTP.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal

from core.pg import connect
from devstack.ha import HACluster, PatroniNode
from devstack.harness import APPEND_SQL
from devstack.processes import wait_until
from tests.e2e.conftest import Server, start_server
from tests.ha.load import Load


def _synchronous_standby(cluster: HACluster) -> PatroniNode:
    name = wait_until(lambda: next(iter(cluster.replicas(synchronous=True)), None), timeout=60,
                      what="a synchronous standby")
    return cluster.node(name)


def test_a_lost_replica_pauses_writes_until_the_other_is_synchronous(
    ha_cluster: HACluster, ha_api: Server, ha_keys: dict[str, str]
) -> None:
    leader = ha_cluster.wait_ready()
    ha_cluster.wait_replicas(2, timeout=90)
    lost = _synchronous_standby(ha_cluster)
    load = Load(ha_api.url, ha_keys, writers=6)
    load.start()
    try:
        time.sleep(3)
        lost.kill()  # the standby every commit waits for
        killed_at = time.monotonic()
        other = wait_until(lambda: (names := ha_cluster.replicas(synchronous=True)) and lost.name not in names
                           and names[0], timeout=30, what="the other replica to become synchronous")
        wait_until(lambda: load.unavailable_for(killed_at) < float("inf"), timeout=30, what="a 2xx after the kill")
        time.sleep(3)
    finally:
        load.stop()
    pause = load.longest_pause(killed_at - 0.5, killed_at + 10)
    lost.start()
    ha_cluster.wait_replicas(2, timeout=90)
    assert ha_cluster.primary() is leader
    load.finish_feed()
    summary = load.check_ledger(ha_cluster.url)
    print(f"\nsynchronous standby {lost.name} lost: {other} synchronous; longest time with no acknowledged append "
          f"{pause:.1f}s; kill to first 2xx {load.unavailable_for(killed_at):.1f}s; {summary}")
    assert not load.server_errors(), [(o.status, o.kind, round(o.done - o.sent, 1)) for o in load.server_errors()]
    assert not load.unexpected, load.unexpected[:5]
    assert pause < 6  # Patroni names another synchronous standby within a loop or two (loop_wait 1 s)


def test_with_both_replicas_lost_nothing_is_acknowledged_until_one_returns(
    ha_cluster: HACluster, ha_keys: dict[str, str]
) -> None:
    leader = ha_cluster.wait_ready()
    ha_cluster.wait_replicas(2, timeout=90)
    replicas = [n for n in ha_cluster.nodes if n is not leader]
    # A short retry budget, so that clients get their 503 soon; they send it again, as told to.
    api = start_server(ha_cluster.url, workers=1, LEDGER_RATE_LIMIT="0", LEDGER_WRITE_RETRY_SECONDS="2",
                       LEDGER_DB_TIMEOUT="3")
    load = Load(api.url, ha_keys, writers=4, resend_5xx=True)
    try:
        load.start()
        time.sleep(2)
        for node in replicas:
            node.kill()
        lost_at = time.monotonic()
        wait_until(lambda: any(o.status == 503 and o.sent >= lost_at for o in load.outcomes), timeout=30,
                   what="a 503 once the budget is spent")
        time.sleep(8)
        returned_at = time.monotonic()
        replicas[0].start()
        wait_until(lambda: load.acknowledged_between(returned_at, float("inf")), timeout=60,
                   what="an acknowledged append after a replica returned")
        resumed = min(o.done for o in load.acknowledged_between(returned_at, float("inf"))) - returned_at
        time.sleep(2)
        load.stop()
        replicas[1].start()
        ha_cluster.wait_replicas(2, timeout=90)
        load.finish_feed()
    finally:
        load.stop()
        api.stop()
    summary = load.check_ledger(ha_cluster.url)
    during = load.acknowledged_between(lost_at, returned_at)
    refused = [o for o in load.outcomes if o.status == 503 and lost_at <= o.sent < returned_at]
    print(f"\nboth replicas lost for {returned_at - lost_at:.1f}s: {len(during)} appends acknowledged meanwhile, "
          f"{len(refused)} answered 503; writes resumed {resumed:.1f}s after a replica was started; {summary}")
    assert not during, [(o.status, o.kind, round(o.sent - lost_at, 1), round(o.done - lost_at, 1)) for o in during]
    assert refused, "no client was refused while no replica was there"
    assert not load.unexpected, load.unexpected[:5]
    assert ha_cluster.primary() is leader


def test_a_replay_never_vouches_for_a_commit_on_one_disk(ha_cluster: HACluster) -> None:
    """A commit whose wait for the standby is cancelled stays, on the primary's disk only; the
    retry that finds its events must not answer until a standby has them (migration 0010)."""
    leader = ha_cluster.wait_ready()
    ha_cluster.wait_replicas(2, timeout=90)
    replicas = [n for n in ha_cluster.nodes if n is not leader]
    for node in replicas:
        node.kill()
    try:
        asyncio.run(_cancelled_commit_then_replay(ha_cluster.url, replicas[0]))
    finally:
        for node in replicas:
            if not node.alive:
                node.start()
        ha_cluster.wait_replicas(2, timeout=120)


async def _cancelled_commit_then_replay(url: str, returning: PatroniNode) -> None:
    code, event_id = f"SYNC-{uuid.uuid4().hex[:12]}", uuid.uuid4()
    args = (code, "hotel", False, 0, [event_id], ["BookingPriced"], [Decimal("10.00")], ["EUR"], [None], [None])
    first, admin, retry = [await connect(url, timeout=10) for _ in range(3)]
    try:
        pid = await first.fetchval("SELECT pg_backend_pid()")
        try_one = asyncio.create_task(first.fetch(APPEND_SQL, *args))
        for _ in range(300):  # its commit waits for a synchronous standby that is not there
            if await admin.fetchval("SELECT wait_event FROM pg_stat_activity WHERE pid = $1", pid) == "SyncRep":
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the first try never waited for the standby")
        await admin.execute("SELECT pg_cancel_backend($1)", pid)
        assert (await asyncio.wait_for(try_one, 30))[0]["version"] == 1  # kept, on this disk only
        replay = asyncio.create_task(retry.fetch(APPEND_SQL, *args))
        done, _ = await asyncio.wait({replay}, timeout=5)
        assert not done, "a replay answered while its events were on the primary's disk only"
        returning.start()  # a standby comes back and catches up: now the replay may answer
        rows = await asyncio.wait_for(replay, 120)
        assert rows[0]["replayed"] and rows[0]["event_id"] == event_id
    finally:
        for conn in (first, admin, retry):
            conn.terminate()
