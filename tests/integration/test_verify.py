"""`verify --checkpoint`: a nightly run checks only what is new since the last one, and never moves
its checkpoint past an event it could not find (missing, or still pending in the outbox)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid

from cdc.replay import replay
from cdc.verify import verify
from core.dynamodb import client as dynamodb_client
from core.settings import DatabaseSettings, DynamoSettings, Settings
from devstack.harness import CLI, as_role, process_env
from devstack.postgres import LocalPostgres
from devstack.processes import DynamoDBLocal
from tests import scratch
from tests.conftest import random_code, sql

APPEND = """SELECT position FROM ledger_append($1, 'hotel', false, $2, ARRAY[gen_random_uuid()],
    ARRAY['BookingPriced'], ARRAY[$3::numeric], ARRAY['EUR'], ARRAY[NULL]::jsonb[], ARRAY[NULL]::timestamptz[])"""


def test_incremental_verify_checks_only_new_events_and_keeps_its_checkpoint_behind_what_it_missed(
        postgres: LocalPostgres, pipeline_template: str, dynamodb_local: DynamoDBLocal) -> None:
    name = f"verify_{uuid.uuid4().hex[:10]}"
    sql(postgres.url, f'CREATE DATABASE "{name}" TEMPLATE "pipeline_template"')
    url = postgres.url.rsplit("/", 1)[0] + "/" + name
    settings = Settings(database=DatabaseSettings(url=url),
                        dynamo=DynamoSettings(endpoint=dynamodb_local.endpoint, table=f"verify_{name}",
                                              region="eu-west-1"))
    env = as_role(process_env(settings), "verify")
    checkpoint = scratch.folder("booking-ledger-verify-") / "checkpoint.json"

    def run() -> tuple[int, list[str], int]:
        done = subprocess.run([CLI, "verify", "--grace", "0", "--checkpoint", str(checkpoint)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode in (0, 1), done.stderr
        return done.returncode, done.stdout.splitlines(), json.loads(checkpoint.read_text())["checked_through"]

    old = [random_code("OLD") for _ in range(5)]
    old_positions = [int(sql(url, APPEND, code, 0, "10.00")) for code in old]  # type: ignore[arg-type]
    asyncio.run(replay(settings, progress=False))
    code, lines, first = run()  # no checkpoint yet: a full run
    assert code == 0 and lines[-1].startswith("checked 5 bookings, 5 events: 0 drift")
    assert first >= max(old_positions)

    client = dynamodb_client(settings.dynamo)
    table = settings.dynamo.table
    # Drift below the checkpoint: a nightly run does not look there any more (a full run would).
    client.update_item(TableName=table, Key={"booking_code": {"S": old[0]}, "version": {"N": "1"}},
                       UpdateExpression="SET price_amount = :a", ExpressionAttributeValues={":a": {"S": "1.00"}})
    new = [random_code("NEW") for _ in range(4)]
    new_positions = [int(sql(url, APPEND, code, 0, "20.00")) for code in new]  # type: ignore[arg-type]
    asyncio.run(replay(settings, after=first, progress=False))
    sql(url, "DELETE FROM outbox WHERE position <> $1", new_positions[3])  # relayed, but for the last one
    client.delete_item(TableName=table, Key={"booking_code": {"S": new[1]}, "version": {"N": "1"}})
    client.delete_item(TableName=table, Key={"booking_code": {"S": new[3]}, "version": {"N": "1"}})

    code, lines, second = run()
    assert code == 1
    assert [line.split()[:2] for line in lines[:-1]] == [["missing", new[1]]]
    assert lines[-1].startswith(f"checked 4 bookings, 4 events after position {first}: 1 drift (1 missing")
    assert "1 pending in the outbox" in lines[-1]
    assert second == new_positions[1] - 1  # the next run looks at the missing event again

    asyncio.run(replay(settings, after=second, progress=False))  # the repair; the pending one arrives too
    code, lines, third = run()
    assert code == 0 and lines[-1].startswith(f"checked 3 bookings, 3 events after position {second}: 0 drift")
    assert third >= max(new_positions)

    full = asyncio.run(verify(settings, grace=0))  # a full run still sees the old drift
    assert [(d.kind, d.booking_code) for d in full.drift] == [("different", old[0])]
