"""`booking-ledger import FILE`: creates, appends, collisions, duplicates, invalid lines, a re-run, DynamoDB."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from pathlib import Path

import asyncpg

from cdc.verify import verify
from core.money import Money
from devstack.harness import CLI, as_role
from devstack.processes import wait_until
from service.ledger.append import NewEvent, append
from tests.conftest import random_code
from tests.integration.conftest import Pipeline


def line(code: str, department: str, amount: str | None = None, occurred_at: str | None = None, **extra) -> dict:
    item: dict = {"booking_code": code, "department": department, "event_id": str(uuid.uuid4()),
                  "type": "PriceChanged" if amount else "Noted", **extra}
    if amount:
        item["price"] = {"amount": amount, "currency": "EUR"}
    if occurred_at:
        item["occurred_at"] = occurred_at
    return item


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def run_import(database_url: str, path: Path) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}, "LEDGER_DATABASE_URL": database_url}
    # As production runs it: the import's own role (it writes through ledger_append only).
    return subprocess.run([CLI, "import", str(path)], env=as_role(env, "import"), capture_output=True, text=True,
                          timeout=300)


async def _events(database_url: str, code: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch("SELECT * FROM events WHERE booking_code = $1 ORDER BY version", code)
    finally:
        await conn.close()


def events_of(database_url: str, code: str) -> list[asyncpg.Record]:
    return asyncio.run(_events(database_url, code))


def test_import_creates_appends_rejects_and_a_rerun_imports_nothing(database_url: str, tmp_path: Path) -> None:
    car = f"car-{uuid.uuid4().hex[:6]}"
    a, b, c = (random_code("IMP") for _ in range(3))
    foreign, existing = random_code("HOTEL"), random_code("MINE")
    present = line(existing, car, "50.00")

    asyncio.run(_seed_with(database_url, seed_events=[
        (foreign, "hotel", 0, NewEvent(uuid.uuid4(), "Held")),
        (existing, car, 0, NewEvent(uuid.UUID(present["event_id"]), "PriceChanged", Money.parse("50.00", "EUR")))]))

    # Booking a's lines are interleaved with b's and c's; its occurred_at goes back in time.
    rows: list = [
        line(a, car, "100.00", "2020-01-01T10:00:00Z"),            # 1
        line(b, car, "200.00"),                                    # 2
        line(a, car, None, "2020-01-02T10:00:00Z"),                # 3
        "{not json",                                               # 4 invalid
        line(foreign, car, "1.00"),                                # 5 collision: hotel owns it
        line(a, car, "110.00", "2020-01-03T10:00:00+01:00"),       # 6
        {**line(c, car, "5.00"), "version": 3},                    # 7 invalid: server-owned field
        line(c, car, "5.001"),                                     # 8 invalid: EUR has 2 digits
        present,                                                   # 9 already recorded: skipped
        line(existing, car, "55.00"),                              # 10 appended to our own booking
        line(foreign, car, "2.00"),                                # 11 collision again
        '{"booking_code": "X", "booking_code": "Y", "department": "car", "event_id": "' + str(uuid.uuid4())
        + '", "type": "T"}',                                       # 12 invalid: duplicate key
        {**line(b, car, "210.00"), "event_id": present["event_id"]},  # 13 id recorded with other content
        line(c, car, "6.00"),                                      # 14
        "",                                                        # 15 blank: ignored
    ]
    path = write(tmp_path / "history.jsonl", rows)
    done = run_import(database_url, path)
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "15 lines: 6 events imported (3 bookings created), 1 already present, 7 rejected" in out, out
    assert "rejected booking_code_taken: 2" in out and "line 5:" in out and "line 11:" in out
    assert "rejected invalid: 4" in out and "line 4:" in out and "line 7:" in out and "line 8:" in out
    assert "rejected event_id_conflict: 1" in out and "line 13:" in out
    assert "line 12:" in out  # counted with the invalid ones
    assert "import" in done.stderr  # the progress bar

    stored = events_of(database_url, a)
    assert [str(e["event_id"]) for e in stored] == [rows[0]["event_id"], rows[2]["event_id"], rows[5]["event_id"]]
    assert [e["version"] for e in stored] == [1, 2, 3] and {e["department"] for e in stored} == {car}
    assert stored[2]["occurred_at"].isoformat() == "2020-01-03T09:00:00+00:00"
    assert all(e["recorded_at"].year >= 2026 for e in stored)  # recorded: the import's own time
    assert [e["type"] for e in events_of(database_url, foreign)] == ["Held"]  # nothing of car's written
    assert [str(e["event_id"]) for e in events_of(database_url, existing)] == [present["event_id"],
                                                                              rows[9]["event_id"]]

    again = run_import(database_url, path)
    assert again.returncode == 1
    assert "0 events imported (0 bookings created), 7 already present, 7 rejected" in again.stdout, again.stdout
    assert len(events_of(database_url, a)) == 3


async def _seed_with(database_url: str, seed_events: list) -> None:
    conn = await asyncpg.connect(database_url)
    conn_pool = _OneConnection(conn)
    try:
        for code, department, expected, event in seed_events:
            await append(conn_pool, code=code, department=department, may_write_any=False,  # type: ignore[arg-type]
                         expected_version=expected, events=[event])
    finally:
        await conn.close()


class _OneConnection:
    """Enough of a pool for `append` on a connection of this test's own loop."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    def acquire(self, timeout: float | None = None) -> _OneConnection:
        return self

    async def __aenter__(self) -> asyncpg.Connection:
        return self._conn

    async def __aexit__(self, *_: object) -> None:
        return None


