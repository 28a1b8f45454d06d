"""Point-in-time recovery the DBA's way (pgBackRest, continuous WAL archiving), and what the ledger
needs after it: the read store holds events the restored ledger lost (verify reports them as extra,
`replay --prune` deletes them), and transaction ids after the moment are handed out again, so new
positions would repeat positions Kafka and DynamoDB already carry until `migrate --past` moves
them beyond."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from cdc.replay import replay
from cdc.verify import verify
from core.settings import DatabaseSettings, DynamoSettings, Settings
from devstack.backups import Node, PgBackRest, archive_into, start_restored
from devstack.harness import CLI, process_env
from devstack.postgres import LocalPostgres
from devstack.processes import DynamoDBLocal, wait_until
from migrations.runner import upgrade
from tests import scratch
from tests.conftest import free_port, random_code, sql

APPEND = """SELECT position FROM ledger_append($1, 'hotel', false, $2, ARRAY[gen_random_uuid()],
    ARRAY['BookingPriced'], ARRAY[$3::numeric], ARRAY['EUR'], ARRAY[NULL]::jsonb[], ARRAY[NULL]::timestamptz[])"""


@pytest.fixture
def archiving() -> Iterator[tuple[LocalPostgres, PgBackRest]]:
    """A cluster of its own that archives every WAL segment into a pgBackRest repository."""
    base = scratch.folder("booking-ledger-pitr-")
    server = LocalPostgres(base / "pg", free_port())
    backrest = PgBackRest(base / "repo", [Node(server.data_dir, server.port, server.data_dir)])
    server.init()
    backrest.write_config()
    archive_into(server, backrest)
    server.start()
    try:
        backrest.stanza_create()
        yield server, backrest
    finally:
        server.stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)  # a cluster and its repository: ~100 MB


def append(url: str, code: str, version: int, amount: str) -> int:
    return int(sql(url, APPEND, code, version, amount))  # type: ignore[arg-type]


def test_point_in_time_recovery_keeps_positions_growing_and_prunes_the_read_store(
        archiving: tuple[LocalPostgres, PgBackRest], dynamodb_local: DynamoDBLocal) -> None:
    server, backrest = archiving
    url = server.url
    upgrade(url)
    settings = Settings(database=DatabaseSettings(url=url),
                        dynamo=DynamoSettings(endpoint=dynamodb_local.endpoint, table=f"pitr_{uuid.uuid4().hex[:10]}",
                                              region="eu-west-1"))
    codes = [random_code("PITR") for _ in range(10)]
    started = time.monotonic()
    backrest.backup("full")
    full_seconds = time.monotonic() - started
    for code in codes:
        append(url, code, 0, "100.00")
    started = time.monotonic()
    backrest.backup("incr")
    incr_seconds = time.monotonic() - started
    kept = [append(url, code, 1, "110.00") for code in codes]  # after the incremental backup: WAL only
    moment = sql(url, "SELECT clock_timestamp()")
    # After the moment: events the restore will lose, a new version of every booking and new bookings
    # (each append its own transaction, so that the lost range spans many transaction ids).
    lost_codes = [random_code("LOST") for _ in range(10)]
    lost = [append(url, code, 2, "120.00") for code in codes] + [append(url, code, 0, "5.00") for code in lost_codes]
    assert min(lost) > max(kept)
    assert asyncio.run(replay(settings, progress=False)) == 40  # the read store saw every event

    # RPO: a WAL segment reaches the repository this long after it is closed (archive_timeout closes
    # a quiet primary's segment at the latest every 60 s, so that bounds what a lost disk costs).
    closed = time.monotonic()
    segment = sql(url, "SELECT pg_walfile_name(pg_switch_wal())")
    wait_until(lambda: (sql(url, "SELECT last_archived_wal FROM pg_stat_archiver") or "") >= segment, 30,
               interval=0.05, what="the last WAL segment in the repository")
    archive_seconds = time.monotonic() - closed

    # The disaster, then the restore to the moment (RTO: until appends go on above every old position).
    server.stop(mode="immediate")
    restoring = time.monotonic()
    backrest.restore(target_time=moment.isoformat(sep=" "))
    start_restored(server)
    restored_seconds = time.monotonic() - restoring
    assert sql(url, "SELECT count(*) FROM events WHERE booking_code = ANY($1::text[])", codes + lost_codes) == 20
    assert sql(url, "SELECT max(position) FROM events WHERE booking_code = ANY($1::text[])", codes) == max(kept)
    # The hazard is real: the transaction ids of the lost range are handed out again.
    assert sql(url, "SELECT next_lowest FROM ledger_position_check()") <= max(lost)

    report = asyncio.run(verify(settings, grace=0))
    assert sorted((d.kind, d.booking_code, d.version) for d in report.drift) == sorted(
        [("extra", code, 3) for code in codes] + [("extra", code, 1) for code in lost_codes])

    env = process_env(settings)
    pruned = subprocess.run([CLI, "replay", "--prune", "--quiet"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert pruned.returncode == 0, pruned.stderr
    found = re.search(r"pruned (\d+) items .* the highest position it held was (\d+)", pruned.stdout)
    assert found, pruned.stdout
    assert int(found.group(1)) == 20 and int(found.group(2)) == max(lost)
    advanced = subprocess.run([CLI, "migrate", "--past", found.group(2)], env=env, capture_output=True, text=True,
                              timeout=120)
    assert advanced.returncode == 0, advanced.stderr
    assert "positions advanced past" in advanced.stdout
    first_new = append(url, codes[0], 2, "130.00")  # version 3 again, a new event
    recovered_seconds = time.monotonic() - restoring
    assert first_new > max(lost)
    # A feed reader that had reached the lost range's end gets the new event next.
    assert sql(url, "SELECT min(position) FROM events WHERE position > $1", max(lost)) == first_new
    asyncio.run(replay(settings, after=max(kept), progress=False))
    assert asyncio.run(verify(settings, grace=0)).drift == []
    print(f"\npitr: full backup {full_seconds:.1f} s, incremental {incr_seconds:.1f} s; a closed WAL segment "
          f"archived in {archive_seconds:.2f} s (RPO <= archive_timeout 60 s + that); restore to the moment and "
          f"promotion {restored_seconds:.1f} s, with prune and --past until the first append "
          f"{recovered_seconds:.1f} s (RTO)")
