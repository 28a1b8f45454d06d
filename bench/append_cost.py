"""What the append function costs Postgres, one schema against another: a server-side loop.

    python -m bench.append_cost --before 0015 --seconds 5 --rounds 5 --batch 1 32

Starts a private Postgres, makes two databases (one migrated to `--before`, one to head), and in
each, alternately, one session calls ledger_append_batch back to back for `--seconds`
(synchronous_commit off: CPU is what is measured; the bench's mix: one append in four creates a
booking, the rest append one event to one of the bookings made, every event priced and with data).
Prints the backend's CPU per append (from /proc) for each schema, round by round, the medians and
their ratio. No HTTP and no API: the append function alone, as the migrations' notes measure it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from bench.cpu import _times
from core.money import Money
from core.pg import init_connection
from devstack.harness import free_port
from devstack.postgres import LocalPostgres
from migrations.runner import upgrade
from service.ledger.append import BATCH_SQL, Append, NewEvent, batch_arguments

CREATE_SHARE = 4  # one append in this many creates a booking

# Without the data keys (0019; none of these appends carries personal data): the call every revision
# compared here takes.
CALL_SQL = BATCH_SQL.replace(", $13", "")


def batch_arguments12(appends: list[Append]) -> tuple[list[Any], ...]:
    return batch_arguments(appends)[:12]


def _appends(batch: int, bookings: list[str], serial: int) -> list[Append]:
    appends = []
    for i in range(batch):
        price = Money.parse(f"{100 + (serial + i) % 50}.50", "EUR")
        event = NewEvent(uuid.uuid4(), "PriceChanged", price, {"reason": "bench", "n": serial + i}, None)
        if not bookings or (serial + i) % CREATE_SHARE == 0:
            code = f"AC-{uuid.uuid4().hex[:12]}"
            bookings.append(code)
            appends.append(Append(code, "hotel", False, 0, [event]))
        else:
            appends.append(Append(random.choice(bookings), "hotel", False, None, [event]))
    return appends


async def _round(url: str, batch: int, seconds: float) -> float:
    """Backend CPU ms per append over `seconds` of back-to-back calls of `batch` appends."""
    conn = await asyncpg.connect(url)
    try:
        await init_connection(conn)
        await conn.execute("SET synchronous_commit = off")
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        bookings: list[str] = []
        await conn.fetch(CALL_SQL, *batch_arguments12(_appends(batch, bookings, 0)))  # warm the plans
        done, serial = 0, 1
        started_cpu = _times(pid)[0]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await conn.fetch(CALL_SQL, *batch_arguments12(_appends(batch, bookings, serial)))
            done += batch
            serial += batch
        return (_times(pid)[0] - started_cpu) * 1000 / done
    finally:
        await conn.close()


async def _measure(urls: dict[str, str], batches: list[int], seconds: float, rounds: int) -> None:
    for batch in batches:
        results: dict[str, list[float]] = {name: [] for name in urls}
        for index in range(rounds):
            order = list(urls) if index % 2 == 0 else list(reversed(urls))
            for name in order:
                results[name].append(await _round(urls[name], batch, seconds))
            print(f"batch {batch:>3} round {index + 1}: " + ", ".join(f"{n} {results[n][-1]:.3f} ms" for n in urls),
                  flush=True)
        medians = {name: statistics.median(values) for name, values in results.items()}
        before, after = list(medians.values())
        ratios = [a / b for b, a in zip(*results.values(), strict=True)]
        print(f"batch {batch:>3}: median CPU ms/append " + ", ".join(f"{n} {m:.3f}" for n, m in medians.items())
              + f"; ratio {after / before:.3f} (rounds {min(ratios):.2f}-{max(ratios):.2f})", flush=True)


async def _fill(url: str, events: int) -> None:
    """`events` events (one per append, the bench's mix), written through the append function."""
    conn = await asyncpg.connect(url)
    try:
        await init_connection(conn)
        await conn.execute("SET synchronous_commit = off")
        bookings: list[str] = []
        for serial in range(0, events, 1000):
            await conn.fetch(CALL_SQL, *batch_arguments12(_appends(min(1000, events - serial), bookings, serial)))
    finally:
        await conn.close()


def backfill(base: str, before: str, events: int) -> None:
    """How long migrating a ledger of `events` events from `before` to head takes (the chain's pass)."""
    asyncio.run(_admin(f"{base}/ledger", 'CREATE DATABASE "cost_backfill"'))
    url = f"{base}/cost_backfill"
    upgrade(url, before)
    asyncio.run(_fill(url, events))
    started = time.monotonic()
    upgrade(url, "head")
    took = time.monotonic() - started
    print(f"migrating {events} events from {before} to head took {took:.2f} s "
          f"({took * 1e6 / events:.1f} microseconds an event)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="0015", help="the revision to compare head with")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--backfill", type=int, default=0, metavar="EVENTS",
                        help="instead, time the migration from --before to head over a ledger of this many events")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="append-cost-"))
    folder.chmod(0o755)  # the cluster may belong to the postgres user (when run as root)
    postgres = LocalPostgres(folder / "pg", free_port())
    postgres.start()
    try:
        base = postgres.url.rsplit("/", 1)[0]
        if args.backfill:
            backfill(base, args.before, args.backfill)
            return
        urls = {}
        for name, revision in ((args.before, args.before), ("head", "head")):
            database = f"cost_{name}"
            asyncio.run(_admin(postgres.url, f'CREATE DATABASE "{database}"'))
            urls[name] = f"{base}/{database}"
            upgrade(urls[name], revision)
        asyncio.run(_measure(urls, args.batch, args.seconds, args.rounds))
    finally:
        postgres.stop(mode="immediate")
        shutil.rmtree(folder, ignore_errors=True)


async def _admin(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
