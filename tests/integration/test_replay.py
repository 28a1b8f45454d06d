"""`replay --checkpoint`: a replay killed midway goes on from the last page it wrote, not from the start."""

from __future__ import annotations

import json
import subprocess
import uuid

from bench.fill import fill
from core.settings import DatabaseSettings, DynamoSettings, Settings
from devstack.harness import CLI, as_role, process_env
from devstack.postgres import LocalPostgres
from devstack.processes import DynamoDBLocal, wait_until
from tests import scratch
from tests.conftest import random_code, sql


def test_a_replay_killed_midway_goes_on_from_its_checkpoint(
        postgres: LocalPostgres, pipeline_template: str, dynamodb_local: DynamoDBLocal) -> None:
    name = f"replay_{uuid.uuid4().hex[:10]}"
    sql(postgres.url, f'CREATE DATABASE "{name}" TEMPLATE "pipeline_template"')
    url = postgres.url.rsplit("/", 1)[0] + "/" + name
    fill(url, random_code("R") + "-", 2000, per_append=10)  # 20,000 events: 20 pages
    sql(url, "DELETE FROM outbox")  # relayed: verify counts what is missing instead of waiting for it
    total = int(sql(url, "SELECT count(*) FROM events"))  # type: ignore[arg-type]
    settings = Settings(database=DatabaseSettings(url=url),
                        dynamo=DynamoSettings(endpoint=dynamodb_local.endpoint, table=name, region="eu-west-1"))
    checkpoint = scratch.folder("booking-ledger-replay-") / "replay.json"
    replay = [CLI, "replay", "--quiet", "--checkpoint", str(checkpoint)]

    # Killed -9 as soon as its first page is written.
    first = subprocess.Popen(replay, env=as_role(process_env(settings), "replay"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    wait_until(lambda: checkpoint.exists() or first.poll() is not None, 120, 0.005, "the replay's first page")
    first.kill()
    _, errors = first.communicate(timeout=30)
    assert first.returncode == -9, f"the replay ended before it could be killed ({first.returncode}): {errors}"
    through = json.loads(checkpoint.read_text())["replayed_through"]
    left = int(sql(url, "SELECT count(*) FROM events WHERE position > $1", through))  # type: ignore[arg-type]
    assert 0 < left < total

    # What the checkpoint says is written is in DynamoDB: whatever a full verify finds missing lies above it.
    checked = subprocess.run([CLI, "verify", "--grace", "0", "--max-lines", str(total)],
                             env=as_role(process_env(settings), "verify"), capture_output=True, text=True, timeout=300)
    assert checked.returncode == 1, checked.stdout[-2000:] + checked.stderr[-2000:]
    missing = [line.split()[1:3] for line in checked.stdout.splitlines() if line.startswith("missing")]
    assert missing, checked.stdout[-2000:]
    lowest = sql(url, "SELECT min(position) FROM events e JOIN unnest($1::text[], $2::int[]) AS m(code, version) "
                      "ON e.booking_code = m.code AND e.version = m.version",
                 [code for code, _ in missing], [int(v.lstrip("v")) for _, v in missing])
    assert lowest > through

    # Run again: it starts after the checkpoint, writes the rest, and the read store is whole.
    again = subprocess.run(replay, env=as_role(process_env(settings), "replay"), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"replayed {left} events into DynamoDB table {name} after position {through}" in again.stdout
    assert json.loads(checkpoint.read_text()) == {
        "replayed_through": sql(url, "SELECT max(position) FROM events"), "table": name}
    checked = subprocess.run([CLI, "verify", "--grace", "0"], env=as_role(process_env(settings), "verify"),
                             capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0 and f"{total} events: 0 drift" in checked.stdout, checked.stdout[-2000:]

    # A checkpoint is of one table: another table's replay refuses it instead of skipping what that table lacks.
    other = Settings(database=settings.database, dynamo=DynamoSettings(
        endpoint=dynamodb_local.endpoint, table=f"{name}_other", region="eu-west-1"))
    refused = subprocess.run(replay, env=as_role(process_env(other), "replay"), capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and f"is of DynamoDB table '{name}'" in refused.stderr, refused.stderr
