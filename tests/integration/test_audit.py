"""`booking-ledger audit` on a real pipeline (ledger, relay signing checkpoints, Kafka, sink, DynamoDB
Local): it passes an honest ledger and its copies, also after a booking's personal data was erased
(the sink rewrites its items; Kafka only ever carried ciphertext), then names an event altered in the
ledger by its tables' owner (bypassing the roles), one altered with its chain hash made again to
match (only the checkpoint and the copies downstream can tell), and an item deleted from DynamoDB."""

from __future__ import annotations

import asyncio
import re
import subprocess
import uuid
from decimal import Decimal
from functools import partial
from pathlib import Path

import asyncpg
import msgspec

from core import personal as core_personal
from core.chain import LINK_COLUMNS, Link
from core.checkpoints import Signer
from core.money import Money
from devstack.harness import as_role
from service.ledger import personal
from service.ledger.append import Append, NewEvent, append, append_one
from service.ledger.db import create_pool
from tests import scratch
from tests.conftest import random_code, sql
from tests.integration.conftest import CLI, Pipeline, wait_until
from tests.integration.test_pipeline import append_events, wait_replicated


def run_audit(pipeline: Pipeline, key_file: Path) -> subprocess.CompletedProcess[str]:
    env = as_role(pipeline.env(LEDGER_CHECKPOINT_KEY_FILE=str(key_file)), "audit")
    return subprocess.run([CLI, "audit", "--grace", "0"], env=env, capture_output=True, text=True, timeout=120)


async def as_owner(url: str, *statements: tuple[str, tuple[object, ...]]) -> None:
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE ledger_owner")
            for statement, args in statements:
                await conn.execute(statement, *args)
    finally:
        await conn.close()