def test_a_clean_file_exits_0_and_its_events_reach_dynamodb(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.start("relay")
    pipeline.start("sink")
    codes = [random_code("TODDB") for _ in range(20)]
    rows = [line(code, "car", f"{10 + i}.00") for i in range(5) for code in codes]  # interleaved
    done = run_import(pipeline.database_url, write(tmp_path / "clean.jsonl", rows))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "100 events imported (20 bookings created), 0 already present, 0 rejected" in done.stdout
    wait_until(lambda: all(len(pipeline.items(code)) == 5 for code in codes), 120, interval=0.5,
               what="every imported event in DynamoDB")
    assert asyncio.run(verify(pipeline.settings, grace=1)).drift == []


async def test_many_bookings_per_call_keep_file_order_through_refusals_and_a_rerun(pool, database_url: str) -> None:
    """Calls of two events at a time: a booking's batches go in successive calls, each expecting the
    version the one before it leaves; a refused batch sends the rest of its booking one append at a
    time, and nothing is written out of file order."""
    from service.ledger.importer import Importer

    car = f"car-{uuid.uuid4().hex[:6]}"
    a, b, c, d, e = (random_code("CHAIN") for _ in range(5))
    rows = [
        line(a, car, "1.00"), line(b, car, "2.00"), line(a, car, "1.10"),  # a: 2 lines ...
        line(a, "hotel", "9.00"),                                           # ... hotel's line: refused
        line(c, car, "3.00"), line(a, car, "1.20"), line(b, car, "2.10"),  # a goes on after it
        line(c, car, "3.10"), line(c, car, "3.20"),
        line(d, car, "4.00", data={"text": "nul \u0000 here"}),           # Postgres refuses the whole call
        line(e, car, "5.00"),                                               # ... its neighbour is written
    ]
    raw = [(n, json.dumps(row).encode()) for n, row in enumerate(rows, start=1)]
    importer = Importer(pool, connections=2, call_events=2)
    summary = await importer.run(iter(raw), lambda *_: None)
    assert (summary.imported, summary.bookings_created) == (9, 4)
    assert summary.rejected == {"booking_code_taken": 1, "invalid": 1}
    assert summary.examples["booking_code_taken"][0].startswith("line 4:")
    assert summary.examples["invalid"][0].startswith("line 10:")
    assert importer.calls > 2  # several calls, several bookings in most
    for code, numbers in ((a, [1, 3, 6]), (b, [2, 7]), (c, [5, 8, 9]), (d, []), (e, [11])):
        stored = await _events(database_url, code)
        assert [str(e["event_id"]) for e in stored] == [rows[n - 1]["event_id"] for n in numbers]
        assert [e["version"] for e in stored] == list(range(1, len(numbers) + 1))

    again = await Importer(pool, connections=2, call_events=2).run(iter(raw), lambda *_: None)
    assert (again.imported, again.already_present, again.rejected_lines) == (0, 9, 2)

