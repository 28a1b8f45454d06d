"""Closed-loop load on Postgres without the API: the baselines `make bench` compares it with.

    python -m bench.drivers raw|message_db|eventsourcing --url URL --concurrency 32 --seconds 5

Each driver runs in its own process, as wrk does for the API, and does the API's work mix: a
price change of an existing booking, and every Nth operation a new booking. It prints one JSON
object: operations done, errors, p50/p99 latency.

- raw: the ledger's own transaction (`SELECT * FROM ledger_append(...)`) from a plain asyncpg
  loop, one connection per operation in flight.
- minimal: what a department could write itself on the same tables: one transaction of three
  statements (the booking row inserted or moved on a version, the event, its outbox row), without
  the ledger's checks (idempotency, ownership, expected versions), one round trip per statement.
- json_read: a read answered by Postgres as one JSON document (json_agg) that the client passes
  through as bytes (`--query`, `--arg`): what a read through the API is compared with.
- message_db: message-db's `write_message` from asyncpg (a new booking is a write that expects
  the stream not to exist, -1; a price change expects any version, as the API's does).
- eventsourcing: the eventsourcing library's PostgresApplicationRecorder (psycopg 3, one thread
  per operation in flight), storing one event per operation; each thread owns its aggregates.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any
from urllib.parse import urlparse

import asyncpg
import msgspec

from core.pg import init_connection
from devstack.harness import APPEND_SQL

APPEND_DATA = {"reason": "bench"}
EVENT_JSON = msgspec.json.encode(
    {"type": "PriceChanged", "price": {"amount": "123.45", "currency": "EUR"}, "data": APPEND_DATA}
)


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0

    def report(self, seconds: float) -> dict[str, Any]:
        ordered = sorted(self.latencies) or [0.0]
        return {
            "requests": len(self.latencies),
            "duration_us": int(seconds * 1e6),
            "non_2xx": self.errors,
            "socket_errors": 0,
            "p50_us": int(ordered[len(ordered) // 2] * 1e6),
            "p99_us": int(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6),
            "max_us": int(ordered[-1] * 1e6),
        }


async def _closed_loop(
    connect: Callable[[], Awaitable[asyncpg.Connection]],
    operation: Callable[[asyncpg.Connection, int, int], Awaitable[object]],
    concurrency: int,
    seconds: float,
) -> Tally:
    tally = Tally()
    connections = [await connect() for _ in range(concurrency)]
    deadline = time.monotonic() + seconds

    async def worker(n: int, conn: asyncpg.Connection) -> None:
        count = 0
        while time.monotonic() < deadline:
            count += 1
            started = time.perf_counter()
            try:
                await operation(conn, n, count)
            except asyncpg.PostgresError:
                tally.errors += 1
                continue
            tally.latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker(n, c) for n, c in enumerate(connections)))
    for conn in connections:
        await conn.close()
    return tally


def raw(args: argparse.Namespace) -> Tally:
    price = [Decimal("123.45")]

    async def operation(conn: asyncpg.Connection, worker: int, count: int) -> object:
        if args.create_every and count % args.create_every == 0:
            code, expected = f"RAW-{args.run}-{worker}-{count}", 0
        else:
            code, expected = f"BENCH-{random.randrange(args.bookings)}", None
        return await conn.fetch(APPEND_SQL, code, "bench", False, expected, [uuid.uuid4()],
                                ["PriceChanged"], price, ["EUR"], [APPEND_DATA], [None])

    async def connect() -> asyncpg.Connection:
        conn = await asyncpg.connect(args.url)
        await init_connection(conn)
        return conn

    return asyncio.run(_closed_loop(connect, operation, args.concurrency, args.seconds))


# The position is the ledger's own formula (ledger_write_events), so that the rows are alike. The
# chain's column (NOT NULL since migration 0016) gets 32 zero bytes: a department writing its own
# rows would have no chain (what the chain costs: bench/README.md, issue 29).
MINIMAL_CREATE = """
INSERT INTO bookings (code, department, version, price_amount, price_currency)
VALUES ($1, 'bench', 1, $2, 'EUR') RETURNING version"""
MINIMAL_CHANGE = """
UPDATE bookings SET version = version + 1, price_amount = $2, price_currency = 'EUR', updated_at = now()
 WHERE code = $1 RETURNING version"""
MINIMAL_EVENT = """
INSERT INTO events (position, event_id, booking_code, version, type, price_amount, price_currency, data,
                    department, recorded_at, hash)
VALUES ((pg_current_xact_id()::text::bigint + (SELECT xid_offset FROM ledger_position_offset)) * 65536,
        $1, $2, $3, 'PriceChanged', $4, 'EUR', $5, 'bench', now(), $6)
