"""`booking-ledger import FILE`: creates, appends, collisions, duplicates, invalid lines, a re-run, DynamoDB."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import uuid
from decimal import Decimal
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


def any_written(database_url: str, codes: list[str]) -> bool:
    async def check() -> bool:
        conn = await asyncpg.connect(database_url)
        try:
            return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM bookings WHERE code = ANY($1))", codes))
        finally:
            await conn.close()

    return asyncio.run(check())


def test_import_creates_appends_rejects_and_a_rerun_imports_nothing(database_url: str, tmp_path: Path) -> None:
    car = f"car-{uuid.uuid4().hex[:6]}"
    a, b, c = (random_code("IMP") for _ in range(3))
    foreign, existing = random_code("HOTEL"), random_code("MINE")
    present = line(existing, car, "50.00")

    asyncio.run(_seed_with(database_url, seed_events=[
        (foreign, "hotel", 0, NewEvent(uuid.uuid4(), "Held")),
        (existing, car, 0, NewEvent(uuid.UUID(present["event_id"]), "PriceChanged", Money.parse("50.00", "EUR")))]))

    # Booking a's lines are interleaved with b's and c's; its occurred_at goes back in time. A booking
    # stops at its first rejected line; a line of no readable booking stops them all.
    rows: list = [
        line(a, car, "100.00", "2020-01-01T10:00:00Z"),            # 1
        line(b, car, "200.00"),                                    # 2
        line(a, car, None, "2020-01-02T10:00:00Z"),                # 3
        {**line(c, car, "5.00"), "version": 3},                    # 4 invalid: server-owned field; c stops
        line(foreign, car, "1.00"),                                # 5 collision: hotel owns it
        line(a, car, "110.00", "2020-01-03T10:00:00+01:00"),       # 6
        line(c, car, "5.001"),                                     # 7 invalid: EUR has 2 digits
        present,                                                   # 8 already recorded: skipped
        line(existing, car, "55.00"),                              # 9 appended to our own booking
        line(foreign, car, "2.00"),                                # 10 held back (after line 5)
        {**line(b, car, "210.00"), "event_id": present["event_id"]},  # 11 id recorded with other content
        line(b, car, "220.00"),                                    # 12 held back (after line 11)
        line(c, car, "6.00"),                                      # 13 held back (after line 4)
        "{not json",                                               # 14 invalid, of no readable booking
        line(a, car, "120.00"),                                    # 15 held back (after line 14)
        '{"booking_code": "X", "booking_code": "Y", "department": "car", "event_id": "' + str(uuid.uuid4())
        + '", "type": "T"}',                                       # 16 invalid: duplicate key
        "",                                                        # 17 blank: ignored
    ]
    path = write(tmp_path / "history.jsonl", rows)
    done = run_import(database_url, path)
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "17 lines: 5 events imported (2 bookings created), 1 already present, 6 rejected, 4 held back" in out, out
    assert "rejected booking_code_taken: 1" in out and "line 5:" in out
    assert "rejected invalid: 4" in out and all(f"line {n}:" in out for n in (4, 7, 14, 16))
    assert "rejected event_id_conflict: 1" in out and "line 11:" in out
    assert "held back (after a rejected line of their booking): 4" in out
    assert f"line 10: booking {foreign} stopped at line 5 (booking_code_taken)" in out
    assert f"line 12: booking {b} stopped at line 11 (event_id_conflict)" in out
    assert f"line 13: booking {c} stopped at line 4 (invalid)" in out
    assert "line 15: every booking stopped at line 14, whose booking code cannot be read" in out
    assert "import" in done.stderr  # the progress bar

    stored = events_of(database_url, a)
    assert [str(e["event_id"]) for e in stored] == [rows[0]["event_id"], rows[2]["event_id"], rows[5]["event_id"]]
    assert [e["version"] for e in stored] == [1, 2, 3] and {e["department"] for e in stored} == {car}
    assert stored[2]["occurred_at"].isoformat() == "2020-01-03T09:00:00+00:00"
    assert all(e["recorded_at"].year >= 2026 for e in stored)  # recorded: the import's own time
    assert [str(e["event_id"]) for e in events_of(database_url, b)] == [rows[1]["event_id"]]
    assert events_of(database_url, c) == []
    assert [e["type"] for e in events_of(database_url, foreign)] == ["Held"]  # nothing of car's written
    assert [str(e["event_id"]) for e in events_of(database_url, existing)] == [present["event_id"],
                                                                              rows[8]["event_id"]]

    again = run_import(database_url, path)
    assert again.returncode == 1
    assert "0 events imported (0 bookings created), 6 already present, 6 rejected, 4 held back" in again.stdout, \
        again.stdout
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
    time, the booking stops at its first rejected line, and nothing is written out of file order."""
    from service.ledger.importer import Importer

    car = f"car-{uuid.uuid4().hex[:6]}"
    a, b, c, d, e = (random_code("CHAIN") for _ in range(5))
    rows = [
        line(a, car, "1.00"), line(b, car, "2.00"), line(a, car, "1.10"),  # a: 2 lines ...
        line(a, "hotel", "9.00"),                                           # ... hotel's line: refused
        line(c, car, "3.00"), line(a, car, "1.20"), line(b, car, "2.10"),  # a's line held back
        line(c, car, "3.10"), line(c, car, "3.20"),
        line(d, car, "4.00", data={"text": "nul \u0000 here"}),           # Postgres refuses the whole call
        line(e, car, "5.00"),                                               # ... its neighbour is written
    ]
    raw = [(n, json.dumps(row).encode()) for n, row in enumerate(rows, start=1)]
    importer = Importer(pool, connections=2, call_events=2)
    summary = await importer.run(iter(raw), lambda *_: None)
    assert (summary.imported, summary.bookings_created, summary.held_back) == (8, 4, 1)
    assert summary.rejected == {"booking_code_taken": 1, "invalid": 1}
    assert summary.held_back_examples == [f"line 6: booking {a} stopped at line 4 (booking_code_taken)"]
    assert summary.examples["booking_code_taken"][0].startswith("line 4:")
    assert summary.examples["invalid"][0].startswith("line 10:")
    assert importer.calls > 2  # several calls, several bookings in most
    for code, numbers in ((a, [1, 3]), (b, [2, 7]), (c, [5, 8, 9]), (d, []), (e, [11])):
        stored = await _events(database_url, code)
        assert [str(e["event_id"]) for e in stored] == [rows[n - 1]["event_id"] for n in numbers]
        assert [e["version"] for e in stored] == list(range(1, len(numbers) + 1))

    again = await Importer(pool, connections=2, call_events=2).run(iter(raw), lambda *_: None)
    assert (again.imported, again.already_present, again.rejected_lines, again.held_back) == (0, 8, 2, 1)



