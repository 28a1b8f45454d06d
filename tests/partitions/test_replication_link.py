"""A replication link cut without a word (packets dropped, no reset) is ended within seconds on both
sides, and the replica streams again soon after the heal: wal_sender_timeout, wal_receiver_timeout
and keepalives on the walreceiver's connection (devstack/ha.py). Without them the walsender and the
walreceiver of a cut link wait a minute (the timeouts' default), and one left half-open by a lost
reset waits two hours (the kernel's keepalive default) while Patroni reports the replica "running".

Real processes: a three-member etcd and three Patroni/Postgres nodes, each on a host of its own.
It takes about 40 s, most of it starting the cluster on its hosts.
"""

from __future__ import annotations

import os
import time

import pytest

from devstack.ha import PatroniNode
from devstack.hosts import HostedCluster
from devstack.netns import Network
from devstack.processes import wait_until
from tests import scratch
from tests.conftest import sql

pytestmark = pytest.mark.partitions

if os.geteuid() != 0:
    pytest.skip("network namespaces need root", allow_module_level=True)


def streaming_to(cluster: HostedCluster, leader: PatroniNode) -> list[str]:
    """The application names (node names) the leader's walsenders stream to."""
    names = sql(cluster.node_url(leader),
                "SELECT coalesce(array_agg(application_name::text), '{}') FROM pg_stat_replication "
                "WHERE state = 'streaming'")
    return list(names)  # type: ignore[call-overload]


def receiving(cluster: HostedCluster, node: PatroniNode) -> str:
    """The replica's walreceiver: its status, and its connection string ('' when it has none). Asked in
    the `postgres` database: a replica may stream before it has replayed the ledger database's creation."""
    row = sql(cluster.node_url(node, "postgres"),
              "SELECT coalesce(max(status || ' ' || conninfo), '') FROM pg_stat_wal_receiver")
    return str(row)


@pytest.mark.timeout(180)
def test_a_silently_cut_replication_link_ends_within_seconds_and_streams_again_after_the_heal() -> None:
    root = scratch.folder("booking-ledger-replink-")
    with Network(log_dir=root) as net:
        cluster = HostedCluster(root / "ha", net)
        cluster.start()
        try:
            leader = cluster.wait_ready()
            cluster.wait_replicas(2, timeout=60)
            standby = next(n for n in cluster.nodes if n is not leader)
            wait_until(lambda: standby.name in streaming_to(cluster, leader), 30, what="the standby to stream")
            # The keepalives of libpq's service file reach the walreceiver's connection.
            assert "keepalives_idle=3" in receiving(cluster, standby), receiving(cluster, standby)

            net.partition([leader.name], [standby.name])  # dropped both ways: no reset, no error
            cut = time.monotonic()
            wait_until(lambda: standby.name not in streaming_to(cluster, leader), 20, interval=0.2,
                       what="the leader's walsender to the cut standby to end")
            sender_ended = time.monotonic() - cut
            wait_until(lambda: not receiving(cluster, standby).startswith("streaming"), 20, interval=0.2,
                       what="the cut standby's walreceiver to end")
            receiver_ended = time.monotonic() - cut
            net.heal()
            healed = time.monotonic()
            wait_until(lambda: standby.name in streaming_to(cluster, leader), 30, interval=0.2,
                       what="the standby to stream again")
            back = time.monotonic() - healed
            print(f"\ncut: walsender ended after {sender_ended:.1f}s, walreceiver after {receiver_ended:.1f}s; "
                  f"streaming again {back:.1f}s after the heal")
            # The timeouts are 5 s; the defaults (60 s) would fail these.
            assert sender_ended < 12 and receiver_ended < 12
            assert back < 20  # a connect in flight when the link came back retries its SYN within seconds
        finally:
            cluster.stop()
