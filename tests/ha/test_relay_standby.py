"""A relay whose connection lands on a standby never takes the lease, never reads the outbox and
never sends: advisory locks work on a hot standby, so only the relay's own check (CAMPAIGN_SQL:
pg_is_in_recovery()) keeps it from leading there, resending rows the primary already sent and
failing to delete them. Real processes: the cluster, the pipeline's relay on the multi-host URL
(the leader), and a second relay given one replica's port alone."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import httpx

from core.lease import RELAY_APPLICATION_PREFIX
from core.pg import connect_primary
from core.settings import DatabaseSettings
from devstack.ha import HACluster
from devstack.harness import LedgerProcess, process_env
from devstack.processes import wait_until
from tests.e2e.conftest import Server
from tests.ha.conftest import HAPipeline


def _lease_holders(url: str) -> list[str]:
    """application_name of the sessions holding the relay's advisory lock on the primary."""

    async def run() -> list[str]:
        conn = await connect_primary(url, timeout=30)
        try:
            rows = await conn.fetch("SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                                    "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE $1",
                                    f"{RELAY_APPLICATION_PREFIX}%")
            return [r["application_name"] for r in rows]
        finally:
            await conn.close()

    return asyncio.run(run())


def test_a_relay_on_a_standby_stays_standby_while_the_leader_sends(
    ha_cluster: HACluster, ha_api: Server, ha_keys: dict[str, str], ha_pipeline: HAPipeline
) -> None:
    leader = ha_cluster.wait_ready()
    replica = next(n for n in ha_cluster.nodes if n is not leader)
    settings = dataclasses.replace(ha_pipeline.settings, database=DatabaseSettings(url=ha_cluster.node_url(replica)))
    folder = ha_pipeline.relay.log_path.parent
    standby = LedgerProcess("relay", process_env(settings), folder / "relay-on-a-replica.log").start()
    try:
        standby.wait_for_log("connected to a standby")
        codes = [f"RS-{uuid.uuid4().hex[:12]}" for _ in range(40)]
        with httpx.Client(base_url=ha_api.url, headers={"Authorization": f"Bearer {ha_keys['hotel']}"},
                          timeout=60) as client:
            for code in codes:
                answer = client.post(f"/v1/bookings/{code}/events", json={
                    "expected_version": 0, "events": [{"type": "price_set",
                                                       "price": {"amount": "10.00", "currency": "EUR"}}]})
                assert answer.status_code == 201, answer.text
        wait_until(lambda: ha_pipeline.outbox() == 0, timeout=60, interval=0.5, what="the leader to drain the outbox")
        holders = _lease_holders(ha_cluster.url)
        # It keeps looking for the primary (about twice a second), and each time stays standby.
        wait_until(lambda: standby.log().count("connected to a standby") >= 3, timeout=30,
                   what="the relay on a replica to look again")
        attempts = standby.log().count("connected to a standby")
    finally:
        standby.stop()
    print(f"\nrelay on {replica.name} (a replica): {attempts} connections, each found a standby; "
          f"lease on the primary held by {holders}")
    assert "relay is the leader" not in standby.log()
    assert "ReadOnlySQLTransaction" not in standby.log()  # it never tried to delete an outbox row
    assert len(holders) == 1 and ha_pipeline.relay.alive
    assert ha_pipeline.relay.process is not None
    assert f"{ha_pipeline.relay.process.pid}" in holders[0]