def test_a_fixed_line_imported_again_keeps_its_booking_in_file_order(database_url: str, tmp_path: Path) -> None:
    """A booking stops at its first rejected line: nothing after it is written, so the run after the
    line is fixed writes it and the rest in file order."""
    code, other = random_code("FIX"), random_code("FIXB")
    rows = [line(code, "car", "80.00"), line(code, "car", "75.000"), line(other, "car", "10.00"),
            line(code, "car", "72.50"), line(code, "car", "70.00"), line(other, "car", "11.00")]
    path = write(tmp_path / "history.jsonl", rows)

    first = run_import(database_url, path)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "6 lines: 3 events imported (2 bookings created), 0 already present, 1 rejected, 2 held back" \
        in first.stdout, first.stdout
    assert "held back (after a rejected line of their booking): 2" in first.stdout
    assert f"line 4: booking {code} stopped at line 2" in first.stdout and "line 5:" in first.stdout
    assert "Traceback" not in first.stderr
    assert [e["price_amount"] for e in events_of(database_url, code)] == [Decimal("80.00")]
    assert [e["price_amount"] for e in events_of(database_url, other)] == [Decimal("10.00"), Decimal("11.00")]

    rows[1]["price"]["amount"] = "75.00"
    fixed = run_import(database_url, write(path, rows))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "6 lines: 3 events imported (0 bookings created), 3 already present, 0 rejected, 0 held back" \
        in fixed.stdout, fixed.stdout
    stored = events_of(database_url, code)
    assert [str(e["event_id"]) for e in stored] == [rows[n]["event_id"] for n in (0, 1, 3, 4)]
    assert [e["version"] for e in stored] == [1, 2, 3, 4]
    assert [e["price_amount"] for e in stored] == [Decimal(a) for a in ("80.00", "75.00", "72.50", "70.00")]


def test_a_bom_a_lone_surrogate_and_bytes_not_utf8_are_named(database_url: str, tmp_path: Path) -> None:
    codes = [random_code("TEXT") for _ in range(4)]
    rows = [json.dumps(line(code, "car", "1.00")).encode() for code in codes]
    rows[0] = b"\xef\xbb\xbf" + rows[0]
    rows[1] = rows[1][:-1] + b', "data": {"note": "\\ud800"}}'
    rows[2] = rows[2][:-1] + b', "data": {"note": "\xed\xa0\x80"}}'  # a surrogate written as UTF-8: not UTF-8
    path = tmp_path / "text.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")
    done = run_import(database_url, path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stdout + done.stderr
    assert "4 lines: 1 events imported (1 bookings created), 0 already present, 3 rejected, 0 held back" \
        in done.stdout, done.stdout
    assert "line 1: the line starts with a UTF-8 byte order mark (BOM)" in done.stdout
    assert "line 2: a string holds \\ud800, half of a UTF-16 surrogate pair alone" in done.stdout
    assert "line 3: the line is not UTF-8: byte 0xed at byte " in done.stdout
    assert "truncated" not in done.stdout and "byte 0)" not in done.stdout


def test_a_missing_file_or_a_directory_is_a_usage_error(database_url: str, tmp_path: Path) -> None:
    for path, why in ((tmp_path / "missing.jsonl", "No such file or directory"), (tmp_path, "Is a directory")):
        done = run_import(database_url, path)
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr == f"booking-ledger: cannot import {path}: {why}\n"
        assert done.stdout == ""


def test_ctrl_c_stops_the_import_with_130_and_no_traceback(database_url: str, tmp_path: Path) -> None:
    codes = [random_code("INT") for _ in range(40_000)]
    # Six times the bookings' lines: the import is still far from done when its first lines are
    # seen written, however busy the machine (three times was once imported whole before the signal).
    path = write(tmp_path / "big.jsonl", [line(code, "car", "1.00") for code in codes * 6])
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}, "LEDGER_DATABASE_URL": database_url}
    # SIGINT as a terminal's Ctrl-C finds it: a test runner's worker may ignore SIGINT, and a child
    # inherits that.
    started = subprocess.Popen([CLI, "import", "--quiet", str(path)], env=as_role(env, "import"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # Its first writes are in: the import is under way. (Any of its bookings: it writes the
        # lines it reads ahead grouped by booking, so one given booking may come late.)
        wait_until(lambda: any_written(database_url, codes[::100]), 120, interval=0.1,
                   what="the import's first writes")
        started.send_signal(signal.SIGINT)
        out, err = started.communicate(timeout=60)
    finally:
        started.kill()
    assert started.returncode == 130, out + err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines() == ["booking-ledger: import interrupted: the lines written so far stay written; "
                                        "import the file again to go on (nothing is written twice)"]