async def rechained(url: str, code: str, version: int, amount: Decimal) -> bytes:
    """The hash event `version` of `code` would have with price `amount` (the event before it unchanged)."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(f"SELECT {LINK_COLUMNS} FROM events WHERE booking_code = $1 AND version = $2",
                                  code, version)
        previous = await conn.fetchval("SELECT hash FROM events WHERE booking_code = $1 AND version = $2",
                                       code, version - 1)
    finally:
        await conn.close()
    link = Link.from_row({**dict(row), "price_amount": amount})
    return link.chained(previous)


async def with_pool(pipeline: Pipeline, work):
    pool = await create_pool(pipeline.settings.database)
    try:
        return await work(pool)
    finally:
        await pool.close()


def write_personal(pipeline: Pipeline, code: str, marker: str) -> list:
    """A booking whose two events carry personal data, sealed as the API seals it."""
    async def work(pool):
        item = Append(code, "hotel", False, 0, [
            NewEvent(uuid.uuid4(), "BookingPriced", Money.parse("10", "EUR"), {"personal": {"name": marker}}),
            NewEvent(uuid.uuid4(), "Note", None, {"personal": {"email": f"{marker}@example.org"}, "seat": "2B"})])
        return (await personal.appended(personal.DataKeys(pool), partial(append_one, pool), item, None)).events
    return asyncio.run(with_pool(pipeline, work))


def erase(pipeline: Pipeline, code: str) -> list:
    async def work(pool):
        await personal.DataKeys(pool).erase(code)
        return (await append(pool, code=code, department="hotel", may_write_any=False, expected_version=None,
                             events=[NewEvent(uuid.uuid4(), core_personal.ERASED_TYPE)])).events
    return asyncio.run(with_pool(pipeline, work))


def test_audit_names_altered_events_and_a_deleted_item(pipeline: Pipeline) -> None:
    key_file = scratch.folder("booking-ledger-key-") / "checkpoint.pem"
    signer = Signer.create(key_file)
    codes = [random_code("AUDIT") for _ in range(3)]
    events = append_events(pipeline, codes, per_booking=3)
    forgotten, marker = random_code("FORGET"), f"Traveller-{uuid.uuid4().hex}"
    events += write_personal(pipeline, forgotten, marker)
    pipeline.start("relay", LEDGER_CHECKPOINT_KEY_FILE=str(key_file), LEDGER_CHECKPOINT_SECONDS="1")
    pipeline.start("sink")
    wait_replicated(pipeline, events, timeout=60)
    sealed_items = pipeline.items(forgotten)
    assert all(msgspec.json.decode(item["data"]["S"])["personal"].startswith("enc:v1:")
               for item in sealed_items.values())

    # Erasure: the sink rewrites the items it holds; the chain, the copies and the checkpoints still hold.
    events += erase(pipeline, forgotten)
    wait_until(lambda: [msgspec.json.decode(item["data"]["S"]).get("personal")
                        for _, item in sorted(pipeline.items(forgotten).items()) if "data" in item]
               == ["erased", "erased"], 30, what="DynamoDB items rewritten as erased")
    last = max(e.position for e in events)
    wait_until(lambda: sql(pipeline.database_url, "SELECT bool_and(published) AND max(through_position) >= $1 "
                                                  "FROM checkpoints", last), 30, what="a published checkpoint")
    messages = pipeline.topic_messages(len(events) + 3, timeout=10)
    assert messages and not any(marker.encode() in value for _, value in messages)  # Kafka: ciphertext only

    honest = run_audit(pipeline, key_file)
    assert honest.returncode == 0, honest.stdout + honest.stderr
    counts = re.search(r"checked 4 bookings and 12 events in the ledger, (\d+) Kafka messages .*, 12 DynamoDB events, "
                       r"(\d+) checkpoints \((\d+) on Kafka\): 0 mismatch", honest.stdout)
    assert counts is not None, honest.stdout
    assert int(counts[1]) >= 12 and int(counts[2]) >= 1 and int(counts[3]) >= 3  # each on 3 partitions
    assert marker not in honest.stdout + "".join(worker.log() for worker in pipeline.workers)
    assert sql(pipeline.database_url, "SELECT key_id FROM checkpoints WHERE seq = 1") == signer.key_id

    altered = next(e for e in events if (e.booking_code, e.version) == (codes[1], 2))
    rewritten = next(e for e in events if (e.booking_code, e.version) == (codes[0], 3))
    new_hash = asyncio.run(rechained(pipeline.database_url, codes[0], 3, Decimal("2.00")))
    asyncio.run(as_owner(pipeline.database_url,
                         ("UPDATE events SET price_amount = 1 WHERE booking_code = $1 AND version = 2", (codes[1],)),
                         ("UPDATE events SET price_amount = 2.00, hash = $2 WHERE booking_code = $1 AND version = 3",
                          (codes[0], new_hash)),
                         ("UPDATE bookings SET head = $2 WHERE code = $1", (codes[0], new_hash))))
    pipeline.dynamodb_client().delete_item(TableName=pipeline.settings.dynamo.table,
                                           Key={"booking_code": {"S": codes[2]}, "version": {"N": "3"}})

    found = run_audit(pipeline, key_file)
    assert found.returncode == 1, found.stdout + found.stderr
    lines = found.stdout.splitlines()
    # The ledger's own chain names the event altered without its hash; the rewritten one holds there.
    assert f"ledger: 1 mismatch(es); the first: {codes[1]} v2 (position {altered.position}, event " \
           f"{altered.event_id}): its hash does not match" in found.stdout, found.stdout
    # The checkpoint over both no longer has their root.
    assert any(line.startswith("checkpoints") and "its root is not the root" in line for line in lines), found.stdout
    # Kafka's copies name both: one by its hash, one by its content.
    assert any(line.startswith("kafka") and f"{codes[0]} v3 (position {rewritten.position}" in line
               and "hash is not the ledger's" in line for line in lines), found.stdout
    assert any(line.startswith("kafka") and f"{codes[1]} v2 (position {altered.position}" in line
               and "content is not the ledger's" in line for line in lines), found.stdout
    # DynamoDB holds the old content of both, and lacks the deleted item.
    stored = sorted(line.split()[1:4] for line in lines if line.startswith("dynamodb "))
    assert stored == sorted([["different", codes[0], "v3:"], ["different", codes[1], "v2:"],
                             ["missing", codes[2], "v3"]]), found.stdout