RETURNING position"""
NO_HASH = bytes(32)
MINIMAL_OUTBOX = "INSERT INTO outbox (position, booking_code, version) VALUES ($1, $2, $3)"


def minimal(args: argparse.Namespace) -> Tally:
    price = Decimal("123.45")

    async def operation(conn: asyncpg.Connection, worker: int, count: int) -> object:
        async with conn.transaction():
            if args.create_every and count % args.create_every == 0:
                code = f"MIN-{args.run}-{worker}-{count}"
                version = await conn.fetchval(MINIMAL_CREATE, code, price)
            else:
                code = f"BENCH-{random.randrange(args.bookings)}"
                version = await conn.fetchval(MINIMAL_CHANGE, code, price)
            position = await conn.fetchval(MINIMAL_EVENT, uuid.uuid4(), code, version, price, APPEND_DATA, NO_HASH)
            return await conn.execute(MINIMAL_OUTBOX, position, code, version)

    async def connect() -> asyncpg.Connection:
        conn = await asyncpg.connect(args.url)
        await init_connection(conn)
        return conn

    return asyncio.run(_closed_loop(connect, operation, args.concurrency, args.seconds))


def json_read(args: argparse.Namespace) -> Tally:
    arguments = [int(a) if a.lstrip("-").isdigit() else a for a in args.arg]

    async def operation(conn: asyncpg.Connection, worker: int, count: int) -> object:
        return (await conn.fetchval(args.query, *arguments)).encode()  # the answer's body, as is

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(args.url)

    return asyncio.run(_closed_loop(connect, operation, args.concurrency, args.seconds))


def message_db(args: argparse.Namespace) -> Tally:
    data = EVENT_JSON.decode()

    async def operation(conn: asyncpg.Connection, worker: int, count: int) -> object:
        if args.create_every and count % args.create_every == 0:
            stream, expected = f"booking-MDB{args.run}x{worker}x{count}", -1
        else:
            stream, expected = f"booking-BENCH{random.randrange(args.bookings)}", None
        return await conn.fetchval("SELECT message_store.write_message($1, $2, $3, $4::jsonb, NULL, $5)",
                                   str(uuid.uuid4()), stream, "PriceChanged", data, expected)

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(args.url, server_settings={"search_path": "message_store,public"})

    return asyncio.run(_closed_loop(connect, operation, args.concurrency, args.seconds))


def eventsourcing(args: argparse.Namespace) -> Tally:
    from eventsourcing.persistence import StoredEvent
    from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

    url = urlparse(args.url)
    datastore = PostgresDatastore(url.path.lstrip("/"), url.hostname, url.port, url.username or "", "",
                                  pool_size=args.concurrency)
    recorder = PostgresApplicationRecorder(datastore, events_table_name="stored_events")
    recorder.create_table()
    tally = Tally()
    lock = threading.Lock()
    deadline = time.monotonic() + args.seconds
    per_thread = max(1, args.bookings // args.concurrency)

    def worker() -> None:
        versions = {uuid.uuid4(): 0 for _ in range(per_thread)}  # this thread's existing bookings
        owned = list(versions)
        count = 0
        while time.monotonic() < deadline:
            count += 1
            if args.create_every and count % args.create_every == 0:
                aggregate = uuid.uuid4()
                versions[aggregate] = 0
            else:
                aggregate = random.choice(owned)
            versions[aggregate] += 1
            event = StoredEvent(aggregate, versions[aggregate], "bench:PriceChanged", EVENT_JSON)
            started = time.perf_counter()
            try:
                recorder.insert_events([event])
            except Exception:
                with lock:
                    tally.errors += 1
                continue
            elapsed = time.perf_counter() - started
            with lock:
                tally.latencies.append(elapsed)

    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    datastore.close()
    return tally


DRIVERS = {"raw": raw, "minimal": minimal, "json_read": json_read, "message_db": message_db,
           "eventsourcing": eventsourcing}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("driver", choices=sorted(DRIVERS))
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--bookings", type=int, default=1000)
    parser.add_argument("--create-every", type=int, default=4)
    parser.add_argument("--run", default=uuid.uuid4().hex[:8])
    parser.add_argument("--query", help="json_read: a query answering one JSON text")
    parser.add_argument("--arg", action="append", default=[], help="json_read: the query's arguments, in order")
    args = parser.parse_args()
    tally = DRIVERS[args.driver](args)
    print(msgspec.json.encode(tally.report(args.seconds)).decode())


if __name__ == "__main__":
    main()
