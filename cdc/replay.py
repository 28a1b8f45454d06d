"""`booking-ledger replay`: rebuild the DynamoDB read store from the ledger, idempotently.

Events are read in position order, in pages, and written whole: running it twice, or while the
sink runs, writes the same content again and changes nothing. An event that commits after the
replay has passed its position still reaches DynamoDB through the outbox and the sink.

`prune` is the other direction, for after a restore to an earlier moment: items of events the
ledger no longer has (it lost them with the restore; Kafka and DynamoDB had them already) are
deleted, and the highest position DynamoDB held is reported, so that new positions can be moved
past it (`booking-ledger migrate --advance-positions --past POSITION`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from cdc import dynamodb_writes
from cdc.verify import Key, ledger_items, stored_extras
from core.dynamodb import client as dynamodb_client
from core.dynamodb import ensure_table
from core.events import EVENT_COLUMNS
from core.pg import connect
from core.settings import Settings

COUNT_SQL = "SELECT count(*) FROM events WHERE position > $1"
PAGE_SQL = f"SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"


async def replay(settings: Settings, after: int = 0, page_size: int = 1000, progress: bool = True,
                 written_through: Callable[[int], None] = lambda _: None) -> int:
    """Write every ledger event with a position above `after` to DynamoDB; returns how many.

    Pages are read in position order, the next one while the last is written; after each page,
    `written_through(position)` says that every event up to `position` is in DynamoDB (a replay
    killed midway goes on from there: `replay --checkpoint`)."""
    conn = await connect(settings.database.url, timeout=10)
    dynamodb = dynamodb_client(settings.dynamo, validate=False)
    await asyncio.to_thread(ensure_table, dynamodb, settings.dynamo.table)
    written = 0
    try:
        total = await conn.fetchval(COUNT_SQL, after)
        with ThreadPoolExecutor(8) as executor, tqdm(
            total=total, unit="event", desc="replay", disable=not progress, dynamic_ncols=True
        ) as bar:
            in_flight = None  # the page being written: (its write, its last position, its events)
            while True:
                rows = await conn.fetch(PAGE_SQL, after, page_size)
                items = await ledger_items(conn, rows)
                if in_flight is not None:
                    write, through, count = in_flight
                    await write
                    written += count
                    bar.update(count)
                    written_through(through)
                if not rows:
                    break
                after = rows[-1]["position"]
                in_flight = (asyncio.create_task(asyncio.to_thread(
                    dynamodb_writes.write_items, dynamodb, settings.dynamo.table, items, executor=executor)),
                    after, len(rows))
    finally:
        await conn.close()
    return written


async def prune(settings: Settings) -> tuple[int, int]:
    """Delete DynamoDB items whose event the ledger does not hold; returns (deleted, the highest
    position DynamoDB held, deleted items included). Run it while the sink has nothing left to write
    (lag 0): an event of the lost range still on the topic would come back afterwards."""
    dynamodb = dynamodb_client(settings.dynamo)
    table = settings.dynamo.table
    deleted = 0

    def delete(keys: list[Key]) -> None:
        nonlocal deleted
        dynamodb_writes.delete_keys(dynamodb, table, keys)
        deleted += len(keys)

    highest = await stored_extras(settings, delete)
    return deleted, highest
