"""A restore from pg_dump into a new cluster starts transaction ids low: new positions would sort
below the recorded ones. `migrate` and the API's readiness refuse then, and say why."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import httpx
import pytest

from core.settings import DatabaseSettings, Settings
from devstack.harness import CLI, database_url, free_port, process_env, run_sql, start_api
from devstack.postgres import LocalPostgres
from devstack.processes import wait_until
from migrations.runner import upgrade
from tests import scratch
from tests.conftest import sql

APPEND = """SELECT count(*) FROM ledger_append($1, 'hotel', false, 0, ARRAY[gen_random_uuid()], ARRAY['BookingPriced'],
    ARRAY[NULL]::numeric[], ARRAY[NULL]::text[], ARRAY[NULL]::jsonb[], ARRAY[NULL]::timestamptz[])"""


@pytest.fixture
def fresh_cluster() -> Iterator[LocalPostgres]:
    base = scratch.folder("booking-ledger-restore-")
    server = LocalPostgres(base / "pg", free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop(mode="immediate")


def test_a_restore_into_a_new_cluster_is_refused_until_positions_can_grow(
        postgres: LocalPostgres, fresh_cluster: LocalPostgres) -> None:
    name = f"restore_{uuid.uuid4().hex[:8]}"
    sql(postgres.url, f'CREATE DATABASE "{name}"')
    source = database_url(postgres.url, name)
    try:
        upgrade(source)
        # A cluster that has lived a while: its transaction counter is well above a new cluster's.
        run_sql(source, *(["SELECT pg_current_xact_id()"] * 3000))
        sql(source, APPEND, "R-1")
        highest = sql(source, "SELECT max(position) FROM events")
        dump = subprocess.run([str(postgres.bindir / "pg_dump"), "-h", "127.0.0.1", "-p", str(postgres.port),
                               "-U", "ledger", name], capture_output=True, text=True, check=True, timeout=120).stdout
    finally:
        sql(postgres.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    restored = subprocess.run([str(fresh_cluster.bindir / "psql"), "-h", "127.0.0.1", "-p", str(fresh_cluster.port),
                               "-U", "ledger", "-d", "ledger", "-v", "ON_ERROR_STOP=1", "-q", "-f", "-"],
                              input=dump, capture_output=True, text=True, timeout=120)
    assert restored.returncode == 0, restored.stderr
    url = fresh_cluster.url
    assert sql(url, "SELECT next_lowest FROM ledger_position_check()") <= highest  # the hazard is real

    env = process_env(Settings(database=DatabaseSettings(url=url)))
    migrated = subprocess.run([CLI, "migrate"], env=env, capture_output=True, text=True, timeout=120)
    assert migrated.returncode == 1
    assert "positions would go backwards" in migrated.stderr and str(highest) in migrated.stderr

    log = scratch.folder("booking-ledger-api-") / "api.log"
    api = start_api(env, log, workers=1, ready_path="/health/live")  # as ledger_api (start_api's own role)
    try:
        answer = httpx.get(api.url + "/health/ready", timeout=5)
        assert answer.status_code == 503
        assert "positions would go backwards" in answer.json()["detail"]
        # The documented repair: the position offset moves new positions past the highest one.
        advanced = subprocess.run([CLI, "migrate", "--advance-positions"], env=env, capture_output=True, text=True,
                                  timeout=120)
        assert advanced.returncode == 0, advanced.stderr
        assert sql(url, "SELECT next_lowest FROM ledger_position_check()") > highest
        wait_until(lambda: httpx.get(api.url + "/health/ready", timeout=5).status_code == 200, 30,
                   what="readiness once positions grow again")
        sql(url, APPEND, "R-2")  # a new event sorts after every restored one
        # A reader of the feed that had reached the old maximum gets it next (the fence lets it through).
        feed_next = sql(url, "SELECT min(position) FROM events WHERE position > $1 AND position < ledger_feed_fence()",
                        highest)
        assert feed_next == sql(url, "SELECT position FROM events WHERE booking_code = 'R-2'")
        print(f"\nrestore: highest recorded {highest}; after --advance-positions the new event got {feed_next}")
        assert sql(url, "SELECT position FROM events WHERE booking_code = 'R-2'") > highest
        assert sql(url, "SELECT min(position) FROM events WHERE position > $1", highest) == sql(
            url, "SELECT position FROM events WHERE booking_code = 'R-2'")
    finally:
        api.stop()
