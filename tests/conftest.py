"""Real servers for the suite: a private Postgres cluster on a free port, migrated by Alembic.

Nothing here touches the developer's `make run` data or the machine's own services.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from core.settings import DatabaseSettings
from devstack.ha import HACluster
from devstack.harness import CLI, as_role, fetch_value, free_port
from devstack.postgres import LocalPostgres
from migrations.runner import upgrade
from service.ledger.db import create_pool

__all__ = ["free_port", "random_code", "sql"]


def random_code(prefix: str = "T") -> str:
    """Tests isolate by random booking codes, never by wiping tables."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def sql(url: str, statement: str, *args: object) -> object:
    """Run one statement on a fresh connection, from synchronous code; returns its first value."""
    return fetch_value(url, statement, *args)


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    base = Path(tempfile.mkdtemp(prefix="booking-ledger-test-"))
    base.chmod(0o755)  # the cluster may belong to the postgres user (when the suite runs as root)
    server = LocalPostgres(base / "pg", free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop(mode="immediate")


@pytest.fixture(scope="session")
def database_url(postgres: LocalPostgres) -> str:
    upgrade(postgres.url)
    return postgres.url


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(DatabaseSettings(url=database_url, pool_size=50, command_timeout=30))
    try:
        yield pool
    finally:
        await pool.close()


HA_KEEP = bool(os.environ.get("LEDGER_HA_KEEP"))  # set it to keep the nodes' logs for a post-mortem


@pytest.fixture(scope="session")
def ha_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="ledger-ha-"))
    root.chmod(0o755)  # the postgres user runs the nodes
    yield root
    if not HA_KEEP:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def ha_cluster(ha_root: Path) -> Iterator[HACluster]:
    """etcd and three Patroni/Postgres nodes (devstack.ha), migrated through the multi-host URL: the
    failover tests' cluster (tests/ha), which the console's browser test shows too (one per session)."""
    if shutil.which("patroni") is None or shutil.which("etcd") is None:
        pytest.skip("Patroni and etcd are not installed (make install: scripts/system-deps.sh)")
    cluster = HACluster.on_free_ports(ha_root / "cluster")
    cluster.start()
    try:
        migrate = as_role({**os.environ, "LEDGER_DATABASE_URL": cluster.url}, "migrate")
        subprocess.run([CLI, "migrate"], env=migrate, check=True, capture_output=True, timeout=120)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session", autouse=True)
def _no_ambient_settings() -> None:
    for name in list(os.environ):
        if name.startswith("LEDGER_"):
            del os.environ[name]
