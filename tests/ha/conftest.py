"""A replicated ledger for the failover tests: etcd + three Patroni/Postgres nodes (devstack.ha),
migrated through the multi-host URL, and the real API (two workers) in front of it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.ha import HACluster
from tests.e2e.conftest import Server, cli, make_key, start_server

if shutil.which("patroni") is None or shutil.which("etcd") is None:
    pytest.skip("Patroni and etcd are not installed (make install: scripts/system-deps.sh)", allow_module_level=True)


@pytest.fixture(scope="session")
def ha_cluster() -> Iterator[HACluster]:
    root = Path(tempfile.mkdtemp(prefix="ledger-ha-"))
    root.chmod(0o755)  # the postgres user runs the nodes
    cluster = HACluster.on_free_ports(root / "cluster")
    cluster.start()
    try:
        cli(cluster.url, "migrate")
        yield cluster
    finally:
        cluster.stop()
        if not os.environ.get("LEDGER_HA_KEEP"):  # set it to keep the nodes' logs for a post-mortem
            shutil.rmtree(root, ignore_errors=True)


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
